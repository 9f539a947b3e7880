//! Property tests of the session state machine: random sequences of create, connect,
//! disconnect, clock moves, traffic, meter readings, ticks, auto-advance switches and
//! restarts against the manager on the memory store.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use session_model::{
    ClientSession, EndReason, MacAddr, ManualClock, MemoryStore, MeterMark, ModelError,
    SessionData, SessionStore, SessionType, SessionsMgr,
};

#[derive(Debug, Clone)]
enum Op {
    Create {
        ty: u8,
        secs: u64,
        mb: f64,
        exp: Option<u32>,
    },
    Connect,
    Disconnect,
    Advance(u64),
    Usage(u64),
    /// The kernel counter grows by `inc` (or restarts at `inc` in a new epoch) and is read.
    Meter {
        inc: u64,
        new_epoch: bool,
    },
    AutoAdvance(bool),
    /// A new manager over the same store (the process restarted).
    Restart,
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..3, 1u64..120, 1u64..4_000, prop::option::of(0u32..2)).prop_map(|(ty, secs, kb, exp)| Op::Create {
            ty,
            secs,
            mb: kb as f64 / 1000.0,
            exp
        }),
        2 => Just(Op::Connect),
        1 => Just(Op::Disconnect),
        3 => (0u64..40_000).prop_map(Op::Advance),
        3 => (0u64..1_500_000).prop_map(Op::Usage),
        3 => (prop_oneof![Just(0u64), 0u64..1_500_000], prop::bool::weighted(0.1)).prop_map(|(inc, new_epoch)| Op::Meter { inc, new_epoch }),
        1 => any::<bool>().prop_map(Op::AutoAdvance),
        1 => Just(Op::Restart),
        3 => Just(Op::Tick),
    ]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn all(m: &SessionsMgr, dev: i64) -> Vec<ClientSession> {
    m.device_sessions(dev).expect("sessions")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn session_state_machine(ops in prop::collection::vec(op(), 1..60)) {
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let mut m = SessionsMgr::new(store.clone(), clock.clone());
        let rt = rt();
        let mut kernel = MeterMark { epoch: 1, bytes: 0 };
        let mut auto_advance = true;
        let dev = m.create_device(MacAddr::new([2, 0, 0, 0, 0, 1]), None, None).unwrap().id;
        let mut connected_ms: u64 = 0;
        let mut prev: HashMap<u64, (u64, u64)> = HashMap::new();

        for op in ops {
            let was_connected = m.is_connected(dev).unwrap();
            let before: HashMap<u64, u64> = all(&m, dev).iter().map(|s| (s.id(), s.time_consumption())).collect();
            let running_before = m.curr_session(dev).unwrap().map(|s| s.id());
            let mut charged_now = false;
            match &op {
                Op::Create { ty, secs, mb, exp } => {
                    rt.block_on(m.create_session(dev, *ty, *secs, *mb, *exp, 1, 1, false)).unwrap();
                }
                Op::Connect => match rt.block_on(m.connect(dev, "in")) {
                    Ok(s) => prop_assert!(s.data().is_available(clock.now_secs_())),
                    Err(ModelError::NoAvailableSession(_)) => {
                        prop_assert!(all(&m, dev).iter().all(|s| !s.data().is_available(clock.now_secs_())));
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("connect: {e}"))),
                },
                Op::Disconnect => rt.block_on(m.disconnect(dev, "out")).unwrap(),
                Op::Advance(ms) => {
                    clock.advance(std::time::Duration::from_millis(*ms));
                    if was_connected {
                        connected_ms += ms;
                    }
                }
                Op::Usage(b) => {
                    let rep = m.record_usage(&[(dev, *b)]).unwrap();
                    prop_assert_eq!(rep.not_connected.is_empty(), was_connected);
                }
                Op::Meter { inc, new_epoch } => {
                    let mark_before = m.meter_mark(dev).unwrap();
                    kernel = if *new_epoch {
                        MeterMark { epoch: kernel.epoch + 1, bytes: *inc }
                    } else {
                        MeterMark { epoch: kernel.epoch, bytes: kernel.bytes + inc }
                    };
                    let total = |m: &SessionsMgr| -> u64 { all(m, dev).iter().map(|s| s.data_consumption_bytes()).sum() };
                    let total_before = total(&m);
                    let rep = m.record_meter(&[(dev, kernel)]).unwrap();
                    prop_assert_eq!(rep.not_connected.is_empty(), was_connected);
                    let expected = match (was_connected, mark_before) {
                        (false, _) | (true, None) => 0,
                        (true, Some(mk)) if mk.epoch != kernel.epoch => kernel.bytes,
                        (true, Some(mk)) => kernel.bytes.saturating_sub(mk.bytes),
                    };
                    prop_assert_eq!(total(&m) - total_before, expected);
                    charged_now = expected > 0;
                    if m.is_connected(dev).unwrap() {
                        prop_assert_eq!(m.meter_mark(dev).unwrap(), Some(kernel), "the mark follows the reading, also across an advance");
                    }
                    for t in &rep.transitions {
                        if !auto_advance {
                            prop_assert_eq!(t.next, None);
                        }
                    }
                }
                Op::AutoAdvance(on) => {
                    m.set_auto_advance(*on);
                    auto_advance = *on;
                }
                Op::Restart => {
                    // As the daemon stops: the time charged so far is kept.
                    m.checkpoint().unwrap();
                    let connected = m.connected().unwrap();
                    let run = m.run_state(dev).unwrap();
                    m = SessionsMgr::new(store.clone(), clock.clone());
                    m.set_auto_advance(auto_advance);
                    prop_assert_eq!(m.connected().unwrap(), connected);
                    prop_assert_eq!(m.run_state(dev).unwrap(), run);
                }
                Op::Tick => {
                    let rep = m.tick().unwrap();
                    if !auto_advance {
                        prop_assert!(rep.transitions.iter().all(|t| t.next.is_none()));
                    }
                    for t in rep.transitions {
                        let ended = m.session(t.session_id).unwrap();
                        let d = ended.data();
                        // time_or_data ends at whichever comes first; others by their own limit.
                        match t.reason {
                            EndReason::Consumed => prop_assert!(d.is_consumed()),
                            EndReason::Expired => prop_assert!(d.is_expired(clock.now_secs_())),
                        }
                    }
                }
            }
            let now = clock.now_secs_();
            let sessions = all(&m, dev);
            for s in &sessions {
                let d: &SessionData = s.data();
                // remaining = allocation - consumption, never below zero
                prop_assert_eq!(s.remaining_time(), d.time_secs.saturating_sub(d.time_cons));
                prop_assert_eq!(s.remaining_data_bytes(), d.data_bytes.saturating_sub(d.data_cons_bytes));
                let both = (d.time_cons >= d.time_secs, d.data_cons_bytes >= d.data_bytes);
                let expect = match d.session_type {
                    SessionType::Time => both.0,
                    SessionType::Data => both.1,
                    SessionType::TimeOrData => both.0 || both.1,
                };
                prop_assert_eq!(d.is_consumed(), expect);
                // consumption never goes back
                if let Some(&(t, b)) = prev.get(&s.id()) {
                    prop_assert!(d.time_cons >= t && d.data_cons_bytes >= b);
                }
                prev.insert(s.id(), (d.time_cons, d.data_cons_bytes));
            }
            // A paused device's sessions do not age.
            if !was_connected && !matches!(op, Op::Connect) {
                prop_assert_eq!(m.run_state(dev).unwrap(), None);
                for s in &sessions {
                    prop_assert_eq!(Some(&s.time_consumption()), before.get(&s.id()).or(Some(&0)));
                }
            }
            // Charged time never exceeds connected time.
            let charged: u64 = sessions.iter().map(|s| s.time_consumption()).sum();
            prop_assert!(charged <= connected_ms / 1000, "charged {} > connected {} ms", charged, connected_ms);
            // After accounting, a connected device runs an available session.
            // (A reading that charges nothing touches no session, like a zero usage.)
            if matches!(op, Op::Tick | Op::Usage(_)) || (matches!(op, Op::Meter { .. }) && charged_now) {
                if let Some(cur) = m.curr_session(dev).unwrap() {
                    prop_assert!(cur.data().is_available(now));
                }
                // A running session that stopped running was ended, not paused.
                if let Some(r) = running_before {
                    if m.curr_session(dev).unwrap().map(|s| s.id()) != Some(r) {
                        prop_assert!(!m.session(r).unwrap().data().is_available(now));
                    }
                }
            }
            // get_session: the running one, else the oldest available one.
            match rt.block_on(m.get_session(dev)) {
                Ok(s) => {
                    prop_assert!(s.data().is_available(now));
                    if m.curr_session(dev).unwrap().is_none() {
                        let oldest = sessions.iter().find(|x| x.data().is_available(now)).map(|x| x.id());
                        prop_assert_eq!(Some(s.id()), oldest);
                    }
                }
                Err(ModelError::NoAvailableSession(_)) => {
                    prop_assert!(sessions.iter().all(|x| !x.data().is_available(now)));
                }
                Err(e) => return Err(TestCaseError::fail(format!("get_session: {e}"))),
            }
        }
    }

    #[test]
    fn mb_round_trip_and_bad_input(mb in -1e6f64..1e6) {
        let r = session_model::mb_to_bytes("x", mb);
        if mb < 0.0 {
            prop_assert!(r.is_err());
        } else {
            let b = r.unwrap();
            prop_assert!((session_model::bytes_to_mb(b) - mb).abs() <= 1e-6);
        }
    }
}

trait NowSecs {
    fn now_secs_(&self) -> i64;
}
impl NowSecs for ManualClock {
    fn now_secs_(&self) -> i64 {
        session_model::Clock::now_secs(self)
    }
}
