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

/// The slot of every connected device, and what the poll last read of it;
/// kept up to date with the devices whose running session changed (see
/// [`SessionsMgr::connected_changes_since`]): a device that connects or goes
/// is a lookup and a move within the device index, not a walk of every
/// device.
struct MeterTable {
    /// (session manager generation, rekeys) it is up to date with.
    built_at: (u64, u64),
    /// The devices and their slots.
    owners: Arc<SlotOwners>,
    /// Per slot: what the last reading of its device found (the low 32
    /// bits, which tell a move the datapath did not, unless by a multiple of
    /// 4 GiB).
    prev: Vec<u32>,
    /// The counters' epoch at the last reading of every device (`None`: none
    /// yet, the next reading takes every device).
    prev_epoch: Option<u64>,
    /// Slots of devices new to the table since the last reading, which the
    /// next reading takes whatever their counters.
    unread: Vec<u32>,
    /// The slot the next reading of moved meters compares from (see
    /// [`meter::CHECK_ROWS`]).
    check_at: u32,
    /// The buffers of a reading, kept between polls.
    scratch: Scratch,
}

/// What a reading works in: the slots that moved, then the slots read, and
/// their counters.
#[derive(Default)]
struct Scratch {
    slots: Vec<u32>,
    bytes: Vec<u64>,
}

impl Scratch {
    /// Slots whose room is kept between polls: a burst of moves (every
    /// device at once) or a reading of every device does not keep its
    /// buffers for good.
    const KEEP: usize = 8_192;

    fn clear(&mut self) {
        self.slots.clear();
        self.bytes.clear();
    }

    /// What to keep of it after a reading.
    fn kept(self) -> Self {
        match self.slots.capacity() > Self::KEEP || self.bytes.capacity() > Self::KEEP {
            true => Self::default(),
            false => self,
        }
    }
}

/// Which device holds each slot of the client table, and the slot of each
/// device: 20 bytes a device at a full table.
#[derive(Debug, Default, Clone)]
struct SlotOwners {
    /// Per slot: its device, [`NO_DEVICE`] for none.
    by_slot: Vec<DeviceId>,
    /// The devices, sorted, and apart, the slot of each.
    devices: Vec<DeviceId>,
    slots: Vec<u32>,
}

/// No device in a slot (device ids start at 1).
const NO_DEVICE: DeviceId = DeviceId::MIN;

impl SlotOwners {
    fn of(rows: &[(DeviceId, u32)]) -> Self {
        let mut rows = rows.to_vec();
        // In device order, each is put at the end of `devices`.
        rows.sort_unstable();
        let mut owners = Self::default();
        for (device, slot) in rows {
            owners.insert(device, slot);
        }
        owners
    }

    fn get(&self, slot: u32) -> Option<DeviceId> {
        self.by_slot
            .get(slot as usize)
            .copied()
            .filter(|&d| d != NO_DEVICE)
    }

    /// The slot the device holds in the table.
    fn slot(&self, device: DeviceId) -> Option<u32> {
        let i = self.devices.binary_search(&device).ok()?;
        Some(self.slots[i])
    }

    /// Puts `device` in `slot`, out of any other it held; a device the slot
    /// held goes (a slot holds one device).
    fn insert(&mut self, device: DeviceId, slot: u32) {
        self.remove(device);
        if let Some(other) = self.get(slot) {
            self.remove(other);
        }
        let s = slot as usize;
        if self.by_slot.len() <= s {
            self.by_slot.resize(s + 1, NO_DEVICE);
        }
        self.by_slot[s] = device;
        let i = self.devices.partition_point(|&d| d < device);
        self.devices.insert(i, device);
        self.slots.insert(i, slot);
    }

    /// Takes `device` out of the table: the slot it held.
    fn remove(&mut self, device: DeviceId) -> Option<u32> {
        let i = self.devices.binary_search(&device).ok()?;
        self.devices.remove(i);
        let slot = self.slots.remove(i);
        self.by_slot[slot as usize] = NO_DEVICE;
        Some(slot)
    }

    /// The slots that hold a device, from `from` on, in order.
    fn held_from(&self, from: u32) -> impl Iterator<Item = u32> + '_ {
        let from = (from as usize).min(self.by_slot.len());
        self.by_slot[from..]
            .iter()
            .enumerate()
            .filter(|&(_, &d)| d != NO_DEVICE)
            .map(move |(i, _)| (from + i) as u32)
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
