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
//! Log record: `len: u32 LE | crc32(payload): u32 LE | payload`. The payload is binary:
//! `0x01 | lsn: u64 LE | count: u32 LE | count × mutation`, a mutation being a tag byte
//! and its body: `1` put device (`len: u32 LE` + JSON device), `2` remove device (`id:
//! i64 LE`), `3` put session (`len: u32 LE` + the session row of the redb table, see
//! `codec`), `4` remove session (`id: u64 LE`), `5` put voucher (`len: u32 LE` + JSON
//! voucher). Logs written as JSON
//! (`{"lsn": u64, "muts": [Mutation]}`) are still replayed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::idmap::IdSet;

use super::codec::{decode_session, encode_session_into};
use super::mem_state::{MemState, Mutation};
use super::redb_store::RedbStore;
use super::{SessionStore, UsageUpdate};
use crate::{
    Device, DeviceId, MacAddr, RunState, SessionData, SessionId, SessionRecord, StoreError, Voucher,
};
use std::collections::BTreeSet;

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
/// redb page cache of the hybrid store. Its devices and sessions are read
/// from the file once, at open (RAM serves every read after), and written
/// at checkpoints; the shelves read while it runs (history, plans) are
/// small. A larger cache would mostly hold the pages the open read: a
/// checkpoint of 65,536 dirty sessions takes as long with this one as with
/// 2 MiB (`SESSION_BENCH_DEVICES=65536 cargo bench -p session-model --bench store`).
const REDB_CACHE_BYTES: usize = 512 * 1024;
/// Sessions per log record when deferred usage is flushed: each record is atomic on
/// its own, and small records keep the flush's memory small.
const FLUSH_CHUNK: usize = 1024;
/// Records larger than this are treated as garbage when replaying.
const MAX_RECORD: usize = 1 << 30;

struct Inner {
    state: MemState,
    log: File,
    log_len: u64,
    log_records: u64,
    lsn: u64,
    dirty_devices: IdSet<DeviceId>,
    dirty_sessions: IdSet<SessionId>,
    /// Codes of vouchers written since the last checkpoint.
    dirty_vouchers: BTreeSet<String>,
    /// Sessions changed by [`SessionStore::record_usage_deferred`] in RAM only: the
    /// next [`SessionStore::flush`] logs them, a checkpoint folds them into redb.
    unlogged: IdSet<SessionId>,
    unsynced: bool,
    /// The buffer commits encode their record in, kept between them.
    commit_buf: Vec<u8>,
    /// When a checkpoint last failed (a full disk): the writes that find the
    /// log past its limits try again only [`CHECKPOINT_RETRY`] later.
    checkpoint_failed: Option<std::time::Instant>,
}

/// How long after a failed checkpoint the writes try again on their own.
const CHECKPOINT_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

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
        // RAM holds every row: redb's cache only serves checkpoints.
        let redb = RedbStore::open_with_cache(path, REDB_CACHE_BYTES)?;
        let state = std::cell::RefCell::new(MemState::new());
        let snap = redb.snapshot(
            |device| {
                state
                    .borrow_mut()
                    .apply_owned(Mutation::PutDevice { device })
            },
            |session| {
                state
                    .borrow_mut()
                    .apply_owned(Mutation::PutSession { session })
            },
            |voucher| {
                state
                    .borrow_mut()
                    .apply_owned(Mutation::PutVoucher { voucher })
            },
        )?;
        let mut state = state.into_inner();
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
        let mut dirty_devices = IdSet::default();
        let mut dirty_sessions = IdSet::default();
        let mut dirty_vouchers = BTreeSet::new();
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
                if let Mutation::PutVoucher { voucher } = m {
                    dirty_vouchers.insert(voucher.code.clone());
                }
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
                dirty_vouchers,
                unlogged: IdSet::default(),
                unsynced: false,
                checkpoint_failed: None,
                commit_buf: Vec::new(),
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
        let mut payload = encode_payload(g.lsn + 1, muts)?;
        self.append(g, payload.seal()?, true)?;
        for m in muts {
            let Inner {
                state,
                dirty_devices,
                dirty_sessions,
                ..
            } = g;
            mark_dirty(state, m, dirty_devices, dirty_sessions);
            if let Mutation::PutVoucher { voucher } = m {
                g.dirty_vouchers.insert(voucher.code.clone());
            }
            g.state.apply(m);
        }
        self.checkpoint_if_due(g);
        Ok(())
    }

    /// Checkpoints when the log has grown past its limits. The write that
    /// called it is in the log already: a checkpoint that fails (a full disk)
    /// does not fail it, nothing is lost (the log keeps it, and a later
    /// checkpoint folds it in), and the writes try again only
    /// [`CHECKPOINT_RETRY`] later.
    fn checkpoint_if_due(&self, g: &mut Inner) {
        let due = g.log_records >= self.opts.checkpoint_records
            || g.log_len >= self.opts.checkpoint_bytes;
        if !due
            || g.checkpoint_failed
                .is_some_and(|t| t.elapsed() < CHECKPOINT_RETRY)
        {
            return;
        }
        if let Err(e) = self.checkpoint_locked(g) {
            tracing::warn!(
                error = %e,
                log_bytes = g.log_len,
                "store checkpoint failed; the log keeps every write and the checkpoint is tried again"
            );
        }
    }

    /// Appends one record ([`Payload::seal`], whose LSN is the next) to the
    /// log, synced with `sync` when every write is.
    fn append(&self, g: &mut Inner, rec: &[u8], sync: bool) -> Result<(), StoreError> {
        let every = self.opts.sync == SyncMode::EveryWrite;
        let written = g.log.write_all(rec).and_then(|_| {
            if every && sync {
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
        g.unsynced |= !(every && sync);
        g.log_len += rec.len() as u64;
        g.log_records += 1;
        g.lsn += 1;
        Ok(())
    }

    /// Logs the sessions changed in RAM only, as one record.
    fn flush_locked(&self, g: &mut Inner) -> Result<(), StoreError> {
        if g.unlogged.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<SessionId> = g.unlogged.iter().copied().collect();
        ids.sort_unstable();
        // The records are encoded from the sessions in RAM (which they
        // already are: nothing to apply) and synced once, after the last;
        // into a buffer kept between commits, which then allocate nothing.
        for chunk in ids.chunks(FLUSH_CHUNK) {
            let sessions: Vec<&SessionRecord> = chunk
                .iter()
                .filter_map(|id| g.state.sessions.get(id))
                .collect();
            if !sessions.is_empty() {
                let mut p =
                    Payload::start(std::mem::take(&mut g.commit_buf), g.lsn + 1, sessions.len())?;
                for s in &sessions {
                    p.put_session(s)?;
                }
                let appended = p.seal().and_then(|rec| self.append(g, rec, false));
                g.commit_buf = p.0;
                appended?;
            }
            for id in chunk {
                g.unlogged.remove(id);
                if g.state.sessions.contains_key(id) {
                    g.dirty_sessions.insert(*id);
                }
            }
        }
        forget_all(&mut g.unlogged, ids.len());
        if self.opts.sync == SyncMode::EveryWrite {
            g.log
                .sync_data()
                .map_err(|e| StoreError::io("sync the log", &self.log_path, e))?;
            g.unsynced = false;
        }
        self.checkpoint_if_due(g);
        Ok(())
    }

    fn checkpoint_locked(&self, g: &mut Inner) -> Result<(), StoreError> {
        if g.dirty_devices.is_empty()
            && g.dirty_sessions.is_empty()
            && g.dirty_vouchers.is_empty()
            && g.log_len == 0
        {
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
        muts.extend(
            g.dirty_vouchers
                .iter()
                .filter_map(|code| g.state.vouchers.get(code))
                .map(|v| Mutation::PutVoucher { voucher: v.clone() }),
        );
        if let Err(e) = self.redb.apply_checkpoint(
            &muts,
            g.state.next_device_id,
            g.state.next_session_id,
            g.lsn,
        ) {
            g.checkpoint_failed = Some(std::time::Instant::now());
            return Err(StoreError::Checkpoint {
                path: self.redb.path().to_path_buf(),
                source: Box::new(e),
            });
        }
        g.checkpoint_failed = None;
        // Each set keeps room for what it held, and gives back what a burst
        // before left (see `forget_all`).
        forget_all(&mut g.dirty_devices, dev_ids.len());
        forget_all(&mut g.dirty_sessions, sess_ids.len());
        g.dirty_vouchers.clear();
        let unlogged = g.unlogged.len();
        forget_all(&mut g.unlogged, unlogged);
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

/// Empties a set of ids marked since the last write and keeps room for
/// `held`, what it held: a set that once took every session (a second when every
/// device moved) would otherwise spread the next second's few ids over all its
/// pages, and a poll that wakes from a sleep pays for each page it touches.
fn forget_all<K: Eq + std::hash::Hash>(set: &mut IdSet<K>, held: usize) {
    set.clear();
    set.shrink_to(held);
}

fn mark_dirty(
    state: &MemState,
    m: &Mutation,
    devices: &mut IdSet<DeviceId>,
    sessions: &mut IdSet<SessionId>,
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
        // Tracked by code, in `Inner::dirty_vouchers`.
        Mutation::PutVoucher { .. } => {}
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
    let (lsn, muts) = if payload.first() == Some(&BINARY) {
        decode_payload(payload)?
    } else {
        let rec: LogRecord<'_> = serde_json::from_slice(payload).ok()?;
        (rec.lsn, rec.muts.into_owned())
    };
    Some((lsn, muts, start + len))
}

/// First byte of a binary log payload (a JSON one starts with `{`).
const BINARY: u8 = 1;
const TAG_PUT_DEVICE: u8 = 1;
const TAG_REMOVE_DEVICE: u8 = 2;
const TAG_PUT_SESSION: u8 = 3;
const TAG_REMOVE_SESSION: u8 = 4;
const TAG_PUT_VOUCHER: u8 = 5;

fn encode_payload(lsn: u64, muts: &[Mutation]) -> Result<Payload, StoreError> {
    let mut p = Payload::start(Vec::new(), lsn, muts.len())?;
    for m in muts {
        match m {
            Mutation::PutDevice { device } => p.put_json(TAG_PUT_DEVICE, device)?,
            Mutation::RemoveDevice { id } => p.put_id(TAG_REMOVE_DEVICE, id.to_le_bytes()),
            Mutation::PutSession { session } => p.put_session(session)?,
            Mutation::RemoveSession { id } => p.put_id(TAG_REMOVE_SESSION, id.to_le_bytes()),
            Mutation::PutVoucher { voucher } => p.put_json(TAG_PUT_VOUCHER, voucher)?,
        }
    }
    Ok(p)
}

/// A log record: room for its header, then its payload: the LSN and count,
/// then each mutation (a tag, then an id, or a length and a body).
struct Payload(Vec<u8>);

impl Payload {
    /// A record of `count` mutations in `buf` (emptied first: a buffer kept
    /// between records keeps its room).
    fn start(mut buf: Vec<u8>, lsn: u64, count: usize) -> Result<Self, StoreError> {
        let count = u32::try_from(count)
            .map_err(|_| StoreError::Corrupt("too many mutations for one log record".into()))?;
        buf.clear();
        buf.reserve(HEADER + 16 + count as usize * 128);
        buf.extend_from_slice(&[0; HEADER]);
        buf.push(BINARY);
        buf.extend_from_slice(&lsn.to_le_bytes());
        buf.extend_from_slice(&count.to_le_bytes());
        Ok(Self(buf))
    }

    /// The payload, as [`parse_record`] reads it after the header.
    #[cfg(test)]
    fn payload(&self) -> &[u8] {
        &self.0[HEADER..]
    }

    /// The whole record, its header (the payload's length and CRC) written.
    fn seal(&mut self) -> Result<&[u8], StoreError> {
        let payload = &self.0[HEADER..];
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| (*l as usize) < MAX_RECORD)
            .ok_or_else(|| StoreError::Corrupt("log record too large".into()))?;
        let crc = crc32(payload);
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        self.0[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        Ok(&self.0)
    }

    fn put_id(&mut self, tag: u8, id: [u8; 8]) {
        self.0.push(tag);
        self.0.extend_from_slice(&id);
    }

    /// A body of `tag`, written by `write` after its length.
    fn put_body(
        &mut self,
        tag: u8,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.0.push(tag);
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        write(&mut self.0)?;
        let len = u32::try_from(self.0.len() - at - 4)
            .map_err(|_| StoreError::Corrupt("log entry too large".into()))?;
        self.0[at..at + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    fn put_json(&mut self, tag: u8, v: &impl serde::Serialize) -> Result<(), StoreError> {
        self.put_body(tag, |b| {
            serde_json::to_writer(b, v).map_err(|source| StoreError::Codec {
                context: "encode log record",
                source,
            })
        })
    }

    fn put_session(&mut self, s: &SessionRecord) -> Result<(), StoreError> {
        self.put_body(TAG_PUT_SESSION, |b| encode_session_into(b, s))
    }
}

/// `None` for anything malformed (replay stops there, as at a torn record).
fn decode_payload(p: &[u8]) -> Option<(u64, Vec<Mutation>)> {
    let mut off = 1usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = p.get(off..off.checked_add(n)?)?;
        off += n;
        Some(s)
    };
    let lsn = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut muts = Vec::with_capacity(count.min(p.len()));
    for _ in 0..count {
        let tag = take(1)?[0];
        let m = match tag {
            TAG_PUT_DEVICE | TAG_PUT_SESSION | TAG_PUT_VOUCHER => {
                let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
                let body = take(len)?;
                match tag {
                    TAG_PUT_DEVICE => Mutation::PutDevice {
                        device: serde_json::from_slice(body).ok()?,
                    },
                    TAG_PUT_SESSION => Mutation::PutSession {
                        session: decode_session(body).ok()?,
                    },
                    _ => Mutation::PutVoucher {
                        voucher: serde_json::from_slice(body).ok()?,
                    },
                }
            }
            TAG_REMOVE_DEVICE => Mutation::RemoveDevice {
                id: i64::from_le_bytes(take(8)?.try_into().ok()?),
            },
            TAG_REMOVE_SESSION => Mutation::RemoveSession {
                id: u64::from_le_bytes(take(8)?.try_into().ok()?),
            },
            _ => return None,
        };
        muts.push(m);
    }
    (off == p.len()).then_some((lsn, muts))
}

/// CRC-32 (IEEE 802.3), as logs written before have it.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
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
    fn shelf_from(
        &self,
        shelf: super::Shelf,
        from: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.redb.shelf_from(shelf, from)
    }

    /// Straight to the redb file: shelves are written at most a few times a
    /// minute and not logged.
    fn write_shelves(&self, writes: &[super::ShelfWrite<'_>]) -> Result<(), StoreError> {
        self.redb.write_shelves(writes)
    }

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

    fn device_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.state.devices.len() as u64)
    }

    fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let mut v: Vec<Device> = self.lock()?.state.devices.values().cloned().collect();
        v.sort_unstable_by_key(|d| d.id);
        Ok(v)
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

    fn create_vouchers(&self, vouchers: &[Voucher]) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let ms = g.state.plan_create_vouchers(vouchers)?;
        self.commit(&mut g, &ms)
    }

    fn voucher(&self, code: &str) -> Result<Option<Voucher>, StoreError> {
        Ok(self.lock()?.state.vouchers.get(code).cloned())
    }

    fn vouchers(&self) -> Result<Vec<Voucher>, StoreError> {
        Ok(self.lock()?.state.vouchers.values().cloned().collect())
    }

    fn save_voucher(&self, voucher: &Voucher) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let m = g.state.plan_save_voucher(voucher)?;
        self.commit(&mut g, std::slice::from_ref(&m))
    }

    fn redeem_voucher(
        &self,
        code: &str,
        device_id: DeviceId,
        mac: MacAddr,
        at: i64,
        data: SessionData,
    ) -> Result<(SessionRecord, Voucher), StoreError> {
        let mut g = self.lock()?;
        let ms = g
            .state
            .plan_redeem_voucher(code, device_id, mac, at, data)?;
        // One log record: the session and the redemption are replayed together or not at all.
        self.commit(&mut g, &ms)?;
        let [session, voucher] = ms;
        super::mem_state::redeemed(session, voucher)
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

    fn for_each_session(&self, f: &mut dyn FnMut(&SessionRecord)) -> Result<(), StoreError> {
        self.lock()?.state.sessions.values().for_each(f);
        Ok(())
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

    fn record_usage_deferred(&self, updates: &[UsageUpdate]) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if let Some(u) = updates
            .iter()
            .find(|u| !g.state.sessions.contains_key(&u.id))
        {
            return Err(StoreError::UnknownSession(u.id));
        }
        let Inner {
            state,
            dirty_sessions,
            unlogged,
            ..
        } = &mut *g;
        for u in updates {
            if let Some(r) = state.sessions.get_mut(&u.id) {
                // Time alone is charged again from the stored clock reading after a
                // crash, whatever the log holds: it waits for the checkpoint.
                let meter = |run: Option<RunState>| run.map(|x| x.meter);
                if r.data.data_cons_bytes != u.data_cons_bytes || meter(r.run) != meter(u.run) {
                    unlogged.insert(u.id);
                }
                u.apply(r);
                dirty_sessions.insert(u.id);
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        self.flush_locked(&mut g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sets_of_changed_sessions_give_back_the_room_of_a_burst_and_keep_what_a_second_needs() {
        use crate::{MacAddr, SessionType, UsageUpdate};
        let dir = tempfile::tempdir().unwrap();
        let s = HybridStore::open(
            dir.path().join("s.redb"),
            HybridOptions {
                sync: SyncMode::Manual,
                checkpoint_records: u64::MAX,
                checkpoint_bytes: u64::MAX,
            },
        )
        .unwrap();
        let data = crate::model::tests::data(SessionType::Data, 0, 1_000_000);
        let ids: Vec<SessionId> = (0..4_000u32)
            .map(|i| {
                let [a, b, c, d] = i.to_be_bytes();
                let dev = s
                    .create_device(MacAddr::new([2, 0, a, b, c, d]), None, None, 1)
                    .unwrap();
                s.create_session(dev.id, data.clone()).unwrap().id
            })
            .collect();
        s.checkpoint().unwrap();
        let charge = |ids: &[SessionId], bytes: u64| {
            let u: Vec<UsageUpdate> = ids
                .iter()
                .map(|&id| UsageUpdate {
                    id,
                    time_cons: 0,
                    data_cons_bytes: bytes,
                    run: None,
                })
                .collect();
            s.record_usage_deferred(&u).unwrap();
            s.flush().unwrap();
        };
        let room = |f: fn(&Inner) -> usize| f(&s.lock().unwrap());
        // A second in which every session moved: the sets keep room for all.
        charge(&ids, 10);
        assert!(room(|g| g.unlogged.capacity()) >= ids.len());
        assert!(room(|g| g.dirty_sessions.capacity()) >= ids.len());
        // Then seconds in which ten moved: the log's set shrinks to them at
        // the next flush, the checkpoint's at the next checkpoint.
        charge(&ids[..10], 20);
        assert!(
            room(|g| g.unlogged.capacity()) < 100,
            "unlogged kept a burst's room"
        );
        s.checkpoint().unwrap();
        charge(&ids[..10], 30);
        s.checkpoint().unwrap();
        assert!(
            room(|g| g.dirty_sessions.capacity()) < 100,
            "dirty kept a burst's room"
        );
        // Nothing was lost on the way.
        assert_eq!(s.session(ids[0]).unwrap().unwrap().data.data_cons_bytes, 30);
        assert_eq!(
            s.session(ids[3_999]).unwrap().unwrap().data.data_cons_bytes,
            10
        );
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut rec = (payload.len() as u32).to_le_bytes().to_vec();
        rec.extend_from_slice(&crc32(payload).to_le_bytes());
        rec.extend_from_slice(payload);
        rec
    }

    #[test]
    fn binary_payload_round_trips_every_mutation() {
        let device = Device {
            id: 4,
            mac: MacAddr::new([2, 0, 0, 0, 0, 9]),
            ip: Some("10.0.0.9".parse().unwrap()),
            hostname: Some("phone".into()),
            created_at: 11,
        };
        let session = SessionRecord {
            id: 9,
            device_id: 4,
            data: SessionData {
                provider: "local".into(),
                session_type: crate::SessionType::TimeOrData,
                time_secs: 60,
                data_bytes: 1_000,
                time_cons: 3,
                data_cons_bytes: 77,
                started_at: Some(100),
                exp_days: Some(2),
                down_mbits: 5,
                up_mbits: 2,
                use_global_speed: false,
                created_at: 99,
            },
            ended_at: None,
            run: Some(RunState {
                charged_to_ms: 123_456,
                boot: 3,
                meter: Some(crate::MeterMark {
                    epoch: 8,
                    bytes: 1 << 40,
                }),
            }),
        };
        let muts = vec![
            Mutation::PutDevice { device },
            Mutation::PutSession { session },
            Mutation::RemoveSession { id: 3 },
            Mutation::RemoveDevice { id: -2 },
        ];
        let rec = encode_payload(42, &muts).unwrap().seal().unwrap().to_vec();
        let (lsn, back, next) = parse_record(&rec, 0).unwrap();
        assert_eq!((lsn, next), (42, rec.len()));
        assert_eq!(back, muts);
        // A count that promises more than the payload holds is refused, not read short.
        let mut p = encode_payload(42, &muts).unwrap().payload().to_vec();
        p[9] += 1;
        assert!(parse_record(&record(&p), 0).is_none());
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
