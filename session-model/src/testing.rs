//! Helpers for tests of the stores and of what writes through them (the
//! `testing` feature): a disk that fills up, a store that fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{
    Device, DeviceId, MacAddr, MemoryStore, SessionData, SessionId, SessionRecord, SessionStore,
    Shelf, StoreError, Voucher,
};

/// While it lives, no file of the process grows past the given size: a write
/// past it fails with `EFBIG`, as one on a full disk fails with `ENOSPC`. The
/// limit is the process's: a test that takes one runs alone in its binary.
pub struct FilesUpTo(libc::rlimit);

impl FilesUpTo {
    /// Files may not grow past `bytes` (0: no write grows a file).
    pub fn bytes(bytes: u64) -> Self {
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

/// A memory store with faults a test turns on: batch saves of sessions that
/// fail (as on a disk that went away), voucher reads that take a while.
#[derive(Debug, Default)]
pub struct FaultyStore {
    inner: MemoryStore,
    /// While set, [`SessionStore::save_sessions`] fails.
    pub fail_saves: AtomicBool,
    /// How long each voucher read takes.
    voucher_reads_take: Duration,
}

impl FaultyStore {
    /// A store whose every voucher read takes `d`.
    pub fn voucher_reads_taking(d: Duration) -> Self {
        Self {
            voucher_reads_take: d,
            ..Self::default()
        }
    }
}

impl SessionStore for FaultyStore {
    fn kind(&self) -> &'static str {
        "faulty"
    }
    fn shelf_from(&self, shelf: Shelf, from: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.shelf_from(shelf, from)
    }
    fn write_shelves(&self, writes: &[crate::ShelfWrite<'_>]) -> Result<(), StoreError> {
        self.inner.write_shelves(writes)
    }
    fn create_device(
        &self,
        mac: MacAddr,
        ip: Option<std::net::IpAddr>,
        hostname: Option<String>,
        created_at: i64,
    ) -> Result<Device, StoreError> {
        self.inner.create_device(mac, ip, hostname, created_at)
    }
    fn update_device(&self, device: &Device) -> Result<(), StoreError> {
        self.inner.update_device(device)
    }
    fn remove_device(&self, id: DeviceId) -> Result<(), StoreError> {
        self.inner.remove_device(id)
    }
    fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        self.inner.device(id)
    }
    fn device_by_mac(&self, mac: MacAddr) -> Result<Option<Device>, StoreError> {
        self.inner.device_by_mac(mac)
    }
    fn devices(&self) -> Result<Vec<Device>, StoreError> {
        self.inner.devices()
    }
    fn create_session(&self, d: DeviceId, data: SessionData) -> Result<SessionRecord, StoreError> {
        self.inner.create_session(d, data)
    }
    fn save_sessions(&self, records: &[SessionRecord]) -> Result<(), StoreError> {
        if self.fail_saves.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                context: "save sessions",
                path: "faulty store".into(),
                source: std::io::Error::other("the disk is gone"),
            });
        }
        self.inner.save_sessions(records)
    }
    fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.session(id)
    }
    fn device_sessions(&self, d: DeviceId) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.device_sessions(d)
    }
    fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.sessions()
    }
    fn remove_sessions(&self, ids: &[SessionId]) -> Result<usize, StoreError> {
        self.inner.remove_sessions(ids)
    }
    fn create_vouchers(&self, v: &[Voucher]) -> Result<(), StoreError> {
        self.inner.create_vouchers(v)
    }
    fn voucher(&self, code: &str) -> Result<Option<Voucher>, StoreError> {
        let v = self.inner.voucher(code);
        std::thread::sleep(self.voucher_reads_take);
        v
    }
    fn vouchers(&self) -> Result<Vec<Voucher>, StoreError> {
        self.inner.vouchers()
    }
    fn save_voucher(&self, v: &Voucher) -> Result<(), StoreError> {
        self.inner.save_voucher(v)
    }
    fn redeem_voucher(
        &self,
        code: &str,
        d: DeviceId,
        mac: MacAddr,
        at: i64,
        data: SessionData,
    ) -> Result<(SessionRecord, Voucher), StoreError> {
        self.inner.redeem_voucher(code, d, mac, at, data)
    }
}
