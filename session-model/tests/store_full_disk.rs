//! A store whose disk fills up. Alone in its test binary: it limits the size
//! of every file the process writes (`RLIMIT_FSIZE`).

use session_model::testing::FilesUpTo;
use session_model::{HybridOptions, HybridStore, MacAddr, SessionStore, SyncMode};

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
        assert!(
            e.starts_with(&format!("checkpoint into {} failed: ", path.display())),
            "{e}"
        );
        assert!(e.contains("File too large"), "the cause is kept: {e}");
        assert!(
            e.ends_with(
                "free space there, and the next checkpoint folds the log in, without a restart"
            ),
            "the fix is named: {e}"
        );
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
    {
        // Now the log cannot grow either: a write is refused with why, and
        // leaves nothing half-written behind.
        let _full = FilesUpTo::bytes(len(&log));
        let e = add(&store, n).unwrap_err().to_string();
        assert!(
            e.contains("append to log on") && e.contains("File too large"),
            "{e}"
        );
        assert!(
            e.ends_with("; free space on its disk or make it writable"),
            "the fix is named: {e}"
        );
        assert!(store.device_by_mac(mac(n)).unwrap().is_none());
    }
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
