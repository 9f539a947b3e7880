//! SessionsMgr and ClientSession behaviour (on the memory and hybrid stores).

use std::sync::Arc;
use std::time::Duration;

use session_model::{
    testing::FaultyStore, EndReason, HybridOptions, HybridStore, MacAddr, ManualClock, MemoryStore,
    ModelError, SessionEvent, SessionStore, SessionsMgr, Transition,
};
use tokio::sync::broadcast::Receiver;

const T0: i64 = 1_700_000_000;

fn setup() -> (SessionsMgr, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let mgr = SessionsMgr::new(Arc::new(MemoryStore::new()), clock.clone());
    (mgr, clock)
}

fn mac(n: u8) -> MacAddr {
    MacAddr::new([2, 0, 0, 0, 0, n])
}

fn drain(rx: &mut Receiver<SessionEvent>) -> Vec<SessionEvent> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

#[tokio::test]
async fn create_session_validates_arguments() {
    let (m, _) = setup();
    let d = m.create_device(mac(1), None, None).unwrap();
    let err = |r: Result<_, ModelError>| r.unwrap_err();
    assert!(matches!(
        err(m.create_session(d.id, 3, 60, 0.0, None, 1, 1, false).await),
        ModelError::InvalidSessionType(3)
    ));
    for mb in [f64::NAN, f64::INFINITY, -1.0] {
        assert!(matches!(
            err(m.create_session(d.id, 1, 0, mb, None, 1, 1, false).await),
            ModelError::InvalidMegabytes { .. }
        ));
    }
    assert!(matches!(
        err(m.create_session(d.id, 0, 0, 0.0, None, 1, 1, false).await),
        ModelError::ZeroAllocation { .. }
    ));
    assert!(matches!(
        err(m.create_session(d.id, 1, 60, 0.0, None, 1, 1, false).await),
        ModelError::ZeroAllocation { .. }
    ));
    assert!(matches!(
        err(m.create_session(d.id, 0, 60, 0.0, None, -1, 1, false).await),
        ModelError::NegativeSpeed { .. }
    ));
    assert!(matches!(
        err(m.create_session(d.id, 0, 60, 0.0, None, 1, -5, false).await),
        ModelError::NegativeSpeed { .. }
    ));
    assert!(matches!(
        err(m.create_session(77, 0, 60, 0.0, None, 1, 1, false).await),
        ModelError::UnknownDevice(77)
    ));
    let s = m
        .create_session(d.id, 2, 3600, 100.5, Some(30), 5, 3, true)
        .await
        .unwrap();
    assert_eq!(s.provider(), "local");
    assert_eq!(s.type_u8(), 2);
    assert_eq!(s.time_secs(), 3600);
    assert_eq!(s.data_mb(), 100.5);
    assert_eq!(s.data_bytes(), 100_500_000);
    assert_eq!(s.exp_days(), Some(30));
    assert_eq!(
        (s.down_mbits(), s.up_mbits(), s.use_global_speed()),
        (5, 3, true)
    );
    assert_eq!(s.created_at(), T0);
    assert_eq!(s.started_at(), None);
    assert_eq!(s.expires_at(), None);
}

#[tokio::test]
async fn devices_lookup_rekey_and_bad_input() {
    let (m, _) = setup();
    let mut rx = m.subscribe();
    let d = m
        .create_device(
            mac(1),
            Some("10.0.0.9".parse().unwrap()),
            Some("phone".into()),
        )
        .unwrap();
    assert_eq!(m.device(d.id).unwrap(), d);
    assert_eq!(m.device_by_mac(mac(1)).unwrap().id, d.id);
    assert!(matches!(m.device(99), Err(ModelError::UnknownDevice(99))));
    assert!(matches!(
        m.device_by_mac(mac(9)),
        Err(ModelError::UnknownMac(_))
    ));
    assert!(matches!(
        m.create_device(mac(1), None, None),
        Err(ModelError::Store(
            session_model::StoreError::DuplicateMac { .. }
        ))
    ));
    assert!(MacAddr::parse("zz:00:00:00:00:00").is_err());
    let s = m
        .create_session(d.id, 0, 60, 0.0, None, 1, 1, false)
        .await
        .unwrap();
    m.connect(d.id, "hi").await.unwrap();
    let moved = m.rekey_device(d.id, mac(2)).unwrap();
    assert_eq!(moved.mac, mac(2));
    assert!(m.device_by_mac(mac(1)).is_err());
    assert_eq!(m.device_by_mac(mac(2)).unwrap().id, d.id);
    assert_eq!(m.get_session(d.id).await.unwrap().id(), s.id());
    assert!(
        m.is_connected(d.id).unwrap(),
        "connection follows the device"
    );
    let evs = drain(&mut rx);
    assert!(evs.contains(&SessionEvent::DeviceRekeyed {
        device_id: d.id,
        old_mac: mac(1),
        new_mac: mac(2)
    }));
    assert!(evs.contains(&SessionEvent::DeviceCreated {
        device_id: d.id,
        mac: mac(1)
    }));
    let upd = m
        .update_device_info(d.id, None, Some("laptop".into()))
        .unwrap();
    assert_eq!(m.device(d.id).unwrap().hostname.as_deref(), Some("laptop"));
    assert_eq!(upd.mac, mac(2));
}

#[tokio::test]
async fn connect_disconnect_pause_and_events() {
    let (m, clock) = setup();
    let mut rx = m.subscribe();
    let d = m.create_device(mac(1), None, None).unwrap();
    assert!(matches!(
        m.connect(d.id, "x").await,
        Err(ModelError::NoAvailableSession(_))
    ));
    assert!(matches!(
        m.get_session(d.id).await,
        Err(ModelError::NoAvailableSession(_))
    ));
    let s = m
        .create_session(d.id, 0, 100, 0.0, Some(1), 1, 1, false)
        .await
        .unwrap();
    assert!(!m.is_connected(d.id).unwrap());
    assert!(m.curr_session(d.id).unwrap().is_none());
    drain(&mut rx);

    let c = m
        .connect(d.id, "You are now connected to internet.")
        .await
        .unwrap();
    assert_eq!(c.id(), s.id());
    assert_eq!(c.started_at(), Some(T0));
    assert_eq!(c.expires_at(), Some(T0 + 100 + 86_400));
    assert!(m.is_connected(d.id).unwrap());
    assert_eq!(m.curr_session(d.id).unwrap().unwrap().id(), s.id());
    assert_eq!(
        drain(&mut rx),
        vec![
            SessionEvent::SessionStarted {
                device_id: d.id,
                session_id: s.id()
            },
            SessionEvent::Connected {
                device_id: d.id,
                session_id: s.id(),
                notification: "You are now connected to internet.".into()
            }
        ]
    );
    // Connecting again is idempotent.
    assert_eq!(m.connect(d.id, "again").await.unwrap().id(), s.id());
    assert!(drain(&mut rx).is_empty());

    clock.advance_secs(30);
    m.tick().unwrap();
    assert_eq!(m.session(s.id()).unwrap().time_consumption(), 30);
    clock.advance(std::time::Duration::from_millis(2_500));
    m.disconnect(d.id, "bye").await.unwrap();
    assert_eq!(m.session(s.id()).unwrap().time_consumption(), 32);
    assert!(!m.is_connected(d.id).unwrap());
    assert_eq!(
        drain(&mut rx),
        vec![
            SessionEvent::SessionPaused {
                device_id: d.id,
                session_id: s.id()
            },
            SessionEvent::Disconnected {
                device_id: d.id,
                session_id: Some(s.id()),
                notification: "bye".into()
            }
        ]
    );
    // Paused: the clock does not move the session.
    clock.advance_secs(1_000);
    m.tick().unwrap();
    assert_eq!(m.session(s.id()).unwrap().time_consumption(), 32);
    // Resume keeps started_at.
    let c = m.connect(d.id, "back").await.unwrap();
    assert_eq!(c.started_at(), Some(T0));
    assert!(matches!(
        drain(&mut rx).first(),
        Some(SessionEvent::SessionResumed { .. })
    ));
    // The JSON form is tagged.
    let j = serde_json::to_value(SessionEvent::SessionPaused {
        device_id: 1,
        session_id: 2,
    })
    .unwrap();
    assert_eq!(j["event"], "session_paused");
}

#[tokio::test]
async fn tick_ends_sessions_and_advances_queue() {
    let (m, clock) = setup();
    let mut rx = m.subscribe();
    let d = m.create_device(mac(1), None, None).unwrap();
    let a = m
        .create_session(d.id, 0, 10, 0.0, None, 1, 1, false)
        .await
        .unwrap();
    let b = m
        .create_session(d.id, 1, 0, 1.0, None, 1, 1, false)
        .await
        .unwrap();
    m.connect(d.id, "go").await.unwrap();
    assert_eq!(
        m.data_budget_bytes(d.id).unwrap(),
        None,
        "time session: unlimited data"
    );
    clock.advance_secs(12);
    drain(&mut rx);
    let rep = m.tick().unwrap();
    assert_eq!(
        rep.transitions,
        vec![Transition {
            device_id: d.id,
            session_id: a.id(),
            reason: EndReason::Consumed,
            next: Some(b.id()),
            mark: None,
        }]
    );
    assert_eq!(m.curr_session(d.id).unwrap().unwrap().id(), b.id());
    assert_eq!(m.data_budget_bytes(d.id).unwrap(), Some(1_000_000));
    let evs = drain(&mut rx);
    assert!(evs.contains(&SessionEvent::SessionConsumed {
        device_id: d.id,
        session_id: a.id()
    }));
    assert!(evs.contains(&SessionEvent::SessionAdvanced {
        device_id: d.id,
        from: a.id(),
        to: b.id()
    }));
    let ended = m.session(a.id()).unwrap();
    assert_eq!(ended.remaining_time(), 0);

    // Traffic consumes the data session; remaining saturates at zero.
    let rep = m.record_usage(&[(d.id, 400_000), (99, 5)]).unwrap();
    assert!(rep.transitions.is_empty());
    assert_eq!(rep.not_connected, vec![99]);
    assert_eq!(m.remaining_data_bytes(b.id()).unwrap(), 600_000);
    let rep = m.record_usage(&[(d.id, 700_000)]).unwrap();
    assert_eq!(rep.transitions.len(), 1);
    assert_eq!(rep.transitions[0].next, None);
    assert!(!m.is_connected(d.id).unwrap());
    let b2 = m.session(b.id()).unwrap();
    assert_eq!(b2.remaining_data(), 0.0);
    assert_eq!(b2.data_consumption_bytes(), 1_100_000);
    assert!(drain(&mut rx).iter().any(|e| matches!(e, SessionEvent::Disconnected { notification, .. } if notification == "no session left")));
    assert!(matches!(
        m.get_session(d.id).await,
        Err(ModelError::NoAvailableSession(_))
    ));
}

#[tokio::test]
async fn expiry_and_gc() {
    let (m, clock) = setup();
    let d = m.create_device(mac(1), None, None).unwrap();
    let a = m
        .create_session(d.id, 0, 10, 0.0, Some(0), 1, 1, false)
        .await
        .unwrap();
    m.connect(d.id, "go").await.unwrap();
    m.disconnect(d.id, "pause").await.unwrap();
    clock.advance_secs(11);
    // Paused but past expires_at (started + 10 s + 0 days): not available any more.
    assert!(matches!(
        m.get_session(d.id).await,
        Err(ModelError::NoAvailableSession(_))
    ));
    assert!(m.gc(3_600).unwrap().is_empty(), "within retention");
    clock.advance_secs(3_600);
    assert_eq!(m.gc(3_600).unwrap(), vec![a.id()]);
    assert!(matches!(
        m.session(a.id()),
        Err(ModelError::UnknownSession(_))
    ));

    // A running session expires on tick.
    let b = m
        .create_session(d.id, 0, 1_000, 0.0, Some(0), 1, 1, false)
        .await
        .unwrap();
    m.connect(d.id, "go").await.unwrap();
    clock.advance_secs(500);
    m.disconnect(d.id, "p").await.unwrap();
    clock.advance_secs(600); // expires_at = start + 1000 passes while paused
    assert!(matches!(
        m.connect(d.id, "x").await,
        Err(ModelError::NoAvailableSession(_))
    ));
    let _ = b;
}

#[tokio::test]
async fn get_session_queue_order() {
    let (m, clock) = setup();
    let d = m.create_device(mac(1), None, None).unwrap();
    let a = m
        .create_session(d.id, 0, 5, 0.0, None, 1, 1, false)
        .await
        .unwrap();
    let b = m
        .create_session(d.id, 0, 50, 0.0, None, 1, 1, false)
        .await
        .unwrap();
    let _c = m
        .create_session(d.id, 0, 50, 0.0, None, 1, 1, false)
        .await
        .unwrap();
    assert_eq!(
        m.get_session(d.id).await.unwrap().id(),
        a.id(),
        "oldest first"
    );
    m.connect(d.id, "").await.unwrap();
    clock.advance_secs(6);
    m.tick().unwrap();
    assert_eq!(m.get_session(d.id).await.unwrap().id(), b.id());
    m.disconnect(d.id, "").await.unwrap();
    assert_eq!(
        m.get_session(d.id).await.unwrap().id(),
        b.id(),
        "paused b before unstarted c"
    );
    assert_eq!(m.device_sessions(d.id).unwrap().len(), 3);
}

#[tokio::test]
async fn client_session_mutators_save_and_reload() {
    let (m, _) = setup();
    let d = m.create_device(mac(1), None, None).unwrap();
    let mut s = m
        .create_session(d.id, 2, 100, 10.0, None, 1, 1, false)
        .await
        .unwrap();
    s.inc_time_cons(10);
    s.inc_data_cons(1.5).unwrap();
    assert!(s.inc_data_cons(f64::NAN).is_err());
    assert!(s.set_data_mb(-2.0).is_err());
    assert!(s.set_down_mbits(-1).is_err());
    assert!(s.set_up_mbits(-1).is_err());
    s.set_down_mbits(7).unwrap();
    s.set_up_mbits(8).unwrap();
    s.set_use_global_speed(true);
    s.set_exp_days(Some(3));
    s.set_started_at(Some(T0 - 5));
    assert_eq!(s.time_consumption(), 10);
    assert_eq!(s.data_consumption(), 1.5);
    assert_eq!(s.remaining_data(), 8.5);
    assert_eq!(s.remaining_time(), 90);
    // Not saved yet.
    assert_eq!(m.session(s.id()).unwrap().time_consumption(), 0);
    s.save().await.unwrap();
    let fresh = m.session(s.id()).unwrap();
    assert_eq!(fresh.time_consumption(), 10);
    assert_eq!(fresh.data_consumption_bytes(), 1_500_000);
    assert_eq!(
        (
            fresh.down_mbits(),
            fresh.up_mbits(),
            fresh.use_global_speed()
        ),
        (7, 8, true)
    );
    assert_eq!(fresh.expires_at(), Some(T0 - 5 + 100 + 3 * 86_400));

    s.set_time_secs(500);
    s.set_data_mb(20.0).unwrap();
    s.set_time_cons(1);
    s.set_data_cons(2.0).unwrap();
    s.reload().await.unwrap();
    assert_eq!(s.time_secs(), 100, "reload discards unsaved changes");
    assert_eq!(s.time_consumption(), 10);
    assert_eq!(s.data_mb(), 10.0);

    s.set_time_secs(0);
    assert!(matches!(
        s.save().await,
        Err(ModelError::ZeroAllocation { .. })
    ));
    s.reload().await.unwrap();
    s.set_data_cons(11.0).unwrap();
    s.save().await.unwrap();
    assert!(m.session(s.id()).unwrap().is_consumed());
    assert!(matches!(
        m.get_session(d.id).await,
        Err(ModelError::NoAvailableSession(_))
    ));
}

#[tokio::test]
async fn providers_registry() {
    use session_model::source::{LocalSource, SessionSource};
    use session_model::{SessionProvider, SessionRecord};
    struct Tagging;
    impl SessionProvider for Tagging {
        fn source(&self, _r: &SessionRecord, local: Arc<LocalSource>) -> Arc<dyn SessionSource> {
            local
        }
    }
    let (m, _) = setup();
    assert_eq!(m.provider_names(), vec!["local"]);
    m.register_session_provider("voucher", Arc::new(Tagging))
        .unwrap();
    assert!(matches!(
        m.register_session_provider("voucher", Arc::new(Tagging)),
        Err(ModelError::DuplicateProvider(_))
    ));
    assert_eq!(m.provider_names(), vec!["local", "voucher"]);
    let d = m.create_device(mac(1), None, None).unwrap();
    let base = m
        .create_session(d.id, 0, 10, 0.0, None, 0, 0, true)
        .await
        .unwrap();
    let mut data = base.data().clone();
    data.provider = "voucher".into();
    let mut v = m.create_session_with(d.id, data.clone()).await.unwrap();
    assert_eq!(v.provider(), "voucher");
    v.inc_time_cons(3);
    v.save().await.unwrap();
    v.reload().await.unwrap();
    assert_eq!(v.time_consumption(), 3);
    data.provider = "nope".into();
    assert!(matches!(
        m.create_session_with(d.id, data).await,
        Err(ModelError::UnknownProvider(_))
    ));
}

#[tokio::test]
async fn manager_state_survives_restart_on_hybrid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = Arc::new(ManualClock::new(T0));
    let (did, sid);
    {
        let store: Arc<dyn SessionStore> =
            Arc::new(HybridStore::open(&path, HybridOptions::default()).unwrap());
        let m = SessionsMgr::new(store, clock.clone());
        let d = m.create_device(mac(1), None, None).unwrap();
        let s = m
            .create_session(d.id, 2, 100, 5.0, None, 1, 1, false)
            .await
            .unwrap();
        m.connect(d.id, "").await.unwrap();
        clock.advance_secs(40);
        m.record_usage(&[(d.id, 1_234_567)]).unwrap();
        m.tick().unwrap();
        did = d.id;
        sid = s.id();
    }
    // The process was down for 25.5 s; the device stayed connected in the kernel.
    clock.advance(Duration::from_millis(25_500));
    let store: Arc<dyn SessionStore> =
        Arc::new(HybridStore::open(&path, HybridOptions::default()).unwrap());
    let m = SessionsMgr::new(store, clock.clone());
    assert!(m.is_connected(did).unwrap(), "connections are restored");
    assert_eq!(m.connected().unwrap(), vec![(did, sid)]);
    assert_eq!(m.running_session_id(did).unwrap(), Some(sid));
    let s = m.get_session(did).await.unwrap();
    assert_eq!(s.id(), sid);
    assert_eq!(s.time_consumption(), 40);
    assert_eq!(s.data_consumption_bytes(), 1_234_567);
    assert_eq!(s.started_at(), Some(T0));
    // The first tick charges the downtime (whole seconds, the remainder is carried).
    m.tick().unwrap();
    assert_eq!(m.session(sid).unwrap().time_consumption(), 65);
    clock.advance(Duration::from_millis(500));
    m.tick().unwrap();
    assert_eq!(m.session(sid).unwrap().time_consumption(), 66);
}

#[tokio::test]
async fn gc_never_removes_a_session_that_can_still_run() {
    let (m, clock) = setup();
    let d = m.create_device(mac(7), None, None).unwrap();
    let a = m
        .create_session(d.id, 0, 10, 0.0, None, 1, 1, false)
        .await
        .unwrap();
    m.connect(d.id, "go").await.unwrap();
    clock.advance_secs(11);
    m.tick().unwrap();
    let mut rec = m.store().session(a.id()).unwrap().unwrap();
    assert!(rec.ended_at.is_some(), "consumed: {rec:?}");
    // Revived (more time) by a write that kept the old `ended_at`.
    rec.data.time_secs = 100;
    m.store().save_session(&rec).unwrap();
    clock.advance_secs(7_200);
    assert!(
        m.gc(3_600).unwrap().is_empty(),
        "removed a session that can run"
    );
    assert_eq!(m.session(a.id()).unwrap().id(), a.id());
}

/// The grant of a running session is read from what the manager keeps of it
/// once a poll charged it, and follows every change: its usage, its own
/// speeds saved through the session, the shared speeds; asked of many
/// devices at once, each one's is the same.
#[tokio::test]
async fn a_running_sessions_grant_follows_its_usage_and_every_speed_change() {
    for hybrid in [false, true] {
        let clock = Arc::new(ManualClock::new(T0));
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SessionStore> = if hybrid {
            Arc::new(HybridStore::open(dir.path().join("s.db"), HybridOptions::default()).unwrap())
        } else {
            Arc::new(MemoryStore::new())
        };
        let m = SessionsMgr::new(store, clock.clone());
        let d = m.create_device(mac(1), None, None).unwrap();
        let s = m
            .create_session(d.id, 1, 0, 10.0, None, 5, 2, false)
            .await
            .unwrap();
        // Another device, with no session.
        let e = m.create_device(mac(2), None, None).unwrap();
        // Asked of many at once, each device's grant is what it is alone.
        let many = |m: &SessionsMgr| {
            let alone = [e.id, d.id, e.id].map(|id| m.granted(id).unwrap());
            assert_eq!(m.granted_many(&[e.id, d.id, e.id]).unwrap(), alone.to_vec());
        };
        m.connect(d.id, "test").await.unwrap();
        many(&m);
        let mark = |bytes| session_model::MeterMark { epoch: 7, bytes };
        m.record_meter(&[(d.id, mark(0))]).unwrap();
        m.record_meter(&[(d.id, mark(1_000_000))]).unwrap();
        many(&m);
        let g = m.granted(d.id).unwrap().unwrap();
        assert_eq!(
            (g.session_id, g.down_mbits, g.up_mbits, g.budget_bytes),
            (s.id(), 5, 2, Some(9_000_000)),
            "hybrid: {hybrid}"
        );
        // Charged again: the budget left follows.
        m.record_meter(&[(d.id, mark(1_500_000))]).unwrap();
        assert_eq!(
            m.granted(d.id).unwrap().unwrap().budget_bytes,
            Some(8_500_000)
        );
        // Its own speeds changed and saved through the session.
        let mut live = m.session(s.id()).unwrap();
        live.set_down_mbits(20).unwrap();
        live.save().await.unwrap();
        many(&m);
        let g = m.granted(d.id).unwrap().unwrap();
        assert_eq!((g.down_mbits, g.up_mbits), (20, 2), "hybrid: {hybrid}");
        // The shared speeds, for a session that takes them.
        let mut live = m.session(s.id()).unwrap();
        live.set_use_global_speed(true);
        live.save().await.unwrap();
        m.record_meter(&[(d.id, mark(1_600_000))]).unwrap();
        m.set_global_speed(50, 10);
        many(&m);
        let g = m.granted(d.id).unwrap().unwrap();
        assert_eq!(
            (g.down_mbits, g.up_mbits, g.budget_bytes),
            (50, 10, Some(8_400_000)),
            "hybrid: {hybrid}"
        );
        m.disconnect(d.id, "test").await.unwrap();
        many(&m);
        assert!(m.granted(d.id).unwrap().is_none());
    }
}

#[tokio::test]
async fn the_manager_names_the_devices_whose_running_session_changed_since_a_generation() {
    let (m, clock) = setup();
    let a = m.create_device(mac(1), None, None).unwrap().id;
    let b = m.create_device(mac(2), None, None).unwrap().id;
    m.create_session(a, 0, 10, 0.0, None, 1, 1, false)
        .await
        .unwrap();
    m.create_session(a, 0, 60, 0.0, None, 1, 1, false)
        .await
        .unwrap();
    m.create_session(b, 0, 60, 0.0, None, 1, 1, false)
        .await
        .unwrap();
    let g0 = m.connected_generation();
    assert_eq!(m.connected_changes_since(g0), Some((g0, vec![])));
    m.connect(a, "").await.unwrap();
    m.connect(b, "").await.unwrap();
    let g1 = m.connected_generation();
    assert_eq!(m.connected_changes_since(g0), Some((g1, vec![a, b])));
    // A session that ends and gives way to the next is a change too.
    clock.advance_secs(12);
    assert_eq!(m.tick().unwrap().transitions.len(), 1);
    m.disconnect(b, "").await.unwrap();
    let g2 = m.connected_generation();
    assert_eq!(m.connected_changes_since(g1), Some((g2, vec![a, b])));
    assert_eq!(m.connected_changes_since(g2), Some((g2, vec![])));
    assert_eq!(m.connected_changes_since(g2 + 1), None, "not yet");
    // More changes than are kept: the caller looks at every device.
    for _ in 0..4_100 {
        m.connect(b, "").await.unwrap();
        m.disconnect(b, "").await.unwrap();
    }
    assert_eq!(m.connected_changes_since(g2), None);
    let g3 = m.connected_generation();
    let (now, changed) = m.connected_changes_since(g3 - 10).unwrap();
    assert_eq!((now, changed), (g3, vec![b; 10]));
}

#[tokio::test]
async fn a_tick_that_fails_half_way_still_names_the_device_whose_session_it_ended() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(FaultyStore::default());
    let m = SessionsMgr::new(store.clone(), clock.clone());
    let d = m.create_device(mac(1), None, None).unwrap().id;
    m.create_session(d, 0, 10, 0.0, None, 1, 1, false)
        .await
        .unwrap();
    m.connect(d, "").await.unwrap();
    let g = m.connected_generation();
    clock.advance_secs(12);
    store
        .fail_saves
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(m.tick().is_err());
    assert!(!m.is_connected(d).unwrap(), "the session ended in memory");
    let (_, changed) = m.connected_changes_since(g).unwrap();
    assert_eq!(changed, vec![d]);
}

#[tokio::test]
async fn the_sessions_that_are_not_their_devices_running_session_are_named_in_their_order() {
    let (m, _clock) = setup();
    let a = m.create_device(mac(1), None, None).unwrap();
    let b = m.create_device(mac(2), None, None).unwrap();
    let mut sessions = Vec::new();
    for d in [a.id, a.id, b.id] {
        let s = m
            .create_session(d, 0, 100, 0.0, Some(1), 1, 1, false)
            .await
            .unwrap();
        sessions.push(s.id());
    }
    m.connect(a.id, "").await.unwrap();
    m.connect(b.id, "").await.unwrap();
    m.disconnect(b.id, "").await.unwrap();
    // a runs its first session; its second waits; b runs none; 99 is no session.
    let asked = [
        (sessions[2], b.id),
        (sessions[1], a.id),
        (sessions[0], a.id),
        (99, a.id),
        (sessions[0], b.id),
    ];
    assert_eq!(
        m.not_running(&asked).unwrap(),
        vec![sessions[2], sessions[1], 99, sessions[0]]
    );
    assert_eq!(m.not_running(&[]).unwrap(), Vec::<u64>::new());
}
