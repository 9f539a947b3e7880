//! A redb database that heals after a failed write. redb refuses every use
//! after a write failed (a full disk, `PreviousIo`) until the database is
//! opened again; [`Reopening`] opens it again at its next use, so a disk that
//! was full heals without a restart once it has room. The session store's
//! file and the RADIUS accounting book both sit in one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{RwLock, RwLockReadGuard};

use redb::Database;

/// A redb database, opened again at its next use after [`Reopening::failed`].
pub struct Reopening {
    db: RwLock<Database>,
    failed: AtomicBool,
    /// The file and its page cache in bytes; `None` in memory, where a
    /// failed write leaves nothing to open again.
    file: Option<(PathBuf, usize)>,
    /// What it is, for the log line of opening it again.
    what: &'static str,
}

impl Reopening {
    /// Opens (or makes) the database at `file` with a page cache of
    /// `cache_bytes`, or one in memory.
    pub fn open(
        file: Option<&Path>,
        cache_bytes: usize,
        what: &'static str,
    ) -> Result<Self, redb::DatabaseError> {
        let db = match file {
            Some(path) => Self::open_file(path, cache_bytes)?,
            None => in_memory()?,
        };
        Ok(Reopening {
            db: RwLock::new(db),
            failed: AtomicBool::new(false),
            file: file.map(|p| (p.to_path_buf(), cache_bytes)),
            what,
        })
    }

    fn open_file(path: &Path, cache_bytes: usize) -> Result<Database, redb::DatabaseError> {
        Database::builder().set_cache_size(cache_bytes).create(path)
    }

    /// A write failed: the next use opens the database again first.
    pub fn failed(&self) {
        self.failed.store(true, Relaxed);
    }

    /// The database, opened again first if a write failed since it was
    /// opened. While it cannot be opened again, every use fails with why.
    pub fn get(&self) -> Result<RwLockReadGuard<'_, Database>, redb::DatabaseError> {
        if self.failed.load(Relaxed) {
            self.reopen()?;
        }
        Ok(self.db.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn reopen(&self) -> Result<(), redb::DatabaseError> {
        let Some((path, cache_bytes)) = &self.file else {
            self.failed.store(false, Relaxed);
            return Ok(());
        };
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.failed.load(Relaxed) {
            return Ok(());
        }
        // redb keeps the file locked until its database is dropped: an empty
        // one in memory stands in meanwhile, never handed out (`failed` stays
        // set until the file is open again).
        drop(std::mem::replace(&mut *db, in_memory()?));
        *db = Self::open_file(path, *cache_bytes)?;
        self.failed.store(false, Relaxed);
        tracing::info!(file = %path.display(), "{} opened again after a failed write", self.what);
        Ok(())
    }
}

fn in_memory() -> Result<Database, redb::DatabaseError> {
    Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())
}
