//! Helpers for tests of the stores and of what writes through them (the
//! `testing` feature): a disk that fills up.

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
