//! Property tests of the session state machine: random sequences of create, connect,
//! disconnect, clock moves, traffic and ticks against the manager on the memory store.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use session_model::{
    ClientSession, EndReason, MacAddr, ManualClock, MemoryStore, ModelError, SessionData,
    SessionType, SessionsMgr,
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
        let m = SessionsMgr::new(Arc::new(MemoryStore::new()), clock.clone());
        let rt = rt();
        let dev = m.create_device(MacAddr::new([2, 0, 0, 0, 0, 1]), None, None).unwrap().id;
        let mut connected_ms: u64 = 0;
        let mut prev: HashMap<u64, (u64, u64)> = HashMap::new();

        for op in ops {
            let was_connected = m.is_connected(dev).unwrap();
            let before: HashMap<u64, u64> = all(&m, dev).iter().map(|s| (s.id(), s.time_consumption())).collect();
            let running_before = m.curr_session(dev).unwrap().map(|s| s.id());
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
                Op::Tick => {
                    let rep = m.tick().unwrap();
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
                for s in &sessions {
                    prop_assert_eq!(Some(&s.time_consumption()), before.get(&s.id()).or(Some(&0)));
                }
            }
            // Charged time never exceeds connected time.
            let charged: u64 = sessions.iter().map(|s| s.time_consumption()).sum();
            prop_assert!(charged <= connected_ms / 1000, "charged {} > connected {} ms", charged, connected_ms);
            // After accounting, a connected device runs an available session.
            if matches!(op, Op::Tick | Op::Usage(_)) {
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
