//! Crash test: a child process commits in a loop and acknowledges each commit on stdout;
//! it is killed with SIGKILL at random moments. Reopening must find every acknowledged
//! change and a consistent database.
//!
//! The child writes raw store batches (consumption and run state together) for the first
//! `DEVICES` devices, and drives [`SessionsMgr::record_meter`] with increasing meter
//! readings for `METER_DEVICES` more devices, whose small sessions keep ending and
//! advancing, acknowledging a reading once [`SessionsMgr::flush`] returned. After each kill the parent checks that every device's stored consumption
//! equals its meter mark minus the first reading, and that the mark is the last
//! acknowledged reading or one tried after it: no byte lost or counted twice.
//!
//! The child is this same test binary, re-executed with `SESSION_CRASH_CHILD` set.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use session_model::{
    Clock, HybridOptions, HybridStore, MacAddr, MeterMark, RedbStore, RunState, SessionData,
    SessionStore, SessionType, SessionsMgr, SyncMode, SystemClock,
};

const CHILD_ENV: &str = "SESSION_CRASH_CHILD";
/// Devices written with raw store batches.
const DEVICES: u8 = 8;
/// Devices charged through `record_meter`.
const METER_DEVICES: u8 = 2;
/// First meter reading of a connection (sets the mark, charges nothing).
const METER_BASE: u64 = 1_000_000;
/// Allocation of the meter devices' sessions; readings grow by up to `METER_STEP`.
const METER_SESSION_BYTES: u64 = 50_000;
const METER_STEP: u64 = 20_000;

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
    data_of(u64::MAX)
}

fn data_of(bytes: u64) -> SessionData {
    SessionData {
        provider: "local".into(),
        session_type: SessionType::Data,
        time_secs: 0,
        data_bytes: bytes,
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
    while devices.len() < (DEVICES + METER_DEVICES) as usize {
        let n = devices.len() as u8;
        let d = store
            .create_device(MacAddr::new([2, 0, 0, 0, 0, n]), None, None, 0)
            .unwrap();
        writeln!(out, "DEV {} {}", d.id, n).unwrap();
        out.flush().unwrap();
        devices.push(d);
    }
    let meter_devices = devices.split_off(DEVICES as usize);
    writeln!(out, "START").unwrap();
    out.flush().unwrap();
    let mgr = SessionsMgr::open(store.clone(), Arc::new(SystemClock)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = Rng((std::process::id() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
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
        if i.is_multiple_of(2) {
            // A meter reading for one of the meter devices.
            let dev = &meter_devices[((i / 2) % METER_DEVICES as u64) as usize];
            let now = SystemClock.now_secs();
            let available = store
                .device_sessions(dev.id)
                .unwrap()
                .iter()
                .filter(|r| r.data.is_available(now))
                .count();
            for _ in available..2 {
                let r = store
                    .create_session(dev.id, data_of(METER_SESSION_BYTES))
                    .unwrap();
                writeln!(out, "NEW {} {}", r.id, dev.id).unwrap();
            }
            if !mgr.is_connected(dev.id).unwrap() {
                rt.block_on(mgr.connect(dev.id, "")).unwrap();
            }
            let bytes = match mgr.meter_mark(dev.id).unwrap() {
                Some(m) => m.bytes + 1 + rng.next() % METER_STEP,
                None => METER_BASE,
            };
            writeln!(out, "TRY {} {}", dev.id, bytes).unwrap();
            out.flush().unwrap();
            let rep = mgr
                .record_meter(&[(dev.id, MeterMark { epoch: 1, bytes })])
                .unwrap();
            assert!(rep.not_connected.is_empty());
            // Charges without a transition may stay in memory until a flush: only a
            // flushed reading is acknowledged, the others may be lost (and charged again
            // from the older mark), never half written.
            if i.is_multiple_of(3) {
                mgr.flush().unwrap();
                writeln!(out, "ACK {} {}", dev.id, bytes).unwrap();
                out.flush().unwrap();
            }
            continue;
        }
        let dev = &devices[((i / 2) % DEVICES as u64) as usize];
        let sessions = store.device_sessions(dev.id).unwrap();
        if sessions.len() < 3 || i.is_multiple_of(17) {
            let r = store.create_session(dev.id, data()).unwrap();
            writeln!(out, "NEW {} {}", r.id, dev.id).unwrap();
        } else {
            // Update the two newest sessions of the device in one atomic batch, handing
            // the run state to the newest one (as an advance does).
            counter += 1;
            let newest = sessions.len() - 1;
            let mut batch: Vec<_> = sessions
                .into_iter()
                .enumerate()
                .filter(|(k, r)| *k + 2 > newest || r.run.is_some())
                .map(|(_, r)| r)
                .collect();
            let last = batch.len() - 1;
            for (k, r) in batch.iter_mut().enumerate() {
                r.data.data_cons_bytes = counter;
                r.run = (k == last).then_some(RunState {
                    charged_to_ms: counter as i64,
                    boot: 1,
                    meter: Some(MeterMark {
                        epoch: 1,
                        bytes: counter,
                    }),
                });
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
    let mut meter_devs: HashSet<i64> = HashSet::new();
    // Per meter device: every reading tried, and the last acknowledged one.
    let mut tried: HashMap<i64, HashSet<u64>> = HashMap::new();
    let mut meter_acked: HashMap<i64, u64> = HashMap::new();
    let mut meter_acks = 0usize;
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
        let (started_tx, started) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest's "test crash_child ... " may precede it on the line.
                if l.ends_with("START") {
                    let _ = started_tx.send(());
                }
                lines.push(l);
            }
            lines
        });
        // Wait for the child to have its devices (however loaded the machine), then
        // kill it at a random moment of its commits.
        started
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("round {round}: the child did not start"));
        let delay = Duration::from_millis(50 + rng.next() % 400);
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
                (Some("DEV"), Some(d), Some(n)) if n.parse::<u8>().unwrap() >= DEVICES => {
                    meter_devs.insert(d.parse().unwrap());
                }
                (Some("TRY"), Some(d), Some(b)) => {
                    tried
                        .entry(d.parse().unwrap())
                        .or_default()
                        .insert(b.parse().unwrap());
                }
                (Some("ACK"), Some(d), Some(b)) => {
                    let b: u64 = b.parse().unwrap();
                    let e = meter_acked.entry(d.parse().unwrap()).or_default();
                    assert!(b > *e, "readings increase");
                    *e = b;
                    meter_acks += 1;
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
                (DEVICES + METER_DEVICES) as usize,
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
            // Run state: at most one running session per device, and on the raw devices
            // it was written in the same batch as the consumption.
            for d in store.devices().unwrap() {
                let sessions = store.device_sessions(d.id).unwrap();
                let running: Vec<_> = sessions.iter().filter(|r| r.run.is_some()).collect();
                assert!(
                    running.len() <= 1,
                    "round {round}: device {} runs {running:?}",
                    d.id
                );
                if meter_devs.contains(&d.id) {
                    continue;
                }
                if let Some(r) = running.first() {
                    let run = r.run.unwrap();
                    assert_eq!(run.charged_to_ms, r.data.data_cons_bytes as i64);
                    assert_eq!(run.meter.map(|m| m.bytes), Some(r.data.data_cons_bytes));
                }
            }
            // Meter devices: consumption is exactly the metered bytes since the first
            // reading, and the mark is the last acknowledged reading or a later one.
            let mgr = SessionsMgr::open(store.clone(), Arc::new(SystemClock)).unwrap();
            for dev in &meter_devs {
                let mark = mgr.meter_mark(*dev).unwrap();
                let charged: u64 = store
                    .device_sessions(*dev)
                    .unwrap()
                    .iter()
                    .map(|r| r.data.data_cons_bytes)
                    .sum();
                let acked_b = meter_acked.get(dev).copied();
                match mark {
                    None => {
                        assert_eq!(acked_b, None, "round {round}: device {dev} lost its mark");
                        assert_eq!(charged, 0);
                    }
                    Some(m) => {
                        assert_eq!(m.epoch, 1);
                        assert!(
                            tried.get(dev).is_some_and(|t| t.contains(&m.bytes)),
                            "round {round}: device {dev}: mark {} was never read",
                            m.bytes
                        );
                        assert!(
                            m.bytes >= acked_b.unwrap_or(0),
                            "round {round}: device {dev}: mark {} < acknowledged {acked_b:?}",
                            m.bytes
                        );
                        assert_eq!(
                            charged,
                            m.bytes - METER_BASE,
                            "round {round}: device {dev}: charged {charged} for mark {}",
                            m.bytes
                        );
                        // Later rounds continue from the stored mark.
                        meter_acked.insert(*dev, m.bytes);
                    }
                }
            }
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
    assert_eq!(meter_devs.len(), METER_DEVICES as usize);
    assert!(
        meter_acks > rounds * 5,
        "too few meter readings acknowledged ({meter_acks})"
    );
    eprintln!("{kind}: {meter_acks} meter readings acknowledged");
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
