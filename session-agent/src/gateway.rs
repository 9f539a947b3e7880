//! Sessions drive the datapath: connecting a device programs the kernel (allow,
//! speed, data budget), a poll turns kernel counters into consumption, and
//! sessions that end are advanced or cut off.
//!
//! The session manager decides, the gateway applies: every charge, end and
//! advance is the manager's ([`SessionsMgr::record_meter`], [`SessionsMgr::tick`],
//! [`SessionsMgr::charge_tail`]), and what a device may have in the datapath is
//! the manager's [`Desired`] state ([`SessionsMgr::desired`]: its speeds and
//! budget, or nothing). The gateway reads the meters, hands the readings over,
//! and programs the client table to match.
//!
//! Data consumption is charged from absolute kernel counter readings ("meter
//! marks") stored in the same write as the consumption, so after a crash at any
//! moment the next reading charges exactly the bytes not yet charged: none are
//! lost and none are counted twice. The kernel enforces data budgets itself;
//! the poll only has to enforce time, within one poll interval.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex as StdMutex, RwLock as StdRwLock,
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use session_common::{MAX_CLIENTS, POLICY_ALLOWED, POLICY_MANUAL, POLICY_QUOTA};
use session_model::{
    idmap::IdMap, ClientSession, Desired, DeviceId, Grant, MacAddr, MeterMark, ModelError,
    SessionEvent, SessionsMgr, TickReport,
};
use tokio::sync::{broadcast, Mutex, Notify};
use tracing::{debug, info, warn};

use crate::{
    datapath::{Datapath, PinnedDatapath},
    dataplane::{IdleTracker, Pressure, RateLimit, MIN_BURST_BYTES},
    error::AgentError,
};

/// Longest interval between two runs of forgetting idle clients.
const FORGET_EVERY: Duration = Duration::from_secs(60);
/// How often the gateway's own addresses are read again from the kernel.
const GATEWAY_ADDRS_EVERY: Duration = Duration::from_secs(2);

/// How the gateway meters and enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Counter poll and time enforcement interval.
    pub poll_interval: Duration,
    /// Pause a session after this long without traffic.
    pub idle_timeout: Option<Duration>,
    /// Forget a client that is not allowed after this long without traffic,
    /// freeing its slot (see [`Maps::forget_idle`]).
    pub forget_idle: Option<Duration>,
    /// Per-client speed for sessions with `use_global_speed`, Mbit/s (0 = unlimited).
    pub global_down_mbits: u64,
    pub global_up_mbits: u64,
    /// Token-bucket depth in milliseconds at the limit.
    pub burst_ms: u64,
    /// Start the next available session when one ends (else disconnect).
    pub auto_advance: bool,
    /// How often the store is checkpointed (hybrid: log folded into redb).
    pub checkpoint_interval: Duration,
    /// How often usage charged by polls is written like any other store write
    /// (see [`SessionsMgr::flush`]).
    pub commit_interval: Duration,
    /// An address binding unused this long is removed (see [`Maps::sweep_bindings`]).
    pub bind_ttl: Duration,
    /// A voucher's session follows its customer to a new MAC (a phone that
    /// changed its Wi-Fi address types the code again) once the MAC it is on
    /// has been silent this long (see [`Gateway::silent_for`]).
    pub voucher_move_after: Duration,
}

/// Busiest clients listed in a metrics scrape, by default.
pub const DEFAULT_METRICS_TOP_CLIENTS: usize = 100;

/// The defaults of `session-agent run` (its options take theirs from here).
impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            idle_timeout: None,
            forget_idle: Some(Duration::from_secs(86_400)),
            global_down_mbits: 0,
            global_up_mbits: 0,
            burst_ms: crate::dataplane::DEFAULT_BURST_MS,
            auto_advance: true,
            checkpoint_interval: Duration::from_secs(60),
            commit_interval: Duration::from_millis(1000),
            bind_ttl: Duration::from_secs(300),
            voucher_move_after: Duration::from_secs(120),
        }
    }
}

/// What the datapath and the gateway announce besides session events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GatewayEvent {
    /// A MAC address was seen on a LAN for the first time.
    ClientSeen {
        lan: String,
        mac: String,
        device_id: Option<DeviceId>,
    },
    /// The kernel cut a device off because its data budget reached zero.
    QuotaCutoff {
        lan: String,
        mac: String,
        device_id: Option<DeviceId>,
    },
    /// A device was paused after `idle_timeout` without traffic.
    IdleTimeout { device_id: DeviceId },
    /// A MAC claimed a second IPv4 address while it still used another: two
    /// devices may share it (a cloned MAC).
    MacConflict {
        lan: String,
        mac: String,
        address: String,
        device_id: Option<DeviceId>,
    },
    /// The client table was over its high-water mark: clients that had not
    /// paid and were least recently active were forgotten to make room.
    TablePressure {
        /// Clients in the table after the run, and of how many slots.
        clients: u32,
        capacity: u32,
        /// Clients forgotten for room.
        reclaimed: u32,
    },
}

/// Cheap counters of the gateway's own work, for metrics.
#[derive(Debug, Default)]
pub struct GatewayStats {
    /// Polls done, and the sum and last of their durations in microseconds.
    pub polls: AtomicU64,
    pub poll_us_sum: AtomicU64,
    pub poll_us_last: AtomicU64,
    /// Polls that failed.
    pub poll_errors: AtomicU64,
    /// Datapath ring-buffer events handled, by kind.
    pub ring_new_client: AtomicU64,
    pub ring_quota_exhausted: AtomicU64,
    /// Store checkpoints done, and the sum and last of their durations in microseconds.
    pub checkpoints: AtomicU64,
    pub checkpoint_us_sum: AtomicU64,
    pub checkpoint_us_last: AtomicU64,
    pub checkpoint_errors: AtomicU64,
    /// Usage commits (see [`GatewayConfig::commit_interval`]), as for checkpoints.
    pub commits: AtomicU64,
    pub commit_us_sum: AtomicU64,
    pub commit_us_last: AtomicU64,
    pub commit_errors: AtomicU64,
    /// Idle clients forgotten (see [`GatewayConfig::forget_idle`]), and runs that failed.
    pub clients_forgotten: AtomicU64,
    pub forget_errors: AtomicU64,
    /// Slots taken back from lost races for an entry (see [`Maps::forget_idle`]).
    pub slots_reclaimed: AtomicU64,
    /// Clients forgotten because the table was under pressure, and the runs that did.
    pub clients_pressed: AtomicU64,
    pub pressure_runs: AtomicU64,
    /// Address bindings made by the datapath, removed unused, and in the tables now.
    pub addrs_bound: AtomicU64,
    pub bindings_expired: AtomicU64,
    pub bindings_live: AtomicU64,
    pub binding_sweep_errors: AtomicU64,
    /// MACs that claimed a second IPv4 address while using another.
    pub mac_conflicts: AtomicU64,
    /// The portal redirect's answers: 302s sent, requests that were not HTTP
    /// (400), and connections closed unanswered (too many at once, or no
    /// request head in time).
    pub redirects: AtomicU64,
    pub redirect_bad_requests: AtomicU64,
    pub redirect_dropped: AtomicU64,
    /// Kernel state found to differ from the sessions and corrected, by what
    /// (see [`Gateway::enforce_sessions`]).
    pub reconciled: [AtomicU64; Mismatch::ALL.len()],
}

/// How the datapath's view of a client can differ from its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Let through with no running session (and not by the operator).
    AllowedWithoutSession,
    /// Blocked while its session runs.
    BlockedWhileConnected,
    /// Speed limits other than its session's.
    Speed,
    /// A data budget where its session has none, or none where it has one.
    Budget,
}

impl Mismatch {
    pub const ALL: [Mismatch; 4] = [
        Mismatch::AllowedWithoutSession,
        Mismatch::BlockedWhileConnected,
        Mismatch::Speed,
        Mismatch::Budget,
    ];

    /// The `what` label of `session_agent_reconciled_total`.
    pub fn name(self) -> &'static str {
        match self {
            Mismatch::AllowedWithoutSession => "allowed_without_session",
            Mismatch::BlockedWhileConnected => "blocked_while_connected",
            Mismatch::Speed => "speed",
            Mismatch::Budget => "budget",
        }
    }
}

/// Bulk store work of the run loop.
#[derive(Debug, Clone, Copy)]
enum StoreWork {
    /// Usage charged by polls written like any other store write.
    Commit,
    /// The store's checkpoint (hybrid: the log folded into redb).
    Checkpoint,
}

/// How often the poll checks the datapath against the sessions.
const ENFORCE_EVERY: Duration = Duration::from_secs(1);
/// Connected devices whose speed and budget one check of the datapath
/// compares with their session (see [`Gateway::enforce_sessions`]).
const CHECK_SESSIONS_PER_RUN: usize = 1024;
/// How often paused sessions are checked for expiry (a scan of every session).
const EXPIRE_PAUSED_EVERY: Duration = Duration::from_secs(5);

impl GatewayStats {
    fn record(count: &AtomicU64, sum: &AtomicU64, last: &AtomicU64, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        count.fetch_add(1, Relaxed);
        sum.fetch_add(us, Relaxed);
        last.store(us, Relaxed);
    }
}

pub use crate::datapath::Lan;

/// What the gateway last heard of a watched MAC (see [`Gateway::silent_for`]).
#[derive(Debug, Clone, Copy)]
struct Heard {
    /// Its packet count (see [`Datapath::packets`]), and since when it has been that.
    packets: u64,
    since: Instant,
    /// When someone last asked about it.
    asked: Instant,
}

/// A MAC nobody asked about for this long is no longer watched.
const HEARD_FOR: Duration = Duration::from_secs(3600);
/// Most MACs watched at once (the least recently asked about go first).
const MAX_HEARD: usize = 256;

#[derive(Debug, Default)]
struct Activity {
    bytes: u64,
    since: Option<Instant>,
}

/// The running hotspot: sessions, the datapath of every LAN, and the loop between them.
pub struct Gateway {
    mgr: Arc<SessionsMgr>,
    /// The datapath the gateway programs (see [`Datapath`]).
    dp: Arc<dyn Datapath>,
    /// Changed by [`Gateway::reconfigure`] (a reload); read where it is used.
    cfg: StdRwLock<GatewayConfig>,
    /// Clients listed with their own series in `/metrics`.
    metrics_top_clients: std::sync::atomic::AtomicUsize,
    /// Serialises every change of a device's kernel state with the poll.
    ops: Mutex<()>,
    activity: StdMutex<HashMap<DeviceId, Activity>>,
    events: broadcast::Sender<GatewayEvent>,
    wake: Notify,
    /// Set by [`Gateway::stop`]: the run loop ends.
    stopped: std::sync::atomic::AtomicBool,
    stats: GatewayStats,
    /// Where the poll reads each connected device's meter.
    meter_table: StdMutex<Option<MeterTable>>,
    /// Bumped when a device's MAC changes, which the session generation does not see.
    rekeys: AtomicU64,
    /// What forgetting idle clients remembers between runs.
    idle_clients: StdMutex<IdleTracker>,
    /// MACs whose silence was asked about, followed by each poll.
    heard: StdMutex<HashMap<MacAddr, Heard>>,
    /// When the poll last checked the datapath against the sessions.
    last_enforced: StdMutex<Option<Instant>>,
    /// Where the next check of speeds and budgets starts among the connected devices.
    check_cursor: std::sync::atomic::AtomicUsize,
    /// Failed voucher tries per client, and redemption counts.
    vouchers: crate::vouchers::VoucherDesk,
    /// The walled garden by domain name (set by the daemon once attached).
    names: std::sync::OnceLock<Arc<crate::names::NameGarden>>,
    radius: std::sync::OnceLock<Arc<crate::radius::Radius>>,
}

/// The slot of every connected device, sorted by slot so that a poll walks
/// the counter arrays forwards; rebuilt when the connected devices change.
struct MeterTable {
    /// (session manager generation, rekeys) it was built at.
    built_at: (u64, u64),
    devices: Vec<DeviceId>,
    /// The slot of each device, in the order of `devices`.
    slots: Vec<u32>,
    /// Where the poll reads the meters into, kept between polls.
    bytes: Vec<u64>,
}

impl Gateway {
    /// A gateway over the pinned maps of `lans`.
    pub fn new(mgr: Arc<SessionsMgr>, lans: Vec<Lan>, cfg: GatewayConfig) -> Arc<Self> {
        Self::with_datapath(mgr, Arc::new(PinnedDatapath::new(lans)), cfg)
    }

    /// A gateway over any datapath (an in-memory one in tests, which keep
    /// their own handle to it).
    pub fn with_datapath(
        mgr: Arc<SessionsMgr>,
        dp: Arc<dyn Datapath>,
        cfg: GatewayConfig,
    ) -> Arc<Self> {
        mgr.set_auto_advance(cfg.auto_advance);
        mgr.set_global_speed(cfg.global_down_mbits, cfg.global_up_mbits);
        let (events, _) = broadcast::channel(4096);
        Arc::new(Self {
            mgr,
            dp,
            cfg: StdRwLock::new(cfg),
            metrics_top_clients: std::sync::atomic::AtomicUsize::new(DEFAULT_METRICS_TOP_CLIENTS),
            ops: Mutex::new(()),
            activity: StdMutex::new(HashMap::new()),
            events,
            wake: Notify::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            stats: GatewayStats::default(),
            meter_table: StdMutex::new(None),
            rekeys: AtomicU64::new(0),
            idle_clients: StdMutex::new(IdleTracker::default()),
            heard: StdMutex::new(HashMap::new()),
            last_enforced: StdMutex::new(None),
            check_cursor: std::sync::atomic::AtomicUsize::new(0),
            vouchers: crate::vouchers::VoucherDesk::default(),
            names: std::sync::OnceLock::new(),
            radius: std::sync::OnceLock::new(),
        })
    }

    /// Gives the gateway its walled garden by name (once).
    pub fn set_name_garden(&self, names: Arc<crate::names::NameGarden>) {
        let _ = self.names.set(names);
    }

    /// The interface indexes of the LANs (those that still exist).
    pub fn lan_indexes(&self) -> Vec<u32> {
        self.lans()
            .iter()
            .filter_map(|l| crate::iface::index(&l.name).ok())
            .collect()
    }

    /// Gives the gateway its RADIUS service (once).
    pub fn set_radius(&self, radius: Arc<crate::radius::Radius>) {
        let _ = self.radius.set(radius);
    }

    /// The RADIUS service, when one is configured.
    pub fn radius(&self) -> Option<&Arc<crate::radius::Radius>> {
        self.radius.get()
    }

    /// A device's counters in each direction, read with the operations lock
    /// held: after a poll that blocked it, so a session that just ended has
    /// its last bytes in them.
    pub async fn meter_split(&self, mac: MacAddr) -> crate::radius::acct::Reading {
        let _g = self.ops.lock().await;
        crate::radius::reading(
            self.dp.epoch(),
            self.dp
                .slot_of(&mac)
                .and_then(|s| self.dp.usage_split(s).ok()),
        )
    }

    /// The walled garden by domain name, when the daemon runs one.
    pub fn name_garden(&self) -> Option<&Arc<crate::names::NameGarden>> {
        self.names.get()
    }

    /// The mark the datapath's held DNS answers are sent on with, when it
    /// should hold them: there are garden names.
    pub fn dns_snoop_mark(&self) -> Option<u32> {
        let n = self.names.get()?;
        (!n.rules().is_empty()).then(|| n.options().mark)
    }

    /// Tells every LAN's datapath whether to hold DNS answers (see
    /// [`Gateway::dns_snoop_mark`]).
    pub fn update_dns_snoop(&self) {
        self.set_dns_snoop(self.dns_snoop_mark().is_some());
    }

    /// Holding of DNS answers on or off in every LAN's datapath.
    pub fn set_dns_snoop(&self, on: bool) {
        let Some(mark) = self.names.get().map(|n| n.options().mark) else {
            return;
        };
        for lan in self.lans() {
            let Ok(m) = lan.maps.lock() else {
                continue;
            };
            let mut cfg = m.lan();
            if on {
                cfg.flags |= session_common::LAN_DNS_SNOOP;
                cfg.dns_mark = mark;
            } else {
                cfg.flags &= !session_common::LAN_DNS_SNOOP;
            }
            if cfg != m.lan() {
                m.set_lan(&cfg);
            }
        }
    }

    /// The voucher desk (failed tries, counts).
    pub fn vouchers(&self) -> &crate::vouchers::VoucherDesk {
        &self.vouchers
    }

    pub fn sessions(&self) -> &Arc<SessionsMgr> {
        &self.mgr
    }

    /// The configuration in force (a copy: a reload may change it).
    pub fn config(&self) -> GatewayConfig {
        self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies a reloaded configuration: idle timeout, forgetting, global
    /// speeds, burst, auto-advance, binding TTL and the commit and checkpoint
    /// intervals take effect at once (speeds and bursts are programmed again on
    /// the spot for every connected device). Returns the names of the changed
    /// settings that only a restart applies (they stay as they were).
    pub fn reconfigure(&self, new: &GatewayConfig) -> Vec<&'static str> {
        let mut applied = new.clone();
        let mut restart = Vec::new();
        {
            let mut cur = self.cfg.write().unwrap_or_else(|e| e.into_inner());
            if new.poll_interval != cur.poll_interval {
                restart.push("poll_ms");
                applied.poll_interval = cur.poll_interval;
            }
            *cur = applied.clone();
        }
        self.mgr.set_auto_advance(applied.auto_advance);
        self.mgr
            .set_global_speed(applied.global_down_mbits, applied.global_up_mbits);
        // The next check would catch the new speeds and bursts; do it now.
        match self.enforce_sessions() {
            Ok(fixed) if !fixed.is_empty() => {
                info!(
                    devices = fixed.len(),
                    "speeds programmed again after the reload"
                )
            }
            Ok(_) => {}
            Err(e) => warn!("programming speeds after the reload failed: {e}"),
        }
        restart
    }

    /// Clients listed with their own series in `/metrics`.
    pub fn metrics_top_clients(&self) -> usize {
        self.metrics_top_clients.load(Relaxed)
    }

    pub fn set_metrics_top_clients(&self, n: usize) {
        self.metrics_top_clients.store(n, Relaxed);
    }

    pub fn lans(&self) -> &[Lan] {
        self.dp.lans()
    }

    /// The datapath the gateway programs.
    pub fn datapath(&self) -> &dyn Datapath {
        self.dp.as_ref()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<GatewayEvent> {
        self.events.subscribe()
    }

    /// Counters of polls, datapath events and checkpoints.
    pub fn stats(&self) -> &GatewayStats {
        &self.stats
    }

    /// The LANs the client table serves, as metrics and logs name it.
    pub fn table_name(&self) -> String {
        let names: Vec<&str> = self.lans().iter().map(|l| l.name.as_str()).collect();
        names.join(",")
    }

    /// The device's current meter reading: its up+down bytes over every LAN.
    fn reading(&self, mac: MacAddr) -> MeterMark {
        match self.dp.epoch() {
            Some(epoch) => MeterMark {
                epoch,
                bytes: self
                    .dp
                    .slot_of(&mac)
                    .and_then(|s| self.dp.usage_bytes(s).ok())
                    .unwrap_or(0),
            },
            None => MeterMark { epoch: 0, bytes: 0 },
        }
    }

    /// Meter readings of every connected device, from shared memory. The table of
    /// slots to read is rebuilt only when the connected devices changed.
    pub fn readings(&self) -> Result<Vec<(DeviceId, MeterMark)>, AgentError> {
        let built_at = (self.mgr.connected_generation(), self.rekeys.load(Relaxed));
        let mut table = self.meter_table.lock().unwrap();
        if table.as_ref().is_none_or(|t| t.built_at != built_at) {
            match self.build_meter_table(built_at, table.take())? {
                Ok(t) => *table = Some(t),
                // Some device has no slot yet: read it the slow way.
                Err(readings) => return Ok(readings),
            }
        }
        let Some(t) = table.as_mut() else {
            return Ok(Vec::new());
        };
        let Some(epoch) = self.dp.epoch() else {
            return Ok(Vec::new());
        };
        t.bytes.resize(t.slots.len(), 0);
        match self.dp.usage_into(&t.slots, &mut t.bytes) {
            Ok(()) => Ok(t
                .devices
                .iter()
                .zip(&t.bytes)
                .map(|(&device_id, &bytes)| (device_id, MeterMark { epoch, bytes }))
                .collect()),
            Err(e) => {
                // A connected device's entry is never forgotten; if it
                // went all the same, the next poll looks the slots up again.
                *table = None;
                Err(e)
            }
        }
    }

    /// The meter table of the connected devices, or (when a device has no
    /// slot yet) their readings. Slots never move while the pins live, so
    /// devices already in `old` keep theirs; only new devices are looked up.
    #[allow(clippy::type_complexity)]
    fn build_meter_table(
        &self,
        built_at: (u64, u64),
        old: Option<MeterTable>,
    ) -> Result<Result<MeterTable, Vec<(DeviceId, MeterMark)>>, AgentError> {
        let connected = self.mgr.connected()?;
        let known: IdMap<DeviceId, u32> = old
            .as_ref()
            .map(|t| {
                t.devices
                    .iter()
                    .copied()
                    .zip(t.slots.iter().copied())
                    .collect()
            })
            .unwrap_or_default();
        let mut rows: Vec<(DeviceId, u32)> = Vec::with_capacity(connected.len());
        for (device_id, _) in &connected {
            let slot = match known.get(device_id) {
                Some(&slot) => Some(slot),
                None => self.dp.slot_of(&self.mgr.device(*device_id)?.mac),
            };
            match slot {
                Some(slot) => rows.push((*device_id, slot)),
                None => {
                    let mut out = Vec::with_capacity(connected.len());
                    for (device_id, _) in &connected {
                        let mac = self.mgr.device(*device_id)?.mac;
                        out.push((*device_id, self.reading(mac)));
                    }
                    return Ok(Err(out));
                }
            }
        }
        // Slot order: the poll then walks the counter arrays forwards.
        rows.sort_unstable_by_key(|(_, slot)| *slot);
        Ok(Ok(MeterTable {
            bytes: Vec::with_capacity(rows.len()),
            built_at,
            devices: rows.iter().map(|(d, _)| *d).collect(),
            slots: rows.iter().map(|(_, s)| *s).collect(),
        }))
    }

    /// A grant's speeds as token buckets (up, down) at the configured depth.
    fn limits(&self, grant: &Grant) -> (RateLimit, RateLimit) {
        let l = |m| RateLimit::mbits(m, self.config().burst_ms, MIN_BURST_BYTES);
        (l(grant.up_mbits), l(grant.down_mbits))
    }

    /// Applies the manager's decision for a device: a grant is programmed
    /// into the client table (speed, and in HTB mode every LAN's classes,
    /// budget, then allow); no grant blocks it.
    ///
    /// With `fresh_budget` the kernel budget becomes the granted budget less
    /// the bytes counted since `charged` (the reading last charged, if any):
    /// those will be charged to this session by the next poll. Without it, a
    /// budget the kernel is already enforcing is left to run down.
    fn program(
        &self,
        state: &Desired,
        fresh_budget: bool,
        charged: Option<MeterMark>,
    ) -> Result<(), AgentError> {
        let Some(grant) = &state.grant else {
            return self.revoke(state.mac);
        };
        let mac = state.mac;
        let (up, down) = self.limits(grant);
        let pending = match charged {
            Some(last) if fresh_budget => {
                let now = self.reading(mac);
                if now.epoch == last.epoch {
                    now.bytes.saturating_sub(last.bytes)
                } else {
                    0
                }
            }
            _ => 0,
        };
        let budget = grant
            .budget_bytes
            .map(|b| b.saturating_sub(pending).min(i64::MAX as u64) as i64);
        self.dp.allow(&mac, up, down, budget, fresh_budget)
    }

    fn revoke(&self, mac: MacAddr) -> Result<(), AgentError> {
        self.dp.block(&mac)
    }

    /// Connects a device: starts or resumes its session, then lets it through at
    /// its speed with its remaining data as the kernel budget.
    pub async fn connect(
        &self,
        device_id: DeviceId,
        notification: &str,
    ) -> Result<ClientSession, AgentError> {
        let _g = self.ops.lock().await;
        let device = self.mgr.device(device_id)?;
        let now = self.mgr.clock().now_secs();
        if self
            .mgr
            .curr_session(device_id)?
            .is_some_and(|s| !s.data().is_available(now))
        {
            // Its session ran out since the last poll: settle it as the poll
            // would (the manager's connect would too, but drop what ends).
            self.poll_locked().await?;
        }
        match self.mgr.connect(device_id, notification).await {
            Ok(_) => {}
            Err(e) => {
                // Never leave a device let through without a running session.
                if self.mgr.curr_session(device_id)?.is_none() {
                    self.revoke(device.mac)?;
                }
                return Err(e.into());
            }
        }
        // For a device that was blocked this reading is where its charging
        // starts; one already connected is charged its bytes so far, which
        // may end its last session.
        self.charge(&[(device_id, self.reading(device.mac))])
            .await?;
        let state = self.mgr.desired(device_id)?;
        let Some(grant) = state.grant else {
            return Err(ModelError::NoAvailableSession(device_id).into());
        };
        self.program(&state, true, None)?;
        let session = self.mgr.session(grant.session_id)?;
        self.activity.lock().unwrap().insert(
            device_id,
            Activity {
                bytes: 0,
                since: None,
            },
        );
        info!(device_id, mac = %device.mac, session = session.id(), "connected");
        Ok(session)
    }

    /// Removes a device and all its sessions; a connected one only with
    /// `force`, which disconnects it first (blocked, its last bytes charged).
    pub async fn remove_device(&self, device_id: DeviceId, force: bool) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        if force && self.mgr.running_session_id(device_id)?.is_some() {
            self.disconnect_locked(device_id, "removed").await?;
        }
        Ok(self.mgr.remove_device(device_id)?)
    }

    /// Removes a session; a running one only with `force`, which disconnects
    /// its device first.
    pub async fn remove_session(&self, session_id: u64, force: bool) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        let device_id = self.mgr.session(session_id)?.device_id();
        if force && self.mgr.running_session_id(device_id)? == Some(session_id) {
            self.disconnect_locked(device_id, "removed").await?;
        }
        Ok(self.mgr.remove_session(session_id)?)
    }

    /// Disconnects a device: blocks it at once, charges its last bytes, pauses its session.
    pub async fn disconnect(
        &self,
        device_id: DeviceId,
        notification: &str,
    ) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        self.disconnect_locked(device_id, notification).await
    }

    async fn disconnect_locked(
        &self,
        device_id: DeviceId,
        notification: &str,
    ) -> Result<(), AgentError> {
        let device = self.mgr.device(device_id)?;
        self.revoke(device.mac)?;
        if self.mgr.is_connected(device_id)? {
            // Its last bytes, with the blocked device's final reading. A
            // session this ends is followed in the store (and then paused
            // below), but the device stays blocked: it is leaving.
            self.mgr
                .record_meter(&[(device_id, self.reading(device.mac))])?;
        }
        self.mgr.disconnect(device_id, notification).await?;
        self.activity.lock().unwrap().remove(&device_id);
        info!(device_id, mac = %device.mac, "disconnected");
        Ok(())
    }

    /// Re-programs a connected device after its running session changed
    /// (allocation, speed): the kernel budget follows the session's remaining data.
    pub async fn refresh(&self, device_id: DeviceId) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        let device = self.mgr.device(device_id)?;
        if self.mgr.is_connected(device_id)? {
            let charged = self.reading(device.mac);
            self.charge(&[(device_id, charged)]).await?;
            self.program(&self.mgr.desired(device_id)?, true, Some(charged))?;
        }
        Ok(())
    }

    /// Changes a session the way a portal does (see [`SessionsMgr::change_session`]),
    /// without losing usage: the device's new bytes are charged first, the
    /// manager changes the session while the poll waits, and the device is
    /// programmed to the manager's decision (budget, speed, or blocked).
    pub async fn update_session<F>(
        &self,
        session_id: session_model::SessionId,
        change: F,
    ) -> Result<ClientSession, AgentError>
    where
        F: FnOnce(&mut ClientSession) -> Result<(), ModelError>,
    {
        let _g = self.ops.lock().await;
        let device_id = self.mgr.session(session_id)?.device_id();
        let running = self.mgr.running_session_id(device_id)? == Some(session_id);
        // Settling a running session ticks every connected device, which may
        // end others' sessions too: charge every device's bytes first, as a
        // poll does, so that none passed uncharged before a block.
        let charged = if running {
            self.readings()?
        } else {
            Vec::new()
        };
        if running {
            self.charge(&charged).await?;
        }
        let (session, report) = self.mgr.change_session(session_id, change).await?;
        if running {
            // The change may have ended the session (or revived it).
            self.apply(&report, &charged)?;
            let state = self.mgr.desired(device_id)?;
            if state.grant.is_some() {
                let mark = charged
                    .iter()
                    .find(|(d, _)| *d == device_id)
                    .map(|(_, m)| *m);
                self.program(&state, true, mark)?;
            }
        }
        Ok(session)
    }

    /// Moves a device (and its sessions) to a new MAC, following it in the
    /// kernel: a running session goes on at once on the new MAC (allowed, its
    /// speed and remaining data as budget) and the old one is blocked, with
    /// nothing charged twice. The device the gateway made for the new MAC when
    /// it first saw it (a phone that randomised its MAC) is absorbed if it has
    /// no sessions; one with sessions is refused ([`AgentError::MacHasSessions`]).
    /// Returns the absorbed device.
    pub async fn rekey(
        &self,
        device_id: DeviceId,
        new_mac: MacAddr,
    ) -> Result<Option<DeviceId>, AgentError> {
        let _g = self.ops.lock().await;
        let old = self.mgr.device(device_id)?;
        let absorbed = match self.mgr.device_by_mac(new_mac) {
            Ok(other) if other.id != device_id => {
                let sessions = self.mgr.store().device_sessions(other.id);
                if !sessions.map_err(ModelError::from)?.is_empty() {
                    return Err(AgentError::MacHasSessions {
                        mac: new_mac,
                        device_id: other.id,
                    });
                }
                self.mgr.remove_device(other.id)?;
                info!(device_id, absorbed = other.id, mac = %new_mac, "device without sessions absorbed by a rekey");
                Some(other.id)
            }
            _ => None,
        };
        if self.mgr.is_connected(device_id)? {
            // Block the old MAC and charge its last bytes; a session this
            // ends is followed in the store only: the old MAC stays blocked,
            // the new one is programmed below.
            self.revoke(old.mac)?;
            self.mgr
                .record_meter(&[(device_id, self.reading(old.mac))])?;
        }
        // The device's addresses go with it: the new MAC claims them afresh.
        self.dp.release_bindings(&old.mac)?;
        self.mgr.rekey_device(device_id, new_mac)?;
        // The device's slots changed with its MAC: build the meter table afresh.
        *self.meter_table.lock().unwrap() = None;
        self.rekeys.fetch_add(1, Relaxed);
        // Still connected unless that charge ended its last session.
        if self.mgr.is_connected(device_id)? {
            let mark = self.reading(new_mac);
            self.mgr.reset_meter_mark(device_id, mark)?;
            self.program(&self.mgr.desired(device_id)?, true, Some(mark))?;
        }
        Ok(absorbed)
    }

    /// How long nothing was heard from `mac` (no packet sent, received or
    /// dropped), as far as the gateway knows: the poll's watch of it, or the
    /// runs that forget idle clients, tell since when its count stands still
    /// (neither knows: zero). The MAC is watched from now on, so a later
    /// question is answered within a poll interval. `None` for a MAC the
    /// client table does not hold and that was not watched when it left:
    /// nothing is known of it (a client forgotten as idle, or one never seen
    /// nor let through).
    pub fn silent_for(&self, mac: MacAddr) -> Result<Option<Duration>, AgentError> {
        let now = Instant::now();
        let packets = match self.dp.slot_of(&mac) {
            Some(slot) => self.dp.packets(slot)?.map(|p| (slot, p)),
            None => None,
        };
        let Some((slot, packets)) = packets else {
            let mut heard = self.heard.lock().unwrap();
            return Ok(heard.get_mut(&mac).map(|h| {
                h.asked = now;
                now.saturating_duration_since(h.since)
            }));
        };
        let forgetting = self.idle_clients.lock().unwrap().quiet_since(slot, packets);
        let mut heard = self.heard.lock().unwrap();
        let since = match heard.get(&mac) {
            Some(h) if h.packets == packets => h.since,
            _ => forgetting.unwrap_or(now),
        };
        if heard.len() >= MAX_HEARD && !heard.contains_key(&mac) {
            if let Some(oldest) = heard.iter().min_by_key(|(_, h)| h.asked).map(|(m, _)| *m) {
                heard.remove(&oldest);
            }
        }
        heard.insert(
            mac,
            Heard {
                packets,
                since,
                asked: now,
            },
        );
        Ok(Some(now.saturating_duration_since(since)))
    }

    /// Follows the activity of the MACs [`Gateway::silent_for`] was asked
    /// about; one nobody asked about for [`HEARD_FOR`] is no longer watched.
    /// A count that cannot be read is taken as activity: the MAC is not
    /// thought silent for what the gateway could not see.
    fn refresh_heard(&self) {
        let mut heard = self.heard.lock().unwrap();
        if heard.is_empty() {
            return;
        }
        let now = Instant::now();
        heard.retain(|_, h| now.duration_since(h.asked) < HEARD_FOR);
        for (mac, h) in heard.iter_mut() {
            // A MAC that left the table stays as it was: silent.
            let Some(slot) = self.dp.slot_of(mac) else {
                continue;
            };
            match self.dp.packets(slot) {
                Ok(Some(p)) if p == h.packets => {}
                Ok(Some(p)) => (h.packets, h.since) = (p, now),
                Ok(None) => {}
                Err(e) => {
                    debug!(%mac, "reading a watched client's packet count failed: {e}");
                    h.since = now;
                }
            }
        }
    }

    /// Charges readings and applies every session transition to the kernel.
    async fn charge(&self, readings: &[(DeviceId, MeterMark)]) -> Result<TickReport, AgentError> {
        let report = self.mgr.record_meter(readings)?;
        self.apply(&report, readings)?;
        Ok(report)
    }

    /// Programs the kernel after session transitions. `charged` are the readings
    /// last charged (the devices' meter marks).
    fn apply(
        &self,
        report: &TickReport,
        charged: &[(DeviceId, MeterMark)],
    ) -> Result<(), AgentError> {
        for t in &report.transitions {
            let last = charged
                .iter()
                .rev()
                .find(|(d, _)| *d == t.device_id)
                .map(|(_, m)| *m);
            let state = self.mgr.desired(t.device_id)?;
            match (t.next, state.grant) {
                (Some(_), Some(g)) => {
                    info!(device_id = t.device_id, from = t.session_id, to = g.session_id, reason = ?t.reason, "session advanced");
                    // Bytes counted since the reading go to the new session.
                    self.program(&state, true, last)?;
                }
                // The next session ended too: a later transition of the report says so.
                (Some(_), None) => {}
                (None, _) => {
                    info!(device_id = t.device_id, session = t.session_id, reason = ?t.reason, "no session left: blocked");
                    self.revoke(state.mac)?;
                    // Bytes that passed between the last reading and the block
                    // belong to the session that just ended.
                    if let Some(last) = last {
                        self.mgr
                            .charge_tail(t.session_id, last, self.reading(state.mac))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One poll: charge every connected device's new bytes, advance time, end and
    /// advance sessions, pause idle devices.
    pub async fn poll(&self) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        self.poll_locked().await
    }

    /// [`Gateway::poll`] with the operations lock held.
    async fn poll_locked(&self) -> Result<(), AgentError> {
        let started = Instant::now();
        let readings = self.readings()?;
        self.charge(&readings).await?;
        let report = self.mgr.tick()?;
        self.apply(&report, &readings)?;
        self.refresh_heard();
        if let Some(idle) = self.config().idle_timeout {
            let now = Instant::now();
            let mut idle_devices = Vec::new();
            {
                let mut act = self.activity.lock().unwrap();
                for (device_id, r) in &readings {
                    let a = act.entry(*device_id).or_default();
                    if a.since.is_none() || a.bytes != r.bytes {
                        *a = Activity {
                            bytes: r.bytes,
                            since: Some(now),
                        };
                    } else if a.since.is_some_and(|s| now.duration_since(s) >= idle) {
                        idle_devices.push(*device_id);
                    }
                }
            }
            for device_id in idle_devices {
                self.disconnect_locked(device_id, "idle timeout").await?;
                let _ = self.events.send(GatewayEvent::IdleTimeout { device_id });
            }
        }
        let due = {
            let mut last = self.last_enforced.lock().unwrap();
            let due = last.is_none_or(|t| t.elapsed() >= ENFORCE_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            self.enforce_sessions()?;
        }
        let took = started.elapsed();
        GatewayStats::record(
            &self.stats.polls,
            &self.stats.poll_us_sum,
            &self.stats.poll_us_last,
            took,
        );
        debug!(
            devices = readings.len(),
            took_us = took.as_micros() as u64,
            "poll"
        );
        Ok(())
    }

    /// Checks that the datapath lets through exactly the devices whose session
    /// runs, at their session's speed and with a budget where it has one, and
    /// corrects (and counts, see [`GatewayStats::reconciled`]) any client that
    /// differs. A healthy gateway finds nothing. Speeds and budgets are
    /// compared for [`CHECK_SESSIONS_PER_RUN`] devices per run, in turn.
    /// Called with the operations lock held.
    pub fn enforce_sessions(&self) -> Result<Vec<(Mismatch, MacAddr)>, AgentError> {
        let connected = self.connected_slots()?;
        let by_slot: HashMap<u32, usize> = connected
            .iter()
            .enumerate()
            .map(|(i, (_, slot))| (*slot, i))
            .collect();
        // Whether a device is let through is checked every run; its speed and
        // budget, which need its session from the store, for a share of the
        // devices per run, so every device is checked within a few seconds.
        let n = connected.len();
        let first = self.check_cursor.fetch_add(CHECK_SESSIONS_PER_RUN, Relaxed) % n.max(1);
        let in_share =
            |i: usize| n <= CHECK_SESSIONS_PER_RUN || (i + n - first) % n < CHECK_SESSIONS_PER_RUN;
        let clients = self.dp.enforced()?;
        let mut found: Vec<(Mismatch, MacAddr, Option<DeviceId>)> = Vec::new();
        for c in clients {
            let allowed = c.flags & POLICY_ALLOWED != 0;
            let (m, device) = match by_slot.get(&c.slot).map(|&i| (i, connected[i].0)) {
                None if allowed && c.flags & POLICY_MANUAL == 0 => {
                    (Mismatch::AllowedWithoutSession, None)
                }
                None => continue,
                Some((_, d)) if !allowed => (Mismatch::BlockedWhileConnected, Some(d)),
                Some((i, d)) if in_share(i) => {
                    let Some(grant) = self.mgr.granted(d)? else {
                        continue;
                    };
                    let (up, down) = self.limits(&grant);
                    let budget = grant.budget_bytes.is_some();
                    if (c.up, c.down) != (up, down) {
                        (Mismatch::Speed, Some(d))
                    } else if budget != (c.flags & POLICY_QUOTA != 0) {
                        (Mismatch::Budget, Some(d))
                    } else {
                        continue;
                    }
                }
                Some(_) => continue,
            };
            if !found.iter().any(|(_, mac, _)| *mac == c.mac) {
                found.push((m, c.mac, device));
            }
        }
        for (m, mac, device) in &found {
            warn!(%mac, what = m.name(), "the datapath differed from the sessions: corrected");
            self.stats.reconciled[*m as usize].fetch_add(1, Relaxed);
            match device {
                Some(d) => self.program(&self.mgr.desired(*d)?, false, None)?,
                None => self.revoke(*mac)?,
            }
        }
        Ok(found.into_iter().map(|(m, mac, _)| (m, mac)).collect())
    }

    /// Every connected device with its slot in the client table: the poll's
    /// meter table when it is current, else looked up (devices without a
    /// slot are left out: the datapath holds nothing of them to correct).
    fn connected_slots(&self) -> Result<Vec<(DeviceId, u32)>, AgentError> {
        let built_at = (self.mgr.connected_generation(), self.rekeys.load(Relaxed));
        if let Some(t) = self.meter_table.lock().unwrap().as_ref() {
            if t.built_at == built_at {
                return Ok(t
                    .devices
                    .iter()
                    .copied()
                    .zip(t.slots.iter().copied())
                    .collect());
            }
        }
        let mut out = Vec::new();
        for (device_id, _) in self.mgr.connected()? {
            if let Some(slot) = self.dp.slot_of(&self.mgr.device(device_id)?.mac) {
                out.push((device_id, slot));
            }
        }
        Ok(out)
    }

    /// After a restart: charge what the kernel counted while the agent was away and
    /// re-program every connected device, keeping live kernel budgets.
    pub async fn reconcile(&self) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        let connected = self.mgr.connected()?;
        let mut readings = Vec::new();
        for (device_id, _) in &connected {
            let device = self.mgr.device(*device_id)?;
            readings.push((*device_id, self.reading(device.mac)));
        }
        self.charge(&readings).await?;
        let report = self.mgr.tick()?;
        self.apply(&report, &readings)?;
        for (device_id, _) in self.mgr.connected()? {
            self.program(&self.mgr.desired(device_id)?, false, None)?;
        }
        crate::memory::trim();
        info!(
            devices = connected.len(),
            "reconciled sessions with the datapath"
        );
        Ok(())
    }

    /// A MAC seen for the first time: make sure there is a device for it.
    pub fn client_seen(&self, lan: &str, mac: MacAddr) {
        self.stats.ring_new_client.fetch_add(1, Relaxed);
        let m = mac;
        let device_id = match self.mgr.device_by_mac(m) {
            Ok(d) => Some(d.id),
            Err(ModelError::UnknownMac(_)) => match self.mgr.create_device(m, None, None) {
                Ok(d) => Some(d.id),
                Err(e) => {
                    warn!(%mac, "cannot record new client: {e}");
                    None
                }
            },
            Err(e) => {
                warn!(%mac, "cannot look up client: {e}");
                None
            }
        };
        let _ = self.events.send(GatewayEvent::ClientSeen {
            lan: lan.into(),
            mac: mac.to_string(),
            device_id,
        });
    }

    /// The kernel cut a device off: poll now so its next session starts at once.
    pub fn quota_exhausted(&self, lan: &str, mac: MacAddr) {
        self.stats.ring_quota_exhausted.fetch_add(1, Relaxed);
        let device_id = self.mgr.device_by_mac(mac).ok().map(|d| d.id);
        let _ = self.events.send(GatewayEvent::QuotaCutoff {
            lan: lan.into(),
            mac: mac.to_string(),
            device_id,
        });
        self.wake.notify_one();
    }

    /// Ends [`Gateway::run_loop`] after the round it is in.
    pub fn stop(&self) {
        self.stopped.store(true, Relaxed);
        self.wake.notify_one();
    }

    /// Polls until [`Gateway::stop`] (or until the task is dropped); a quota
    /// event wakes it early.
    pub async fn run_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config().poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = Instant::now();
        let mut last_commit = Instant::now();
        let mut last_forget = Instant::now();
        let mut last_sweep = Instant::now();
        let mut last_addrs = Instant::now();
        let mut last_expiry = Instant::now();
        // systemd's watchdog (WatchdogSec=), pinged once per loop: a loop that
        // stops coming round is restarted.
        let watchdog = crate::systemd::Watchdog::from_env();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
            }
            if self.stopped.load(Relaxed) {
                return;
            }
            watchdog.ping();
            if let Err(e) = self.poll().await {
                self.stats.poll_errors.fetch_add(1, Relaxed);
                warn!("poll failed: {e}");
            }
            // Read each round: a reload may have changed it.
            let cfg = self.config();
            if last_commit.elapsed() >= cfg.commit_interval {
                last_commit = Instant::now();
                self.store_work(StoreWork::Commit).await;
            }
            // Often enough to notice idleness within a quarter of the time,
            // and every second while the table is under pressure; the interval
            // is also the grace before a forgotten slot is reused.
            let every = match cfg.forget_idle {
                _ if self.dp.clients_live() > Pressure::DEFAULT.high as u64 => {
                    Some(Duration::from_secs(1))
                }
                Some(idle) => Some((idle / 4).clamp(Duration::from_secs(1), FORGET_EVERY)),
                None => None,
            };
            if every.is_some_and(|every| last_forget.elapsed() >= every) {
                last_forget = Instant::now();
                // Without forgetting, only the pressure forgets.
                let idle = cfg.forget_idle.unwrap_or(Duration::MAX);
                if let Err(e) = self.forget_idle_clients(idle).await {
                    self.stats.forget_errors.fetch_add(1, Relaxed);
                    warn!("forgetting idle clients failed: {e}");
                }
            }
            // A binding in use is stamped again within a sweep interval, so one
            // unused for the TTL is removed within a quarter of it more.
            if last_sweep.elapsed()
                >= (cfg.bind_ttl / 4).clamp(Duration::from_secs(1), FORGET_EVERY)
            {
                last_sweep = Instant::now();
                let gw = self.clone();
                match tokio::task::spawn_blocking(move || gw.sweep_bindings()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        self.stats.binding_sweep_errors.fetch_add(1, Relaxed);
                        warn!("sweeping address bindings failed: {e}");
                    }
                    Err(e) => warn!("sweeping address bindings failed: {e}"),
                }
            }
            // The gateway's addresses change (a WAN address from DHCP, an
            // operator's `ip addr`): what is usage follows within seconds.
            if last_addrs.elapsed() >= GATEWAY_ADDRS_EVERY {
                last_addrs = Instant::now();
                let gw = self.clone();
                match tokio::task::spawn_blocking(move || gw.dp.refresh_gateway_addrs()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("reading the gateway's addresses failed: {e}"),
                    Err(e) => warn!("reading the gateway's addresses failed: {e}"),
                }
            }
            if last_expiry.elapsed() >= EXPIRE_PAUSED_EVERY {
                last_expiry = Instant::now();
                match self.expire_paused().await {
                    Ok(ended) if !ended.is_empty() => {
                        info!(sessions = ?ended, "paused sessions expired")
                    }
                    Ok(_) => {}
                    Err(e) => warn!("ending expired paused sessions failed: {e}"),
                }
            }
            if last_checkpoint.elapsed() >= cfg.checkpoint_interval {
                last_checkpoint = Instant::now();
                self.store_work(StoreWork::Checkpoint).await;
            }
        }
    }

    /// Ends paused sessions that expired (see [`SessionsMgr::expire_paused`]).
    pub async fn expire_paused(&self) -> Result<Vec<u64>, AgentError> {
        let _g = self.ops.lock().await;
        Ok(self.mgr.expire_paused()?)
    }

    /// Removes sessions that ended `retention_secs` ago, then devices left
    /// with no session that no LAN's client table holds any more (forgotten
    /// idle clients: phones with random MACs would otherwise grow the store
    /// forever) and that are older than that. Runs under the lock that
    /// connects, polls and changes sessions take, so nothing is revived
    /// meanwhile. Returns the sessions and the devices removed.
    pub async fn gc(&self, retention_secs: i64) -> Result<(Vec<u64>, Vec<DeviceId>), AgentError> {
        let _g = self.ops.lock().await;
        let sessions = self.mgr.gc(retention_secs)?;
        let now = self.mgr.clock().now_secs();
        let mut devices = Vec::new();
        for d in self.mgr.store().devices().map_err(ModelError::from)? {
            if d.created_at.saturating_add(retention_secs) > now {
                continue;
            }
            if self.dp.slot_of(&d.mac).is_some()
                || !self
                    .mgr
                    .store()
                    .device_sessions(d.id)
                    .map_err(ModelError::from)?
                    .is_empty()
            {
                continue;
            }
            match self.mgr.remove_device(d.id) {
                Ok(()) => devices.push(d.id),
                Err(ModelError::DeviceConnected(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((sessions, devices))
    }

    /// Removes address bindings unused for the TTL.
    fn sweep_bindings(&self) -> Result<(), AgentError> {
        let done = self.dp.sweep_bindings(self.config().bind_ttl)?;
        self.stats.bindings_expired.fetch_add(done.expired, Relaxed);
        if done.expired > 0 {
            debug!(
                expired = done.expired,
                live = done.live,
                "address bindings expired"
            );
        }
        self.stats.bindings_live.store(done.live, Relaxed);
        Ok(())
    }

    /// The datapath bound an address to a client.
    pub fn addr_bound(&self, lan: &str, mac: MacAddr, addr: Option<std::net::IpAddr>) {
        self.stats.addrs_bound.fetch_add(1, Relaxed);
        if let Some(a) = addr {
            debug!(lan, %mac, address = %a, "address bound");
        }
    }

    /// A MAC claimed a second IPv4 address while it still used another.
    pub fn mac_conflict(&self, lan: &str, mac: MacAddr, addr: Option<std::net::IpAddr>) {
        self.stats.mac_conflicts.fetch_add(1, Relaxed);
        let address = addr.map(|a| a.to_string()).unwrap_or_default();
        warn!(lan, %mac, %address, "a second IPv4 address from one MAC while it uses another: two devices may share it");
        let device_id = self.mgr.device_by_mac(mac).ok().map(|d| d.id);
        let _ = self.events.send(GatewayEvent::MacConflict {
            lan: lan.into(),
            mac: mac.to_string(),
            address,
            device_id,
        });
    }

    /// Forgets clients that are not allowed and have been idle
    /// for `idle`, except connected devices' (see [`Maps::forget_idle`]).
    async fn forget_idle_clients(&self, idle: Duration) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        let mut keep = std::collections::HashSet::new();
        for (device_id, _) in self.mgr.connected()? {
            keep.insert(self.mgr.device(device_id)?.mac);
        }
        let now = Instant::now();
        let mut tracker = self.idle_clients.lock().unwrap();
        let done = self
            .dp
            .forget_idle(&mut tracker, now, idle, Pressure::DEFAULT, &|mac| {
                keep.contains(mac)
            })?;
        self.stats
            .clients_forgotten
            .fetch_add(done.retired as u64, Relaxed);
        if done.pressed > 0 {
            self.stats
                .clients_pressed
                .fetch_add(done.pressed as u64, Relaxed);
            self.stats.pressure_runs.fetch_add(1, Relaxed);
            let clients = (self.dp.clients_live() as u32).saturating_sub(done.retired);
            warn!(
                clients,
                capacity = MAX_CLIENTS,
                reclaimed = done.pressed,
                "client table under pressure (a flood of MACs?): forgot the least recently active clients that had not paid"
            );
            let _ = self.events.send(GatewayEvent::TablePressure {
                clients,
                capacity: MAX_CLIENTS,
                reclaimed: done.pressed,
            });
        }
        self.stats
            .slots_reclaimed
            .fetch_add(done.reclaimed as u64, Relaxed);
        if done.retired > 0 || done.freed > 0 || done.reclaimed > 0 {
            info!(
                forgotten = done.retired,
                slots_freed = done.freed,
                slots_reclaimed = done.reclaimed,
                free_slots = self.dp.free_slots(),
                "forgot idle clients"
            );
        }
        Ok(())
    }

    /// Runs a bulk store operation (writes and fsyncs) on a blocking thread,
    /// off the async runtime, and returns freed memory to the system after it;
    /// records its duration when it succeeded, or counts it and logs why not.
    async fn store_work(self: &Arc<Self>, work: StoreWork) {
        let gw = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let done = match work {
                StoreWork::Commit => gw.mgr.flush(),
                StoreWork::Checkpoint => gw.mgr.checkpoint(),
            };
            crate::memory::trim();
            done.map(|()| started.elapsed()).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let s = &self.stats;
        let (what, count, sum, last, errors) = match work {
            StoreWork::Commit => (
                "committing usage to the store",
                &s.commits,
                &s.commit_us_sum,
                &s.commit_us_last,
                &s.commit_errors,
            ),
            StoreWork::Checkpoint => (
                "store checkpoint",
                &s.checkpoints,
                &s.checkpoint_us_sum,
                &s.checkpoint_us_last,
                &s.checkpoint_errors,
            ),
        };
        match done {
            Ok(took) => GatewayStats::record(count, sum, last, took),
            Err(e) => {
                errors.fetch_add(1, Relaxed);
                warn!("{what} failed: {e}");
            }
        }
    }

    /// Session events, for logs and the API.
    pub fn session_events(&self) -> broadcast::Receiver<SessionEvent> {
        self.mgr.subscribe()
    }
}
