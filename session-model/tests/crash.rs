//! Crash test: a child process commits in a loop and acknowledges each commit on stdout;
//! it is killed with SIGKILL at random moments. Reopening must find every acknowledged
//! change and a consistent database.
//!
//! The child is this same test binary, re-executed with `SESSION_CRASH_CHILD` set.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use session_model::{
    HybridOptions, HybridStore, MacAddr, RedbStore, SessionData, SessionStore, SessionType,
    SyncMode,
};

const CHILD_ENV: &str = "SESSION_CRASH_CHILD";
const DEVICES: u8 = 8;

fn open(kind: &str, path: &Path) -> Arc<dyn SessionStore> {
    match kind {
        "redb" => Arc::new(RedbStore::open(path).expect("open redb")),
        "hybrid" => Arc::new(
            HybridStore::open(
                path,
                HybridOptions {
                    sync: SyncMode::EveryWrite,
                    // Checkpoint often so kills also land inside checkpoints.
                    checkpoint_records: 25,
                    checkpoint_bytes: 1 << 20,
                },
            )
            .expect("open hybrid"),
        ),
        other => panic!("unknown kind {other}"),
    }
}

fn data() -> SessionData {
    SessionData {
        provider: "local".into(),
        session_type: SessionType::Data,
        time_secs: 0,
        data_bytes: u64::MAX,
        time_cons: 0,
        data_cons_bytes: 0,
        started_at: None,
        exp_days: None,
        down_mbits: 1,
        up_mbits: 1,
        use_global_speed: false,
        created_at: 0,
    }
}

/// Child side: runs until killed.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (kind, path) = spec.split_once(':').expect("kind:path");
    let store = open(kind, Path::new(path));
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut devices = store.devices().unwrap();
    while devices.len() < DEVICES as usize {
        let n = devices.len() as u8;
        let d = store
            .create_device(MacAddr::new([2, 0, 0, 0, 0, n]), None, None, 0)
            .unwrap();
        writeln!(out, "DEV {} {}", d.id, n).unwrap();
        out.flush().unwrap();
        devices.push(d);
    }
    // Values only grow, so a reopened store must hold at least the last acknowledged one.
    let mut counter = store
        .sessions()
        .unwrap()
        .iter()
        .map(|r| r.data.data_cons_bytes)
        .max()
        .unwrap_or(0);
    let mut i = 0u64;
    loop {
        i += 1;
        let dev = &devices[(i % DEVICES as u64) as usize];
        let sessions = store.device_sessions(dev.id).unwrap();
        if sessions.len() < 3 || i.is_multiple_of(17) {
            let r = store.create_session(dev.id, data()).unwrap();
            writeln!(out, "NEW {} {}", r.id, dev.id).unwrap();
        } else {
            // Update two sessions of the device in one atomic batch.
            counter += 1;
            let mut batch: Vec<_> = sessions.into_iter().rev().take(2).collect();
            for r in &mut batch {
                r.data.data_cons_bytes = counter;
            }
            store.save_sessions(&batch).unwrap();
            for r in &batch {
                writeln!(out, "SET {} {}", r.id, counter).unwrap();
            }
        }
        out.flush().unwrap();
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn run_crash_rounds(kind: &str, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let exe = std::env::current_exe().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("{kind}: seed {seed}");
    let mut rng = Rng(seed);
    let mut created: HashMap<u64, i64> = HashMap::new();
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut total_acks = 0usize;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{kind}:{}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        // Wait for the child to start committing, then kill it at a random moment.
        let delay = Duration::from_millis(150 + rng.next() % 400);
        let start = Instant::now();
        while start.elapsed() < delay {
            std::thread::sleep(Duration::from_millis(5));
            if let Ok(Some(status)) = child.try_wait() {
                panic!("child exited early: {status}");
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for l in &lines {
            let mut it = l.split_whitespace();
            match (it.next(), it.next(), it.next()) {
                (Some("NEW"), Some(s), Some(d)) => {
                    created.insert(s.parse().unwrap(), d.parse().unwrap());
                }
                (Some("SET"), Some(s), Some(v)) => {
                    let v: u64 = v.parse().unwrap();
                    let e = acked.entry(s.parse().unwrap()).or_default();
                    *e = (*e).max(v);
                }
                _ => {}
            }
        }
        total_acks += lines.len();

        // Reopen and verify.
        {
            let store = open(kind, &path);
            assert_eq!(
                store.devices().unwrap().len(),
                DEVICES as usize,
                "round {round}"
            );
            for (sid, dev) in &created {
                let r = store
                    .session(*sid)
                    .unwrap()
                    .unwrap_or_else(|| panic!("round {round}: acknowledged session {sid} lost"));
                assert_eq!(r.device_id, *dev);
            }
            for (sid, v) in &acked {
                let r = store.session(*sid).unwrap().unwrap();
                assert!(
                    r.data.data_cons_bytes >= *v,
                    "round {round}: session {sid} has {} < acknowledged {v}",
                    r.data.data_cons_bytes
                );
            }
            // Each device index lists exactly its sessions.
            let all = store.sessions().unwrap();
            let listed: usize = store
                .devices()
                .unwrap()
                .iter()
                .map(|d| store.device_sessions(d.id).unwrap().len())
                .sum();
            assert_eq!(listed, all.len());
        }
        // The redb file itself is consistent (for hybrid: as of its last checkpoint).
        RedbStore::open(&path).unwrap().check_consistency().unwrap();
    }
    eprintln!(
        "{kind}: {rounds} kills, {total_acks} acknowledged lines, {} sessions",
        created.len()
    );
    assert!(
        total_acks > rounds * 10,
        "the child made too little progress to test anything ({total_acks} acks)"
    );
    assert!(!acked.is_empty() && !created.is_empty());
}

#[test]
fn crash_redb() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    run_crash_rounds("redb", 6);
}

#[test]
fn crash_hybrid() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    run_crash_rounds("hybrid", 6);
}
