//! Hybrid-provider specifics: checkpoints, log replay, torn tails.

use std::io::Write;

use session_model::store::hybrid::ReplayStats;
use session_model::{
    HybridOptions, HybridStore, MacAddr, RedbStore, SessionData, SessionStore, SessionType,
    SyncMode, UsageUpdate,
};

fn data() -> SessionData {
    SessionData {
        provider: "local".into(),
        session_type: SessionType::Data,
        time_secs: 0,
        data_bytes: 1_000_000,
        time_cons: 0,
        data_cons_bytes: 0,
        started_at: None,
        exp_days: None,
        down_mbits: 1,
        up_mbits: 1,
        use_global_speed: true,
        created_at: 5,
    }
}

fn lazy() -> HybridOptions {
    HybridOptions {
        sync: SyncMode::Manual,
        checkpoint_records: u64::MAX,
        checkpoint_bytes: u64::MAX,
    }
}

#[test]
fn checkpoint_folds_dirty_state_and_truncates_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let s = HybridStore::open(&path, lazy()).unwrap();
    let d = s
        .create_device(MacAddr::new([2, 0, 0, 0, 0, 1]), None, None, 1)
        .unwrap();
    let mut r = s.create_session(d.id, data()).unwrap();
    r.data.data_cons_bytes = 77;
    s.save_session(&r).unwrap();
    assert_eq!(s.dirty_count().unwrap(), 2);
    assert!(s.log_len().unwrap() > 0);
    // Nothing in redb yet.
    assert!(s.redb().sessions().unwrap().is_empty());
    s.checkpoint().unwrap();
    assert_eq!(s.dirty_count().unwrap(), 0);
    assert_eq!(s.log_len().unwrap(), 0);
    assert_eq!(std::fs::metadata(s.log_path()).unwrap().len(), 0);
    s.redb().check_consistency().unwrap();
    assert_eq!(
        s.redb()
            .session(r.id)
            .unwrap()
            .unwrap()
            .data
            .data_cons_bytes,
        77
    );
}

#[test]
fn replays_log_and_drops_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (sid, log_path);
    {
        let s = HybridStore::open(&path, lazy()).unwrap();
        let d = s
            .create_device(MacAddr::new([2, 0, 0, 0, 0, 1]), None, None, 1)
            .unwrap();
        let r = s.create_session(d.id, data()).unwrap();
        s.checkpoint().unwrap();
        for i in 1..=5 {
            let mut u = r.clone();
            u.data.data_cons_bytes = i;
            s.save_session(&u).unwrap();
        }
        sid = r.id;
        log_path = s.log_path().to_path_buf();
        // Simulate a crash: skip the checkpoint that drop would run.
        s.close_without_checkpoint();
    }
    // A torn record at the end of the log.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
    drop(f);
    let (s, stats) = HybridStore::open_with_stats(&path, lazy()).unwrap();
    assert_eq!(
        stats,
        ReplayStats {
            replayed_records: 5,
            skipped_records: 0,
            truncated_bytes: 9
        }
    );
    assert_eq!(s.session(sid).unwrap().unwrap().data.data_cons_bytes, 5);
    assert_eq!(s.dirty_count().unwrap(), 1);
    drop(s); // checkpoints
    let db = RedbStore::open(&path).unwrap();
    assert_eq!(db.session(sid).unwrap().unwrap().data.data_cons_bytes, 5);
    db.check_consistency().unwrap();
}

#[test]
fn deferred_usage_is_logged_by_flush_and_lost_without() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let usage = |id, bytes| UsageUpdate {
        id,
        time_cons: 0,
        data_cons_bytes: bytes,
        run: None,
    };
    let sid;
    {
        let s = HybridStore::open(&path, lazy()).unwrap();
        let d = s
            .create_device(MacAddr::new([2, 0, 0, 0, 0, 1]), None, None, 1)
            .unwrap();
        sid = s.create_session(d.id, data()).unwrap().id;
        let logged = s.log_len().unwrap();
        s.record_usage_deferred(&[usage(sid, 10)]).unwrap();
        assert_eq!(s.log_len().unwrap(), logged, "deferred: nothing logged yet");
        s.flush().unwrap();
        assert!(s.log_len().unwrap() > logged, "flush logs it");
        // Time alone is not logged: a restart charges it again from the clock reading.
        let logged = s.log_len().unwrap();
        s.record_usage_deferred(&[UsageUpdate {
            time_cons: 5,
            ..usage(sid, 10)
        }])
        .unwrap();
        s.flush().unwrap();
        assert_eq!(s.log_len().unwrap(), logged, "time-only change logged");
        assert_eq!(s.session(sid).unwrap().unwrap().data.time_cons, 5);
        s.record_usage_deferred(&[usage(sid, 20)]).unwrap();
        assert_eq!(s.session(sid).unwrap().unwrap().data.data_cons_bytes, 20);
        s.close_without_checkpoint();
    }
    // As after a crash: the flushed value is back, the unflushed one is gone.
    let s = HybridStore::open(&path, lazy()).unwrap();
    let back = s.session(sid).unwrap().unwrap();
    assert_eq!((back.data.data_cons_bytes, back.data.time_cons), (10, 0));
    s.record_usage_deferred(&[usage(sid, 30)]).unwrap();
    drop(s); // the final checkpoint folds deferred usage into redb
    let db = RedbStore::open(&path).unwrap();
    assert_eq!(db.session(sid).unwrap().unwrap().data.data_cons_bytes, 30);
}

#[test]
fn a_flush_of_more_sessions_than_one_record_holds_comes_back_whole_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let every = HybridOptions {
        sync: SyncMode::EveryWrite,
        ..lazy()
    };
    let mut ids = Vec::new();
    {
        let s = HybridStore::open(&path, every.clone()).unwrap();
        for i in 0..2_500u32 {
            let b = i.to_be_bytes();
            let d = s
                .create_device(MacAddr::new([2, 0, b[0], b[1], b[2], b[3]]), None, None, 1)
                .unwrap();
            ids.push(s.create_session(d.id, data()).unwrap().id);
        }
        let usage: Vec<UsageUpdate> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| UsageUpdate {
                id,
                time_cons: 0,
                data_cons_bytes: 100 + i as u64,
                run: None,
            })
            .collect();
        s.record_usage_deferred(&usage).unwrap();
        let logged = s.log_len().unwrap();
        s.flush().unwrap();
        assert!(s.log_len().unwrap() > logged);
        // Flushed: nothing is left to log.
        let logged = s.log_len().unwrap();
        s.flush().unwrap();
        assert_eq!(s.log_len().unwrap(), logged);
        s.close_without_checkpoint();
    }
    let s = HybridStore::open(&path, every).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let back = s.session(*id).unwrap().unwrap();
        assert_eq!(back.data.data_cons_bytes, 100 + i as u64, "session {id}");
    }
    // The replayed sessions are folded into redb at the checkpoint.
    s.checkpoint().unwrap();
    let last = *ids.last().unwrap();
    assert_eq!(
        s.redb()
            .session(last)
            .unwrap()
            .unwrap()
            .data
            .data_cons_bytes,
        2_599
    );
}
