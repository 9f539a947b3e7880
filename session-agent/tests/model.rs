//! Model-based test of the money path: random sequences of connect,
//! disconnect, PATCH, new sessions, rekey, GC, polls with real packets
//! through the datapath programs, restarts with and without the pins, wall
//! clock steps and time passing, against a simple model. After every step:
//!
//! * the kernel lets a device through if and only if it has a running session;
//! * every session's `data_cons_bytes` equals the bytes the datapath passed
//!   while it ran and that were charged since (bytes counted after the last
//!   charge are lost only when the pins go, as on a reboot);
//! * after a poll, a running session's kernel budget equals its remaining data;
//! * `time_cons` never exceeds the time the session was served and never goes
//!   backwards.
//!
//! Runs the real gateway twice: over the real pinned maps with real packets
//! (needs root and bpffs; `SESSION_MODEL_CASES` sets the number of cases,
//! default 200), and over the in-memory datapath (`MemDatapath`, no kernel:
//! `SESSION_MODEL_MEM_CASES`, default 2,000).

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use session_agent::datapath::MemDatapath;
use session_agent::gateway::{Gateway, GatewayConfig};
use session_model::{Clock, MacAddr, ManualClock, MemoryStore, SessionStore};

#[derive(Debug, Clone)]
enum Op {
    /// `packets` UDP uploads of `payload` bytes from the device's MAC.
    Traffic {
        dev: usize,
        packets: u8,
        payload: u16,
    },
    Advance {
        secs: u16,
    },
    Poll,
    Connect {
        dev: usize,
    },
    Disconnect {
        dev: usize,
    },
    /// A new session: time (seconds) or data (kB).
    NewSession {
        dev: usize,
        data: bool,
        amount: u16,
    },
    /// Adds to the allocation of the device's newest session.
    Patch {
        dev: usize,
        amount: u16,
    },
    Rekey {
        dev: usize,
    },
    Gc,
    Restart {
        pins: bool,
    },
    StepWall {
        hours: i8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let dev = 0..DEVICES;
    prop_oneof![
        4 => (dev.clone(), 1..20u8, 0..1400u16)
            .prop_map(|(dev, packets, payload)| Op::Traffic { dev, packets, payload }),
        3 => (0..90u16).prop_map(|secs| Op::Advance { secs }),
        3 => Just(Op::Poll),
        3 => dev.clone().prop_map(|dev| Op::Connect { dev }),
        1 => dev.clone().prop_map(|dev| Op::Disconnect { dev }),
        2 => (dev.clone(), any::<bool>(), 5..60u16)
            .prop_map(|(dev, data, amount)| Op::NewSession { dev, data, amount }),
        1 => (dev.clone(), 1..30u16).prop_map(|(dev, amount)| Op::Patch { dev, amount }),
        1 => dev.clone().prop_map(|dev| Op::Rekey { dev }),
        1 => Just(Op::Gc),
        1 => any::<bool>().prop_map(|pins| Op::Restart { pins }),
        1 => (-12..12i8).prop_map(|hours| Op::StepWall { hours }),
    ]
}

const DEVICES: usize = 3;
const T0: i64 = 1_800_000_000;

/// What the model knows of a session.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// Bytes the datapath passed while it ran, charged since.
    charged: u64,
    /// Passed while it ran, not charged yet.
    pending: u64,
    /// Seconds it ran while the datapath served it.
    served: u64,
    /// Its `time_cons` at the last check.
    time_cons: u64,
}

thread_local! {
    /// A datapath left by the case before: loading one costs a second, so
    /// cases share it (each with MACs and addresses of its own).
    static SPARE: RefCell<Option<Datapath>> = const { RefCell::new(None) };
}

/// The datapath a case runs on, as the model sees it.
trait Kernel: Sized {
    /// A datapath whose client table is new (pins gone, as after a reboot).
    fn fresh() -> Self;
    /// One to start a case with (a spare one where making one is slow).
    fn reuse() -> Self {
        Self::fresh()
    }
    /// Done with a case.
    fn recycle(self) {}
    fn gateway(&self, store: &Arc<dyn SessionStore>, clock: Arc<dyn Clock>) -> Arc<Gateway>;
    /// `packets` UDP uploads of `payload` bytes from `mac` at `addr`: the IP
    /// bytes that passed.
    fn send(&self, mac: MacAddr, addr: Ipv4Addr, packets: u8, payload: u16) -> u64;
    fn allowed(&self, mac: &MacAddr) -> bool;
    /// The budget the datapath is spending for the client, if it is.
    fn budget(&self, mac: &MacAddr) -> Option<i64>;
}

/// The real programs over real pinned maps, packets through BPF_PROG_TEST_RUN.
impl Kernel for Datapath {
    fn fresh() -> Self {
        Datapath::new()
    }
    fn reuse() -> Self {
        SPARE
            .with(|s| s.borrow_mut().take())
            .unwrap_or_else(Datapath::new)
    }
    fn recycle(self) {
        SPARE.with(|s| *s.borrow_mut() = Some(self));
    }
    fn gateway(&self, store: &Arc<dyn SessionStore>, clock: Arc<dyn Clock>) -> Arc<Gateway> {
        Gateway::over_pins(
            self.h.root(),
            "t",
            store.clone(),
            clock,
            GatewayConfig::default(),
        )
        .unwrap()
    }
    fn send(&self, mac: MacAddr, addr: Ipv4Addr, packets: u8, payload: u16) -> u64 {
        let frame = udp4(
            GW_MAC,
            mac.addr,
            addr,
            SERVER_V4,
            40000,
            443,
            payload as usize,
        );
        (0..packets)
            .filter(|_| self.up(&frame) == TC_PASS)
            .map(|_| 28 + payload as u64)
            .sum()
    }
    fn allowed(&self, mac: &MacAddr) -> bool {
        let maps = &self.h.maps;
        maps.slot_of(mac)
            .is_some_and(|s| maps.flags_of(s) & POLICY_ALLOWED != 0)
    }
    fn budget(&self, mac: &MacAddr) -> Option<i64> {
        let maps = &self.h.maps;
        let slot = maps.slot_of(mac)?;
        (maps.flags_of(slot) & POLICY_QUOTA != 0).then(|| maps.budget(slot).unwrap())
    }
}

/// The in-memory datapath: the same gateway and manager, no kernel.
impl Kernel for Arc<MemDatapath> {
    fn fresh() -> Self {
        static EPOCH: AtomicU64 = AtomicU64::new(1);
        Arc::new(MemDatapath::new(EPOCH.fetch_add(1, Ordering::Relaxed)))
    }
    fn gateway(&self, store: &Arc<dyn SessionStore>, clock: Arc<dyn Clock>) -> Arc<Gateway> {
        let mgr = Arc::new(session_model::SessionsMgr::new(store.clone(), clock));
        Gateway::with_datapath(mgr, self.clone(), GatewayConfig::default())
    }
    fn send(&self, mac: MacAddr, _addr: Ipv4Addr, packets: u8, payload: u16) -> u64 {
        let len = 28 + payload as u64;
        (0..packets)
            .filter(|_| MemDatapath::send(self, &mac, len))
            .map(|_| len)
            .sum()
    }
    fn allowed(&self, mac: &MacAddr) -> bool {
        MemDatapath::allowed(self, mac)
    }
    fn budget(&self, mac: &MacAddr) -> Option<i64> {
        MemDatapath::budget(self, mac)
    }
}

/// Numbers the cases, for their MACs and addresses.
static CASE: AtomicU32 = AtomicU32::new(0);

struct World<K: Kernel> {
    case: u32,
    rt: tokio::runtime::Runtime,
    clock: Arc<ManualClock>,
    store: Arc<dyn SessionStore>,
    dp: K,
    gw: Arc<Gateway>,
    devices: Vec<i64>,
    macs: Vec<MacAddr>,
    /// MACs devices left by a rekey: never let through again.
    old_macs: Vec<MacAddr>,
    next_mac: u8,
    seen: HashMap<u64, Seen>,
    log: Vec<String>,
}

impl<K: Kernel> World<K> {
    fn new() -> World<K> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let dp = K::reuse();
        let gw = Self::gateway(&dp, &store, &clock);
        let case = CASE.fetch_add(1, Ordering::Relaxed);
        let mut devices = Vec::new();
        let mut macs = Vec::new();
        for n in 0..DEVICES as u8 {
            let [_, _, hi, lo] = case.to_be_bytes();
            let mac = MacAddr::new([0x02, 0xaa, hi, lo, 0, n + 1]);
            let d = gw.sessions().create_device(mac, None, None).unwrap();
            devices.push(d.id);
            macs.push(mac);
        }
        World {
            case,
            rt,
            clock,
            store,
            dp,
            gw,
            devices,
            macs,
            old_macs: Vec::new(),
            next_mac: 100,
            seen: HashMap::new(),
            log: Vec::new(),
        }
    }

    fn gateway(dp: &K, store: &Arc<dyn SessionStore>, clock: &Arc<ManualClock>) -> Arc<Gateway> {
        let clock: Arc<dyn Clock> = clock.clone();
        dp.gateway(store, clock)
    }

    /// The device's IPv4 address, its own in this case.
    fn addr(&self, dev: usize) -> Ipv4Addr {
        let [_, _, hi, lo] = self.case.to_be_bytes();
        Ipv4Addr::new(10, 100 + (hi & 63), lo, dev as u8 + 1)
    }

    fn running(&self, dev: usize) -> Option<u64> {
        self.gw
            .sessions()
            .running_session_id(self.devices[dev])
            .unwrap()
    }

    /// The model's side of a charge of the device's bytes.
    fn charged(&mut self, dev: usize) {
        let device = self.devices[dev];
        for s in self.gw.sessions().device_sessions(device).unwrap() {
            if let Some(v) = self.seen.get_mut(&s.id()) {
                v.charged += std::mem::take(&mut v.pending);
            }
        }
    }

    fn charged_all(&mut self) {
        for dev in 0..DEVICES {
            self.charged(dev);
        }
    }

    fn apply(&mut self, op: &Op) {
        let mgr = self.gw.sessions().clone();
        match *op {
            Op::Traffic {
                dev,
                packets,
                payload,
            } => {
                let passed = self
                    .dp
                    .send(self.macs[dev], self.addr(dev), packets, payload);
                if passed > 0 {
                    let sid = self.running(dev).unwrap_or_else(|| {
                        panic!("{passed} B passed for device {dev}, which has no running session")
                    });
                    self.seen.entry(sid).or_default().pending += passed;
                }
                self.log.push(format!("  passed {passed} B"));
            }
            Op::Advance { secs } => {
                for dev in 0..DEVICES {
                    if let Some(sid) = self.running(dev) {
                        self.seen.entry(sid).or_default().served += secs as u64;
                    }
                }
                self.clock.advance_secs(secs as i64);
            }
            Op::Poll => {
                self.rt.block_on(self.gw.poll()).unwrap();
                self.charged_all();
            }
            Op::Connect { dev } => {
                // A running session that ran out since the last poll makes
                // the connect poll first, which charges every device.
                let now = mgr.clock().now_secs();
                let polls = mgr
                    .curr_session(self.devices[dev])
                    .ok()
                    .flatten()
                    .is_some_and(|s| !s.data().is_available(now));
                let r = self
                    .rt
                    .block_on(self.gw.connect(self.devices[dev], "model"));
                self.log.push(format!(
                    "  {:?}",
                    r.as_ref().map(|s| s.id()).map_err(|e| e.to_string())
                ));
                if polls {
                    self.charged_all();
                } else {
                    self.charged(dev);
                }
            }
            Op::Disconnect { dev } => {
                self.rt
                    .block_on(self.gw.disconnect(self.devices[dev], "model"))
                    .unwrap();
                self.charged(dev);
            }
            Op::NewSession { dev, data, amount } => {
                let (t, secs, mb) = if data {
                    (1, 0, amount as f64 / 1000.0)
                } else {
                    (0, amount as u64 * 5, 0.0)
                };
                let s = self
                    .rt
                    .block_on(mgr.create_session(self.devices[dev], t, secs, mb, None, 0, 0, false))
                    .unwrap();
                self.seen.insert(s.id(), Seen::default());
            }
            Op::Patch { dev, amount } => {
                let Some(last) = mgr.device_sessions(self.devices[dev]).unwrap().pop() else {
                    return;
                };
                let running = self.running(dev) == Some(last.id());
                let data = last.data().data_bytes > 0;
                self.rt
                    .block_on(self.gw.update_session(last.id(), |s| {
                        if data {
                            s.set_data_bytes(s.data().data_bytes + amount as u64 * 1000);
                        } else {
                            s.set_time_secs(s.data().time_secs + amount as u64);
                        }
                        Ok(())
                    }))
                    .unwrap();
                if running {
                    // Settling it charges every connected device, as a poll.
                    self.charged_all();
                }
            }
            Op::Rekey { dev } => {
                self.next_mac = self.next_mac.wrapping_add(1).max(100);
                let [_, _, hi, lo] = self.case.to_be_bytes();
                let mac = MacAddr::new([0x06, hi, lo, 0, dev as u8, self.next_mac]);
                self.rt
                    .block_on(self.gw.rekey(self.devices[dev], mac))
                    .unwrap();
                self.old_macs
                    .push(std::mem::replace(&mut self.macs[dev], mac));
                self.charged(dev);
            }
            Op::Gc => {
                let (removed, devices) = self.rt.block_on(self.gw.gc(0)).unwrap();
                for sid in removed {
                    let v = self.seen.remove(&sid).unwrap_or_default();
                    assert_eq!(
                        v.pending, 0,
                        "GC removed session {sid} with uncharged bytes"
                    );
                }
                // Devices without sessions that the datapath does not hold go
                // too; the phone comes back as a new device.
                for id in devices {
                    let dev = self.devices.iter().position(|d| *d == id).unwrap();
                    let mac = self.macs[dev];
                    self.devices[dev] = mgr.create_device(mac, None, None).unwrap().id;
                }
            }
            Op::Restart { pins } => {
                let store = self.store.clone();
                if pins {
                    self.gw = Self::gateway(&self.dp, &store, &self.clock);
                    self.rt.block_on(self.gw.reconcile()).unwrap();
                    self.charged_all();
                } else {
                    // The pins are gone (a reboot): bytes not charged yet
                    // are lost, and so is the time the store does not hold
                    // yet (a view charges it up to now; the store gets it
                    // when the session comes due, ends or is checkpointed):
                    // the device was not served while the datapath was gone.
                    for (sid, v) in self.seen.iter_mut() {
                        v.pending = 0;
                        if let Ok(Some(r)) = mgr.store().session(*sid) {
                            v.served = r.data.time_cons;
                            v.time_cons = v.time_cons.min(r.data.time_cons);
                        }
                    }
                    self.dp = K::fresh();
                    self.gw = Self::gateway(&self.dp, &store, &self.clock);
                    self.rt.block_on(self.gw.reconcile()).unwrap();
                }
            }
            Op::StepWall { hours } => self.clock.step_wall(hours as i64 * 3600),
        }
    }

    fn check(&mut self, after_poll: bool) -> Result<(), String> {
        let mgr = self.gw.sessions().clone();
        for dev in 0..DEVICES {
            let mac = self.macs[dev];
            let allowed = self.dp.allowed(&mac);
            let running = self.running(dev);
            if allowed != running.is_some() {
                return Err(format!(
                    "device {dev}: kernel allowed {allowed}, running session {running:?}"
                ));
            }
            if let (true, Some(sid)) = (after_poll, running) {
                let s = mgr.session(sid).unwrap();
                if let Some(budget) = s.data().data_budget_bytes() {
                    let kernel = self.dp.budget(&mac);
                    let remaining = budget as i64;
                    let agrees = match kernel {
                        None => false,
                        Some(k) => (remaining > 0 && k == remaining) || (remaining == 0 && k <= 0),
                    };
                    if !agrees {
                        return Err(format!(
                            "device {dev}: session {sid} has {remaining} B left, the kernel budget is {kernel:?}"
                        ));
                    }
                }
            }
        }
        for mac in &self.old_macs {
            if self.dp.allowed(mac) {
                return Err(format!(
                    "{mac}, which a device left by a rekey, is let through"
                ));
            }
        }
        let mut all = Vec::new();
        for &d in &self.devices {
            all.extend(mgr.device_sessions(d).unwrap());
        }
        for s in all {
            let v = self.seen.entry(s.id()).or_default();
            let data = s.data();
            if data.data_cons_bytes != v.charged {
                return Err(format!(
                    "session {}: data_cons_bytes {} but {} B passed and were charged ({} pending)",
                    s.id(),
                    data.data_cons_bytes,
                    v.charged,
                    v.pending
                ));
            }
            if data.time_cons > v.served {
                return Err(format!(
                    "session {}: time_cons {} but served {} s",
                    s.id(),
                    data.time_cons,
                    v.served
                ));
            }
            if data.time_cons < v.time_cons {
                return Err(format!(
                    "session {}: time_cons went back from {} to {}",
                    s.id(),
                    v.time_cons,
                    data.time_cons
                ));
            }
            v.time_cons = data.time_cons;
        }
        Ok(())
    }
}

fn run_case<K: Kernel>(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut w = World::<K>::new();
    let mut result = Ok(());
    for (i, op) in ops.iter().enumerate() {
        w.log.push(format!("{i}: {op:?}"));
        w.apply(op);
        if let Err(e) = w.check(matches!(op, Op::Poll)) {
            result = Err(TestCaseError::fail(format!(
                "{e}\nsteps:\n{}",
                w.log.join("\n")
            )));
            break;
        }
    }
    let World { gw, dp, .. } = w;
    drop(gw);
    dp.recycle();
    result
}

fn cases(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn agree_under_any_sequence<K: Kernel>(cases: u32) {
    big_stack(move || {
        let cfg = ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest!(cfg, |(ops in proptest::collection::vec(op(), 1..40))| {
            run_case::<K>(ops)?;
        });
    });
}

#[test]
fn the_kernel_and_the_sessions_agree_under_any_sequence_of_events() {
    agree_under_any_sequence::<Datapath>(cases("SESSION_MODEL_CASES", 200));
}

/// The same search over the in-memory datapath: ten times the cases in
/// less time, with no kernel.
#[test]
fn the_in_memory_datapath_and_the_sessions_agree_under_any_sequence_of_events() {
    agree_under_any_sequence::<Arc<MemDatapath>>(cases("SESSION_MODEL_MEM_CASES", 2000));
}

/// Cases the random search found, kept as they were: a charge on the way out
/// (disconnect, rekey) or on a second connect that ends a data session must
/// not let the device (or its old MAC) through without a running session.
#[test]
fn a_charge_on_the_way_out_that_ends_a_session_lets_nothing_through() {
    let ends_data = || {
        vec![
            Op::NewSession {
                dev: 0,
                data: true,
                amount: 5,
            },
            Op::NewSession {
                dev: 0,
                data: false,
                amount: 5,
            },
            Op::Connect { dev: 0 },
            Op::Traffic {
                dev: 0,
                packets: 2,
                payload: 0,
            },
            Op::Traffic {
                dev: 0,
                packets: 5,
                payload: 961,
            },
        ]
    };
    for last in [
        Op::Disconnect { dev: 0 },
        Op::Rekey { dev: 0 },
        Op::Connect { dev: 0 },
    ] {
        let mut ops = ends_data();
        ops.push(last);
        ops.push(Op::Poll);
        big_stack(move || run_case::<Datapath>(ops).unwrap());
    }
    // A connect while the data is used up and only that session is left.
    let ops = vec![
        Op::NewSession {
            dev: 1,
            data: true,
            amount: 5,
        },
        Op::Connect { dev: 1 },
        Op::Traffic {
            dev: 1,
            packets: 6,
            payload: 961,
        },
        Op::Connect { dev: 1 },
        Op::Poll,
    ];
    big_stack(move || run_case::<Datapath>(ops).unwrap());
}

/// A case the search over the in-memory datapath found: changing one
/// device's running session settles every connected device, and a session
/// of another device that this ends must be charged the bytes it passed
/// since the last poll before its device is blocked.
#[test]
fn a_change_to_one_session_charges_the_devices_whose_sessions_it_ends() {
    let ops = || {
        vec![
            Op::NewSession {
                dev: 2,
                data: false,
                amount: 5,
            },
            Op::NewSession {
                dev: 1,
                data: false,
                amount: 5,
            },
            Op::Connect { dev: 2 },
            Op::Connect { dev: 1 },
            Op::Advance { secs: 25 },
            Op::Traffic {
                dev: 2,
                packets: 1,
                payload: 0,
            },
            Op::Patch { dev: 1, amount: 1 },
            Op::Poll,
        ]
    };
    big_stack(move || run_case::<Arc<MemDatapath>>(ops()).unwrap());
    big_stack(move || run_case::<Datapath>(ops()).unwrap());
}
