//! Store benchmark: ops/s for create, consumption update and batch save per provider,
//! and the time of one hybrid checkpoint of every session.
//!
//! `cargo bench -p session-model --bench store`
//! Env: `SESSION_BENCH_DEVICES` (default 10000), `SESSION_BENCH_REDB_UPDATES` (single
//! redb commits timed for the update row, default 2000; each is an fsync'd transaction).

use std::sync::Arc;
use std::time::{Duration, Instant};

use session_model::{
    HybridOptions, HybridStore, MacAddr, MemoryStore, RedbStore, SessionData, SessionRecord,
    SessionStore, SessionType, SyncMode,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn data() -> SessionData {
    SessionData {
        provider: "local".into(),
        session_type: SessionType::TimeOrData,
        time_secs: 3_600,
        data_bytes: 1_000_000_000,
        time_cons: 0,
        data_cons_bytes: 0,
        started_at: Some(1_700_000_000),
        exp_days: Some(30),
        down_mbits: 10,
        up_mbits: 5,
        use_global_speed: false,
        created_at: 1_700_000_000,
    }
}

fn mac(i: usize) -> MacAddr {
    let b = (i as u64).to_be_bytes();
    MacAddr::new([0x02, 0, b[4], b[5], b[6], b[7]])
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

struct Row {
    name: String,
    create: f64,
    update: f64,
    update_n: usize,
    save: f64,
    checkpoint: Option<Duration>,
}

fn run(name: &str, store: &dyn SessionStore, n: usize, updates: usize) -> Row {
    // create: one device + one session per op, each write its own commit
    let t = Instant::now();
    let mut recs: Vec<SessionRecord> = Vec::with_capacity(n);
    for i in 0..n {
        let d = store.create_device(mac(i), None, None, 0).unwrap();
        recs.push(store.create_session(d.id, data()).unwrap());
    }
    let create = rate(n, t.elapsed());
    store.checkpoint().unwrap();

    // consumption update: one session per commit
    let update_n = updates.min(n);
    let t = Instant::now();
    for r in recs.iter_mut().take(update_n) {
        r.data.data_cons_bytes += 1_500;
        r.data.time_cons += 1;
        store.save_session(r).unwrap();
    }
    store.sync().unwrap();
    let update = rate(update_n, t.elapsed());

    // save: all sessions in one batch (one commit), as after a counter poll
    for r in recs.iter_mut() {
        r.data.data_cons_bytes += 10_000;
    }
    let t = Instant::now();
    store.save_sessions(&recs).unwrap();
    store.sync().unwrap();
    let save = rate(n, t.elapsed());

    // checkpoint of n dirty sessions (hybrid only does work here)
    let checkpoint = if store.kind() == "hybrid" {
        let t = Instant::now();
        store.checkpoint().unwrap();
        Some(t.elapsed())
    } else {
        None
    };
    let check = store.session(recs[n - 1].id).unwrap().unwrap();
    assert_eq!(check.data.data_cons_bytes, recs[n - 1].data.data_cons_bytes);
    Row {
        name: name.to_string(),
        create,
        update,
        update_n,
        save,
        checkpoint,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n = env_usize("SESSION_BENCH_DEVICES", 10_000).max(1);
    let redb_updates = env_usize("SESSION_BENCH_REDB_UPDATES", 2_000).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    println!(
        "session store benchmark: {n} devices, 1 session each (tempdir {})",
        dir.path().display()
    );

    let mut rows = Vec::new();
    let mem = MemoryStore::new();
    rows.push(run("memory", &mem, n, n));

    let redb = RedbStore::open(dir.path().join("redb.redb")).unwrap();
    rows.push(run("redb (commit per write)", &redb, n, redb_updates));
    drop(redb);

    let opts = |sync| HybridOptions {
        sync,
        checkpoint_records: u64::MAX,
        checkpoint_bytes: u64::MAX,
    };
    let h = Arc::new(
        HybridStore::open(dir.path().join("hybrid.redb"), opts(SyncMode::EveryWrite)).unwrap(),
    );
    rows.push(run("hybrid (fdatasync per write)", h.as_ref(), n, n));
    drop(h);
    let h = Arc::new(
        HybridStore::open(
            dir.path().join("hybrid-manual.redb"),
            opts(SyncMode::Manual),
        )
        .unwrap(),
    );
    rows.push(run("hybrid (sync per batch)", h.as_ref(), n, n));
    drop(h);

    println!();
    println!("| provider | create (device+session)/s | consumption update/s (1 session per write) | batch save sessions/s ({n} per write) | checkpoint of {n} dirty sessions |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} (n={}) | {:.0} | {} |",
            r.name,
            r.create,
            r.update,
            r.update_n,
            r.save,
            r.checkpoint
                .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "-".into())
        );
    }
    let redb_upd = rows[1].update;
    println!();
    for r in &rows[2..] {
        println!(
            "{}: consumption updates {:.1}x cheaper than direct redb commits",
            r.name,
            r.update / redb_upd
        );
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
