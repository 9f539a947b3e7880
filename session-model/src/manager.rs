//! The sessions manager (the Flarehotspot SDK's `SessionsMgrApi`) plus the bulk accounting entry points
//! the metering daemon drives.
//!
//! # Driving it from the daemon
//! * Every poll of the kernel counters, call [`SessionsMgr::record_meter`] with the
//!   absolute counter of each device (one store write for the whole batch; replaying a
//!   reading after a crash charges nothing twice). [`SessionsMgr::record_usage`] takes
//!   deltas instead.
//! * Every poll, call [`SessionsMgr::tick`]: it charges the elapsed connected time of
//!   the running sessions that run out of time or expire by now (sub-second remainders
//!   are carried over; the others' time is charged when read, written, ended or
//!   checkpointed), ends those that are consumed or expired and starts the device's
//!   next available session.
//! * Both return [`Transition`]s; for each, re-read [`SessionsMgr::data_budget_bytes`] and
//!   the speeds of the new session, or remove the device from the kernel's allow list
//!   when `next` is `None` (the device was disconnected).
//! * With the hybrid store in [`crate::SyncMode::Manual`], call [`SessionsMgr::sync`] after
//!   each batch to bound what a power loss can take.
//!
//! # Persisted connection state
//! The running session of each connected device carries a [`RunState`] in its stored
//! record; the in-memory map is only a cache. [`SessionsMgr::new`] restores the connected
//! devices from the store, and the first tick after a restart charges the time since the
//! stored `charged_to_ms` (the device stayed connected in the kernel meanwhile).
//!
//! # Connected time
//! Time is measured on the monotonic clock ([`Clock::mono_ms`]), so setting the wall
//! clock (NTP on a board without a real-time clock) neither charges nor refunds any.
//! After a reboot (another [`Clock::boot_id`]) or when the kernel counters were made
//! anew (another meter epoch in [`SessionsMgr::record_meter`]: the datapath was gone),
//! the device was not served: the session resumes from what was last charged and the
//! gap is not charged.
//!
//! Store calls are synchronous and short; the async methods do not hold locks across
//! awaits.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::idmap::{DenseMap, IdMap};
use crate::source::{LocalProvider, LocalSource};
use crate::{
    mb_to_bytes, model::check_speed, ClientSession, Clock, Device, DeviceId, EndReason, MacAddr,
    MeterMark, ModelError, RunState, SessionData, SessionId, SessionProvider, SessionRecord,
    SessionStore, SessionType, UsageUpdate, LOCAL_PROVIDER,
};

/// Everything the manager announces. Serialised with an `event` tag, snake_case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SessionEvent {
    DeviceCreated {
        device_id: DeviceId,
        mac: MacAddr,
    },
    /// A device and all its sessions were removed.
    DeviceRemoved {
        device_id: DeviceId,
        mac: MacAddr,
    },
    DeviceRekeyed {
        device_id: DeviceId,
        old_mac: MacAddr,
        new_mac: MacAddr,
    },
    SessionCreated {
        device_id: DeviceId,
        session_id: SessionId,
    },
    /// A voucher's session moved with its device to a new MAC: the code was
    /// typed again from that MAC while the old one was silent. `code` is
    /// masked as in logs.
    VoucherMoved {
        device_id: DeviceId,
        session_id: SessionId,
        code: String,
        old_mac: MacAddr,
        new_mac: MacAddr,
    },
    /// The device got internet access; `notification` is the caller's text.
    Connected {
        device_id: DeviceId,
        session_id: SessionId,
        notification: String,
    },
    /// The device lost internet access (by request, or because no session was left).
    Disconnected {
        device_id: DeviceId,
        session_id: Option<SessionId>,
        notification: String,
    },
    /// A session ran for the first time.
    SessionStarted {
        device_id: DeviceId,
        session_id: SessionId,
    },
    /// A paused session runs again.
    SessionResumed {
        device_id: DeviceId,
        session_id: SessionId,
    },
    SessionPaused {
        device_id: DeviceId,
        session_id: SessionId,
    },
    SessionConsumed {
        device_id: DeviceId,
        session_id: SessionId,
    },
    SessionExpired {
        device_id: DeviceId,
        session_id: SessionId,
    },
    /// A running session ended and the device's next session took over.
    SessionAdvanced {
        device_id: DeviceId,
        from: SessionId,
        to: SessionId,
    },
    /// Garbage collection removed ended sessions.
    SessionsRemoved {
        session_ids: Vec<SessionId>,
    },
}

/// A running session that ended during [`SessionsMgr::tick`] or
/// [`SessionsMgr::record_usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub device_id: DeviceId,
    pub session_id: SessionId,
    pub reason: EndReason,
    /// The session that now runs, or `None` when the device was disconnected.
    pub next: Option<SessionId>,
    /// The meter reading the ended session was last charged to: bytes the
    /// device's counters show beyond it were not charged to it.
    #[serde(default)]
    pub mark: Option<MeterMark>,
}

/// Outcome of a bulk accounting call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Sessions written to the store.
    pub updated: usize,
    pub transitions: Vec<Transition>,
    /// Devices in a usage batch that were not connected (their bytes were not charged).
    pub not_connected: Vec<DeviceId>,
}

/// What the datapath should let a device have: the manager's decision, which
/// the gateway applies without judging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The running session this is for.
    pub session_id: SessionId,
    /// Per-client speeds in Mbit/s (0 = unlimited): the session's own, or the
    /// global speed for a session with `use_global_speed`.
    pub down_mbits: u64,
    pub up_mbits: u64,
    /// Bytes the datapath may still let through (the session's remaining
    /// data); `None` for a session without a data allocation.
    pub budget_bytes: Option<u64>,
}

/// The datapath state a device should have: let through with a [`Grant`], or
/// held in the walled garden (`grant: None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    pub device_id: DeviceId,
    pub mac: MacAddr,
    pub grant: Option<Grant>,
}

/// Cache entry of a connected device. The truth is the `run` field of the session's
/// stored record (see [`RunState`]).
#[derive(Debug, Clone, Copy)]
struct Running {
    session_id: SessionId,
    /// What the store held for the running session after this manager last wrote
    /// it, so a poll that changes nothing need not read it; `None` = read it.
    hint: Option<Hint>,
}

impl Running {
    fn new(session_id: SessionId) -> Self {
        Running {
            session_id,
            hint: None,
        }
    }
}

/// A copy of what the store holds for a running session's usage, so a poll charges
/// it and decides whether it ended without reading the record.
#[derive(Debug, Clone, Copy)]
struct Hint {
    run: RunState,
    /// Unix seconds at which the session expires (`i64::MAX`: it does not).
    expires_at: i64,
    session_type: SessionType,
    time_secs: u64,
    time_cons: u64,
    data_bytes: u64,
    data_cons_bytes: u64,
    /// The session's own speeds, or the shared ones.
    down_mbits: i32,
    up_mbits: i32,
    use_global_speed: bool,
}

impl Hint {
    /// `None` when the record has no run state.
    fn of(rec: &SessionRecord) -> Option<Hint> {
        Some(Hint {
            run: rec.run?,
            expires_at: rec.data.expires_at().unwrap_or(i64::MAX),
            session_type: rec.data.session_type,
            time_secs: rec.data.time_secs,
            time_cons: rec.data.time_cons,
            data_bytes: rec.data.data_bytes,
            data_cons_bytes: rec.data.data_cons_bytes,
            down_mbits: rec.data.down_mbits,
            up_mbits: rec.data.up_mbits,
            use_global_speed: rec.data.use_global_speed,
        })
    }

    /// Same rule as [`SessionData::is_available`].
    fn is_available(&self, now_secs: i64) -> bool {
        !self.session_type.is_consumed(
            self.time_cons,
            self.time_secs,
            self.data_cons_bytes,
            self.data_bytes,
        ) && now_secs < self.expires_at
    }

    /// Same rule as [`SessionData::data_budget_bytes`].
    fn budget_bytes(&self) -> Option<u64> {
        self.session_type
            .uses_data()
            .then(|| self.data_bytes.saturating_sub(self.data_cons_bytes))
    }

    /// The monotonic millisecond by which the session ends if nothing but
    /// time changes it: its connected time runs out, or (by the wall clock,
    /// `offset_ms` being wall minus monotonic milliseconds) it expires.
    /// A hint of another boot is due at once; `i64::MAX`: never.
    fn due_mono_ms(&self, offset_ms: i64, boot: u64) -> i64 {
        if self.run.boot != boot {
            return i64::MIN;
        }
        let time = if self.session_type.uses_time() {
            let left = self.time_secs.saturating_sub(self.time_cons);
            let left_ms = i64::try_from(left.saturating_mul(1000)).unwrap_or(i64::MAX);
            self.run.charged_to_ms.saturating_add(left_ms)
        } else {
            i64::MAX
        };
        let expiry = match self.expires_at {
            i64::MAX => i64::MAX,
            at => at.saturating_mul(1000).saturating_sub(offset_ms),
        };
        time.min(expiry)
    }

    fn update(&self, id: SessionId) -> UsageUpdate {
        UsageUpdate {
            id,
            time_cons: self.time_cons,
            data_cons_bytes: self.data_cons_bytes,
            run: Some(self.run),
        }
    }
}

/// What a reading charges against the stored mark, and the mark after it.
fn meter_charge(mark: Option<MeterMark>, reading: MeterMark) -> (u64, MeterMark) {
    match mark {
        None => (0, reading),
        Some(m) if m.epoch != reading.epoch => (reading.bytes, reading),
        Some(m) if reading.bytes >= m.bytes => (reading.bytes - m.bytes, reading),
        Some(m) => (0, m),
    }
}

/// When each running session must be looked at: by the monotonic
/// millisecond at which its connected time runs out or it expires (see
/// [`Hint::due_mono_ms`]). Connected time is charged lazily: a running
/// session's record holds the time charged up to its `charged_to_ms`, and
/// whoever reads it (a view, a save, the end of the session, a checkpoint)
/// charges the rest; a poll looks only at the sessions that come due, so
/// its work does not grow with the devices connected. An entry is checked
/// against the session's hint when it comes due, so a deadline that moved
/// needs no removal: the session is looked at, and scheduled again.
#[derive(Debug, Default)]
struct Schedule {
    due: BinaryHeap<Reverse<(i64, DeviceId)>>,
    /// Wall minus monotonic milliseconds when `due` was built: a step of the
    /// wall clock (which moves expiries) builds it again.
    offset_ms: i64,
    /// Look at every running session on the next tick (at start, and after
    /// a save from outside the manager dropped the hints).
    all: bool,
}

impl Schedule {
    fn at(&mut self, device_id: DeviceId, at: i64) {
        if at != i64::MAX {
            self.due.push(Reverse((at, device_id)));
        }
    }
}

/// Entries of the schedule beyond two a running session that make the next
/// tick build it anew.
const STALE_ENTRIES: usize = 1024;

/// How far the wall clock may move against the monotonic one (NTP's slewing)
/// before the schedule's expiries are worked out again.
const WALL_STEP_MS: i64 = 1000;

const CHANNEL_CAPACITY: usize = 4096;

/// Changes of devices' running sessions kept for
/// [`SessionsMgr::connected_changes_since`]: a caller further behind looks
/// at every connected device.
const CHANGES_KEPT: usize = 8192;

/// The devices whose running session changed, each with the generation its
/// change made: every change after generation `from` (the newest
/// [`CHANGES_KEPT`]).
#[derive(Default)]
struct Changes {
    log: VecDeque<(u64, DeviceId)>,
    from: u64,
}
/// Text of the `Disconnected` event sent when a device runs out of sessions.
pub const NO_SESSION_LEFT: &str = "no session left";
/// Text of the `Disconnected` event sent when a running session ended and auto-advance
/// is off (see [`SessionsMgr::set_auto_advance`]).
pub const SESSION_ENDED: &str = "session ended";

/// Manages devices, their sessions and their connection state.
pub struct SessionsMgr {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<SessionEvent>,
    running: Mutex<DenseMap<DeviceId, Running>>,
    /// Locked after `running`, never before it.
    schedule: Mutex<Schedule>,
    providers: RwLock<HashMap<String, Arc<dyn SessionProvider>>>,
    auto_advance: AtomicBool,
    /// Speeds of sessions with `use_global_speed`, Mbit/s (down, up; 0 = unlimited).
    global_speed: Mutex<(u64, u64)>,
    /// Saves through `ClientSession::save`, counted by the sessions' sources; when
    /// it moves, the running sessions' hints are dropped.
    saves: Arc<AtomicU64>,
    saves_seen: AtomicU64,
    /// Bumped whenever a device connects, disconnects or changes running
    /// session, under the lock of `changes`, which names the devices.
    generation: AtomicU64,
    /// Locked after `running`, never before it.
    changes: Mutex<Changes>,
    /// The monotonic clock when this manager was made: until its first tick
    /// (which charges every running session), a view charges a running
    /// session's time from here at the earliest (see [`charge_to_now`]).
    opened_mono_ms: i64,
    /// Set by the first tick: every running session has been charged by
    /// this manager since.
    adopted: AtomicBool,
    /// Held while a voucher is checked and redeemed or revoked, so that of many
    /// concurrent redemptions of one code only those the code allows succeed.
    pub(crate) voucher_lock: Mutex<()>,
}

impl std::fmt::Debug for SessionsMgr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsMgr")
            .field("store", &self.store.kind())
            .finish()
    }
}

impl SessionsMgr {
    /// A manager over `store`, with the connection state restored from it (see
    /// [`SessionsMgr::open`]). If the store cannot be read the error is logged and no
    /// device is connected; use [`SessionsMgr::open`] to handle it instead.
    pub fn new(store: Arc<dyn SessionStore>, clock: Arc<dyn Clock>) -> Self {
        match Self::open(store.clone(), clock.clone()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot restore the connection state from the store");
                Self::empty(store, clock)
            }
        }
    }

    /// A manager over `store`, with the connection state restored from it.
    ///
    /// Every session whose record has `run` set is the running session of a connected
    /// device (if a device has several, the one with the newest `charged_to_ms` wins and
    /// the others are cleared in the store). The device stayed connected in the kernel
    /// while the process was down, so the first [`SessionsMgr::tick`] charges the time
    /// since the stored `charged_to_ms`, and the first [`SessionsMgr::record_meter`]
    /// charges the bytes since the stored meter mark.
    pub fn open(store: Arc<dyn SessionStore>, clock: Arc<dyn Clock>) -> Result<Self, ModelError> {
        let mgr = Self::empty(store, clock);
        let mut stale: Vec<SessionId> = Vec::new();
        {
            let mut running = mgr.running()?;
            let mut n = 0;
            mgr.store
                .for_each_session(&mut |rec| n += usize::from(rec.run.is_some()))?;
            running.reserve(n);
            mgr.store.for_each_session(&mut |rec| {
                let Some(hint) = Hint::of(rec) else { return };
                let fresh = Running {
                    session_id: rec.id,
                    hint: Some(hint),
                };
                match running.get(&rec.device_id) {
                    None => {
                        running.insert(rec.device_id, fresh);
                    }
                    Some(cur) => {
                        let cur = cur.hint.map_or(i64::MIN, |h| h.run.charged_to_ms);
                        if cur >= hint.run.charged_to_ms {
                            stale.push(rec.id);
                        } else if let Some(old) = running.insert(rec.device_id, fresh) {
                            stale.push(old.session_id);
                        }
                    }
                }
            })?;
        }
        if !stale.is_empty() {
            stale.sort_unstable();
            let mut recs = Vec::with_capacity(stale.len());
            for id in &stale {
                if let Some(mut r) = mgr.store.session(*id)? {
                    r.run = None;
                    recs.push(r);
                }
            }
            tracing::warn!(
                sessions = recs.len(),
                "clearing run state of sessions superseded by a newer running session"
            );
            mgr.store.save_sessions(&recs)?;
        }
        Ok(mgr)
    }

    fn empty(store: Arc<dyn SessionStore>, clock: Arc<dyn Clock>) -> Self {
        let (events, _) = broadcast::channel(CHANNEL_CAPACITY);
        let opened_mono_ms = clock.mono_ms();
        let mut providers: HashMap<String, Arc<dyn SessionProvider>> = HashMap::new();
        providers.insert(LOCAL_PROVIDER.to_string(), Arc::new(LocalProvider));
        SessionsMgr {
            store,
            clock,
            events,
            running: Mutex::new(DenseMap::default()),
            schedule: Mutex::new(Schedule {
                all: true,
                ..Schedule::default()
            }),
            providers: RwLock::new(providers),
            auto_advance: AtomicBool::new(true),
            global_speed: Mutex::new((0, 0)),
            saves: Arc::new(AtomicU64::new(0)),
            saves_seen: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            changes: Mutex::new(Changes::default()),
            opened_mono_ms,
            adopted: AtomicBool::new(false),
            voucher_lock: Mutex::new(()),
        }
    }

    /// Whether a consumed or expired running session is followed by the device's next
    /// available session (`true`, the default) or ends the device's connection (`false`:
    /// `Disconnected` with [`SESSION_ENDED`]; the next [`SessionsMgr::connect`] starts the
    /// next session).
    pub fn set_auto_advance(&self, on: bool) {
        self.auto_advance.store(on, Ordering::Relaxed);
    }

    /// The per-client speeds, Mbit/s (0 = unlimited), of sessions that use the
    /// global speed (`use_global_speed`).
    pub fn set_global_speed(&self, down_mbits: u64, up_mbits: u64) {
        if let Ok(mut g) = self.global_speed.lock() {
            *g = (down_mbits, up_mbits);
        }
    }

    /// The grant of a session: its speeds (own or global) and its remaining
    /// data as the budget. The one rule for what a running session allows.
    pub fn grant(&self, session: &SessionData, session_id: SessionId) -> Grant {
        self.grant_of(
            session_id,
            (!session.use_global_speed).then_some((session.down_mbits, session.up_mbits)),
            session.data_budget_bytes(),
        )
    }

    /// A grant of the session's own speeds (`None`: the shared ones).
    fn grant_of(
        &self,
        session_id: SessionId,
        own: Option<(i32, i32)>,
        budget_bytes: Option<u64>,
    ) -> Grant {
        let (down_mbits, up_mbits) = match own {
            Some((down, up)) => (down.max(0) as u64, up.max(0) as u64),
            None => self.global_speed.lock().map(|g| *g).unwrap_or((0, 0)),
        };
        Grant {
            session_id,
            down_mbits,
            up_mbits,
            budget_bytes,
        }
    }

    /// What the datapath should hold for a device now: its running session's
    /// grant, or nothing (held in the walled garden).
    pub fn desired(&self, device_id: DeviceId) -> Result<Desired, ModelError> {
        Ok(Desired {
            device_id,
            mac: self.device(device_id)?.mac,
            grant: self.granted(device_id)?,
        })
    }

    /// The grant of the device's running session, if one runs (see [`SessionsMgr::desired`]).
    pub fn granted(&self, device_id: DeviceId) -> Result<Option<Grant>, ModelError> {
        Ok(self.granted_many(&[device_id])?.pop().flatten())
    }

    /// [`SessionsMgr::granted`] of each of `devices`, in their order: under
    /// one lock, their lookups in one pass ([`DenseMap::positions`]). The
    /// table check asks it of 1,024 clients a second, each a miss in a large
    /// map. From the running session's hint when it has one (a store read
    /// costs more than the comparison the check makes), else from the store.
    pub fn granted_many(&self, devices: &[DeviceId]) -> Result<Vec<Option<Grant>>, ModelError> {
        let mut out = Vec::with_capacity(devices.len());
        // Those without a hint, read from the store after the lock.
        let mut unhinted = Vec::new();
        {
            let mut running = self.running()?;
            self.check_hints(&mut running);
            let at = running.positions(devices.iter().copied());
            for (i, at) in at.into_iter().enumerate() {
                match at.and_then(|at| running.at(at)) {
                    Some(Running {
                        session_id,
                        hint: Some(h),
                    }) => {
                        let own = (!h.use_global_speed).then_some((h.down_mbits, h.up_mbits));
                        out.push(Some(self.grant_of(*session_id, own, h.budget_bytes())));
                    }
                    _ => {
                        out.push(None);
                        unhinted.push(i);
                    }
                }
            }
        }
        for i in unhinted {
            out[i] = self
                .curr_session(devices[i])?
                .map(|s| self.grant(s.data(), s.id()));
        }
        Ok(out)
    }

    /// Charges the bytes a device moved between its last reading and the
    /// moment the datapath blocked it, after its last session ended: they
    /// belong to that session. Readings of another meter epoch say nothing.
    pub fn charge_tail(
        &self,
        session_id: SessionId,
        last: MeterMark,
        now: MeterMark,
    ) -> Result<(), ModelError> {
        if now.epoch == last.epoch && now.bytes > last.bytes {
            self.add_data_bytes(session_id, now.bytes - last.bytes)?;
        }
        Ok(())
    }

    /// Changes a session the way a portal does (the Flarehotspot SDK's
    /// setters, then `save`): read fresh, changed by `change`, saved
    /// (validated, `ended_at` settled), then a running one is settled as a
    /// poll would (it may have ended, or been revived). Returns the saved
    /// session and the transitions to apply.
    pub async fn change_session<F>(
        &self,
        session_id: SessionId,
        change: F,
    ) -> Result<(ClientSession, TickReport), ModelError>
    where
        F: FnOnce(&mut ClientSession) -> Result<(), ModelError>,
    {
        let mut session = self.session(session_id)?;
        let running = self.running_session_id(session.device_id())? == Some(session_id);
        change(&mut session)?;
        session.save().await?;
        let report = if running {
            self.tick()?
        } else {
            TickReport::default()
        };
        Ok((self.session(session_id)?, report))
    }

    /// See [`SessionsMgr::set_auto_advance`].
    pub fn auto_advance(&self) -> bool {
        self.auto_advance.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, e: SessionEvent) {
        tracing::debug!(event = ?e, "session event");
        // No receiver is fine.
        let _ = self.events.send(e);
    }

    fn running(&self) -> Result<MutexGuard<'_, DenseMap<DeviceId, Running>>, ModelError> {
        self.running.lock().map_err(|_| ModelError::Poisoned)
    }

    /// A change of these devices' running sessions.
    fn bump_generation(&self, devices: impl IntoIterator<Item = DeviceId>) {
        let mut c = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        c.log.extend(devices.into_iter().map(|d| (g, d)));
        while c.log.len() > CHANGES_KEPT {
            if let Some((g, _)) = c.log.pop_front() {
                c.from = g;
            }
        }
        // One tick that ended many sessions does not keep its room.
        if c.log.capacity() > 2 * CHANGES_KEPT {
            c.log.shrink_to(CHANGES_KEPT);
        }
    }

    /// Changes whenever the set of connected devices or a running session changes:
    /// callers that keep per-device tables bring them up to date when it moves
    /// (see [`SessionsMgr::connected_changes_since`]).
    pub fn connected_generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The devices whose running session changed (they connected, went or
    /// moved to another session) since [`SessionsMgr::connected_generation`]
    /// read `generation`, and the generation now: a table of the connected
    /// devices is brought up to date by looking at these alone. A device may
    /// be named more than once. `None` when more changed than are kept (a
    /// caller then looks at every connected device).
    pub fn connected_changes_since(&self, generation: u64) -> Option<(u64, Vec<DeviceId>)> {
        let c = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.generation.load(Ordering::SeqCst);
        if generation < c.from || generation > now {
            return None;
        }
        let first = c.log.partition_point(|&(g, _)| g <= generation);
        Some((now, c.log.range(first..).map(|&(_, d)| d).collect()))
    }

    // ----- providers -------------------------------------------------------------------

    /// Registers a session provider under `name` (seed `RegisterSessionProvider`).
    pub fn register_session_provider(
        &self,
        name: &str,
        provider: Arc<dyn SessionProvider>,
    ) -> Result<(), ModelError> {
        let mut p = self.providers.write().map_err(|_| ModelError::Poisoned)?;
        if p.contains_key(name) {
            return Err(ModelError::DuplicateProvider(name.to_string()));
        }
        p.insert(name.to_string(), provider);
        Ok(())
    }

    /// Registered provider names, sorted.
    pub fn provider_names(&self) -> Vec<String> {
        let mut v: Vec<String> = match self.providers.read() {
            Ok(p) => p.keys().cloned().collect(),
            Err(p) => p.into_inner().keys().cloned().collect(),
        };
        v.sort();
        v
    }

    fn wrap(&self, mut record: SessionRecord) -> Result<ClientSession, ModelError> {
        charge_to_now(&mut record, &*self.clock, self.unwatched_before());
        let provider = {
            let p = self.providers.read().map_err(|_| ModelError::Poisoned)?;
            p.get(record.data.provider.as_str())
                .cloned()
                .ok_or_else(|| ModelError::UnknownProvider(record.data.provider.to_string()))?
        };
        let local = Arc::new(LocalSource::new(
            self.store.clone(),
            self.clock.clone(),
            &record,
            self.saves.clone(),
            self.unwatched_before(),
        ));
        let source = provider.source(&record, local);
        Ok(ClientSession::new(record, source))
    }

    // ----- devices ---------------------------------------------------------------------

    pub fn create_device(
        &self,
        mac: MacAddr,
        ip: Option<IpAddr>,
        hostname: Option<String>,
    ) -> Result<Device, ModelError> {
        let d = self
            .store
            .create_device(mac, ip, hostname, self.clock.now_secs())?;
        self.emit(SessionEvent::DeviceCreated {
            device_id: d.id,
            mac: d.mac,
        });
        Ok(d)
    }

    pub fn device(&self, id: DeviceId) -> Result<Device, ModelError> {
        self.store.device(id)?.ok_or(ModelError::UnknownDevice(id))
    }

    pub fn device_by_mac(&self, mac: MacAddr) -> Result<Device, ModelError> {
        self.store
            .device_by_mac(mac)?
            .ok_or(ModelError::UnknownMac(mac))
    }

    /// Removes a device that is not connected, and all its sessions.
    pub fn remove_device(&self, id: DeviceId) -> Result<(), ModelError> {
        let device = self.device(id)?;
        if self.running_session_id(id)?.is_some() {
            return Err(ModelError::DeviceConnected(id));
        }
        let sessions: Vec<SessionId> = self
            .store
            .device_sessions(id)?
            .iter()
            .map(|r| r.id)
            .collect();
        self.store.remove_device(id)?;
        if !sessions.is_empty() {
            self.emit(SessionEvent::SessionsRemoved {
                session_ids: sessions,
            });
        }
        self.emit(SessionEvent::DeviceRemoved {
            device_id: id,
            mac: device.mac,
        });
        Ok(())
    }

    /// Removes a session that is not running.
    pub fn remove_session(&self, id: SessionId) -> Result<(), ModelError> {
        let rec = self
            .store
            .session(id)?
            .ok_or(ModelError::UnknownSession(id))?;
        if self.running_session_id(rec.device_id)? == Some(id) {
            return Err(ModelError::SessionRunning(id));
        }
        self.store.remove_sessions(&[id])?;
        self.emit(SessionEvent::SessionsRemoved {
            session_ids: vec![id],
        });
        Ok(())
    }

    /// Updates the IP and hostname of a device.
    pub fn update_device_info(
        &self,
        id: DeviceId,
        ip: Option<IpAddr>,
        hostname: Option<String>,
    ) -> Result<Device, ModelError> {
        let mut d = self.device(id)?;
        d.ip = ip;
        d.hostname = hostname;
        self.store.update_device(&d)?;
        Ok(d)
    }

    /// Moves a device, with all its sessions and its connection state, to `new_mac`
    /// (private MAC rotation). Fails if `new_mac` belongs to another device.
    pub fn rekey_device(&self, id: DeviceId, new_mac: MacAddr) -> Result<Device, ModelError> {
        let old = self.device(id)?;
        let d = self.store.rekey_device(id, new_mac)?;
        if old.mac != new_mac {
            self.emit(SessionEvent::DeviceRekeyed {
                device_id: id,
                old_mac: old.mac,
                new_mac,
            });
        }
        Ok(d)
    }

    // ----- sessions --------------------------------------------------------------------

    /// Creates a local session (seed `CreateSession`). `session_type` is 0 (time),
    /// 1 (data) or 2 (time_or_data); `secs` applies to time types, `mb` (1 MB =
    /// 1,000,000 bytes) to data types; `exp_days` counts days after `started_at +
    /// secs`; speeds are mbit/s and ignored when `use_global_speed`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_session(
        &self,
        device_id: DeviceId,
        session_type: u8,
        secs: u64,
        mb: f64,
        exp_days: Option<u32>,
        down_mbits: i32,
        up_mbits: i32,
        use_global_speed: bool,
    ) -> Result<ClientSession, ModelError> {
        let session_type = SessionType::try_from(session_type)?;
        let data_bytes = mb_to_bytes("data_mb", mb)?;
        check_speed("down_mbits", down_mbits)?;
        check_speed("up_mbits", up_mbits)?;
        let data = SessionData {
            provider: LOCAL_PROVIDER.into(),
            session_type,
            time_secs: secs,
            data_bytes,
            time_cons: 0,
            data_cons_bytes: 0,
            started_at: None,
            exp_days,
            down_mbits,
            up_mbits,
            use_global_speed,
            created_at: self.clock.now_secs(),
        };
        self.create_session_with(device_id, data).await
    }

    /// Creates a session from complete data, e.g. for another provider (which must be
    /// registered). Consumption and `started_at` are taken as given.
    pub async fn create_session_with(
        &self,
        device_id: DeviceId,
        data: SessionData,
    ) -> Result<ClientSession, ModelError> {
        data.validate()?;
        if !self
            .providers
            .read()
            .map_err(|_| ModelError::Poisoned)?
            .contains_key(data.provider.as_str())
        {
            return Err(ModelError::UnknownProvider(data.provider.into()));
        }
        let rec = self
            .store
            .create_session(device_id, data)
            .map_err(|e| match e {
                crate::StoreError::UnknownDevice(id) => ModelError::UnknownDevice(id),
                other => other.into(),
            })?;
        self.emit(SessionEvent::SessionCreated {
            device_id,
            session_id: rec.id,
        });
        self.wrap(rec)
    }

    /// A session by id.
    pub fn session(&self, id: SessionId) -> Result<ClientSession, ModelError> {
        let rec = self
            .store
            .session(id)?
            .ok_or(ModelError::UnknownSession(id))?;
        self.wrap(rec)
    }

    /// All sessions of a device in creation order, including ended ones.
    pub fn device_sessions(&self, device_id: DeviceId) -> Result<Vec<ClientSession>, ModelError> {
        self.device(device_id)?;
        self.store
            .device_sessions(device_id)?
            .into_iter()
            .map(|r| self.wrap(r))
            .collect()
    }

    /// The oldest available (not consumed, not expired) session, skipping `except`.
    fn oldest_available(
        &self,
        device_id: DeviceId,
        now_secs: i64,
        except: Option<SessionId>,
    ) -> Result<Option<SessionRecord>, ModelError> {
        Ok(self
            .store
            .device_sessions(device_id)?
            .into_iter()
            .map(|mut r| {
                // The running one's time up to now.
                charge_to_now(&mut r, &*self.clock, self.unwatched_before());
                r
            })
            .find(|r| Some(r.id) != except && r.data.is_available(now_secs)))
    }

    /// The running session of a connected device (seed `CurrSession`).
    pub fn curr_session(&self, device_id: DeviceId) -> Result<Option<ClientSession>, ModelError> {
        self.device(device_id)?;
        let sid = self.running()?.get(&device_id).map(|r| r.session_id);
        match sid {
            Some(sid) => Ok(Some(self.session(sid)?)),
            None => Ok(None),
        }
    }

    /// The running session, else the oldest available paused or unstarted one
    /// (seed `GetSession`). Consumed or expired sessions are never returned.
    pub async fn get_session(&self, device_id: DeviceId) -> Result<ClientSession, ModelError> {
        self.device(device_id)?;
        let now = self.clock.now_secs();
        let sid = self.running()?.get(&device_id).map(|r| r.session_id);
        if let Some(sid) = sid {
            if let Some(mut rec) = self.store.session(sid)? {
                charge_to_now(&mut rec, &*self.clock, self.unwatched_before());
                if rec.data.is_available(now) {
                    return self.wrap(rec);
                }
            }
        }
        match self.oldest_available(device_id, now, None)? {
            Some(rec) => self.wrap(rec),
            None => Err(ModelError::NoAvailableSession(device_id)),
        }
    }

    // ----- connection ------------------------------------------------------------------

    pub fn is_connected(&self, device_id: DeviceId) -> Result<bool, ModelError> {
        self.device(device_id)?;
        Ok(self.running()?.contains_key(&device_id))
    }

    /// Connected devices and their running sessions, by device id.
    pub fn connected(&self) -> Result<Vec<(DeviceId, SessionId)>, ModelError> {
        let mut v: Vec<_> = self
            .running()?
            .iter()
            .map(|(d, r)| (*d, r.session_id))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Of `sessions` (each with its device), those that are not their device's
    /// running session, in their order: one look at the in-memory cache each,
    /// under one lock.
    pub fn not_running(
        &self,
        sessions: &[(SessionId, DeviceId)],
    ) -> Result<Vec<SessionId>, ModelError> {
        let running = self.running()?;
        Ok(sessions
            .iter()
            .filter(|&&(s, d)| running.get(&d).is_none_or(|r| r.session_id != s))
            .map(|&(s, _)| s)
            .collect())
    }

    /// The running session of a connected device, `None` when it is not connected (or
    /// unknown). Reads the in-memory cache only.
    pub fn running_session_id(&self, device_id: DeviceId) -> Result<Option<SessionId>, ModelError> {
        Ok(self.running()?.get(&device_id).map(|r| r.session_id))
    }

    /// The meter mark of the device's running session: the reading up to which its data
    /// usage has been charged. `None` when the device is not connected or no reading was
    /// recorded since it connected.
    pub fn meter_mark(&self, device_id: DeviceId) -> Result<Option<MeterMark>, ModelError> {
        let Some(sid) = self.running_session_id(device_id)? else {
            return Ok(None);
        };
        Ok(self
            .store
            .session(sid)?
            .and_then(|r| r.run)
            .and_then(|run| run.meter))
    }

    /// Drops every running session's hint if a session was saved from outside the
    /// manager since the last look (its copy may be stale).
    fn check_hints(&self, running: &mut DenseMap<DeviceId, Running>) {
        let n = self.saves.load(Ordering::SeqCst);
        if self.saves_seen.swap(n, Ordering::SeqCst) != n {
            for r in running.values_mut() {
                r.hint = None;
            }
            self.look_at_all();
        }
    }

    fn schedule(&self) -> Result<MutexGuard<'_, Schedule>, ModelError> {
        self.schedule.lock().map_err(|_| ModelError::Poisoned)
    }

    /// The next tick looks at the device, whatever its hint says.
    fn look_soon(&self, device_id: DeviceId) {
        if let Ok(mut s) = self.schedule.lock() {
            s.at(device_id, i64::MIN);
        }
    }

    /// The next tick looks at every running session.
    fn look_at_all(&self) {
        if let Ok(mut s) = self.schedule.lock() {
            s.all = true;
        }
    }

    /// Restarts the device's meter at `mark` without charging anything, e.g. when the
    /// device moved to another MAC address whose kernel counters are a different meter.
    /// The bytes of the old meter must have been charged first. No-op when not connected.
    pub fn reset_meter_mark(&self, device_id: DeviceId, mark: MeterMark) -> Result<(), ModelError> {
        let mut running = self.running()?;
        let Some(r) = running.get_mut(&device_id) else {
            return Ok(());
        };
        r.hint = None;
        self.look_soon(device_id);
        let sid = r.session_id;
        if let Some(mut rec) = self.store.session(sid)? {
            if let Some(run) = rec.run.as_mut() {
                run.meter = Some(mark);
                self.store.save_session(&rec)?;
            }
        }
        Ok(())
    }

    /// The stored run state of the device's running session (`None` when not connected).
    pub fn run_state(&self, device_id: DeviceId) -> Result<Option<RunState>, ModelError> {
        let Some(sid) = self.running_session_id(device_id)? else {
            return Ok(None);
        };
        Ok(self.store.session(sid)?.and_then(|r| r.run))
    }

    /// Starts or resumes the device's oldest available session and publishes
    /// `notification` (seed `Connect`). Connecting a connected device returns its running
    /// session without events (settling it first if it ran out since the last tick). Fails with [`ModelError::NoAvailableSession`].
    pub async fn connect(
        &self,
        device_id: DeviceId,
        notification: &str,
    ) -> Result<ClientSession, ModelError> {
        self.device(device_id)?;
        if self.is_blocked(device_id)? {
            return Err(ModelError::Blocked(device_id));
        }
        let sid = self.running()?.get(&device_id).map(|r| r.session_id);
        if let Some(sid) = sid {
            let now = self.clock.now_secs();
            let mut current = self.store.session(sid)?;
            if let Some(r) = current.as_mut() {
                charge_to_now(r, &*self.clock, self.unwatched_before());
            }
            if !current.is_some_and(|r| r.data.is_available(now)) {
                // The running session ran out since the last tick: settle first.
                self.tick()?;
            }
            let sid = self.running()?.get(&device_id).map(|r| r.session_id);
            if let Some(sid) = sid {
                return self.session(sid);
            }
        }
        let mut running = self.running()?;
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        let mut rec = self
            .oldest_available(device_id, now, None)?
            .ok_or(ModelError::NoAvailableSession(device_id))?;
        let first_start = rec.data.started_at.is_none();
        if first_start {
            rec.data.started_at = Some(now);
        }
        rec.run = Some(self.fresh_run());
        self.store.save_session(&rec)?;
        running.insert(device_id, Running::new(rec.id));
        self.look_soon(device_id);
        self.bump_generation([device_id]);
        drop(running);
        self.emit(if first_start {
            SessionEvent::SessionStarted {
                device_id,
                session_id: rec.id,
            }
        } else {
            SessionEvent::SessionResumed {
                device_id,
                session_id: rec.id,
            }
        });
        self.emit(SessionEvent::Connected {
            device_id,
            session_id: rec.id,
            notification: notification.to_string(),
        });
        self.wrap(rec)
    }

    /// Pauses the running session (its time stops) and publishes `notification`
    /// (seed `Disconnect`). Disconnecting a disconnected device only publishes the event.
    pub async fn disconnect(
        &self,
        device_id: DeviceId,
        notification: &str,
    ) -> Result<(), ModelError> {
        self.device(device_id)?;
        let mut running = self.running()?;
        let Some(r) = running.get(&device_id).copied() else {
            drop(running);
            self.emit(SessionEvent::Disconnected {
                device_id,
                session_id: None,
                notification: notification.to_string(),
            });
            return Ok(());
        };
        let now_ms = self.clock.now_ms();
        if let Some(mut rec) = self.store.session(r.session_id)? {
            self.charge_time(&mut rec);
            rec.run = None;
            rec.settle_end(now_ms.div_euclid(1000));
            self.store.save_session(&rec)?;
        }
        running.remove(&device_id);
        self.bump_generation([device_id]);
        drop(running);
        self.emit(SessionEvent::SessionPaused {
            device_id,
            session_id: r.session_id,
        });
        self.emit(SessionEvent::Disconnected {
            device_id,
            session_id: Some(r.session_id),
            notification: notification.to_string(),
        });
        Ok(())
    }

    // ----- bulk accounting -------------------------------------------------------------

    /// The data budget in bytes of the device's running session: `Some(remaining)` for data
    /// and time_or_data sessions, `None` when unlimited (time session) or not connected.
    pub fn data_budget_bytes(&self, device_id: DeviceId) -> Result<Option<u64>, ModelError> {
        let sid = self.running()?.get(&device_id).map(|r| r.session_id);
        match sid {
            Some(sid) => Ok(self
                .store
                .session(sid)?
                .and_then(|r| r.data.data_budget_bytes())),
            None => Ok(None),
        }
    }

    /// Remaining data of a session in bytes (saturating at zero).
    pub fn remaining_data_bytes(&self, session_id: SessionId) -> Result<u64, ModelError> {
        Ok(self
            .store
            .session(session_id)?
            .ok_or(ModelError::UnknownSession(session_id))?
            .data
            .remaining_data_bytes())
    }

    /// Charges traffic to the running sessions of connected devices, in one store write.
    /// Bytes beyond a session's allocation stay on that session (they are not carried to
    /// the next one). Devices that are not connected are listed in `not_connected`.
    ///
    /// The byte counts are deltas, so a batch that is replayed after a crash is charged
    /// twice; [`SessionsMgr::record_meter`] is the idempotent variant.
    pub fn record_usage(&self, usage: &[(DeviceId, u64)]) -> Result<TickReport, ModelError> {
        let now_ms = self.clock.now_ms();
        let mut running = self.running()?;
        let mut report = TickReport::default();
        let mut changed: IdMap<SessionId, SessionRecord> = IdMap::default();
        let mut touched: Vec<(DeviceId, SessionId)> = Vec::new();
        for &(device_id, bytes) in usage {
            let Some(sid) = running.get(&device_id).map(|r| r.session_id) else {
                report.not_connected.push(device_id);
                continue;
            };
            if bytes == 0 {
                continue;
            }
            let rec = self.load_changed(&mut changed, &mut touched, device_id, sid)?;
            rec.data.data_cons_bytes = rec.data.data_cons_bytes.saturating_add(bytes);
        }
        let events = self.settle(&mut running, &mut changed, &touched, now_ms, &mut report)?;
        drop(running);
        for e in events {
            self.emit(e);
        }
        Ok(report)
    }

    /// Charges data usage from absolute readings of the byte meter (the kernel's
    /// per-device counters), exactly once.
    ///
    /// For each connected device with reading `r`, against the mark `m` stored in its
    /// running session's [`RunState::meter`]:
    /// * no mark yet (first reading since connect): the mark becomes `r`, nothing is
    ///   charged;
    /// * `m.epoch != r.epoch` (the counters were recreated): `r.bytes` is charged and the
    ///   mark becomes `r`; the datapath was gone, so connected time starts again from now:
    ///   the time since this manager was made is charged (the datapath served it), the
    ///   time before it and after the last charge the store holds is not (at most a
    ///   checkpoint interval, see [`SessionsMgr::charge_connected_time`]);
    /// * otherwise `r.bytes - m.bytes` is charged and the mark becomes `r`; a reading below
    ///   the mark charges nothing and leaves the mark (it never moves backwards).
    ///
    /// Consumption, marks, the end of consumed or expired sessions and the start of the
    /// next ones (which take over the mark) are saved in one `save_sessions` batch: after a
    /// crash either both the consumption and the mark are stored or neither, so replaying
    /// the same reading charges nothing twice. A session whose bytes are charged has its
    /// connected time charged up to now with them (its record is written anyway); its end
    /// by time is the tick's (see [`SessionsMgr::tick`]). Devices that are not connected
    /// are listed in `not_connected`.
    pub fn record_meter(
        &self,
        readings: &[(DeviceId, MeterMark)],
    ) -> Result<TickReport, ModelError> {
        let now_ms = self.clock.now_ms();
        let mut running = self.running()?;
        self.check_hints(&mut running);
        let mut report = TickReport::default();
        let mut changed: IdMap<SessionId, SessionRecord> = IdMap::default();
        let mut touched: Vec<(DeviceId, SessionId)> = Vec::new();
        let now = now_ms.div_euclid(1000);
        let (mono, boot) = (self.clock.mono_ms(), self.clock.boot_id());
        let mut usage: Vec<UsageUpdate> = Vec::with_capacity(readings.len());
        // Where each device is, in one pass (see `DenseMap::positions`):
        // `running` does not change in the loop.
        let at = running.positions(readings.iter().map(|r| r.0));
        for (&(device_id, reading), at) in readings.iter().zip(at) {
            let Some(r) = at.and_then(|at| running.at_mut(at)) else {
                report.not_connected.push(device_id);
                continue;
            };
            let sid = r.session_id;
            if !changed.contains_key(&sid) {
                if let Some(h) = r.hint.as_mut() {
                    // The hint is what the store holds: charge it without reading the record.
                    let (charge, mark) = meter_charge(h.run.meter, reading);
                    if charge == 0 && h.run.meter == Some(mark) {
                        continue;
                    }
                    let mut next = *h;
                    next.data_cons_bytes = next.data_cons_bytes.saturating_add(charge);
                    if new_epoch(h.run.meter, reading) {
                        self.charge_watched(&mut next.run, &mut next.time_cons);
                        next.run = self.fresh_run();
                    } else {
                        // Its time too, since the record is written anyway.
                        charge_run_time(&mut next.run, &mut next.time_cons, mono, boot);
                    }
                    next.run.meter = Some(mark);
                    if next.is_available(now) {
                        *h = next;
                        usage.push(next.update(sid));
                        continue;
                    }
                    // It ends: the full path below settles it from the stored record.
                    r.hint = None;
                }
            }
            let stored = match changed.get(&sid) {
                Some(rec) => rec.run,
                None => {
                    self.store
                        .session(sid)?
                        .ok_or(ModelError::UnknownSession(sid))?
                        .run
                }
            };
            let mark = stored.and_then(|r| r.meter);
            let (charge, new_mark) = meter_charge(mark, reading);
            if stored.is_some() && mark == Some(new_mark) && charge == 0 {
                continue;
            }
            let fresh = self.fresh_run();
            let rec = self.load_changed(&mut changed, &mut touched, device_id, sid)?;
            rec.data.data_cons_bytes = rec.data.data_cons_bytes.saturating_add(charge);
            if new_epoch(mark, reading) {
                if let Some(run) = rec.run.as_mut() {
                    self.charge_watched(run, &mut rec.data.time_cons);
                }
                rec.run = Some(fresh);
            }
            let run = rec.run.get_or_insert(fresh);
            run.meter = Some(new_mark);
        }
        self.record_usage_deferred(&mut running, &usage, &mut report)?;
        let events = self.settle(&mut running, &mut changed, &touched, now_ms, &mut report)?;
        drop(running);
        for e in events {
            self.emit(e);
        }
        Ok(report)
    }

    /// The record of running session `sid` in `changed`, loading it from the store and
    /// marking it touched on first use.
    fn load_changed<'c>(
        &self,
        changed: &'c mut IdMap<SessionId, SessionRecord>,
        touched: &mut Vec<(DeviceId, SessionId)>,
        device_id: DeviceId,
        sid: SessionId,
    ) -> Result<&'c mut SessionRecord, ModelError> {
        match changed.entry(sid) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let rec = self
                    .store
                    .session(sid)?
                    .ok_or(ModelError::UnknownSession(sid))?;
                touched.push((device_id, sid));
                Ok(e.insert(rec))
            }
        }
    }

    /// Charges one session directly (connected or not) and saves it. Returns the
    /// transition when it ended a running session.
    pub fn add_data_bytes(
        &self,
        session_id: SessionId,
        bytes: u64,
    ) -> Result<Option<Transition>, ModelError> {
        let now_ms = self.clock.now_ms();
        let mut running = self.running()?;
        let mut rec = self
            .store
            .session(session_id)?
            .ok_or(ModelError::UnknownSession(session_id))?;
        rec.data.data_cons_bytes = rec.data.data_cons_bytes.saturating_add(bytes);
        let device_id = rec.device_id;
        let mut changed: IdMap<SessionId, SessionRecord> =
            [(session_id, rec)].into_iter().collect();
        let is_running = running.get(&device_id).map(|r| r.session_id) == Some(session_id);
        let mut report = TickReport::default();
        let events = if is_running {
            self.settle(
                &mut running,
                &mut changed,
                &[(device_id, session_id)],
                now_ms,
                &mut report,
            )?
        } else {
            let now = now_ms.div_euclid(1000);
            let recs: Vec<SessionRecord> = changed
                .into_values()
                .map(|mut r| {
                    r.settle_end(now);
                    r
                })
                .collect();
            self.store.save_sessions(&recs)?;
            Vec::new()
        };
        drop(running);
        for e in events {
            self.emit(e);
        }
        Ok(report.transitions.into_iter().next())
    }

    /// Adds elapsed connected time to the running sessions that come due
    /// (those whose time runs out or that expire by now, and
    /// every one after a save from outside the manager or a step of the wall
    /// clock), then ends the consumed or expired ones and starts the next
    /// available session of their devices. One store write for the whole batch.
    ///
    /// Time is charged from the stored [`RunState::charged_to_ms`] in whole seconds of
    /// the monotonic clock (the remainder is carried), and `charged_to_ms` moves in the
    /// same write as `time_cons`. After a restart the first tick therefore charges the
    /// time the process was down (the device stayed connected in the kernel meanwhile),
    /// unless the machine booted since: then nothing of the gap is charged.
    pub fn tick(&self) -> Result<TickReport, ModelError> {
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        let (mono, boot) = (self.clock.mono_ms(), self.clock.boot_id());
        let offset = now_ms - mono;
        let mut running = self.running()?;
        self.check_hints(&mut running);
        let mut schedule = self.schedule()?;
        if (offset - schedule.offset_ms).abs() > WALL_STEP_MS {
            // The wall clock stepped: every expiry is somewhere else.
            schedule.all = true;
        }
        if schedule.due.len() > 2 * running.len() + STALE_ENTRIES {
            // Entries of devices long gone (a connect, a pause, a far
            // expiry each): built anew, the schedule holds one a session.
            schedule.all = true;
        }
        let due: Vec<DeviceId> = if schedule.all {
            schedule.all = false;
            schedule.offset_ms = offset;
            schedule.due.clear();
            running.iter().map(|(&d, _)| d).collect()
        } else {
            let mut due = Vec::new();
            while let Some(&Reverse((at, device_id))) = schedule.due.peek() {
                if at > mono {
                    break;
                }
                schedule.due.pop();
                due.push(device_id);
            }
            due.sort_unstable();
            due.dedup();
            due
        };
        let mut report = TickReport::default();
        let mut changed: IdMap<SessionId, SessionRecord> = IdMap::default();
        let mut touched = Vec::new();
        let mut usage: Vec<UsageUpdate> = Vec::new();
        for device_id in due {
            // Disconnected since it was scheduled: nothing to do.
            let Some(r) = running.get_mut(&device_id) else {
                continue;
            };
            if let Some(h) = r.hint.as_mut() {
                let mut next = *h;
                let secs = charge_run_time(&mut next.run, &mut next.time_cons, mono, boot);
                if next.is_available(now) {
                    if secs > 0 || next.run != h.run {
                        *h = next;
                        usage.push(next.update(r.session_id));
                    }
                    schedule.at(device_id, next.due_mono_ms(offset, boot));
                    continue;
                }
                // It ends: the full path below settles it from the stored record.
                r.hint = None;
            }
            let mut rec = self
                .store
                .session(r.session_id)?
                .ok_or(ModelError::UnknownSession(r.session_id))?;
            let run_before = rec.run;
            let secs = self.charge_time(&mut rec);
            if secs > 0 || rec.run != run_before || !rec.data.is_available(now) {
                touched.push((device_id, r.session_id));
                changed.insert(r.session_id, rec);
            } else {
                // What the store holds: the hint, and when to look again.
                r.hint = Hint::of(&rec);
                // One without a hint is looked at again in a second.
                let at = r.hint.map_or(mono + 1000, |h| h.due_mono_ms(offset, boot));
                schedule.at(device_id, at);
            }
        }
        drop(schedule);
        self.record_usage_deferred(&mut running, &usage, &mut report)?;
        let events = self.settle(&mut running, &mut changed, &touched, now_ms, &mut report)?;
        // Every running session has been charged by this manager.
        self.adopted.store(true, Ordering::Relaxed);
        drop(running);
        for e in events {
            self.emit(e);
        }
        Ok(report)
    }

    /// Charges every running session's connected time up to now into what
    /// the store holds (the poll charges it only when a session comes due):
    /// before a checkpoint, so that a reboot loses no more of it than the
    /// time since the last one.
    pub fn charge_connected_time(&self) -> Result<(), ModelError> {
        let (mono, boot) = (self.clock.mono_ms(), self.clock.boot_id());
        let mut running = self.running()?;
        self.check_hints(&mut running);
        let mut usage = Vec::new();
        let mut unhinted = Vec::new();
        for r in running.values_mut() {
            let Some(h) = r.hint.as_mut() else {
                unhinted.push(r.session_id);
                continue;
            };
            let before = h.run;
            // A run of another boot starts again without a charge: a change too.
            if charge_run_time(&mut h.run, &mut h.time_cons, mono, boot) > 0 || h.run != before {
                usage.push(h.update(r.session_id));
            }
        }
        let mut report = TickReport::default();
        self.record_usage_deferred(&mut running, &usage, &mut report)?;
        // Those without a hint (a save dropped it) from the store.
        let mut recs = Vec::with_capacity(unhinted.len());
        for sid in unhinted {
            if let Some(mut rec) = self.store.session(sid)? {
                if rec.run.is_some() && self.charge_time(&mut rec) > 0 {
                    recs.push(rec);
                }
            }
        }
        if !recs.is_empty() {
            self.store.save_sessions(&recs)?;
        }
        Ok(())
    }

    /// Ends the touched running sessions that are no longer available, advances their
    /// devices (carrying the run state over) or disconnects them, saves every changed
    /// record in one batch and returns the events to publish.
    fn settle(
        &self,
        running: &mut DenseMap<DeviceId, Running>,
        changed: &mut IdMap<SessionId, SessionRecord>,
        touched: &[(DeviceId, SessionId)],
        now_ms: i64,
        report: &mut TickReport,
    ) -> Result<Vec<SessionEvent>, ModelError> {
        let mut moved = Vec::new();
        let out = self.settle_changes(running, changed, touched, now_ms, report, &mut moved);
        // Also when it failed half way: a running session it changed is named.
        if !moved.is_empty() {
            self.bump_generation(moved);
        }
        out
    }

    /// [`SessionsMgr::settle`], naming in `moved` each device whose running
    /// session it changed, as it changes it.
    fn settle_changes(
        &self,
        running: &mut DenseMap<DeviceId, Running>,
        changed: &mut IdMap<SessionId, SessionRecord>,
        touched: &[(DeviceId, SessionId)],
        now_ms: i64,
        report: &mut TickReport,
        moved: &mut Vec<DeviceId>,
    ) -> Result<Vec<SessionEvent>, ModelError> {
        let now = now_ms.div_euclid(1000);
        let auto_advance = self.auto_advance();
        let mut events = Vec::new();
        let mut new_running = Vec::new();
        for &(device_id, session_id) in touched {
            let Some(rec) = changed.get_mut(&session_id) else {
                continue;
            };
            // Its connected time up to now, which the poll charges only when due.
            if rec.run.is_some() {
                self.charge_time(rec);
            }
            let Some(reason) = rec.data.end_reason(now) else {
                continue;
            };
            rec.settle_end(now);
            let run = rec.run.take().unwrap_or(self.fresh_run());
            let mark = run.meter;
            events.push(match reason {
                EndReason::Consumed => SessionEvent::SessionConsumed {
                    device_id,
                    session_id,
                },
                EndReason::Expired => SessionEvent::SessionExpired {
                    device_id,
                    session_id,
                },
            });
            let next = if auto_advance {
                self.oldest_available(device_id, now, Some(session_id))?
            } else {
                None
            };
            let next = match next {
                Some(mut n) => {
                    // A session already in the batch is newer than its stored copy.
                    if let Some(c) = changed.remove(&n.id) {
                        n = c;
                    }
                    let first = n.data.started_at.is_none();
                    if first {
                        n.data.started_at = Some(now);
                        events.push(SessionEvent::SessionStarted {
                            device_id,
                            session_id: n.id,
                        });
                    }
                    events.push(SessionEvent::SessionAdvanced {
                        device_id,
                        from: session_id,
                        to: n.id,
                    });
                    // The next session's clock starts now: the ended session's
                    // uncharged fraction of a second is not carried over to it.
                    n.run = Some(RunState {
                        meter: run.meter,
                        ..self.fresh_run()
                    });
                    let id = n.id;
                    new_running.push((device_id, id));
                    moved.push(device_id);
                    changed.insert(id, n);
                    Some(id)
                }
                None => {
                    running.remove(&device_id);
                    moved.push(device_id);
                    events.push(SessionEvent::Disconnected {
                        device_id,
                        session_id: Some(session_id),
                        notification: if auto_advance {
                            NO_SESSION_LEFT
                        } else {
                            SESSION_ENDED
                        }
                        .to_string(),
                    });
                    None
                }
            };
            report.transitions.push(Transition {
                device_id,
                session_id,
                reason,
                next,
                mark,
            });
        }
        let mut recs: Vec<SessionRecord> = changed.drain().map(|(_, r)| r).collect();
        recs.sort_by_key(|r| r.id);
        if !recs.is_empty() {
            self.store.save_sessions(&recs)?;
        }
        report.updated += recs.len();
        for (device_id, session_id) in new_running {
            if let Some(r) = running.get_mut(&device_id) {
                *r = Running::new(session_id);
            }
        }
        // What was just written is what the store holds for these running sessions.
        let (offset, boot) = (now_ms - self.clock.mono_ms(), self.clock.boot_id());
        let mut schedule = self.schedule()?;
        for rec in &recs {
            if let Some(r) = running.get_mut(&rec.device_id) {
                if r.session_id == rec.id {
                    r.hint = Hint::of(rec);
                    let at = r.hint.map_or(i64::MIN, |h| h.due_mono_ms(offset, boot));
                    schedule.at(rec.device_id, at);
                }
            }
        }
        Ok(events)
    }

    /// Ends the paused sessions whose expiry passed while their device was
    /// disconnected (a running one is ended by [`SessionsMgr::tick`]): their
    /// `ended_at` becomes the expiry and `SessionExpired` is published, as for
    /// a running session. Scans every session: call it every few seconds, under
    /// the same lock as changes to sessions. Returns the sessions ended.
    pub fn expire_paused(&self) -> Result<Vec<SessionId>, ModelError> {
        let now = self.clock.now_secs();
        let running: crate::idmap::IdSet<SessionId> =
            self.running()?.values().map(|r| r.session_id).collect();
        let mut due = Vec::new();
        self.store.for_each_session(&mut |r| {
            if r.run.is_none()
                && r.ended_at.is_none()
                && r.data.end_reason(now) == Some(EndReason::Expired)
                && !running.contains(&r.id)
            {
                due.push(r.id);
            }
        })?;
        let mut recs = Vec::with_capacity(due.len());
        for id in &due {
            if let Some(mut r) = self.store.session(*id)? {
                r.settle_end(now);
                recs.push(r);
            }
        }
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        self.store.save_sessions(&recs)?;
        for r in &recs {
            self.emit(SessionEvent::SessionExpired {
                device_id: r.device_id,
                session_id: r.id,
            });
        }
        Ok(due)
    }

    /// The run state of a session whose connected time starts now.
    fn fresh_run(&self) -> RunState {
        RunState {
            charged_to_ms: self.clock.mono_ms(),
            boot: self.clock.boot_id(),
            meter: None,
        }
    }

    /// Charges the connected time of `run` since this manager was made (or
    /// its last charge, if later) up to now: the time this process saw the
    /// device served, before a reading of new counters starts its clock again.
    fn charge_watched(&self, run: &mut RunState, time_cons: &mut u64) {
        charge_since(run, time_cons, &*self.clock, self.unwatched_before());
    }

    /// Time before this is not this process's to charge without the first
    /// poll (see [`charge_to_now`]): when this manager was made, until its
    /// first tick.
    fn unwatched_before(&self) -> i64 {
        match self.adopted.load(Ordering::Relaxed) {
            true => i64::MIN,
            false => self.opened_mono_ms,
        }
    }

    /// Charges the record's connected time up to now (see [`charge_run_time`]); a
    /// record without run state starts being charged now. Returns the seconds charged.
    fn charge_time(&self, rec: &mut SessionRecord) -> u64 {
        let fresh = self.fresh_run();
        let run = rec.run.get_or_insert(fresh);
        charge_run_time(
            run,
            &mut rec.data.time_cons,
            fresh.charged_to_ms,
            fresh.boot,
        )
    }

    // ----- maintenance -----------------------------------------------------------------

    /// Removes sessions that ended at least `retention_secs` ago. Running sessions,
    /// and sessions that can still run (revived by a change), are kept. The gateway
    /// calls it under the lock it connects and polls under.
    pub fn gc(&self, retention_secs: i64) -> Result<Vec<SessionId>, ModelError> {
        let running: crate::idmap::IdSet<SessionId> =
            self.running()?.values().map(|r| r.session_id).collect();
        let now = self.clock.now_secs();
        let doomed: Vec<SessionId> = self
            .store
            .sessions()?
            .into_iter()
            .filter(|r| {
                // Never one that can still run, whatever its `ended_at` says.
                !running.contains(&r.id)
                    && !r.data.is_available(now)
                    && r.end_time(now)
                        .is_some_and(|end| end.saturating_add(retention_secs) <= now)
            })
            .map(|r| r.id)
            .collect();
        if !doomed.is_empty() {
            self.store.remove_sessions(&doomed)?;
            self.emit(SessionEvent::SessionsRemoved {
                session_ids: doomed.clone(),
            });
        }
        Ok(doomed)
    }

    /// Writes usage charged from hints. If the store refuses, the hints are dropped so
    /// the next poll starts again from what the store holds.
    fn record_usage_deferred(
        &self,
        running: &mut DenseMap<DeviceId, Running>,
        usage: &[UsageUpdate],
        report: &mut TickReport,
    ) -> Result<(), ModelError> {
        if usage.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.record_usage_deferred(usage) {
            for r in running.values_mut() {
                r.hint = None;
            }
            self.look_at_all();
            return Err(e.into());
        }
        report.updated += usage.len();
        Ok(())
    }

    /// Writes usage that the store keeps in memory (see
    /// [`SessionStore::record_usage_deferred`]) like any other write. The gateway calls it
    /// about once a second: what a crash loses before it is charged again on restart.
    pub fn flush(&self) -> Result<(), ModelError> {
        Ok(self.store.flush()?)
    }

    /// Makes acknowledged writes durable (see [`SessionStore::sync`]).
    pub fn sync(&self) -> Result<(), ModelError> {
        Ok(self.store.sync()?)
    }

    /// Checkpoints the store (see [`SessionStore::checkpoint`]), with every
    /// running session's connected time charged up to now first.
    pub fn checkpoint(&self) -> Result<(), ModelError> {
        self.charge_connected_time()?;
        Ok(self.store.checkpoint()?)
    }
}

/// Whether a reading comes from other counters than the mark's (the datapath's maps
/// were made anew: it did not serve the device meanwhile).
fn new_epoch(mark: Option<MeterMark>, reading: MeterMark) -> bool {
    mark.is_some_and(|m| m.epoch != reading.epoch)
}

/// A running session's record with its connected time charged up to now
/// (the poll charges it only when the session comes due, see [`Schedule`]):
/// what a view shows, and what a save starts from. Time before `since_ms`
/// (when this process's manager was made, until its first tick) is left to
/// the first poll, which
/// learns from the datapath whether the device was served meanwhile (see
/// [`SessionsMgr::record_meter`]); a record of another boot is left as it is
/// (see [`charge_run_time`]).
pub(crate) fn charge_to_now(rec: &mut SessionRecord, clock: &dyn Clock, since_ms: i64) {
    if let Some(run) = rec.run.as_mut() {
        charge_since(run, &mut rec.data.time_cons, clock, since_ms);
    }
}

/// Charges `run`'s connected time up to now, none of it before `since_ms`
/// (the clock reading moves there first); a run of another boot is left as
/// it is.
fn charge_since(run: &mut RunState, time_cons: &mut u64, clock: &dyn Clock, since_ms: i64) {
    let boot = clock.boot_id();
    if run.boot == boot {
        run.charged_to_ms = run.charged_to_ms.max(since_ms);
        charge_run_time(run, time_cons, clock.mono_ms(), boot);
    }
}

/// Charges the connected time since `run.charged_to_ms` (monotonic, boot `boot`) in
/// whole seconds, moving `charged_to_ms` by the same amount (the sub-second remainder
/// is carried). A run state of another boot starts again from `mono_ms` without
/// charging anything. Returns the seconds charged.
fn charge_run_time(run: &mut RunState, time_cons: &mut u64, mono_ms: i64, boot: u64) -> u64 {
    if run.boot != boot {
        *run = RunState {
            charged_to_ms: mono_ms,
            boot,
            meter: run.meter,
        };
        return 0;
    }
    let secs = mono_ms.saturating_sub(run.charged_to_ms).max(0) / 1000;
    if secs > 0 {
        run.charged_to_ms = run.charged_to_ms.saturating_add(secs * 1000);
        *time_cons = time_cons.saturating_add(secs as u64);
    }
    secs as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, MemoryStore};

    #[tokio::test]
    async fn the_schedule_holds_about_one_entry_a_session_however_often_devices_come_and_go() {
        let clock = Arc::new(ManualClock::new(1_800_000_000));
        let m = SessionsMgr::new(Arc::new(MemoryStore::new()), clock.clone());
        let d = m
            .create_device(MacAddr::new([2, 0, 0, 0, 0, 1]), None, None)
            .unwrap()
            .id;
        // A week of time, a far deadline: its entries come due only then.
        m.create_session(d, 0, 7 * 86_400, 0.0, None, 0, 0, false)
            .await
            .unwrap();
        let mut most = 0;
        for _ in 0..5_000 {
            m.connect(d, "").await.unwrap();
            m.tick().unwrap();
            clock.advance(std::time::Duration::from_millis(250));
            m.tick().unwrap();
            m.disconnect(d, "").await.unwrap();
            most = most.max(m.schedule.lock().unwrap().due.len());
        }
        assert!(
            most <= 2 + STALE_ENTRIES + 2,
            "{most} entries for one session"
        );
    }
}
