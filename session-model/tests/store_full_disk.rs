//! A store whose disk fills up. Alone in its test binary: it limits the size
//! of every file the process writes (`RLIMIT_FSIZE`).

use session_model::{HybridOptions, HybridStore, MacAddr, SessionStore, SyncMode};

/// While it lives, no file of the process grows past `bytes`: a write past
/// that fails with EFBIG, as one on a full disk fails with ENOSPC.
struct FilesUpTo(libc::rlimit);

impl FilesUpTo {
    fn bytes(bytes: u64) -> Self {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit with valid pointers to rlimits;
        // SIGXFSZ ignored, so a write past the limit fails with EFBIG
        // instead of ending the process.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut old), 0);
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: old.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
        FilesUpTo(old)
    }
}

impl Drop for FilesUpTo {
    fn drop(&mut self) {
        // SAFETY: setrlimit with a valid pointer to the limit read before.
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &self.0) };
    }
}

fn mac(i: u64) -> MacAddr {
    MacAddr::from_u64(0x0200_0000_0000 | i)
}

/// A device whose record is about 2 KiB, so a few of them need new pages.
fn add(store: &HybridStore, i: u64) -> Result<(), session_model::StoreError> {
    store
        .create_device(mac(i), None, Some(format!("{i:0>2000}")), 1)
        .map(drop)
}

#[test]
fn writes_go_on_while_the_checkpoint_cannot_be_written_and_the_store_heals_once_the_disk_has_room()
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let log = dir.path().join("s.redb.log");
    let len = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    let opts = HybridOptions {
        sync: SyncMode::EveryWrite,
        checkpoint_records: 4,
        checkpoint_bytes: u64::MAX,
    };
    let store = HybridStore::open(&path, opts.clone()).unwrap();
    let mut n = 0;
    {
        // The database file cannot grow any more; the log (which a
        // checkpoint empties every 4 writes) can.
        let _full = FilesUpTo::bytes(len(&path));
        // Devices until a checkpoint fails: the log then holds more than 4.
        while len(&log) < 10 * 2_100 {
            assert!(n < 3_000, "no checkpoint failed");
            add(&store, n).unwrap_or_else(|e| panic!("device {n} refused: {e}"));
            n += 1;
        }
        let e = store.checkpoint().unwrap_err().to_string();
        assert!(e.contains("File too large"), "{e}");
        // Writes go on, kept in the log.
        for _ in 0..10 {
            add(&store, n).unwrap_or_else(|e| panic!("device {n} refused: {e}"));
            n += 1;
        }
        assert_eq!(store.devices().unwrap().len() as u64, n);
    }
    // The disk has room again: the next checkpoint folds the log in.
    store.checkpoint().unwrap();
    assert_eq!(len(&log), 0, "the log was folded into the database");
    add(&store, n).unwrap();
    n += 1;
    drop(store);
    let store = HybridStore::open(&path, opts).unwrap();
    assert_eq!(
        store.devices().unwrap().len() as u64,
        n,
        "every device kept"
    );
    for i in 0..n {
        assert!(store.device_by_mac(mac(i)).unwrap().is_some(), "device {i}");
    }
}
