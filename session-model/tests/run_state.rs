//! Persisted run state, byte-meter marks and auto-advance of the sessions manager.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use session_model::manager::{NO_SESSION_LEFT, SESSION_ENDED};
use session_model::{
    DeviceId, EndReason, HybridOptions, HybridStore, MacAddr, ManualClock, MemoryStore, MeterMark,
    RedbStore, RunState, SessionEvent, SessionId, SessionStore, SessionsMgr,
};
use tokio::sync::broadcast::Receiver;

const T0: i64 = 1_700_000_000;

fn mac(n: u8) -> MacAddr {
    MacAddr::new([2, 0, 0, 0, 0, n])
}

fn mark(epoch: u64, bytes: u64) -> MeterMark {
    MeterMark { epoch, bytes }
}

fn drain(rx: &mut Receiver<SessionEvent>) -> Vec<SessionEvent> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

/// Opens a durable store of `kind` at `path`.
fn open(kind: &str, path: &Path) -> Arc<dyn SessionStore> {
    match kind {
        "redb" => Arc::new(RedbStore::open(path).unwrap()),
        "hybrid" => Arc::new(HybridStore::open(path, HybridOptions::default()).unwrap()),
        other => panic!("unknown store {other}"),
    }
}

fn data_mgr(store: Arc<dyn SessionStore>, clock: Arc<ManualClock>) -> SessionsMgr {
    SessionsMgr::new(store, clock)
}

async fn device_with_sessions(
    m: &SessionsMgr,
    n: u8,
    sessions: &[(u8, u64, f64)],
) -> (DeviceId, Vec<SessionId>) {
    let d = m.create_device(mac(n), None, None).unwrap();
    let mut ids = Vec::new();
    for &(t, secs, mb) in sessions {
        ids.push(
            m.create_session(d.id, t, secs, mb, None, 1, 1, false)
                .await
                .unwrap()
                .id(),
        );
    }
    (d.id, ids)
}

async fn restart_restores_connections(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = Arc::new(ManualClock::new(T0));
    let (a, b, c, sa, sb);
    {
        let store = open(kind, &path);
        let m = data_mgr(store.clone(), clock.clone());
        let (da, ids_a) = device_with_sessions(&m, 1, &[(0, 3_600, 0.0)]).await;
        let (db, ids_b) = device_with_sessions(&m, 2, &[(2, 3_600, 1.0)]).await;
        let (dc, _) = device_with_sessions(&m, 3, &[(0, 3_600, 0.0)]).await;
        m.connect(da, "").await.unwrap();
        m.connect(db, "").await.unwrap();
        m.connect(dc, "").await.unwrap();
        clock.advance(Duration::from_millis(10_700));
        m.tick().unwrap();
        m.record_meter(&[(db, mark(1, 100))]).unwrap();
        m.record_meter(&[(db, mark(1, 350))]).unwrap();
        // c leaves before the restart.
        m.disconnect(dc, "bye").await.unwrap();
        let rec = store.session(ids_a[0]).unwrap().unwrap();
        assert_eq!(rec.data.time_cons, 10);
        assert_eq!(
            rec.run,
            Some(RunState {
                charged_to_ms: T0 * 1000 + 10_000,
                boot: 1,
                meter: None
            }),
            "charged_to_ms moves with time_cons, the remainder is carried"
        );
        (a, b, c, sa, sb) = (da, db, dc, ids_a[0], ids_b[0]);
        drop(m);
        drop(store);
    }
    // Down for 30.2 s.
    clock.advance(Duration::from_millis(30_200));
    let store = open(kind, &path);
    let m = data_mgr(store.clone(), clock.clone());
    assert_eq!(m.connected().unwrap(), vec![(a, sa), (b, sb)]);
    assert!(!m.is_connected(c).unwrap());
    assert_eq!(m.running_session_id(b).unwrap(), Some(sb));
    assert_eq!(m.running_session_id(c).unwrap(), None);
    assert_eq!(m.meter_mark(b).unwrap(), Some(mark(1, 350)));
    assert_eq!(m.meter_mark(a).unwrap(), None);
    assert_eq!(m.session(sb).unwrap().data_consumption_bytes(), 250);
    // The first tick charges the downtime: 0.7 s carried + 30.2 s = 40 s total.
    let rep = m.tick().unwrap();
    assert_eq!(rep.updated, 2);
    assert_eq!(m.session(sa).unwrap().time_consumption(), 40);
    assert_eq!(m.session(sb).unwrap().time_consumption(), 40);
    clock.advance(Duration::from_millis(100));
    m.tick().unwrap();
    assert_eq!(m.session(sa).unwrap().time_consumption(), 41);
    // The meter continues from the stored mark.
    m.record_meter(&[(b, mark(1, 1_350))]).unwrap();
    assert_eq!(m.session(sb).unwrap().data_consumption_bytes(), 1_250);
    // Disconnect clears the stored run state.
    m.disconnect(a, "").await.unwrap();
    assert_eq!(store.session(sa).unwrap().unwrap().run, None);
    drop(m);
    let m = data_mgr(store, clock.clone());
    assert_eq!(m.connected().unwrap(), vec![(b, sb)]);
}

#[tokio::test]
async fn restart_restores_connections_redb() {
    restart_restores_connections("redb").await;
}

#[tokio::test]
async fn restart_restores_connections_hybrid() {
    restart_restores_connections("hybrid").await;
}

#[tokio::test]
async fn restart_on_memory_store_and_duplicate_run_states() {
    let clock = Arc::new(ManualClock::new(T0));
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let m = data_mgr(store.clone(), clock.clone());
    let (d, ids) = device_with_sessions(&m, 1, &[(0, 100, 0.0), (0, 100, 0.0)]).await;
    m.connect(d, "").await.unwrap();
    drop(m);
    // Corrupt the state: both sessions claim to run, the second one more recently.
    let mut second = store.session(ids[1]).unwrap().unwrap();
    second.run = Some(RunState {
        charged_to_ms: T0 * 1000 + 5_000,
        boot: 1,
        meter: Some(mark(3, 9)),
    });
    store.save_session(&second).unwrap();
    let m = data_mgr(store.clone(), clock.clone());
    assert_eq!(m.connected().unwrap(), vec![(d, ids[1])]);
    assert_eq!(store.session(ids[0]).unwrap().unwrap().run, None, "cleared");
    assert_eq!(m.meter_mark(d).unwrap(), Some(mark(3, 9)));
    assert_eq!(
        m.run_state(d).unwrap().map(|r| r.charged_to_ms),
        Some(T0 * 1000 + 5_000)
    );
}

#[tokio::test]
async fn connect_and_disconnect_write_run_state() {
    let clock = Arc::new(ManualClock::new(T0));
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let m = data_mgr(store.clone(), clock.clone());
    let (d, ids) = device_with_sessions(&m, 1, &[(0, 100, 0.0)]).await;
    assert_eq!(m.run_state(d).unwrap(), None);
    m.connect(d, "").await.unwrap();
    assert_eq!(
        store.session(ids[0]).unwrap().unwrap().run,
        Some(RunState {
            charged_to_ms: T0 * 1000,
            boot: 1,
            meter: None
        })
    );
    clock.advance(Duration::from_millis(2_500));
    m.record_meter(&[(d, mark(1, 10))]).unwrap();
    m.disconnect(d, "").await.unwrap();
    let rec = store.session(ids[0]).unwrap().unwrap();
    assert_eq!(rec.run, None);
    assert_eq!(
        rec.data.time_cons, 2,
        "disconnect charges time in the same write"
    );
    assert_eq!(m.meter_mark(d).unwrap(), None);
    // Resuming starts a new mark.
    clock.advance_secs(100);
    m.connect(d, "").await.unwrap();
    assert_eq!(
        m.run_state(d).unwrap(),
        Some(RunState {
            charged_to_ms: T0 * 1000 + 102_500,
            boot: 1,
            meter: None
        })
    );
    m.record_meter(&[(d, mark(1, 500))]).unwrap();
    assert_eq!(m.session(ids[0]).unwrap().data_consumption_bytes(), 0);
    m.tick().unwrap();
    assert_eq!(
        m.session(ids[0]).unwrap().time_consumption(),
        2,
        "paused time is not charged"
    );
}

#[tokio::test]
async fn record_meter_is_exact() {
    let clock = Arc::new(ManualClock::new(T0));
    let m = data_mgr(Arc::new(MemoryStore::new()), clock.clone());
    let (d, ids) = device_with_sessions(&m, 1, &[(1, 0, 10.0)]).await;
    let (idle, _) = device_with_sessions(&m, 2, &[(1, 0, 10.0)]).await;
    let rep = m.record_meter(&[(d, mark(1, 1_000))]).unwrap();
    assert_eq!(rep.not_connected, vec![d], "not connected yet");
    m.connect(d, "").await.unwrap();
    let cons = |m: &SessionsMgr| m.session(ids[0]).unwrap().data_consumption_bytes();
    // First reading: mark only.
    let rep = m.record_meter(&[(d, mark(1, 1_000))]).unwrap();
    assert_eq!(rep.updated, 1);
    assert_eq!(cons(&m), 0);
    assert_eq!(m.meter_mark(d).unwrap(), Some(mark(1, 1_000)));
    let rep = m
        .record_meter(&[(d, mark(1, 1_500)), (idle, mark(1, 7))])
        .unwrap();
    assert_eq!(rep.not_connected, vec![idle]);
    assert_eq!(cons(&m), 500);
    // The same reading again charges nothing and writes nothing.
    let rep = m.record_meter(&[(d, mark(1, 1_500))]).unwrap();
    assert_eq!(rep.updated, 0);
    assert_eq!(cons(&m), 500);
    // A reading below the mark charges nothing; the mark does not move back.
    m.record_meter(&[(d, mark(1, 1_200))]).unwrap();
    assert_eq!(cons(&m), 500);
    assert_eq!(m.meter_mark(d).unwrap(), Some(mark(1, 1_500)));
    m.record_meter(&[(d, mark(1, 2_000))]).unwrap();
    assert_eq!(cons(&m), 1_000);
    // Two readings of one device in one batch.
    m.record_meter(&[(d, mark(1, 2_100)), (d, mark(1, 2_400))])
        .unwrap();
    assert_eq!(cons(&m), 1_400);
    // New epoch: the counters restarted from zero, everything they show is new.
    m.record_meter(&[(d, mark(2, 300))]).unwrap();
    assert_eq!(cons(&m), 1_700);
    assert_eq!(m.meter_mark(d).unwrap(), Some(mark(2, 300)));
    m.record_meter(&[(d, mark(2, 350))]).unwrap();
    assert_eq!(cons(&m), 1_750);
    // A reading that charges bytes charges the connected time with them:
    // the record is written anyway.
    clock.advance_secs(5);
    m.record_meter(&[(d, mark(2, 360))]).unwrap();
    assert_eq!(m.session(ids[0]).unwrap().time_consumption(), 5);
    assert_eq!(
        m.run_state(d).unwrap().unwrap().charged_to_ms,
        T0 * 1000 + 5_000,
        "the clock reading moves with the time charged"
    );
    // record_usage still works alongside and leaves the mark alone.
    m.record_usage(&[(d, 40)]).unwrap();
    assert_eq!(cons(&m), 1_800);
    assert_eq!(m.meter_mark(d).unwrap(), Some(mark(2, 360)));
}

async fn replay_after_crash(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = Arc::new(ManualClock::new(T0));
    let (d, sid);
    {
        let store = open(kind, &path);
        let m = data_mgr(store.clone(), clock.clone());
        let (dd, ids) = device_with_sessions(&m, 1, &[(1, 0, 10.0)]).await;
        m.connect(dd, "").await.unwrap();
        m.record_meter(&[(dd, mark(4, 10_000))]).unwrap();
        m.record_meter(&[(dd, mark(4, 12_345))]).unwrap();
        (d, sid) = (dd, ids[0]);
        drop(m);
        drop(store);
    }
    // The daemon crashed after the write but before it could note that it was done, so
    // it reads the kernel again and hands in the same reading.
    let store = open(kind, &path);
    let m = data_mgr(store.clone(), clock.clone());
    assert_eq!(m.meter_mark(d).unwrap(), Some(mark(4, 12_345)));
    m.record_meter(&[(d, mark(4, 12_345))]).unwrap();
    assert_eq!(m.session(sid).unwrap().data_consumption_bytes(), 2_345);
    m.record_meter(&[(d, mark(4, 13_000))]).unwrap();
    assert_eq!(m.session(sid).unwrap().data_consumption_bytes(), 3_000);
    drop(m);
    drop(store);
    let store = open(kind, &path);
    let m = data_mgr(store, clock);
    m.record_meter(&[(d, mark(4, 13_000))]).unwrap();
    assert_eq!(m.session(sid).unwrap().data_consumption_bytes(), 3_000);
}

#[tokio::test]
async fn duplicate_reading_after_restart_redb() {
    replay_after_crash("redb").await;
}

#[tokio::test]
async fn duplicate_reading_after_restart_hybrid() {
    replay_after_crash("hybrid").await;
}

#[tokio::test]
async fn duplicate_reading_after_hybrid_crash_without_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = Arc::new(ManualClock::new(T0));
    let hybrid = Arc::new(HybridStore::open(&path, HybridOptions::default()).unwrap());
    let store: Arc<dyn SessionStore> = hybrid.clone();
    let m = data_mgr(store.clone(), clock.clone());
    let (d, ids) = device_with_sessions(&m, 1, &[(1, 0, 10.0)]).await;
    m.connect(d, "").await.unwrap();
    m.record_meter(&[(d, mark(1, 0))]).unwrap();
    m.record_meter(&[(d, mark(1, 777))]).unwrap();
    drop(m);
    drop(store);
    let hybrid = Arc::try_unwrap(hybrid).unwrap();
    hybrid.close_without_checkpoint();
    let (store, stats) = HybridStore::open_with_stats(&path, HybridOptions::default()).unwrap();
    assert!(stats.replayed_records > 0, "state came from the log");
    let m = data_mgr(Arc::new(store), clock);
    assert_eq!(m.connected().unwrap(), vec![(d, ids[0])]);
    m.record_meter(&[(d, mark(1, 777))]).unwrap();
    assert_eq!(m.session(ids[0]).unwrap().data_consumption_bytes(), 777);
}

#[tokio::test]
async fn advance_carries_the_mark() {
    let clock = Arc::new(ManualClock::new(T0));
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let m = data_mgr(store.clone(), clock.clone());
    // Two data sessions of 1000 bytes each.
    let (d, ids) = device_with_sessions(&m, 1, &[(1, 0, 0.001), (1, 0, 0.001)]).await;
    m.connect(d, "").await.unwrap();
    clock.advance(Duration::from_millis(1_300));
    m.tick().unwrap();
    m.record_meter(&[(d, mark(1, 100))]).unwrap();
    let mut rx = m.subscribe();
    let rep = m.record_meter(&[(d, mark(1, 1_300))]).unwrap();
    assert_eq!(rep.transitions.len(), 1);
    assert_eq!(rep.transitions[0].next, Some(ids[1]));
    assert_eq!(rep.updated, 2, "ended and next session in one batch");
    let first = store.session(ids[0]).unwrap().unwrap();
    assert_eq!(
        first.data.data_cons_bytes, 1_200,
        "overshoot stays on the session"
    );
    assert_eq!(first.run, None);
    let second = store.session(ids[1]).unwrap().unwrap();
    assert_eq!(second.data.data_cons_bytes, 0);
    assert_eq!(
        second.run,
        Some(RunState {
            charged_to_ms: T0 * 1000 + 1_300,
            boot: 1,
            meter: Some(mark(1, 1_300))
        }),
        "the meter mark is carried; the next session's clock starts at the advance"
    );
    assert!(drain(&mut rx)
        .iter()
        .any(|e| matches!(e, SessionEvent::SessionAdvanced { to, .. } if *to == ids[1])));
    m.record_meter(&[(d, mark(1, 1_500))]).unwrap();
    assert_eq!(m.session(ids[1]).unwrap().data_consumption_bytes(), 200);
    assert_eq!(m.session(ids[0]).unwrap().data_consumption_bytes(), 1_200);
    // Nothing of the first session's time is carried: 0.7 s is not yet a second.
    clock.advance(Duration::from_millis(700));
    m.tick().unwrap();
    assert_eq!(m.session(ids[1]).unwrap().time_consumption(), 0);
    clock.advance(Duration::from_millis(300));
    m.tick().unwrap();
    assert_eq!(m.session(ids[1]).unwrap().time_consumption(), 1);
    // The last session runs out: no session left, the run state is gone.
    let rep = m.record_meter(&[(d, mark(1, 5_000))]).unwrap();
    assert_eq!(rep.transitions[0].next, None);
    assert!(!m.is_connected(d).unwrap());
    assert!(store.sessions().unwrap().iter().all(|r| r.run.is_none()));
    assert!(drain(&mut rx).iter().any(|e| matches!(
        e,
        SessionEvent::Disconnected { notification, .. } if notification == NO_SESSION_LEFT
    )));
}

#[tokio::test]
async fn auto_advance_off_disconnects() {
    let clock = Arc::new(ManualClock::new(T0));
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let m = data_mgr(store.clone(), clock.clone());
    assert!(m.auto_advance());
    m.set_auto_advance(false);
    assert!(!m.auto_advance());
    let (d, ids) = device_with_sessions(&m, 1, &[(0, 10, 0.0), (1, 0, 0.001)]).await;
    m.connect(d, "").await.unwrap();
    m.record_meter(&[(d, mark(1, 0))]).unwrap();
    let mut rx = m.subscribe();
    clock.advance_secs(10);
    let rep = m.tick().unwrap();
    assert_eq!(rep.transitions.len(), 1);
    assert_eq!(rep.transitions[0].session_id, ids[0]);
    assert_eq!(rep.transitions[0].next, None);
    assert!(!m.is_connected(d).unwrap());
    assert_eq!(m.running_session_id(d).unwrap(), None);
    let ev = drain(&mut rx);
    assert!(ev.iter().any(|e| matches!(
        e,
        SessionEvent::Disconnected { session_id: Some(s), notification, .. }
            if *s == ids[0] && notification == SESSION_ENDED
    )));
    assert!(!ev
        .iter()
        .any(|e| matches!(e, SessionEvent::SessionAdvanced { .. })));
    assert_eq!(store.session(ids[0]).unwrap().unwrap().run, None);
    let second = store.session(ids[1]).unwrap().unwrap();
    assert_eq!(second.run, None);
    assert_eq!(
        second.data.started_at, None,
        "the next session is not started"
    );
    // The next connect starts it.
    let s = m.connect(d, "").await.unwrap();
    assert_eq!(s.id(), ids[1]);
    assert_eq!(m.meter_mark(d).unwrap(), None);
    // Back on: consumed sessions advance again (here: none left).
    m.set_auto_advance(true);
    m.record_meter(&[(d, mark(1, 0))]).unwrap();
    let rep = m.record_meter(&[(d, mark(1, 1_000))]).unwrap();
    assert_eq!(rep.transitions[0].next, None);
    assert!(drain(&mut rx).iter().any(|e| matches!(
        e,
        SessionEvent::Disconnected { notification, .. } if notification == NO_SESSION_LEFT
    )));
}

#[tokio::test]
async fn auto_advance_on_by_default() {
    let clock = Arc::new(ManualClock::new(T0));
    let m = data_mgr(Arc::new(MemoryStore::new()), clock.clone());
    let (d, ids) = device_with_sessions(&m, 1, &[(0, 10, 0.0), (0, 10, 0.0)]).await;
    m.connect(d, "").await.unwrap();
    clock.advance_secs(10);
    let rep = m.tick().unwrap();
    assert_eq!(rep.transitions[0].next, Some(ids[1]));
    assert_eq!(m.running_session_id(d).unwrap(), Some(ids[1]));
}

#[tokio::test]
async fn a_session_saved_from_outside_is_seen_by_the_next_tick() {
    let clock = Arc::new(ManualClock::new(T0));
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let m = data_mgr(store, clock.clone());
    let (d, ids) = device_with_sessions(&m, 9, &[(0, 100, 0.0)]).await;
    m.connect(d, "").await.unwrap();
    clock.advance(Duration::from_millis(1_200));
    m.tick().unwrap();
    m.record_meter(&[(d, mark(1, 10))]).unwrap();
    // A portal uses up the session's time through ClientSession, within the same second.
    let mut s = m.session(ids[0]).unwrap();
    s.set_time_cons(100);
    s.save().await.unwrap();
    let rep = m.tick().unwrap();
    assert_eq!(
        rep.transitions.len(),
        1,
        "the saved change ends the session at once"
    );
    assert!(!m.is_connected(d).unwrap());
}

#[tokio::test]
async fn polls_that_change_nothing_write_nothing() {
    let clock = Arc::new(ManualClock::new(T0));
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let m = data_mgr(store, clock.clone());
    let (d, ids) = device_with_sessions(&m, 10, &[(1, 0, 1.0)]).await;
    m.connect(d, "").await.unwrap();
    m.record_meter(&[(d, mark(1, 100))]).unwrap();
    m.tick().unwrap();
    for _ in 0..3 {
        clock.advance(Duration::from_millis(200));
        assert_eq!(m.record_meter(&[(d, mark(1, 100))]).unwrap().updated, 0);
        assert_eq!(m.tick().unwrap().updated, 0);
    }
    // New bytes, then a whole second: both are charged exactly. The time
    // alone is no write: the poll charges it when the session comes due, a
    // view up to now.
    assert_eq!(m.record_meter(&[(d, mark(1, 350))]).unwrap().updated, 1);
    clock.advance(Duration::from_millis(400));
    assert_eq!(m.tick().unwrap().updated, 0);
    let s = m.session(ids[0]).unwrap();
    assert_eq!((s.data_consumption_bytes(), s.time_consumption()), (250, 1));
}

/// The session's `time_cons`.
fn time_cons(m: &SessionsMgr, sid: SessionId) -> u64 {
    m.session(sid).unwrap().data().time_cons
}

#[tokio::test]
async fn wall_clock_steps_neither_charge_nor_refund_connected_time() {
    let clock = Arc::new(ManualClock::new(T0));
    let m = data_mgr(Arc::new(MemoryStore::new()), clock.clone());
    let (d, ids) = device_with_sessions(&m, 1, &[(0, 3_600, 0.0)]).await;
    m.connect(d, "").await.unwrap();
    clock.advance_secs(10);
    m.tick().unwrap();
    assert_eq!(time_cons(&m, ids[0]), 10);
    // NTP on a board without a real-time clock: hours ahead at once.
    clock.step_wall(3 * 3600);
    m.tick().unwrap();
    clock.advance_secs(5);
    m.tick().unwrap();
    assert_eq!(time_cons(&m, ids[0]), 15, "a step forward was charged");
    assert!(
        m.is_connected(d).unwrap(),
        "a step forward ended the session"
    );
    // And back by a day: nothing is refunded, time goes on being charged.
    clock.step_wall(-86_400);
    m.tick().unwrap();
    clock.advance_secs(7);
    m.tick().unwrap();
    assert_eq!(
        time_cons(&m, ids[0]),
        22,
        "a step backwards changed the charge"
    );
    // A pause and a resume across a step behave the same.
    m.disconnect(d, "").await.unwrap();
    clock.step_wall(7200);
    m.connect(d, "").await.unwrap();
    clock.advance_secs(3);
    m.tick().unwrap();
    assert_eq!(time_cons(&m, ids[0]), 25);
}

async fn downtime(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = Arc::new(ManualClock::new(T0));
    let (d, sid);
    {
        let m = data_mgr(open(kind, &path), clock.clone());
        let (dev, ids) = device_with_sessions(&m, 1, &[(0, 3_600, 0.0)]).await;
        (d, sid) = (dev, ids[0]);
        m.connect(d, "").await.unwrap();
        m.record_meter(&[(d, mark(1, 0))]).unwrap();
        clock.advance_secs(3);
        m.tick().unwrap();
        m.flush().unwrap();
        m.sync().unwrap();
    }
    // The agent restarts 8 s later with the datapath alive: the device was
    // served meanwhile, so the gap is charged.
    clock.advance_secs(8);
    {
        let m = data_mgr(open(kind, &path), clock.clone());
        m.record_meter(&[(d, mark(1, 0))]).unwrap();
        m.tick().unwrap();
        assert_eq!(
            time_cons(&m, sid),
            11,
            "{kind}: a restart with the datapath alive"
        );
        m.flush().unwrap();
        m.sync().unwrap();
    }
    // The datapath's maps were made anew (pins removed) while the agent was
    // down for 2 h: the device was not served, nothing of it is charged.
    clock.advance_secs(7200);
    {
        let m = data_mgr(open(kind, &path), clock.clone());
        m.record_meter(&[(d, mark(2, 0))]).unwrap();
        m.tick().unwrap();
        assert_eq!(
            time_cons(&m, sid),
            11,
            "{kind}: new counters, the gap was charged"
        );
        assert!(m.is_connected(d).unwrap());
        clock.advance_secs(4);
        m.tick().unwrap();
        assert_eq!(
            time_cons(&m, sid),
            15,
            "{kind}: charging goes on after new counters"
        );
        // The periodic checkpoint keeps the time charged so far.
        m.checkpoint().unwrap();
    }
    // A reboot (power cut) for 2 h: another boot, the gap is not charged even
    // before the first reading of the new counters.
    clock.reboot(Duration::from_secs(7200));
    {
        let m = data_mgr(open(kind, &path), clock.clone());
        m.tick().unwrap();
        assert_eq!(time_cons(&m, sid), 15, "{kind}: a reboot was charged");
        m.record_meter(&[(d, mark(3, 0))]).unwrap();
        clock.advance_secs(2);
        m.tick().unwrap();
        assert_eq!(
            time_cons(&m, sid),
            17,
            "{kind}: charging goes on after a reboot"
        );
    }
}

#[tokio::test]
async fn downtime_is_not_connected_time_redb() {
    downtime("redb").await;
}

#[tokio::test]
async fn downtime_is_not_connected_time_hybrid() {
    downtime("hybrid").await;
}

#[tokio::test]
async fn a_paused_session_that_expires_is_ended_with_an_event() {
    let clock = Arc::new(ManualClock::new(T0));
    let m = data_mgr(Arc::new(MemoryStore::new()), clock.clone());
    let d = m.create_device(mac(1), None, None).unwrap();
    let sid = m
        .create_session(d.id, 0, 600, 0.0, Some(1), 0, 0, false)
        .await
        .unwrap()
        .id();
    m.connect(d.id, "").await.unwrap();
    clock.advance_secs(10);
    m.disconnect(d.id, "").await.unwrap();
    let mut rx = m.subscribe();
    assert!(m.expire_paused().unwrap().is_empty(), "not expired yet");
    clock.advance_secs(2 * 86_400);
    assert_eq!(m.expire_paused().unwrap(), vec![sid]);
    assert_eq!(
        drain(&mut rx),
        vec![SessionEvent::SessionExpired {
            device_id: d.id,
            session_id: sid
        }]
    );
    let rec = m.store().session(sid).unwrap().unwrap();
    assert_eq!(rec.ended_at, rec.data.expires_at(), "ended when it expired");
    assert!(m.expire_paused().unwrap().is_empty(), "ended once");
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn a_poll_writes_only_the_sessions_that_come_due_and_each_ends_on_its_time() {
    let clock = Arc::new(ManualClock::new(T0));
    let m = data_mgr(Arc::new(MemoryStore::new()), clock.clone());
    // Device n has a time session of 2n seconds.
    let mut sessions = Vec::new();
    for n in 1..=200u8 {
        let secs = 2 * u64::from(n);
        let (d, ids) = device_with_sessions(&m, n, &[(0, secs, 0.0)]).await;
        m.connect(d, "").await.unwrap();
        sessions.push((d, ids[0], secs));
    }
    // The first poll looks at every running session.
    m.tick().unwrap();
    let mut ended_at_ms = std::collections::HashMap::new();
    let mut elapsed_ms = 0u64;
    while elapsed_ms < 401_000 {
        clock.advance(Duration::from_millis(250));
        elapsed_ms += 250;
        let rep = m.tick().unwrap();
        // A poll writes the sessions it ends, and no other: time alone is no write.
        assert_eq!(rep.updated, rep.transitions.len(), "at {elapsed_ms} ms");
        for t in rep.transitions {
            assert_eq!(t.reason, EndReason::Consumed);
            assert!(ended_at_ms.insert(t.session_id, elapsed_ms).is_none());
        }
    }
    for (d, sid, secs) in sessions {
        let at = ended_at_ms[&sid];
        assert!(
            (secs * 1000..secs * 1000 + 250).contains(&at),
            "a {secs} s session ended at {at} ms"
        );
        assert!(!m.is_connected(d).unwrap());
        assert_eq!(m.session(sid).unwrap().time_consumption(), secs);
    }
}

#[tokio::test]
async fn a_wall_clock_step_past_an_expiry_ends_the_running_session_at_the_next_poll() {
    let clock = Arc::new(ManualClock::new(T0));
    let m = data_mgr(Arc::new(MemoryStore::new()), clock.clone());
    let d = m.create_device(mac(1), None, None).unwrap();
    let sid = m
        .create_session(d.id, 0, 7 * 86_400, 0.0, Some(1), 0, 0, false)
        .await
        .unwrap()
        .id();
    m.connect(d.id, "").await.unwrap();
    clock.advance_secs(5);
    assert!(m.tick().unwrap().transitions.is_empty());
    // The wall clock (not connected time) passes the expiry.
    clock.step_wall(10 * 86_400);
    let rep = m.tick().unwrap();
    assert_eq!(rep.transitions.len(), 1, "{rep:?}");
    assert_eq!(rep.transitions[0].reason, EndReason::Expired);
    assert!(!m.is_connected(d.id).unwrap());
    assert_eq!(m.session(sid).unwrap().time_consumption(), 5);
}
