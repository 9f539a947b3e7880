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

mod config;
mod control;
mod events;
mod housekeeping;
mod idle;
mod meter;
mod poll;
mod stats;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex as StdMutex, RwLock as StdRwLock,
    },
    time::{Duration, Instant},
};

use session_model::{DeviceId, MacAddr, SessionEvent, SessionsMgr};
use tokio::sync::{broadcast, Mutex, Notify};
use tracing::{info, warn};

pub use config::{GatewayConfig, DEFAULT_METRICS_TOP_CLIENTS};
pub use events::GatewayEvent;
pub use stats::{GatewayStats, Mismatch};

use crate::{
    datapath::{Datapath, PinnedDatapath},
    dataplane::IdleTracker,
};

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
    /// When each connected device's counters last moved (with an idle timeout).
    idle_watch: StdMutex<idle::IdleWatch>,
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
    /// When the run loop's poll last charged usage (see [`Gateway::poll_round`]).
    last_charged: StdMutex<Option<Instant>>,
    /// The next round of the run loop charges usage whenever it comes (the
    /// kernel cut a device off).
    charge_soon: std::sync::atomic::AtomicBool,
    /// Where the next check of speeds and budgets starts among the connected devices.
    check_cursor: std::sync::atomic::AtomicUsize,
}

/// The slot of every connected device, sorted by slot so that a poll walks
/// the counter arrays forwards; rebuilt when the connected devices change.
struct MeterTable {
    /// (session manager generation, rekeys) it was built at.
    built_at: (u64, u64),
    /// The devices (`owners.devices`, in slot order) and their slots.
    owners: Arc<SlotOwners>,
    /// The slot of each device, in the order of `owners.devices`.
    slots: Vec<u32>,
    /// Where the poll reads the meters into, kept between polls.
    bytes: Vec<u64>,
    /// What the last reading of each device found (the low 32 bits, which
    /// tell a move the datapath did not, unless by a multiple of 4 GiB), and
    /// the counters' epoch then (`None`: none yet, the next reading takes
    /// every device).
    prev: Vec<u32>,
    /// Rows of devices new to the table since the last reading, which the
    /// next reading takes whatever their counters (sorted).
    unread: Vec<usize>,
    prev_epoch: Option<u64>,
    /// The row the next reading of moved meters compares from (see
    /// [`meter::CHECK_ROWS`]).
    check_at: usize,
    /// The buffers of a reading of moved meters, kept between polls.
    scratch: Scratch,
}

/// What a reading of moved meters works in: the slots that moved (then the
/// slots read), their rows in the meter table, and their counters.
#[derive(Default)]
struct Scratch {
    slots: Vec<u32>,
    rows: Vec<usize>,
    bytes: Vec<u64>,
}

impl Scratch {
    /// Slots whose room is kept between polls: a burst of moves (every
    /// device at once) does not keep its buffers for good.
    const KEEP: usize = 8_192;

    fn clear(&mut self) {
        self.slots.clear();
        self.rows.clear();
        self.bytes.clear();
    }

    /// What to keep of it after a reading.
    fn kept(self) -> Self {
        match self.rows.capacity() > Self::KEEP || self.slots.capacity() > Self::KEEP {
            true => Self::default(),
            false => self,
        }
    }
}

/// The connected devices (in slot order, as the meter table reads them), and
/// which of them holds each slot of the client table.
#[derive(Debug, Default)]
struct SlotOwners {
    devices: Vec<DeviceId>,
    /// Per slot: 1 + the index in `devices` of its device, 0 for none.
    by_slot: Vec<u32>,
}

impl SlotOwners {
    fn of(rows: &[(DeviceId, u32)]) -> Self {
        let len = rows.iter().map(|(_, s)| *s as usize + 1).max().unwrap_or(0);
        let mut by_slot = vec![0; len];
        for (i, &(_, slot)) in rows.iter().enumerate() {
            by_slot[slot as usize] = i as u32 + 1;
        }
        Self {
            devices: rows.iter().map(|(d, _)| *d).collect(),
            by_slot,
        }
    }

    fn get(&self, slot: u32) -> Option<DeviceId> {
        self.row(slot).map(|i| self.devices[i])
    }

    /// The index in `devices` of the slot's device.
    fn row(&self, slot: u32) -> Option<usize> {
        let i = *self.by_slot.get(slot as usize)?;
        i.checked_sub(1).map(|i| i as usize)
    }
}

impl Gateway {
    /// A gateway over the pinned maps of `lans`.
    pub fn new(mgr: Arc<SessionsMgr>, lans: Vec<Lan>, cfg: GatewayConfig) -> Arc<Self> {
        Self::with_datapath(mgr, Arc::new(PinnedDatapath::new(lans)), cfg)
    }

    /// A gateway over the maps pinned under `pin_root` for one LAN, `lan`, with
    /// `store` and `clock` (as the daemon builds its own; tests and benchmarks
    /// use it over a harness's pins).
    pub fn over_pins(
        pin_root: &std::path::Path,
        lan: &str,
        store: Arc<dyn session_model::SessionStore>,
        clock: Arc<dyn session_model::Clock>,
        cfg: GatewayConfig,
    ) -> Result<Arc<Self>, crate::error::AgentError> {
        let maps = crate::dataplane::Maps::open(pin_root, lan)?;
        maps.ensure_epoch()?;
        let lan = Lan {
            name: lan.into(),
            maps: StdMutex::new(maps),
        };
        let mgr = Arc::new(SessionsMgr::new(store, clock));
        Ok(Self::new(mgr, vec![lan], cfg))
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
            idle_watch: StdMutex::new(idle::IdleWatch::default()),
            events,
            wake: Notify::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            stats: GatewayStats::default(),
            meter_table: StdMutex::new(None),
            rekeys: AtomicU64::new(0),
            idle_clients: StdMutex::new(IdleTracker::default()),
            heard: StdMutex::new(HashMap::new()),
            last_enforced: StdMutex::new(None),
            last_charged: StdMutex::new(None),
            charge_soon: std::sync::atomic::AtomicBool::new(false),
            check_cursor: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The interface indexes of the LANs (those that still exist).
    pub fn lan_indexes(&self) -> Vec<u32> {
        self.lans()
            .iter()
            .filter_map(|l| crate::iface::index(&l.name).ok())
            .collect()
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
            if new.idle_timeout != cur.idle_timeout {
                // Every device's quiet time starts at the next reading.
                self.idle_watch.lock().unwrap().clear();
                *self.meter_table.lock().unwrap() = None;
            }
            *cur = applied.clone();
        }
        self.mgr.set_auto_advance(applied.auto_advance);
        self.mgr
            .set_global_speed(applied.global_down_mbits, applied.global_up_mbits);
        // The next check would catch the new speeds and bursts; do it now.
        match self.enforce_everything() {
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

    /// Ends [`Gateway::run_loop`] after the round it is in.
    pub fn stop(&self) {
        self.stopped.store(true, Relaxed);
        self.wake.notify_one();
    }

    /// Session events, for logs and the API.
    pub fn session_events(&self) -> broadcast::Receiver<SessionEvent> {
        self.mgr.subscribe()
    }
}
