//! One conformance suite, run against every store.

use std::sync::Arc;

use session_model::{
    open_store, store_names, HybridOptions, MacAddr, MeterMark, RedbStore, RunState, SessionData,
    SessionStore, SessionType, Shelf, StoreConfig, StoreError, SyncMode, UsageUpdate, Voucher,
    VoucherTemplate,
};
use tempfile::TempDir;

fn mac(n: u8) -> MacAddr {
    MacAddr::new([0x02, 0, 0, 0, 0, n])
}

fn data(t: SessionType, secs: u64, bytes: u64) -> SessionData {
    SessionData {
        provider: "local".into(),
        session_type: t,
        time_secs: secs,
        data_bytes: bytes,
        time_cons: 0,
        data_cons_bytes: 0,
        started_at: None,
        exp_days: None,
        down_mbits: 5,
        up_mbits: 2,
        use_global_speed: false,
        created_at: 1_000,
    }
}

/// A provider under test: opens (or reopens) the store living in `dir`.
struct Harness {
    kind: &'static str,
    dir: TempDir,
}

impl Harness {
    fn new(kind: &'static str) -> Self {
        Harness {
            kind,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn config(&self) -> StoreConfig {
        let mut cfg = StoreConfig::at(self.dir.path().join("sessions.redb"));
        // Small thresholds so the suite also crosses automatic checkpoints.
        cfg.hybrid = HybridOptions {
            sync: SyncMode::EveryWrite,
            checkpoint_records: 7,
            checkpoint_bytes: 1 << 20,
        };
        cfg
    }

    fn open(&self) -> Arc<dyn SessionStore> {
        open_store(self.kind, &self.config()).expect("open store")
    }

    fn durable(&self) -> bool {
        self.kind != "memory"
    }
}

fn devices_and_macs(h: &Harness) {
    let s = h.open();
    assert_eq!(s.kind(), h.kind);
    let a = s.create_device(mac(1), None, Some("a".into()), 10).unwrap();
    let b = s
        .create_device(mac(2), Some("10.0.0.2".parse().unwrap()), None, 11)
        .unwrap();
    assert!(b.id > a.id, "ids increase");
    assert_eq!(s.device(a.id).unwrap().unwrap(), a);
    assert_eq!(s.device_by_mac(mac(2)).unwrap().unwrap(), b);
    assert_eq!(s.device_by_mac(mac(9)).unwrap(), None);
    assert_eq!(s.device(999).unwrap(), None);
    match s.create_device(mac(1), None, None, 12) {
        Err(StoreError::DuplicateMac { device_id, .. }) => assert_eq!(device_id, a.id),
        other => panic!("expected DuplicateMac, got {other:?}"),
    }
    let mut ghost = a.clone();
    ghost.id = 999;
    assert!(matches!(
        s.update_device(&ghost),
        Err(StoreError::UnknownDevice(999))
    ));
    let mut a2 = a.clone();
    a2.hostname = Some("renamed".into());
    s.update_device(&a2).unwrap();
    assert_eq!(
        s.device(a.id).unwrap().unwrap().hostname.as_deref(),
        Some("renamed")
    );
    let all = s.devices().unwrap();
    assert_eq!(
        all.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![a.id, b.id]
    );
}

fn rekey_moves_sessions(h: &Harness) {
    let s = h.open();
    let a = s.create_device(mac(1), None, None, 10).unwrap();
    let b = s.create_device(mac(2), None, None, 10).unwrap();
    let s1 = s
        .create_session(a.id, data(SessionType::Time, 60, 0))
        .unwrap();
    let s2 = s
        .create_session(a.id, data(SessionType::Data, 0, 5))
        .unwrap();
    let moved = s.rekey_device(a.id, mac(7)).unwrap();
    assert_eq!(moved.id, a.id);
    assert_eq!(moved.mac, mac(7));
    assert_eq!(s.device_by_mac(mac(1)).unwrap(), None, "old MAC freed");
    assert_eq!(s.device_by_mac(mac(7)).unwrap().unwrap().id, a.id);
    let ids: Vec<_> = s
        .device_sessions(a.id)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![s1.id, s2.id]);
    assert!(matches!(
        s.rekey_device(a.id, b.mac),
        Err(StoreError::DuplicateMac { .. })
    ));
    assert!(matches!(
        s.rekey_device(404, mac(40)),
        Err(StoreError::UnknownDevice(404))
    ));
    // The freed MAC can be used by a new device.
    s.create_device(mac(1), None, None, 10).unwrap();
}

fn sessions_crud(h: &Harness) {
    let s = h.open();
    let d = s.create_device(mac(1), None, None, 10).unwrap();
    let other = s.create_device(mac(2), None, None, 10).unwrap();
    assert!(matches!(
        s.create_session(404, data(SessionType::Time, 1, 0)),
        Err(StoreError::UnknownDevice(404))
    ));
    let r1 = s
        .create_session(d.id, data(SessionType::Time, 60, 0))
        .unwrap();
    let r2 = s
        .create_session(d.id, data(SessionType::TimeOrData, 60, 9))
        .unwrap();
    let r3 = s
        .create_session(other.id, data(SessionType::Data, 0, 9))
        .unwrap();
    assert!(r1.id < r2.id && r2.id < r3.id);
    assert_eq!(s.session(r2.id).unwrap().unwrap(), r2);
    assert_eq!(s.session(9_999).unwrap(), None);

    let mut u = r1.clone();
    u.data.time_cons = 42;
    u.data.data_cons_bytes = 7;
    s.save_session(&u).unwrap();
    assert_eq!(s.session(r1.id).unwrap().unwrap().data.time_cons, 42);

    let mut unknown = r1.clone();
    unknown.id = 9_999;
    assert!(matches!(
        s.save_session(&unknown),
        Err(StoreError::UnknownSession(9_999))
    ));
    let mut moved = r1.clone();
    moved.device_id = other.id;
    assert!(matches!(
        s.save_session(&moved),
        Err(StoreError::DeviceMismatch { .. })
    ));

    // A batch with one bad record changes nothing.
    let mut good = r2.clone();
    good.data.time_cons = 5;
    assert!(s.save_sessions(&[good.clone(), unknown]).is_err());
    assert_eq!(s.session(r2.id).unwrap().unwrap().data.time_cons, 0);
    s.save_sessions(&[good]).unwrap();
    assert_eq!(s.session(r2.id).unwrap().unwrap().data.time_cons, 5);

    let ids: Vec<_> = s
        .device_sessions(d.id)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![r1.id, r2.id]);
    assert_eq!(s.sessions().unwrap().len(), 3);

    assert_eq!(s.remove_sessions(&[r1.id, 9_999, r1.id]).unwrap(), 1);
    assert_eq!(s.session(r1.id).unwrap(), None);
    s.remove_device(d.id).unwrap();
    assert_eq!(
        s.session(r2.id).unwrap(),
        None,
        "sessions go with their device"
    );
    assert_eq!(s.device_sessions(d.id).unwrap(), vec![]);
    assert_eq!(s.device_by_mac(mac(1)).unwrap(), None);
    assert!(matches!(
        s.remove_device(d.id),
        Err(StoreError::UnknownDevice(_))
    ));
    assert_eq!(s.sessions().unwrap().len(), 1);

    // Ids are never reused.
    let d2 = s.create_device(mac(1), None, None, 10).unwrap();
    assert!(d2.id > other.id);
    let r4 = s
        .create_session(d2.id, data(SessionType::Time, 1, 0))
        .unwrap();
    assert!(r4.id > r3.id);
}

fn gc_by_retention(h: &Harness) {
    let s = h.open();
    let d = s.create_device(mac(1), None, None, 10).unwrap();
    let mut ended = s
        .create_session(d.id, data(SessionType::Time, 60, 0))
        .unwrap();
    ended.data.time_cons = 60;
    ended.ended_at = Some(1_000);
    s.save_session(&ended).unwrap();
    let mut expired = s
        .create_session(d.id, data(SessionType::Time, 60, 0))
        .unwrap();
    expired.data.started_at = Some(0);
    expired.data.exp_days = Some(0); // expires at 60
    s.save_session(&expired).unwrap();
    let live = s
        .create_session(d.id, data(SessionType::Time, 60, 0))
        .unwrap();

    assert_eq!(
        s.gc(1_500, 600).unwrap(),
        vec![expired.id],
        "ended 1000 + 600 > 1500"
    );
    assert_eq!(s.gc(1_600, 600).unwrap(), vec![ended.id]);
    assert!(s.gc(1_000_000, 0).unwrap().is_empty());
    let left: Vec<_> = s.sessions().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(left, vec![live.id]);
}

fn survives_reopen(h: &Harness) {
    if !h.durable() {
        return;
    }
    let (dev, sid, removed);
    {
        let s = h.open();
        dev = s.create_device(mac(1), None, Some("x".into()), 10).unwrap();
        let r = s
            .create_session(dev.id, data(SessionType::Data, 0, 100))
            .unwrap();
        let gone = s
            .create_session(dev.id, data(SessionType::Data, 0, 100))
            .unwrap();
        for i in 1..=20u64 {
            let mut u = r.clone();
            u.data.data_cons_bytes = i;
            s.save_session(&u).unwrap();
        }
        s.remove_sessions(&[gone.id]).unwrap();
        s.rekey_device(dev.id, mac(3)).unwrap();
        sid = r.id;
        removed = gone.id;
    }
    let s = h.open();
    let d = s.device(dev.id).unwrap().unwrap();
    assert_eq!(d.mac, mac(3));
    assert_eq!(d.hostname.as_deref(), Some("x"));
    assert_eq!(s.device_by_mac(mac(1)).unwrap(), None);
    assert_eq!(s.session(sid).unwrap().unwrap().data.data_cons_bytes, 20);
    assert_eq!(s.session(removed).unwrap(), None);
    // Counters survive too.
    let d2 = s.create_device(mac(4), None, None, 10).unwrap();
    assert!(d2.id > dev.id);
    let r = s
        .create_session(d2.id, data(SessionType::Time, 1, 0))
        .unwrap();
    assert!(r.id > removed);
    drop(s);
    let db = RedbStore::open(h.dir.path().join("sessions.redb")).unwrap();
    db.check_consistency().unwrap();
}

fn run_state_round_trips(h: &Harness) {
    let s = h.open();
    let dev = s.create_device(mac(1), None, None, 10).unwrap();
    let a = s
        .create_session(dev.id, data(SessionType::Data, 0, 100))
        .unwrap();
    let b = s
        .create_session(dev.id, data(SessionType::Time, 60, 0))
        .unwrap();
    assert_eq!(a.run, None, "new sessions are not running");
    let run = RunState {
        charged_to_ms: 1_700_000_000_123,
        boot: 1,
        meter: Some(MeterMark {
            epoch: 7,
            bytes: u64::MAX - 1,
        }),
    };
    let mut a2 = a.clone();
    a2.run = Some(run);
    a2.data.data_cons_bytes = 42;
    let mut b2 = b.clone();
    b2.run = Some(RunState {
        charged_to_ms: -5,
        boot: 1,
        meter: None,
    });
    s.save_sessions(&[a2.clone(), b2.clone()]).unwrap();
    assert_eq!(s.session(a.id).unwrap().unwrap(), a2);
    assert_eq!(s.session(b.id).unwrap().unwrap(), b2);
    assert_eq!(
        s.device_sessions(dev.id).unwrap(),
        vec![a2.clone(), b2.clone()]
    );
    // Handing the run over: one batch clears one and sets the other.
    let mut a3 = a2.clone();
    a3.run = None;
    let mut b3 = b2.clone();
    b3.run = Some(run);
    s.save_sessions(&[a3.clone(), b3.clone()]).unwrap();
    if h.durable() {
        drop(s);
        let s = h.open();
        assert_eq!(s.session(a.id).unwrap().unwrap(), a3);
        assert_eq!(s.session(b.id).unwrap().unwrap(), b3);
        assert_eq!(s.sessions().unwrap(), vec![a3, b3]);
        s.checkpoint().unwrap();
        drop(s);
        let db = RedbStore::open(h.dir.path().join("sessions.redb")).unwrap();
        db.check_consistency().unwrap();
        assert_eq!(db.session(b.id).unwrap().unwrap().run, Some(run));
        assert_eq!(db.session(a.id).unwrap().unwrap().run, None);
    } else {
        assert_eq!(s.session(a.id).unwrap().unwrap(), a3);
        assert_eq!(s.session(b.id).unwrap().unwrap(), b3);
    }
}

fn refuses_newer_schema(h: &Harness) {
    if !h.durable() {
        return;
    }
    drop(h.open());
    {
        let db = RedbStore::open(h.dir.path().join("sessions.redb")).unwrap();
        assert_eq!(
            db.schema_version().unwrap(),
            session_model::store::SCHEMA_VERSION
        );
        db.set_schema_version(session_model::store::SCHEMA_VERSION + 1)
            .unwrap();
    }
    match open_store(h.kind, &h.config()) {
        Err(e @ StoreError::UnsupportedSchema { .. }) => {
            assert!(e.to_string().contains("schema version 2"), "{e}");
        }
        other => panic!("expected UnsupportedSchema, got {other:?}"),
    }
}

fn usage_updates(h: &Harness) {
    let (sid, other);
    let run = RunState {
        charged_to_ms: 42_000,
        boot: 1,
        meter: Some(MeterMark {
            epoch: 7,
            bytes: 900,
        }),
    };
    {
        let s = h.open();
        let dev = s.create_device(mac(1), None, None, 10).unwrap();
        let r = s
            .create_session(dev.id, data(SessionType::TimeOrData, 60, 1000))
            .unwrap();
        sid = r.id;
        other = s
            .create_session(dev.id, data(SessionType::Data, 0, 100))
            .unwrap()
            .id;
        let u = UsageUpdate {
            id: sid,
            time_cons: 3,
            data_cons_bytes: 400,
            run: Some(run),
        };
        s.record_usage_deferred(&[u]).unwrap();
        // Readers see it before any flush.
        let got = s.session(sid).unwrap().unwrap();
        assert_eq!(
            (got.data.time_cons, got.data.data_cons_bytes, got.run),
            (3, 400, Some(run))
        );
        assert_eq!(s.device_sessions(dev.id).unwrap()[0], got);
        // All or none: an unknown session refuses the whole batch.
        let bad = UsageUpdate { id: 9_999, ..u };
        let changed = UsageUpdate {
            id: other,
            data_cons_bytes: 50,
            ..u
        };
        assert!(matches!(
            s.record_usage_deferred(&[changed, bad]),
            Err(StoreError::UnknownSession(9_999))
        ));
        assert_eq!(
            s.session(other).unwrap().unwrap().data.data_cons_bytes,
            0,
            "a refused batch changes nothing"
        );
        s.flush().unwrap();
    }
    if h.durable() {
        let s = h.open();
        let got = s.session(sid).unwrap().unwrap();
        assert_eq!(
            (got.data.time_cons, got.data.data_cons_bytes, got.run),
            (3, 400, Some(run)),
            "flushed usage survives a reopen"
        );
    }
}

fn voucher(code: &str, max_devices: u32) -> Voucher {
    Voucher {
        code: code.into(),
        batch: "roll-1".into(),
        price: Some("20 PHP".into()),
        template: VoucherTemplate {
            session_type: SessionType::Time,
            time_secs: 3600,
            data_bytes: 0,
            exp_days: Some(2),
            down_mbits: 5,
            up_mbits: 2,
            use_global_speed: false,
        },
        created_at: 50,
        valid_until: None,
        max_devices,
        redemptions: vec![],
        revoked_at: None,
        group: 4,
        sale: None,
    }
}

fn vouchers_and_redemptions(h: &Harness) {
    let (dev, sid);
    {
        let s = h.open();
        s.create_vouchers(&[voucher("AAAA2222", 1), voucher("BBBB3333", 2)])
            .unwrap();
        // All or none: one taken code refuses the whole batch.
        let err = s
            .create_vouchers(&[voucher("CCCC4444", 1), voucher("AAAA2222", 1)])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::DuplicateVoucher(ref c) if c == "****2222"),
            "{err}"
        );
        assert_eq!(s.voucher("CCCC4444").unwrap(), None);
        assert!(matches!(
            s.create_vouchers(&[voucher("DDDD5555", 1), voucher("DDDD5555", 1)]),
            Err(StoreError::DuplicateVoucher(_))
        ));
        assert_eq!(s.vouchers().unwrap().len(), 2);

        dev = s.create_device(mac(1), None, None, 10).unwrap();
        let v = voucher("AAAA2222", 1);
        let (r, after) = s
            .redeem_voucher(&v.code, dev.id, mac(1), 77, v.template.session("local", 77))
            .unwrap();
        assert_eq!(r.device_id, dev.id);
        assert_eq!(r.data.time_secs, 3600);
        assert_eq!(after.redemptions.len(), 1);
        assert_eq!(after.redemptions[0].session_id, r.id);
        assert_eq!(after.redemptions[0].at, 77);
        assert_eq!(s.voucher("AAAA2222").unwrap().unwrap(), after);
        assert_eq!(s.session(r.id).unwrap().unwrap(), r);
        sid = r.id;

        // Neither half is written when one fails.
        let before = s.sessions().unwrap().len();
        assert!(matches!(
            s.redeem_voucher("BBBB3333", 999, mac(9), 1, v.template.session("local", 1)),
            Err(StoreError::UnknownDevice(999))
        ));
        assert!(matches!(
            s.redeem_voucher(
                "ZZZZ9999",
                dev.id,
                mac(1),
                1,
                v.template.session("local", 1)
            ),
            Err(StoreError::UnknownVoucher(_))
        ));
        assert_eq!(s.sessions().unwrap().len(), before);
        assert!(s
            .voucher("BBBB3333")
            .unwrap()
            .unwrap()
            .redemptions
            .is_empty());

        let mut b = s.voucher("BBBB3333").unwrap().unwrap();
        b.revoked_at = Some(99);
        s.save_voucher(&b).unwrap();
        assert!(matches!(
            s.save_voucher(&voucher("EEEE6666", 1)),
            Err(StoreError::UnknownVoucher(_))
        ));
        if !h.durable() {
            return;
        }
    }
    let s = h.open();
    let a = s.voucher("AAAA2222").unwrap().unwrap();
    assert_eq!(a.redemptions.len(), 1);
    assert_eq!(a.redemptions[0].session_id, sid);
    assert_eq!(a.redemptions[0].device_id, dev.id);
    assert_eq!(s.voucher("BBBB3333").unwrap().unwrap().revoked_at, Some(99));
    assert_eq!(s.session(sid).unwrap().unwrap().device_id, dev.id);
    let codes: Vec<String> = s.vouchers().unwrap().into_iter().map(|v| v.code).collect();
    assert_eq!(codes, ["AAAA2222", "BBBB3333"]);
    // The session counter moved past the redeemed session.
    let r = s
        .create_session(dev.id, data(SessionType::Time, 1, 0))
        .unwrap();
    assert!(r.id > sid);
    s.checkpoint().unwrap();
    drop(s);
    let s = h.open();
    assert_eq!(s.voucher("AAAA2222").unwrap().unwrap(), a);
}

fn shelves_keep_records_apart_and_across_reopens(h: &Harness) {
    let s = h.open();
    assert_eq!(s.shelf(Shelf::Plans).unwrap(), vec![]);
    s.put_on_shelf(Shelf::Plans, "b", Some(b"2")).unwrap();
    s.put_on_shelf(Shelf::Plans, "a", Some(b"1")).unwrap();
    s.put_on_shelf(Shelf::Plans, "a", Some(b"1bis")).unwrap();
    s.put_on_shelf(Shelf::Plans, "c", Some(b"3")).unwrap();
    s.put_on_shelf(Shelf::Plans, "c", None).unwrap();
    // Removing what is not there is no error.
    s.put_on_shelf(Shelf::Plans, "zz", None).unwrap();
    let want = vec![
        ("a".to_string(), b"1bis".to_vec()),
        ("b".to_string(), b"2".to_vec()),
    ];
    assert_eq!(s.shelf(Shelf::Plans).unwrap(), want);
    if h.durable() {
        drop(s);
        let s = h.open();
        assert_eq!(
            s.shelf(Shelf::Plans).unwrap(),
            want,
            "shelves survive a reopen"
        );
    }
}

macro_rules! conformance {
    ($($kind:ident),*) => {$(
        mod $kind {
            use super::*;
            #[test] fn devices_and_macs() { super::devices_and_macs(&Harness::new(stringify!($kind))) }
            #[test] fn rekey_moves_sessions() { super::rekey_moves_sessions(&Harness::new(stringify!($kind))) }
            #[test] fn sessions_crud() { super::sessions_crud(&Harness::new(stringify!($kind))) }
            #[test] fn gc_by_retention() { super::gc_by_retention(&Harness::new(stringify!($kind))) }
            #[test] fn survives_reopen() { super::survives_reopen(&Harness::new(stringify!($kind))) }
            #[test] fn run_state_round_trips() { super::run_state_round_trips(&Harness::new(stringify!($kind))) }
            #[test] fn usage_updates() { super::usage_updates(&Harness::new(stringify!($kind))) }
            #[test] fn vouchers_and_redemptions() { super::vouchers_and_redemptions(&Harness::new(stringify!($kind))) }
            #[test] fn shelves_keep_records_apart_and_across_reopens() { super::shelves_keep_records_apart_and_across_reopens(&Harness::new(stringify!($kind))) }
            #[test] fn refuses_newer_schema() { super::refuses_newer_schema(&Harness::new(stringify!($kind))) }
        }
    )*};
}

conformance!(memory, redb, hybrid);

#[test]
fn registry_lists_providers_and_rejects_unknown() {
    assert_eq!(store_names(), vec!["hybrid", "memory", "redb"]);
    assert!(matches!(
        open_store("nope", &StoreConfig::default()),
        Err(StoreError::UnknownProvider(_))
    ));
    assert!(matches!(
        open_store("redb", &StoreConfig::default()),
        Err(StoreError::MissingPath { .. })
    ));
}
