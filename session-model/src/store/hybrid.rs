//! The `hybrid` provider: the RAM working set, an append-only modification log, and a
//! redb file it is checkpointed into lazily.
//!
//! # Write path
//! Every write is validated against RAM, appended to the log as one record (a batch
//! call such as [`SessionStore::save_sessions`] is one record, so it is atomic), then
//! applied to RAM and the touched keys are marked dirty. Reads are served from RAM.
//!
//! # Durability
//! * [`SyncMode::EveryWrite`] (default): the log is `fdatasync`'d before each write call
//!   returns, so an acknowledged write survives a crash or power loss.
//! * [`SyncMode::Manual`]: writes only reach the OS page cache; they survive a crash of
//!   the process (kill -9) but a power loss can drop the writes made since the last
//!   [`SessionStore::sync`], [`SessionStore::checkpoint`] or automatic checkpoint. Never
//!   a torn or partial record: replay stops at the first record whose length or CRC does
//!   not check out and truncates the log there.
//!
//! # Checkpoints
//! A checkpoint writes every dirty device and session in one redb transaction together
//! with the log sequence number (LSN) of the last folded record, then truncates the log.
//! It runs when the log holds [`HybridOptions::checkpoint_records`] records or
//! [`HybridOptions::checkpoint_bytes`] bytes, on [`SessionStore::checkpoint`], and on
//! drop. On open, the redb snapshot is loaded and the log records with an LSN above the
//! stored checkpoint LSN are replayed (a crash between the redb commit and the log
//! truncation therefore replays nothing twice).
//!
//! Log record: `len: u32 LE | crc32(payload): u32 LE | payload`, where the payload is
//! JSON `{"lsn": u64, "muts": [Mutation]}`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::mem_state::{MemState, Mutation};
use super::redb_store::RedbStore;
use super::SessionStore;
use crate::{Device, DeviceId, MacAddr, SessionData, SessionId, SessionRecord, StoreError};

/// When the modification log is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `fdatasync` after every write call (acknowledged = durable).
    #[default]
    EveryWrite,
    /// Only on `sync`, `checkpoint` and automatic checkpoints.
    Manual,
}

/// Tuning of the hybrid provider.
#[derive(Debug, Clone)]
pub struct HybridOptions {
    pub sync: SyncMode,
    /// Checkpoint once the log holds this many records.
    pub checkpoint_records: u64,
    /// Checkpoint once the log holds this many bytes.
    pub checkpoint_bytes: u64,
}

impl Default for HybridOptions {
    fn default() -> Self {
        HybridOptions {
            sync: SyncMode::EveryWrite,
            checkpoint_records: 100_000,
            checkpoint_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct LogRecord<'a> {
    lsn: u64,
    #[serde(borrow)]
    muts: std::borrow::Cow<'a, [Mutation]>,
}

const HEADER: usize = 8;
/// Records larger than this are treated as garbage when replaying.
const MAX_RECORD: usize = 1 << 30;

struct Inner {
    state: MemState,
    log: File,
    log_len: u64,
    log_records: u64,
    lsn: u64,
    dirty_devices: HashSet<DeviceId>,
    dirty_sessions: HashSet<SessionId>,
    unsynced: bool,
}

/// RAM + modification log + lazily checkpointed redb file.
pub struct HybridStore {
    inner: Mutex<Inner>,
    redb: RedbStore,
    log_path: PathBuf,
    opts: HybridOptions,
    skip_final_checkpoint: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for HybridStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridStore")
            .field("db", &self.redb.path())
            .field("log", &self.log_path)
            .field("opts", &self.opts)
            .finish()
    }
}

/// Statistics of the last open, for logging and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub replayed_records: u64,
    pub skipped_records: u64,
    pub truncated_bytes: u64,
}

fn log_path_for(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(".log");
    PathBuf::from(s)
}

impl HybridStore {
    /// Opens the redb file at `path` and the log at `path` + `.log`, replaying the log.
    pub fn open(path: impl AsRef<Path>, opts: HybridOptions) -> Result<Self, StoreError> {
        Self::open_with_stats(path, opts).map(|(s, _)| s)
    }

    /// Like [`HybridStore::open`], also reporting what the replay did.
    pub fn open_with_stats(
        path: impl AsRef<Path>,
        opts: HybridOptions,
    ) -> Result<(Self, ReplayStats), StoreError> {
        let path = path.as_ref();
        let redb = RedbStore::open(path)?;
        let snap = redb.snapshot()?;
        let mut state = MemState::new();
        for d in snap.devices {
            state.apply(&Mutation::PutDevice { device: d });
        }
        for s in snap.sessions {
            state.apply(&Mutation::PutSession { session: s });
        }
        state.next_device_id = state.next_device_id.max(snap.next_device_id);
        state.next_session_id = state.next_session_id.max(snap.next_session_id);

        let log_path = log_path_for(path);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(|e| StoreError::io("open log", &log_path, e))?;
        let mut buf = Vec::new();
        log.read_to_end(&mut buf)
            .map_err(|e| StoreError::io("read log", &log_path, e))?;

        let mut stats = ReplayStats::default();
        let mut dirty_devices = HashSet::new();
        let mut dirty_sessions = HashSet::new();
        let mut lsn = snap.checkpoint_lsn;
        let mut off = 0usize;
        let mut records = 0u64;
        while let Some((rec_lsn, muts, next)) = parse_record(&buf, off) {
            off = next;
            records += 1;
            if rec_lsn <= snap.checkpoint_lsn {
                stats.skipped_records += 1;
                continue;
            }
            for m in &muts {
                mark_dirty(&state, m, &mut dirty_devices, &mut dirty_sessions);
                state.apply(m);
            }
            lsn = lsn.max(rec_lsn);
            stats.replayed_records += 1;
        }
        if off < buf.len() {
            stats.truncated_bytes = (buf.len() - off) as u64;
            tracing::warn!(
                log = %log_path.display(),
                bytes = stats.truncated_bytes,
                "dropping torn tail of the session modification log"
            );
            log.set_len(off as u64)
                .and_then(|_| log.sync_all())
                .map_err(|e| StoreError::io("truncate torn log tail", &log_path, e))?;
        }
        let store = HybridStore {
            inner: Mutex::new(Inner {
                state,
                log,
                log_len: off as u64,
                log_records: records,
                lsn,
                dirty_devices,
                dirty_sessions,
                unsynced: false,
            }),
            redb,
            log_path,
            opts,
            skip_final_checkpoint: std::sync::atomic::AtomicBool::new(false),
        };
        Ok((store, stats))
    }

    /// Closes without the final checkpoint, leaving the log to be replayed on the next
    /// open, exactly as after a crash. Meant for recovery tests and tools.
    pub fn close_without_checkpoint(self) {
        self.skip_final_checkpoint
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The redb file underneath (for consistency checks).
    pub fn redb(&self) -> &RedbStore {
        &self.redb
    }

    /// The modification log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Number of devices and sessions changed since the last checkpoint.
    pub fn dirty_count(&self) -> Result<usize, StoreError> {
        let g = self.lock()?;
        Ok(g.dirty_devices.len() + g.dirty_sessions.len())
    }

    /// Current size of the modification log in bytes.
    pub fn log_len(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.log_len)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Logs then applies `muts` as one atomic record.
    fn commit(&self, g: &mut Inner, muts: &[Mutation]) -> Result<(), StoreError> {
        if muts.is_empty() {
            return Ok(());
        }
        let lsn = g.lsn + 1;
        let payload = serde_json::to_vec(&LogRecord {
            lsn,
            muts: std::borrow::Cow::Borrowed(muts),
        })
        .map_err(|source| StoreError::Codec {
            context: "encode log record",
            source,
        })?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| (*l as usize) < MAX_RECORD)
            .ok_or_else(|| StoreError::Corrupt("log record too large".into()))?;
        let mut rec = Vec::with_capacity(HEADER + payload.len());
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&crc32(&payload).to_le_bytes());
        rec.extend_from_slice(&payload);
        let written = g.log.write_all(&rec).and_then(|_| {
            if self.opts.sync == SyncMode::EveryWrite {
                g.log.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Cut a possibly partial record so the log stays parseable.
            let _ = g.log.set_len(g.log_len);
            return Err(StoreError::io("append to log", &self.log_path, e));
        }
        g.unsynced |= self.opts.sync != SyncMode::EveryWrite;
        g.log_len += rec.len() as u64;
        g.log_records += 1;
        g.lsn = lsn;
        for m in muts {
            let Inner {
                state,
                dirty_devices,
                dirty_sessions,
                ..
            } = g;
            mark_dirty(state, m, dirty_devices, dirty_sessions);
            state.apply(m);
        }
        if g.log_records >= self.opts.checkpoint_records || g.log_len >= self.opts.checkpoint_bytes
        {
            self.checkpoint_locked(g)?;
        }
        Ok(())
    }

    fn checkpoint_locked(&self, g: &mut Inner) -> Result<(), StoreError> {
        if g.dirty_devices.is_empty() && g.dirty_sessions.is_empty() && g.log_len == 0 {
            return Ok(());
        }
        let mut muts = Vec::with_capacity(g.dirty_devices.len() + g.dirty_sessions.len());
        let mut removed_devices = Vec::new();
        // Sorted keys make the redb B-tree inserts sequential.
        let mut dev_ids: Vec<DeviceId> = g.dirty_devices.iter().copied().collect();
        dev_ids.sort_unstable();
        let mut sess_ids: Vec<SessionId> = g.dirty_sessions.iter().copied().collect();
        sess_ids.sort_unstable();
        for id in &dev_ids {
            match g.state.devices.get(id) {
                Some(d) => muts.push(Mutation::PutDevice { device: d.clone() }),
                None => removed_devices.push(Mutation::RemoveDevice { id: *id }),
            }
        }
        for id in &sess_ids {
            match g.state.sessions.get(id) {
                Some(s) => muts.push(Mutation::PutSession { session: s.clone() }),
                None => muts.push(Mutation::RemoveSession { id: *id }),
            }
        }
        muts.extend(removed_devices);
        self.redb.apply_checkpoint(
            &muts,
            g.state.next_device_id,
            g.state.next_session_id,
            g.lsn,
        )?;
        g.dirty_devices.clear();
        g.dirty_sessions.clear();
        g.log
            .set_len(0)
            .and_then(|_| g.log.sync_all())
            .map_err(|e| StoreError::io("truncate log after checkpoint", &self.log_path, e))?;
        g.log_len = 0;
        g.log_records = 0;
        g.unsynced = false;
        Ok(())
    }
}

fn mark_dirty(
    state: &MemState,
    m: &Mutation,
    devices: &mut HashSet<DeviceId>,
    sessions: &mut HashSet<SessionId>,
) {
    match m {
        Mutation::PutDevice { device } => {
            devices.insert(device.id);
        }
        Mutation::RemoveDevice { id } => {
            devices.insert(*id);
            if let Some(ids) = state.by_device.get(id) {
                sessions.extend(ids.iter().copied());
            }
        }
        Mutation::PutSession { session } => {
            sessions.insert(session.id);
        }
        Mutation::RemoveSession { id } => {
            sessions.insert(*id);
        }
    }
}

/// Parses the record at `off`; `None` at the end or at a torn/corrupt record.
fn parse_record(buf: &[u8], off: usize) -> Option<(u64, Vec<Mutation>, usize)> {
    let header = buf.get(off..off.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len >= MAX_RECORD {
        return None;
    }
    let start = off + HEADER;
    let payload = buf.get(start..start.checked_add(len)?)?;
    if crc32(payload) != crc {
        return None;
    }
    let rec: LogRecord<'_> = serde_json::from_slice(payload).ok()?;
    Some((rec.lsn, rec.muts.into_owned(), start + len))
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE 802.3).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

impl Drop for HybridStore {
    fn drop(&mut self) {
        if self
            .skip_final_checkpoint
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            if let Err(e) = self.checkpoint_locked(&mut g) {
                tracing::warn!(error = %e, "checkpoint on close failed; the log will be replayed");
            }
        }
    }
}

impl SessionStore for HybridStore {
    fn kind(&self) -> &'static str {
        "hybrid"
    }

    fn create_device(
        &self,
        mac: MacAddr,
        ip: Option<IpAddr>,
        hostname: Option<String>,
        created_at: i64,
    ) -> Result<Device, StoreError> {
        let mut g = self.lock()?;
        let m = g.state.plan_create_device(mac, ip, hostname, created_at)?;
        let Mutation::PutDevice { device } = &m else {
            return Err(StoreError::Corrupt(
                "create_device planned a non-device write".into(),
            ));
        };
        let device = device.clone();
        self.commit(&mut g, std::slice::from_ref(&m))?;
        Ok(device)
    }

    fn update_device(&self, device: &Device) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let m = g.state.plan_update_device(device)?;
        self.commit(&mut g, &[m])
    }

    fn remove_device(&self, id: DeviceId) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let m = g.state.plan_remove_device(id)?;
        self.commit(&mut g, &[m])
    }

    fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        Ok(self.lock()?.state.devices.get(&id).cloned())
    }

    fn device_by_mac(&self, mac: MacAddr) -> Result<Option<Device>, StoreError> {
        let g = self.lock()?;
        Ok(g.state
            .macs
            .get(&mac)
            .and_then(|id| g.state.devices.get(id))
            .cloned())
    }

    fn devices(&self) -> Result<Vec<Device>, StoreError> {
        Ok(self.lock()?.state.devices.values().cloned().collect())
    }

    fn create_session(
        &self,
        device_id: DeviceId,
        data: SessionData,
    ) -> Result<SessionRecord, StoreError> {
        let mut g = self.lock()?;
        let m = g.state.plan_create_session(device_id, data)?;
        let Mutation::PutSession { session } = &m else {
            return Err(StoreError::Corrupt(
                "create_session planned a non-session write".into(),
            ));
        };
        let session = session.clone();
        self.commit(&mut g, std::slice::from_ref(&m))?;
        Ok(session)
    }

    fn save_sessions(&self, records: &[SessionRecord]) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let ms = g.state.plan_save_sessions(records)?;
        self.commit(&mut g, &ms)
    }

    fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.lock()?.state.sessions.get(&id).cloned())
    }

    fn device_sessions(&self, device_id: DeviceId) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self.lock()?.state.device_sessions(device_id))
    }

    fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self.lock()?.state.all_sessions())
    }

    fn remove_sessions(&self, ids: &[SessionId]) -> Result<usize, StoreError> {
        let mut g = self.lock()?;
        let ms = g.state.plan_remove_sessions(ids);
        self.commit(&mut g, &ms)?;
        Ok(ms.len())
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if g.unsynced {
            g.log
                .sync_data()
                .map_err(|e| StoreError::io("sync log", &self.log_path, e))?;
            g.unsynced = false;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        self.checkpoint_locked(&mut g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn parse_rejects_torn_and_corrupt_records() {
        let payload = serde_json::to_vec(&LogRecord {
            lsn: 7,
            muts: std::borrow::Cow::Owned(vec![Mutation::RemoveSession { id: 3 }]),
        })
        .unwrap();
        let mut rec = (payload.len() as u32).to_le_bytes().to_vec();
        rec.extend_from_slice(&crc32(&payload).to_le_bytes());
        rec.extend_from_slice(&payload);
        let (lsn, muts, next) = parse_record(&rec, 0).unwrap();
        assert_eq!((lsn, next), (7, rec.len()));
        assert_eq!(muts, vec![Mutation::RemoveSession { id: 3 }]);
        assert!(parse_record(&rec[..rec.len() - 1], 0).is_none());
        assert!(parse_record(&rec[..5], 0).is_none());
        let mut bad = rec.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x55;
        assert!(parse_record(&bad, 0).is_none());
    }
}
