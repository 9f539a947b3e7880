//! The accounting book: the RADIUS sessions that are open and the accounting
//! requests not yet answered, in one redb file beside the session store (in
//! memory with the memory store). A Start, a Stop and Accounting-On/Off are
//! written before they are sent and removed once a server answered them, so
//! an outage or a crash loses none and repeats one at most. Interim updates
//! wait in memory, in the same order: each carries the session's totals so
//! far, so one a crash loses is made good by the next or by the Stop (RFC
//! 2866, 5.3), and a gateway with many sessions writes nothing to its disk
//! for an update or its answer. An open session's row is written again by an
//! update only when its counters moved (the row keeps the last reading, which
//! a Stop after a reboot reports); when the next update is due is kept in
//! memory ([`Book::queue_interims`], [`Book::catch_up`]).

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex, RwLockReadGuard,
    },
};

use radius::core::rfc2866;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use session_model::{store::reopen::Reopening, DeviceId, SessionId};

use crate::index::{Entry, Index};
use crate::row;

const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("acct_queue");
/// The open sessions' rows by phase and session id ([`phase`]): the rows of
/// the sessions whose interim updates fall in the same second of their
/// interval are side by side, and a second's round reads a few pages for
/// them, not one page each.
const OPEN: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("acct_sessions_by_phase");
/// The open sessions' rows by session id alone, as books kept them before:
/// moved to [`OPEN`] as the book opens ([`Book::prepare`]).
const OPEN_BY_ID: TableDefinition<u64, &[u8]> = TableDefinition::new("acct_sessions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
/// What [`Book::prepare`] does when it moves an earlier book's rows.
const REKEY: &str = "move the open sessions' rows under their phases";
/// The book's page cache. Each second's interim updates read the rows of
/// one phase, side by side ([`OPEN`]), in one walk that reads each page once;
/// redb's cache (its bytes shared by 131 stripes, a full one letting go of a
/// page of the stripe it adds to) keeps few of them at any size the gateway
/// can spare. The rows' compact form ([`crate::row`]) fits the branch pages
/// and the recent rows in 1 MiB.
const BOOK_CACHE_BYTES: usize = 1 << 20;

/// A store error, with the book's file and what was being done.
#[derive(Debug, thiserror::Error)]
#[error(
    "RADIUS accounting book {}: {what}: {source}{}",
    file_name(.file.as_deref()),
    fix(.file.is_some(), .what)
)]
pub struct BookError {
    /// The book's file; `None` for a book in memory.
    file: Option<PathBuf>,
    what: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn file_name(file: Option<&Path>) -> String {
    file.map_or_else(|| "(in memory)".into(), |p| p.display().to_string())
}

/// What an operator can do about an error of a book's file.
fn fix(in_file: bool, what: &str) -> &'static str {
    match (in_file, what) {
        (true, "open") => {
            "; if another agent holds the file, stop it; if the file is damaged, move it \
             aside and start again (the new book starts empty: what the old one held \
             open or queued is not sent)"
        }
        (true, "write") => {
            "; if its disk is full or read-only, free space or make it writable: the book \
             is opened again at its next use (what a round of accounting could not write \
             stays due, and a later round writes it; a login whose Start could not be \
             written was refused)"
        }
        (true, REKEY) => {
            "; the book is as it was (the move is one transaction): if its disk is full or \
             read-only, free space or make it writable and start again"
        }
        (true, "open again") => {
            "; if its disk is full or read-only, free space or make it writable: the book \
             is opened again at its next use, and until then accounting waits and logins \
             are refused"
        }
        _ => "",
    }
}

/// Makes a [`BookError`] of the book at `file`, doing `what`.
fn fail<'a, E: std::error::Error + Send + Sync + 'static>(
    file: Option<&'a Path>,
    what: &'static str,
) -> impl FnOnce(E) -> BookError + 'a {
    move |e| BookError {
        file: file.map(Path::to_path_buf),
        what,
        source: Box::new(e),
    }
}

/// Acct-Status-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Start,
    Stop,
    InterimUpdate,
    AccountingOn,
    AccountingOff,
}

impl Status {
    pub fn code(self) -> u32 {
        match self {
            Status::Start => rfc2866::ACCT_STATUS_TYPE_START,
            Status::Stop => rfc2866::ACCT_STATUS_TYPE_STOP,
            Status::InterimUpdate => rfc2866::ACCT_STATUS_TYPE_INTERIM_UPDATE,
            Status::AccountingOn => rfc2866::ACCT_STATUS_TYPE_ACCOUNTING_ON,
            Status::AccountingOff => rfc2866::ACCT_STATUS_TYPE_ACCOUNTING_OFF,
        }
    }
}

/// Acct-Terminate-Cause (RFC 2866 5.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    UserRequest,
    LostCarrier,
    IdleTimeout,
    SessionTimeout,
    AdminReset,
    NasError,
    NasRequest,
    NasReboot,
}

impl Cause {
    pub fn code(self) -> u32 {
        match self {
            Cause::UserRequest => rfc2866::ACCT_TERMINATE_CAUSE_USER_REQUEST,
            Cause::LostCarrier => rfc2866::ACCT_TERMINATE_CAUSE_LOST_CARRIER,
            Cause::IdleTimeout => rfc2866::ACCT_TERMINATE_CAUSE_IDLE_TIMEOUT,
            Cause::SessionTimeout => rfc2866::ACCT_TERMINATE_CAUSE_SESSION_TIMEOUT,
            Cause::AdminReset => rfc2866::ACCT_TERMINATE_CAUSE_ADMIN_RESET,
            Cause::NasError => rfc2866::ACCT_TERMINATE_CAUSE_NAS_ERROR,
            Cause::NasRequest => rfc2866::ACCT_TERMINATE_CAUSE_NAS_REQUEST,
            Cause::NasReboot => rfc2866::ACCT_TERMINATE_CAUSE_NAS_REBOOT,
        }
    }
}

/// A device's meter in both directions, as the datapath counts it (bytes at
/// the IP layer), in one life of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    pub epoch: u64,
    pub up: u64,
    pub down: u64,
}

impl Reading {
    /// A device's reading from the datapath's epoch and its counters up and
    /// down (zero when it has no slot).
    pub fn of(epoch: Option<u64>, split: Option<(u64, u64)>) -> Self {
        let (up, down) = split.unwrap_or((0, 0));
        Reading {
            epoch: epoch.unwrap_or(0),
            up,
            down,
        }
    }
}

/// An open RADIUS session: who it is for, what the server gave it, and where
/// its meter started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSession {
    pub session_id: SessionId,
    pub device_id: DeviceId,
    pub acct_session_id: String,
    pub user_name: String,
    /// Calling-Station-Id, as sent in the Access-Request.
    pub calling: String,
    pub framed_ip: Option<std::net::Ipv4Addr>,
    /// Class attributes of the Access-Accept, echoed in every request.
    #[serde(default)]
    pub class: Vec<Vec<u8>>,
    /// State of the Access-Accept, echoed likewise.
    #[serde(default)]
    pub state: Option<Vec<u8>>,
    /// Unix seconds of the start.
    pub started_at: i64,
    /// Seconds between interim updates (0: none).
    pub interim_secs: u64,
    /// Unix seconds of the next interim update.
    pub next_interim: i64,
    /// Bytes of earlier lives of the counters (a reboot starts them again).
    pub base_up: u64,
    pub base_down: u64,
    /// Where this session's share of the current counters starts.
    pub mark: Reading,
    /// The latest reading.
    pub last: Reading,
}

impl OpenSession {
    /// Takes a reading: bytes up (Acct-Input) and down (Acct-Output) since the start.
    pub fn read(&mut self, r: Reading) -> (u64, u64) {
        if r.epoch != self.mark.epoch {
            // The counters started again: what the old ones had is kept.
            self.base_up += self.last.up.saturating_sub(self.mark.up);
            self.base_down += self.last.down.saturating_sub(self.mark.down);
            self.mark = Reading {
                epoch: r.epoch,
                up: 0,
                down: 0,
            };
        }
        self.last = r;
        self.totals()
    }

    /// Bytes up and down as of the latest reading.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.base_up + self.last.up.saturating_sub(self.mark.up),
            self.base_down + self.last.down.saturating_sub(self.mark.down),
        )
    }
}

/// One accounting request as it will be sent (its Acct-Delay-Time is added at
/// each send).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub status: Status,
    /// Unix seconds of the event it reports.
    pub at: i64,
    /// The session's part (none for Accounting-On/Off).
    pub session: Option<SessionPart>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPart {
    pub acct_session_id: String,
    pub user_name: String,
    pub calling: String,
    pub framed_ip: Option<std::net::Ipv4Addr>,
    pub class: Vec<Vec<u8>>,
    #[serde(default)]
    pub state: Option<Vec<u8>>,
    pub input_octets: u64,
    pub output_octets: u64,
    pub session_time: u64,
    pub cause: Option<Cause>,
}

impl SessionPart {
    pub fn of(s: &OpenSession, at: i64, cause: Option<Cause>) -> Self {
        let (up, down) = s.totals();
        Self {
            acct_session_id: s.acct_session_id.clone(),
            user_name: s.user_name.clone(),
            calling: s.calling.clone(),
            framed_ip: s.framed_ip,
            class: s.class.clone(),
            state: s.state.clone(),
            input_octets: up,
            output_octets: down,
            session_time: (at - s.started_at).max(0) as u64,
            cause,
        }
    }
}

/// The book.
pub struct Book {
    /// The database, opened again at its next use after a write failed (a
    /// full disk): a disk that was full heals without a restart once it has
    /// room.
    db: Reopening,
    /// The file, for errors; `None` in memory.
    file: Option<PathBuf>,
    limit: u64,
    /// The open sessions' ids and when each is next due, in memory: the
    /// once-a-second bookkeeping reads from the file only the sessions it acts on.
    index: Mutex<Index>,
    /// Held by a write of open sessions' rows from before its transaction
    /// until the index has their phases: the next such write's `put` reads
    /// them from the index. The index's own lock is not held over the
    /// commit's sync to the disk, so its readers do not wait for it.
    writing: Mutex<()>,
    /// Interim updates waiting for an answer, with their numbers: in memory
    /// only (see the module's notes).
    pending: Mutex<VecDeque<(u64, Request)>>,
    /// The next request's number. The file keeps the next after its last
    /// request's, so numbers only grow across a restart too.
    next_seq: AtomicU64,
}

/// Where in its interim interval session `s`'s updates fall: its next
/// update's time modulo the interval (0 without updates). It stays while the
/// session's updates move on by whole intervals, so its row keeps its key.
fn phase(s: &OpenSession) -> u32 {
    match i64::try_from(s.interim_secs) {
        // Truncated past 2^32 s: any phase finds the row, the index keeps it.
        Ok(interval) if interval > 0 => s.next_interim.rem_euclid(interval) as u32,
        _ => 0,
    }
}

/// Session `s` open in `index` with its device and next interim update, its
/// row under `phase`.
fn put(index: &mut Index, s: &OpenSession, phase: u32) {
    index.insert(Entry::new(
        s.session_id,
        s.device_id,
        phase,
        s.interim_secs,
        s.next_interim,
    ));
}

/// Session `s` moved on in `index` without its row written: its row stays
/// under the phase it is under.
fn moved_on(index: &mut Index, s: &OpenSession) {
    let p = index.phase(s.session_id).unwrap_or_else(|| phase(s));
    put(index, s, p);
}

/// `s` with its next interim update as `index` holds it: the row's may lag
/// (see [`Book::queue_interims`]).
fn current(index: &Index, mut s: OpenSession) -> OpenSession {
    if let Some(at) = index.next_interim(s.session_id) {
        s.next_interim = at;
    }
    s
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Book").field("limit", &self.limit).finish()
    }
}

/// What [`Book::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Yes,
    /// An interim update not kept: the queue is at its limit.
    Full,
}

impl Book {
    /// Makes a [`BookError`] of this book, doing `what`.
    fn err<E: std::error::Error + Send + Sync + 'static>(
        &self,
        what: &'static str,
    ) -> impl FnOnce(E) -> BookError + '_ {
        move |e| {
            if what == "write" {
                self.db.failed();
            }
            fail(self.file.as_deref(), what)(e)
        }
    }

    /// The database, opened again first if a write failed since it was
    /// opened ([`Reopening`]). While it cannot be opened again, every use
    /// fails with the reason.
    fn db(&self) -> Result<RwLockReadGuard<'_, Database>, BookError> {
        self.db
            .get()
            .map_err(fail(self.file.as_deref(), "open again"))
    }

    /// Opens (or makes) the book at `path`, or one in memory.
    pub fn open(path: Option<&Path>, limit: u64) -> Result<Self, BookError> {
        // redb caches up to 1 GiB of pages by default: the book is read and
        // written a few sessions at a time, and the OS caches the file.
        let db = Reopening::open(path, BOOK_CACHE_BYTES, "RADIUS accounting book")
            .map_err(fail(path, "open"))?;
        let next_seq = Self::prepare(&*db.get().map_err(fail(path, "open"))?, path)?;
        let book = Self {
            db,
            file: path.map(Path::to_path_buf),
            limit,
            index: Mutex::default(),
            writing: Mutex::default(),
            pending: Mutex::default(),
            next_seq: AtomicU64::new(next_seq),
        };
        *book.index.lock().unwrap() = book.read_index()?;
        Ok(book)
    }

    /// Makes the book's tables in `db` if it has none; returns the next
    /// request's number.
    fn prepare(db: &Database, path: Option<&Path>) -> Result<u64, BookError> {
        let w = db.begin_write().map_err(fail(path, "open"))?;
        w.open_table(QUEUE).map_err(fail(path, "open"))?;
        w.open_table(OPEN).map_err(fail(path, "open"))?;
        w.open_table(META).map_err(fail(path, "open"))?;
        Self::rekey(&w, path)?;
        w.commit().map_err(fail(path, "open"))?;
        let next_seq = {
            let r = db.begin_read().map_err(fail(path, "open"))?;
            let meta = r.open_table(META).map_err(fail(path, "open"))?;
            let v = meta.get(NEXT_SEQ).map_err(fail(path, "open"))?;
            v.map_or(1, |v| v.value())
        };
        Ok(next_seq)
    }

    /// The rows of a book that keyed them by session id alone
    /// ([`OPEN_BY_ID`]) moved under their phases, as they are (a row of JSON
    /// stays JSON until written again), in the transaction that opens the
    /// book: all or none. A row that cannot be read goes under phase 0.
    fn rekey(w: &redb::WriteTransaction, path: Option<&Path>) -> Result<(), BookError> {
        if !w
            .list_tables()
            .map_err(fail(path, REKEY))?
            .any(|t| t.name() == OPEN_BY_ID.name())
        {
            return Ok(());
        }
        {
            let old = w.open_table(OPEN_BY_ID).map_err(fail(path, REKEY))?;
            let mut new = w.open_table(OPEN).map_err(fail(path, REKEY))?;
            for row in old.iter().map_err(fail(path, REKEY))? {
                let (k, v) = row.map_err(fail(path, REKEY))?;
                let p = row::decode(v.value()).map_or(0, |s| phase(&s));
                new.insert((p, k.value()), v.value())
                    .map_err(fail(path, REKEY))?;
            }
        }
        w.delete_table(OPEN_BY_ID).map_err(fail(path, REKEY))?;
        Ok(())
    }

    /// The index of the open sessions, read from the file.
    fn read_index(&self) -> Result<Index, BookError> {
        let db = self.db()?;
        let r = db.begin_read().map_err(self.err("read"))?;
        let t = r.open_table(OPEN).map_err(self.err("read"))?;
        // Room for the rows the table says it holds, within reason: a damaged
        // length must not reserve the machine's memory.
        let rows = t.len().map_err(self.err("read"))?.min(1 << 20);
        let mut index = Index::with_capacity(usize::try_from(rows).unwrap_or(0));
        for row in t.iter().map_err(self.err("read"))? {
            let (k, v) = row.map_err(self.err("read"))?;
            let (p, id) = k.value();
            // Unreadable ones are left out, as `open_sessions` leaves them:
            // no update or Stop is sent for them.
            match row::decode(v.value()) {
                Ok(s) => index.load(Entry::new(
                    id,
                    s.device_id,
                    p,
                    s.interim_secs,
                    s.next_interim,
                )),
                Err(e) => tracing::warn!(
                    session = id,
                    "RADIUS accounting book {}: an open session cannot be read ({e}), left out: \
                     no update or Stop is sent for it (a book written by a newer agent?)",
                    file_name(self.file.as_deref())
                ),
            }
        }
        index.settle();
        Ok(index)
    }

    /// The ids of the open sessions.
    pub fn open_ids(&self) -> Vec<SessionId> {
        let index = self.index.lock().unwrap();
        index.sessions().map(|(s, _)| s).collect()
    }

    /// The open sessions' ids, each with its device.
    pub fn open_devices(&self) -> Vec<(SessionId, DeviceId)> {
        self.index.lock().unwrap().sessions().collect()
    }

    /// How many sessions are open.
    pub fn open_count(&self) -> usize {
        self.index.lock().unwrap().len()
    }

    /// Whether session `id` is open.
    pub fn is_open(&self, id: SessionId) -> bool {
        self.index.lock().unwrap().contains(id)
    }

    /// The open sessions whose interim update is due at `now`, soonest first.
    pub fn due(&self, now: i64) -> Vec<SessionId> {
        self.index.lock().unwrap().due(now)
    }

    /// The open sessions.
    pub fn open_sessions(&self) -> Result<Vec<OpenSession>, BookError> {
        let db = self.db()?;
        let r = db.begin_read().map_err(self.err("read"))?;
        let t = r.open_table(OPEN).map_err(self.err("read"))?;
        let mut out = Vec::new();
        let index = self.index.lock().unwrap();
        for row in t.iter().map_err(self.err("read"))? {
            let (_, v) = row.map_err(self.err("read"))?;
            match row::decode(v.value()) {
                Ok(s) => out.push(current(&index, s)),
                Err(e) => tracing::warn!(
                    "RADIUS accounting book: an open session cannot be read, skipped: {e}"
                ),
            }
        }
        // By id, as the sessions were opened.
        out.sort_unstable_by_key(|s| s.session_id);
        Ok(out)
    }

    /// The open sessions of `ids` (those still open), read in one
    /// transaction, in the order of their rows.
    pub fn open_sessions_of(&self, ids: &[SessionId]) -> Result<Vec<OpenSession>, BookError> {
        let mut keys: Vec<(u32, SessionId)> = {
            let index = self.index.lock().unwrap();
            ids.iter()
                .filter_map(|&id| Some((index.phase(id)?, id)))
                .collect()
        };
        // In the table's order: the due ones' rows side by side, each page
        // read once.
        keys.sort_unstable();
        keys.dedup();
        let db = self.db()?;
        let r = db.begin_read().map_err(self.err("read"))?;
        let t = r.open_table(OPEN).map_err(self.err("read"))?;
        let mut out = Vec::with_capacity(keys.len());
        // The rows of each phase in one walk of its range: a walk reads each
        // page once, where a look-up of each row reads its page again (the
        // page cache is small, and a page it just read may be the one it
        // lets go). A walk that passes more than `SKIP` rows not asked for
        // in a row (a phase shared by sessions due at other times, or every
        // session's with updates off) goes on from the next row asked for.
        const SKIP: usize = 16;
        for group in keys.chunk_by(|a, b| a.0 == b.0) {
            let mut rest = group;
            while let (Some(&first), Some(&last)) = (rest.first(), rest.last()) {
                // How many of `rest` the walk has passed.
                let mut passed = rest.len();
                let mut skipped = 0;
                for row in t.range(first..=last).map_err(self.err("read"))? {
                    let (k, v) = row.map_err(self.err("read"))?;
                    let id = k.value().1;
                    // Those asked for and not in the book are passed by.
                    let i = rest.partition_point(|&(_, w)| w < id);
                    if rest.get(i).is_some_and(|&(_, w)| w == id) {
                        skipped = 0;
                        if let Ok(s) = row::decode(v.value()) {
                            out.push(s);
                        }
                    } else {
                        skipped += 1;
                        if skipped > SKIP {
                            passed = i;
                            break;
                        }
                    }
                }
                rest = &rest[passed..];
            }
        }
        let index = self.index.lock().unwrap();
        Ok(out.into_iter().map(|s| current(&index, s)).collect())
    }

    pub fn open_session(&self, id: SessionId) -> Result<Option<OpenSession>, BookError> {
        Ok(self.open_sessions_of(&[id])?.pop())
    }

    /// Interim updates of sessions whose counters did not move since their
    /// row was written: each request waits in memory and the session's next
    /// update is set in the index, but the rows are not written again, so a
    /// round of idle sessions writes nothing to the disk. A row's
    /// `next_interim` then lags; the book's readers get the index's, and
    /// [`Book::catch_up`] sets it at start. Returns how many were not kept
    /// (the queue was full).
    pub fn queue_interims(&self, updates: Vec<(OpenSession, Request)>) -> Result<u64, BookError> {
        if updates.is_empty() {
            return Ok(0);
        }
        let written = {
            let db = self.db()?;
            let r = db.begin_read().map_err(self.err("read"))?;
            let q = r.open_table(QUEUE).map_err(self.err("read"))?;
            q.len().map_err(self.err("read"))?
        };
        let mut dropped = 0;
        let mut pending = self.pending.lock().unwrap();
        let mut index = self.index.lock().unwrap();
        for (s, req) in updates {
            if written + pending.len() as u64 >= self.limit {
                dropped += 1;
            } else {
                pending.push_back((self.next_seq.fetch_add(1, Relaxed), req));
            }
            moved_on(&mut index, &s);
        }
        Ok(dropped)
    }

    /// At start: open sessions whose interim update came due while the agent
    /// was away (or whose row lags, see [`Book::queue_interims`]) are next
    /// due at their first turn after `now`, so a start sends no burst of
    /// them; the next update carries the totals.
    pub fn catch_up(&self, now: i64) -> Result<(), BookError> {
        let late = self.due(now);
        for s in self.open_sessions_of(&late)? {
            let interim = i64::try_from(s.interim_secs).unwrap_or(i64::MAX);
            if interim > 0 {
                // Saturating: a damaged row's times stay in range.
                let turns = now.saturating_sub(s.next_interim).div_euclid(interim) + 1;
                let next = s.next_interim.saturating_add(turns.saturating_mul(interim));
                let mut index = self.index.lock().unwrap();
                moved_on(
                    &mut index,
                    &OpenSession {
                        next_interim: next,
                        ..s
                    },
                );
            }
        }
        // The late ones' times in order again, and no room kept for them.
        self.index.lock().unwrap().settle();
        Ok(())
    }

    /// In one transaction: `session` written (or, with `close`, removed) and
    /// `request` queued. Start and Stop are always queued; an interim update
    /// is not when the queue holds `limit` requests.
    pub fn record(
        &self,
        session: Option<&OpenSession>,
        close: Option<SessionId>,
        request: Option<&Request>,
    ) -> Result<Queued, BookError> {
        let _writing = self.writing.lock().unwrap();
        let db = self.db()?;
        let w = db.begin_write().map_err(self.err("write"))?;
        let mut interims = Vec::new();
        let mut written = HashMap::new();
        let queued = self.put(&w, session, close, request, &mut interims, &mut written)?;
        w.commit().map_err(self.err("write"))?;
        {
            let mut index = self.index.lock().unwrap();
            if let Some(s) = session {
                put(&mut index, s, phase(s));
            }
            if let Some(id) = close {
                index.remove(id);
            }
        }
        self.pend(interims);
        Ok(queued)
    }

    /// Many sessions written (each with its request, if any) in one
    /// transaction: one write to the disk, not one each, for the interim
    /// updates of a round. Returns how many interim updates were not kept
    /// (the queue was full).
    pub fn record_many(
        &self,
        updates: &[(OpenSession, Option<Request>)],
    ) -> Result<u64, BookError> {
        if updates.is_empty() {
            return Ok(0);
        }
        let _writing = self.writing.lock().unwrap();
        let db = self.db()?;
        let w = db.begin_write().map_err(self.err("write"))?;
        let mut dropped = 0;
        let mut interims = Vec::new();
        let mut written = HashMap::new();
        for (s, req) in updates {
            let queued = self.put(&w, Some(s), None, req.as_ref(), &mut interims, &mut written)?;
            if queued == Queued::Full {
                dropped += 1;
            }
        }
        w.commit().map_err(self.err("write"))?;
        {
            let mut index = self.index.lock().unwrap();
            for (s, _) in updates {
                put(&mut index, s, phase(s));
            }
        }
        self.pend(interims);
        Ok(dropped)
    }

    /// Interim updates of a transaction that committed, queued in memory.
    fn pend(&self, interims: Vec<Request>) {
        if interims.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap();
        for req in interims {
            pending.push_back((self.next_seq.fetch_add(1, Relaxed), req));
        }
    }

    /// [`Book::record`]'s writes, in the transaction `w`; an interim update
    /// goes to `interims`, for the memory queue once `w` commits. `written`:
    /// the phases of the rows `w` wrote so far (the index has them once it
    /// commits).
    fn put(
        &self,
        w: &redb::WriteTransaction,
        session: Option<&OpenSession>,
        close: Option<SessionId>,
        request: Option<&Request>,
        interims: &mut Vec<Request>,
        written: &mut HashMap<SessionId, u32>,
    ) -> Result<Queued, BookError> {
        let mut open = w.open_table(OPEN).map_err(self.err("write"))?;
        // The phase session `id`'s row is under now; a row no index holds
        // (one that could not be read) is under 0.
        let under = |id: SessionId, written: &HashMap<SessionId, u32>| {
            written
                .get(&id)
                .copied()
                .or_else(|| self.index.lock().unwrap().phase(id))
        };
        if let Some(s) = session {
            let p = phase(s);
            // A session whose interval changed moves its row.
            if let Some(was) = under(s.session_id, written).filter(|&was| was != p) {
                open.remove((was, s.session_id))
                    .map_err(self.err("write"))?;
            }
            open.insert((p, s.session_id), row::encode(s).as_slice())
                .map_err(self.err("write"))?;
            written.insert(s.session_id, p);
        }
        if let Some(id) = close {
            let was = under(id, written).unwrap_or(0);
            open.remove((was, id)).map_err(self.err("write"))?;
            written.remove(&id);
        }
        let Some(req) = request else {
            return Ok(Queued::Yes);
        };
        let mut q = w.open_table(QUEUE).map_err(self.err("write"))?;
        if req.status == Status::InterimUpdate {
            let waiting = q.len().map_err(self.err("write"))?
                + self.pending.lock().unwrap().len() as u64
                + interims.len() as u64;
            if waiting >= self.limit {
                return Ok(Queued::Full);
            }
            interims.push(req.clone());
            return Ok(Queued::Yes);
        }
        let seq = self.next_seq.fetch_add(1, Relaxed);
        let mut meta = w.open_table(META).map_err(self.err("write"))?;
        meta.insert(NEXT_SEQ, seq + 1).map_err(self.err("write"))?;
        let v = serde_json::to_vec(req).expect("a request serialises");
        q.insert(seq, v.as_slice()).map_err(self.err("write"))?;
        Ok(Queued::Yes)
    }

    /// The oldest request not yet answered, in the file or in memory.
    pub fn oldest(&self) -> Result<Option<(u64, Request)>, BookError> {
        let disk = self.oldest_written()?;
        let mem = self.pending.lock().unwrap().front().cloned();
        Ok(match (disk, mem) {
            (Some(d), Some(m)) => Some(if m.0 < d.0 { m } else { d }),
            (d, m) => d.or(m),
        })
    }

    /// The oldest request in the file.
    fn oldest_written(&self) -> Result<Option<(u64, Request)>, BookError> {
        let db = self.db()?;
        let r = db.begin_read().map_err(self.err("read"))?;
        let t = r.open_table(QUEUE).map_err(self.err("read"))?;
        let bad = {
            let Some(row) = t.iter().map_err(self.err("read"))?.next() else {
                return Ok(None);
            };
            let (k, v) = row.map_err(self.err("read"))?;
            match serde_json::from_slice(v.value()) {
                Ok(req) => return Ok(Some((k.value(), req))),
                Err(e) => {
                    tracing::warn!(
                        seq = k.value(),
                        "RADIUS accounting request cannot be read, dropped: {e}"
                    );
                    k.value()
                }
            }
        };
        drop(t);
        drop(r);
        drop(db);
        self.answered(bad)?;
        self.oldest_written()
    }

    /// Removes an answered request.
    pub fn answered(&self, seq: u64) -> Result<(), BookError> {
        {
            let mut pending = self.pending.lock().unwrap();
            if let Some(i) = pending.iter().position(|(s, _)| *s == seq) {
                pending.remove(i);
                return Ok(());
            }
        }
        let db = self.db()?;
        let w = db.begin_write().map_err(self.err("write"))?;
        w.open_table(QUEUE)
            .map_err(self.err("write"))?
            .remove(seq)
            .map_err(self.err("write"))?;
        w.commit().map_err(self.err("write"))
    }

    /// Requests waiting for an answer.
    pub fn queued(&self) -> Result<u64, BookError> {
        let db = self.db()?;
        let r = db.begin_read().map_err(self.err("read"))?;
        let written = r
            .open_table(QUEUE)
            .map_err(self.err("read"))?
            .len()
            .map_err(self.err("read"))?;
        Ok(written + self.pending.lock().unwrap().len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(id: u64) -> OpenSession {
        OpenSession {
            session_id: id,
            device_id: 1,
            acct_session_id: format!("s{id}"),
            user_name: "alice".into(),
            calling: "AA-BB-CC-DD-EE-FF".into(),
            framed_ip: None,
            class: vec![b"c1".to_vec()],
            state: None,
            started_at: 100,
            interim_secs: 60,
            next_interim: 160,
            base_up: 0,
            base_down: 0,
            mark: Reading {
                epoch: 7,
                up: 1000,
                down: 5000,
            },
            last: Reading {
                epoch: 7,
                up: 1000,
                down: 5000,
            },
        }
    }

    #[test]
    fn octets_are_counted_from_the_start_mark_and_across_a_restart_of_the_counters() {
        let mut s = open(1);
        assert_eq!(
            s.read(Reading {
                epoch: 7,
                up: 1500,
                down: 9000
            }),
            (500, 4000)
        );
        // A reboot: the counters start from zero; what was read before stays.
        assert_eq!(
            s.read(Reading {
                epoch: 8,
                up: 10,
                down: 20
            }),
            (510, 4020)
        );
        assert_eq!(
            s.read(Reading {
                epoch: 8,
                up: 30,
                down: 20
            }),
            (530, 4020)
        );
    }

    #[test]
    fn a_device_without_a_slot_or_an_epoch_reads_zero() {
        assert_eq!(
            Reading::of(Some(3), Some((10, 20))),
            Reading {
                epoch: 3,
                up: 10,
                down: 20
            }
        );
        assert_eq!(Reading::of(None, None), Reading::default());
    }

    #[test]
    fn status_and_cause_codes_are_the_rfc_2866_numbers() {
        let status = [
            Status::Start,
            Status::Stop,
            Status::InterimUpdate,
            Status::AccountingOn,
            Status::AccountingOff,
        ];
        assert_eq!(status.map(Status::code), [1, 2, 3, 7, 8]);
        let cause = [
            Cause::UserRequest,
            Cause::LostCarrier,
            Cause::IdleTimeout,
            Cause::SessionTimeout,
            Cause::AdminReset,
            Cause::NasError,
            Cause::NasRequest,
            Cause::NasReboot,
        ];
        assert_eq!(cause.map(Cause::code), [1, 2, 4, 5, 6, 9, 10, 11]);
    }

    #[test]
    fn octets_past_four_gibibytes_are_exact() {
        let mut s = open(1);
        let big = 5 * (1u64 << 32) + 123;
        assert_eq!(
            s.read(Reading {
                epoch: 7,
                up: 1000 + big,
                down: 5000 + 2 * big
            }),
            (big, 2 * big)
        );
    }

    #[test]
    fn requests_come_back_in_order_and_only_interim_updates_are_not_written() {
        let dir = std::env::temp_dir().join(format!("acct-book-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let s = open(1);
        let req = |status| Request {
            status,
            at: 1,
            session: Some(SessionPart::of(&s, 1, None)),
        };
        let drain = |b: &Book| {
            let mut seen = Vec::new();
            while let Some((seq, req)) = b.oldest().unwrap() {
                seen.push(req.status);
                b.answered(seq).unwrap();
            }
            seen
        };
        use Status::*;
        {
            let b = Book::open(Some(&dir), 10).unwrap();
            for status in [Start, InterimUpdate, Stop, AccountingOff] {
                b.record(Some(&s), None, Some(&req(status))).unwrap();
            }
            assert_eq!(b.queued().unwrap(), 4);
            assert_eq!(drain(&b), vec![Start, InterimUpdate, Stop, AccountingOff]);
            assert_eq!(b.queued().unwrap(), 0);
            for status in [Start, InterimUpdate, InterimUpdate, Stop] {
                b.record(Some(&s), None, Some(&req(status))).unwrap();
            }
        }
        // Reopened (a crash): what was written is there, in order; the
        // interim updates, which the Stop's totals make good, are not.
        let b = Book::open(Some(&dir), 10).unwrap();
        assert_eq!(b.open_sessions().unwrap(), vec![open(1)]);
        assert_eq!(b.queued().unwrap(), 2);
        b.record(Some(&s), None, Some(&req(InterimUpdate))).unwrap();
        b.record(Some(&s), None, Some(&req(Stop))).unwrap();
        assert_eq!(drain(&b), vec![Start, Stop, InterimUpdate, Stop]);
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn an_error_of_the_book_names_its_file_and_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        // A file that is no redb database.
        let path = dir.path().join("acct.redb");
        std::fs::write(&path, b"not a database, only words").unwrap();
        let Err(e) = Book::open(Some(&path), 10) else {
            panic!("a file of words opened as a book");
        };
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "RADIUS accounting book {}: open: ",
                path.display()
            )),
            "{text}"
        );
        assert!(text.ends_with("is not sent)"), "no fix named: {text}");
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
        // A write names the fix too.
        let e = fail::<std::io::Error>(Some(&path), "write")(std::io::Error::other("disk full"));
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "RADIUS accounting book {}: write: disk full; if its disk is full or read-only, free space",
                path.display()
            )),
            "{text}"
        );
        // So does a book that cannot be opened again after a failed write.
        let e =
            fail::<std::io::Error>(Some(&path), "open again")(std::io::Error::other("disk full"));
        assert!(
            e.to_string()
                .contains(": open again: disk full; if its disk is full"),
            "{e}"
        );
        // A book in memory says so.
        let e = fail::<std::io::Error>(None, "write")(std::io::Error::other("disk full"));
        assert_eq!(
            e.to_string(),
            "RADIUS accounting book (in memory): write: disk full"
        );
    }

    #[test]
    fn the_book_knows_without_reading_its_file_which_sessions_are_open_and_which_are_due() {
        let path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        let _ = std::fs::remove_file(&path);
        {
            let b = Book::open(Some(&path), 10).unwrap();
            // Session 1 due at 160, 2 at 130, 3 without updates.
            let mut two = open(2);
            two.next_interim = 130;
            let mut three = open(3);
            three.interim_secs = 0;
            for s in [open(1), two.clone(), three] {
                b.record(Some(&s), None, None).unwrap();
            }
            assert_eq!(b.due(129), Vec::<SessionId>::new());
            assert_eq!(b.due(160), vec![2, 1]);
            // An update moves 2's next interim past 1's; a stop closes 1.
            two.next_interim = 190;
            b.record(Some(&two), None, None).unwrap();
            b.record(None, Some(1), None).unwrap();
            assert_eq!(b.due(189), Vec::<SessionId>::new());
            assert_eq!(b.due(190), vec![2]);
            assert!(!b.is_open(1) && b.is_open(2) && b.is_open(3));
            assert_eq!(b.open_count(), 2);
        }
        // Reopened, the index is read back from the file.
        let b = Book::open(Some(&path), 10).unwrap();
        let mut ids = b.open_ids();
        ids.sort_unstable();
        assert_eq!(ids, vec![2, 3]);
        assert_eq!(b.due(1_000), vec![2]);
        let read = b.open_sessions_of(&[3, 1, 2]).unwrap();
        assert_eq!(
            read.iter().map(|s| s.session_id).collect::<Vec<_>>(),
            vec![3, 2]
        );
    }

    #[test]
    fn a_book_whose_rows_are_json_as_written_before_is_read_and_its_rows_are_rewritten_compact() {
        let path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        let _ = std::fs::remove_file(&path);
        let raw = |id: u64| -> Vec<u8> {
            let db = Database::open(&path).unwrap();
            let r = db.begin_read().unwrap();
            let t = r.open_table(OPEN).unwrap();
            t.get((phase(&open(id)), id))
                .unwrap()
                .unwrap()
                .value()
                .to_vec()
        };
        {
            // A book as written before: rows of JSON by session id.
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(OPEN_BY_ID).unwrap();
                for id in [1, 2] {
                    let json = serde_json::to_vec(&open(id)).unwrap();
                    t.insert(id, json.as_slice()).unwrap();
                }
            }
            w.commit().unwrap();
        }
        let json_len = serde_json::to_vec(&open(1)).unwrap().len();
        {
            let b = Book::open(Some(&path), 10).unwrap();
            assert_eq!(b.open_count(), 2);
            assert_eq!(b.due(160), vec![1, 2]);
            assert_eq!(b.open_session(1).unwrap(), Some(open(1)));
            let mut one = open(1);
            one.read(Reading {
                epoch: 7,
                up: 1500,
                down: 5000,
            });
            b.record(Some(&one), None, None).unwrap();
            assert_eq!(b.open_sessions_of(&[1, 2]).unwrap(), vec![one, open(2)]);
        }
        let (one, two) = (raw(1), raw(2));
        assert_eq!(two[0], b'{', "a row not written again stays as it was");
        assert_eq!(one[0], 1, "a row written again is compact");
        assert!(
            one.len() * 3 <= json_len,
            "{} against {json_len}",
            one.len()
        );
    }

    /// Every row of the book's file: (phase, session id) and its bytes.
    fn rows(path: &Path) -> Vec<((u32, u64), Vec<u8>)> {
        let db = Database::open(path).unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(OPEN).unwrap();
        t.iter()
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                (k.value(), v.value().to_vec())
            })
            .collect()
    }

    #[test]
    fn rows_of_sessions_due_in_the_same_second_are_side_by_side_and_an_old_book_moves_them_there() {
        let path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        let _ = std::fs::remove_file(&path);
        // Sessions 1 to 9, every 60 s, due at 160, 161 or 162 (phases 40 to
        // 42, as sessions that opened a second apart), or an interval later
        // (the same phases); 10 sends no updates (phase 0).
        let session = |id: u64| OpenSession {
            next_interim: 160 + (id % 3) as i64 + 60 * (id % 2) as i64,
            interim_secs: if id == 10 { 0 } else { 60 },
            ..open(id)
        };
        {
            // A book as written before: rows by session id, one unreadable.
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(OPEN_BY_ID).unwrap();
                for id in 1..=10 {
                    t.insert(id, row::encode(&session(id)).as_slice()).unwrap();
                }
                t.insert(11, b"\xffdamaged".as_slice()).unwrap();
            }
            w.commit().unwrap();
        }
        let b = Book::open(Some(&path), 10).unwrap();
        assert_eq!(b.open_count(), 10);
        assert_eq!(b.due(161), vec![6, 4]);
        assert_eq!(
            b.open_sessions_of(&[1, 3, 6, 7, 9]).unwrap(),
            [3, 6, 9, 1, 7].map(session).to_vec(),
            "read in the order of their rows"
        );
        assert_eq!(
            b.open_sessions().unwrap(),
            (1..=10).map(session).collect::<Vec<_>>()
        );
        drop(b);
        let rows = rows(&path);
        let keys: Vec<_> = rows.iter().map(|&(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                (0, 10),
                (0, 11),
                (40, 3),
                (40, 6),
                (40, 9),
                (41, 1),
                (41, 4),
                (41, 7)
            ]
            .into_iter()
            .chain([(42, 2), (42, 5), (42, 8)])
            .collect::<Vec<_>>(),
            "by phase, then id; the unreadable row under phase 0"
        );
        for ((_, id), bytes) in &rows {
            let want = match id {
                11 => b"\xffdamaged".to_vec(),
                &id => row::encode(&session(id)),
            };
            assert_eq!(bytes, &want, "row {id} moved as it was");
        }
        let db = Database::open(&path).unwrap();
        let r = db.begin_read().unwrap();
        assert!(r.open_table(OPEN_BY_ID).is_err(), "the old table is gone");
    }

    #[test]
    fn sessions_asked_for_far_apart_in_one_phase_are_all_read_and_no_other() {
        let b = Book::open(None, 10).unwrap();
        // 200 sessions without updates: all under phase 0.
        let quiet = |id: u64| OpenSession {
            interim_secs: 0,
            ..open(id)
        };
        let all: Vec<_> = (1..=200).map(|id| (quiet(id), None)).collect();
        b.record_many(&all).unwrap();
        // Some side by side, some far apart; 500 is not in the book.
        let asked = [1, 2, 3, 40, 41, 100, 180, 200, 500];
        let want: Vec<_> = asked
            .iter()
            .filter(|&&id| id <= 200)
            .map(|&id| quiet(id))
            .collect();
        assert_eq!(b.open_sessions_of(&asked).unwrap(), want);
        assert_eq!(b.open_sessions_of(&[150]).unwrap(), vec![quiet(150)]);
        assert_eq!(b.open_sessions_of(&[0, 201]).unwrap(), vec![]);
    }

    #[test]
    fn a_session_whose_interval_changes_keeps_one_row_and_closing_it_leaves_none() {
        let path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        let _ = std::fs::remove_file(&path);
        let b = Book::open(Some(&path), 10).unwrap();
        let first = open(1); // phase 40
        b.record(Some(&first), None, None).unwrap();
        let changed = OpenSession {
            interim_secs: 50,
            next_interim: 170,
            ..open(1)
        };
        b.record(Some(&changed), None, None).unwrap();
        assert_eq!(b.open_session(1).unwrap(), Some(changed.clone()));
        // Twice in one transaction, under two more phases.
        let again = |next| {
            (
                OpenSession {
                    interim_secs: 50,
                    next_interim: next,
                    ..open(1)
                },
                None,
            )
        };
        b.record_many(&[again(171), again(172)]).unwrap();
        drop(b);
        assert_eq!(rows(&path), vec![((22, 1), row::encode(&again(172).0))]);
        let b = Book::open(Some(&path), 10).unwrap();
        assert_eq!(b.due(172), vec![1]);
        b.record(None, Some(1), None).unwrap();
        assert!(!b.is_open(1));
        drop(b);
        assert_eq!(rows(&path), vec![]);
    }

    /// Sessions 1 to 3 at their interim update at 160, each next due at 220.
    fn due_at_160() -> Vec<(OpenSession, Request)> {
        (1..=3)
            .map(|id| {
                let mut s = open(id);
                s.next_interim = 220;
                let req = Request {
                    status: Status::InterimUpdate,
                    at: 160,
                    session: Some(SessionPart::of(&s, 160, None)),
                };
                (s, req)
            })
            .collect()
    }

    #[test]
    fn interim_updates_written_together_move_each_session_on_and_keep_the_queue_limit() {
        let b = Book::open(None, 2).unwrap();
        let updates: Vec<(OpenSession, Option<Request>)> = due_at_160()
            .into_iter()
            .map(|(s, req)| (s, Some(req)))
            .collect();
        assert_eq!(b.record_many(&updates).unwrap(), 1, "one past the limit");
        assert_eq!(b.queued().unwrap(), 2);
        assert_eq!(b.due(219), Vec::<SessionId>::new());
        assert_eq!(b.due(220), vec![1, 2, 3]);
        assert_eq!(b.open_session(3).unwrap().unwrap().next_interim, 220);
    }

    #[test]
    fn interim_updates_of_idle_sessions_write_no_row_and_a_start_sends_no_burst_of_late_ones() {
        let path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        let _ = std::fs::remove_file(&path);
        {
            let b = Book::open(Some(&path), 2).unwrap();
            for id in 1..=3 {
                b.record(Some(&open(id)), None, None).unwrap();
            }
            // Due at 160: the counters stood still, so only the index moves on.
            let updates = due_at_160();
            assert_eq!(b.queue_interims(updates).unwrap(), 1, "one past the limit");
            assert_eq!(b.queued().unwrap(), 2);
            assert_eq!(b.due(219), Vec::<SessionId>::new());
            assert_eq!(b.due(220), vec![1, 2, 3]);
            // Readers get the index's next update, though the row has 160.
            assert_eq!(b.open_session(2).unwrap().unwrap().next_interim, 220);
            assert_eq!(b.open_sessions_of(&[3]).unwrap()[0].next_interim, 220);
            assert_eq!(b.open_sessions().unwrap()[0].next_interim, 220);
        }
        // Reopened, the rows say 160; at 1,010 each is next due at its first
        // turn after then (160 + 15 * 60), not at once.
        let b = Book::open(Some(&path), 10).unwrap();
        assert_eq!(b.due(1_010), vec![1, 2, 3]);
        b.catch_up(1_010).unwrap();
        assert_eq!(b.due(1_059), Vec::<SessionId>::new());
        assert_eq!(b.due(1_060), vec![1, 2, 3]);
        assert_eq!(b.open_session(1).unwrap().unwrap().next_interim, 1_060);
    }

    #[test]
    fn a_full_queue_drops_interim_updates_but_never_a_stop() {
        let b = Book::open(None, 1).unwrap();
        let s = open(1);
        let req = |status| Request {
            status,
            at: 1,
            session: Some(SessionPart::of(&s, 1, None)),
        };
        assert_eq!(
            b.record(None, None, Some(&req(Status::Start))).unwrap(),
            Queued::Yes
        );
        assert_eq!(
            b.record(None, None, Some(&req(Status::InterimUpdate)))
                .unwrap(),
            Queued::Full
        );
        assert_eq!(
            b.record(None, None, Some(&req(Status::Stop))).unwrap(),
            Queued::Yes
        );
        assert_eq!(b.queued().unwrap(), 2);
    }
}
