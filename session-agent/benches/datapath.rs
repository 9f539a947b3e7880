//! Datapath and agent cost, measured on the real kernel (needs root):
//!
//! 1. program cost per packet with BPF_PROG_TEST_RUN for each path, with 1 to
//!    65,536 clients in the maps, against a program that returns at once;
//! 5. the agent's counter poll (CPU and wall time) and resident memory with
//!    1,000, 10,000 and 65,536 connected devices, and their address bindings
//!    and RADIUS bookkeeping.
//!
//! Prints a table; with `SESSION_BENCH_OUT=FILE` also writes the measurements as
//! JSON for `cargo xtask bench`. `SESSION_BENCH_RUNS` (default 5) sets the runs
//! per figure, `SESSION_BENCH_QUICK=1` uses fewer clients and repeats.

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use session_agent::{
    daemon::{lan_config, GateOptions},
    dataplane::{
        testrun::{frames, ProgramHarness, PROG_NOOP, TC_DROP, TC_PASS},
        Maps, RateLimit,
    },
    gateway::{Gateway, GatewayConfig},
};
use session_common::{LanConfig, MacAddr, PROG_TC_INGRESS};
use session_model::{
    store::{HybridOptions, HybridStore, SyncMode},
    SessionStore,
};

#[derive(Serialize, Deserialize, Clone)]
struct Measurement {
    scenario: String,
    case: String,
    clients: u32,
    metric: String,
    unit: String,
    runs: Vec<f64>,
    median: f64,
    /// The same metric of the baseline in this run (the no-op program), if any.
    baseline: Option<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr::new([0x02, 0x5e, b[0], b[1], b[2], b[3]])
}

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// A 64-byte UDP frame (IP length 46) from client `i` to a server.
fn frame(i: u32) -> Vec<u8> {
    frames::udp4(
        GW_MAC,
        mac(i).addr,
        Ipv4Addr::new(10, 200, (i >> 8) as u8, i as u8),
        Ipv4Addr::new(10, 201, 0, 2),
        40000,
        443,
        18,
    )
}

/// The LAN as the agent sets it up by default: the gateway's MAC and
/// addresses, anti-spoofing, the garden rate limit, the binding TTL.
fn gate() -> LanConfig {
    let mut cfg = lan_config(
        1,
        Some(GW_MAC),
        &[
            Ipv4Addr::new(10, 200, 0, 1).into(),
            "fd00:200::1".parse().unwrap(),
        ],
        &[80],
        &GateOptions {
            anti_spoof: true,
            one_address: true,
            garden_rate_kbits: 256,
            garden_pps: 50,
            garden_total_kbits: 0,
            slotless_pps: 0,
            new_clients_per_sec: 0,
        },
        None,
        None,
    );
    cfg.bind_ttl_ms = 300_000;
    cfg
}

/// [`gate`] with the portal redirect on.
fn gate_redirect() -> LanConfig {
    let mut cfg = gate();
    cfg.flags |= session_common::LAN_PORTAL_REDIRECT;
    cfg.redirect_mark = 0x5e55;
    cfg.redirect_port = 3990;
    cfg
}

/// The paths a packet can take, each set up on the measured client.
#[derive(Clone, Copy)]
enum Path {
    /// Allowed, no limits: counted and passed.
    Counted,
    /// As `Counted` with the gate off (no gateway MAC or addresses, no
    /// anti-spoofing): what the gate costs a paying client's packet.
    CountedNoGate,
    /// As `Counted` with the portal redirect on: what the redirect costs a
    /// paying client's packet (nothing, it is not on that path).
    CountedRedirect,
    /// Allowed with a speed limit and a data budget that both admit it: the full path.
    Full,
    /// The speed limit refuses it.
    RateLimited,
    /// The data budget is used up.
    QuotaExhausted,
    /// Not allowed, not walled garden.
    Blocked,
}

impl Path {
    const ALL: [Path; 7] = [
        Path::Counted,
        Path::CountedNoGate,
        Path::CountedRedirect,
        Path::Full,
        Path::RateLimited,
        Path::QuotaExhausted,
        Path::Blocked,
    ];

    fn name(self) -> &'static str {
        match self {
            Path::Counted => "allowed_counted",
            Path::CountedNoGate => "allowed_counted_no_gate",
            Path::CountedRedirect => "allowed_counted_redirect_on",
            Path::Full => "full_path",
            Path::RateLimited => "rate_limited",
            Path::QuotaExhausted => "quota_exhausted",
            Path::Blocked => "blocked",
        }
    }

    fn verdict(self) -> u32 {
        match self {
            Path::Counted | Path::CountedNoGate | Path::CountedRedirect | Path::Full => TC_PASS,
            _ => TC_DROP,
        }
    }

    fn setup(self, maps: &mut Maps, m: &MacAddr) {
        let slot = maps.ensure_slot(m).unwrap();
        let big = RateLimit {
            rate_bytes: 1 << 40,
            burst_bytes: 1 << 40,
        };
        let tiny = RateLimit {
            rate_bytes: 1,
            burst_bytes: 1,
        };
        maps.set_lan(&match self {
            Path::CountedNoGate => LanConfig::default(),
            Path::CountedRedirect => gate_redirect(),
            _ => gate(),
        });
        match self {
            Path::Counted | Path::CountedNoGate | Path::CountedRedirect => {
                maps.set_allowed(m, true).unwrap();
            }
            Path::Full => {
                maps.set_allowed(m, true).unwrap();
                maps.set_rates(slot, big, big).unwrap();
                maps.set_budget(slot, Some(i64::MAX / 2)).unwrap();
            }
            Path::RateLimited => {
                maps.set_allowed(m, true).unwrap();
                maps.set_rates(slot, tiny, tiny).unwrap();
                // A one-byte bucket: the first packet takes it, every later one is refused.
                maps.set_budget(slot, None).unwrap();
            }
            Path::QuotaExhausted => {
                maps.set_allowed(m, true).unwrap();
                maps.set_rates(slot, RateLimit::UNLIMITED, RateLimit::UNLIMITED)
                    .unwrap();
                maps.set_budget(slot, Some(0)).unwrap();
            }
            Path::Blocked => {
                maps.set_rates(slot, RateLimit::UNLIMITED, RateLimit::UNLIMITED)
                    .unwrap();
                maps.set_budget(slot, None).unwrap();
                maps.set_allowed(m, false).unwrap();
            }
        }
    }
}

fn program_cost(out: &mut Vec<Measurement>, runs: u32, quick: bool) {
    let sizes: &[u32] = if quick {
        &[1, 10_000]
    } else {
        &[1, 1_000, 10_000, 65_536]
    };
    let repeat = if quick { 20_000 } else { 200_000 };
    for &n in sizes {
        let mut h = ProgramHarness::with_lan("sa-bench", &[], &gate())
            .expect("loading the datapath (root?)");
        let t = Instant::now();
        for i in 0..n {
            h.maps.set_allowed(&mac(i), true).unwrap();
        }
        eprintln!(
            "program cost: {n} clients in the maps ({:.1}s to fill)",
            t.elapsed().as_secs_f64()
        );
        let measured = n / 2;
        let f = frame(measured);
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); Path::ALL.len() + 1];
        // Interleaved: baseline, then each path, `runs` times.
        for _ in 0..runs {
            let (_, d) = h.run(PROG_NOOP, &f, None, repeat).unwrap();
            samples[0].push(d.as_nanos() as f64);
            for (k, p) in Path::ALL.iter().enumerate() {
                p.setup(&mut h.maps, &mac(measured));
                let (v, d) = h.run(PROG_TC_INGRESS, &f, None, repeat).unwrap();
                assert_eq!(v, p.verdict(), "{} returned {v}", p.name());
                samples[k + 1].push(d.as_nanos() as f64);
            }
        }
        let base = median(&samples[0]);
        out.push(Measurement {
            scenario: "program_cost".into(),
            case: "noop_baseline".into(),
            clients: n,
            metric: "ns_per_packet".into(),
            unit: "ns".into(),
            median: base,
            runs: samples[0].clone(),
            baseline: None,
        });
        for (k, p) in Path::ALL.iter().enumerate() {
            out.push(Measurement {
                scenario: "program_cost".into(),
                case: p.name().into(),
                clients: n,
                metric: "ns_per_packet".into(),
                unit: "ns".into(),
                median: median(&samples[k + 1]),
                runs: samples[k + 1].clone(),
                baseline: Some(base),
            });
        }
    }
}

fn rss_kib() -> f64 {
    status_kib("VmRSS:")
}

/// A figure of /proc/self/status in KiB (`VmRSS:`, `VmHWM:` the peak).
fn status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn agent_cost(out: &mut Vec<Measurement>, runs: u32, quick: bool) {
    let sizes: &[u32] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 65_536]
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for &n in sizes {
        let dir = tempdir();
        let db = dir.join("sessions.redb");
        let h = ProgramHarness::new("sa-bench", &[]).expect("loading the datapath (root?)");
        let t = Instant::now();
        // Devices, sessions and connections are set up on a store that syncs only
        // at the end; a fresh process then runs the agent's part over them, as a
        // restarted daemon would (fsync every write), so its memory is the agent's alone.
        {
            let store: Arc<dyn SessionStore> = Arc::new(
                HybridStore::open(
                    &db,
                    HybridOptions {
                        sync: SyncMode::Manual,
                        ..HybridOptions::default()
                    },
                )
                .unwrap(),
            );
            let gw = Gateway::over_pins(
                h.root(),
                "t",
                store,
                Arc::new(session_model::SystemClock),
                GatewayConfig::default(),
            )
            .unwrap();
            rt.block_on(async {
                for i in 0..n {
                    let d = gw.sessions().create_device(mac(i), None, None).unwrap();
                    gw.sessions()
                        .create_session(d.id, 2, 86_400, 100_000.0, None, 10, 5, false)
                        .await
                        .unwrap();
                    gw.connect(d.id, "").await.unwrap();
                }
            });
            gw.sessions().checkpoint().unwrap();
        }
        eprintln!(
            "agent cost: {n} connected devices ({:.1}s to set up)",
            t.elapsed().as_secs_f64()
        );
        // Then again without transparent huge pages, for the same-run
        // comparison of the real second's polls and the memory.
        for small_pages in [false, true] {
            let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
            cmd.env(
                MEASURE_ENV,
                format!("{}|{}|{n}|{runs}", db.display(), h.root().display()),
            );
            if small_pages {
                cmd.env(SMALL_PAGES_ENV, "1");
            }
            let child = cmd
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("running the agent-cost measurement");
            assert!(
                child.status.success(),
                "agent-cost measurement failed: {}",
                child.status
            );
            let measured: Vec<Measurement> =
                serde_json::from_slice(&child.stdout).expect("measurements of the child");
            out.extend(measured);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Devices that moved traffic in the "some active" poll.
const ACTIVE: u32 = 1_000;

/// Set in the child process that measures the agent: `db|pin root|clients|runs`.
const MEASURE_ENV: &str = "SESSION_BENCH_AGENT_MEASURE";

/// Set beside [`MEASURE_ENV`]: the child runs with transparent huge pages off
/// (`PR_SET_THP_DISABLE`), as on a kernel without them, measures only the
/// gateway loop and reports the real second's polls and its memory as
/// `*_4k` rows.
const SMALL_PAGES_ENV: &str = "SESSION_BENCH_SMALL_PAGES";

/// The agent's part, in a fresh process: open the store and the pinned maps,
/// reconcile, then time reads and polls; prints the measurements as JSON.
fn measure_agent(spec: &str) {
    let f: Vec<&str> = spec.split('|').collect();
    let (db, root, n, runs): (&str, &str, u32, u32) =
        (f[0], f[1], f[2].parse().unwrap(), f[3].parse().unwrap());
    let small_pages = std::env::var_os(SMALL_PAGES_ENV).is_some();
    if small_pages {
        // SAFETY: prctl with an option that only turns transparent huge pages
        // off for this process; no memory is passed.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        assert_eq!(
            r,
            0,
            "PR_SET_THP_DISABLE: {}",
            std::io::Error::last_os_error()
        );
    }
    // As `session-agent run` does.
    session_agent::memory::tune_allocator();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn SessionStore> =
        Arc::new(HybridStore::open(db, HybridOptions::default()).unwrap());
    let gw = Gateway::over_pins(
        std::path::Path::new(root),
        "t",
        store,
        std::sync::Arc::new(session_model::SystemClock),
        GatewayConfig::default(),
    )
    .unwrap();
    assert_eq!(
        gw.sessions().connected().unwrap().len(),
        n as usize,
        "every device reconnected from the store"
    );
    rt.block_on(gw.reconcile()).unwrap();
    let mut read = Vec::new();
    let (mut idle_wall, mut idle_cpu, mut busy_wall, mut busy_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut commit_wall, mut commit_cpu) = (Vec::new(), Vec::new());
    let (mut check_wall, mut check_cpu) = (Vec::new(), Vec::new());
    let (mut some_wall, mut some_cpu, mut some_commit_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut second_idle, mut second_some, mut second_all) = (Vec::new(), Vec::new(), Vec::new());
    let mut second_churn = Vec::new();
    // Devices that go and come back in the churned second, in turn.
    let devices: Vec<session_model::DeviceId> = gw
        .sessions()
        .connected()
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    let turn = std::cell::Cell::new(0usize);
    let gone = std::cell::Cell::new(None);
    // The clients of `slots` send 1,500 bytes each; then a timed poll.
    let traffic_then_poll = |slots: &mut dyn Iterator<Item = u32>| {
        {
            let maps = gw.lans()[0].maps.lock().unwrap();
            for slot in slots {
                maps.add_up_bytes(slot, 1500).unwrap();
            }
        }
        timed(|| rt.block_on(gw.poll()).unwrap())
    };
    let commit = || {
        timed(|| {
            gw.sessions().flush().unwrap();
            session_agent::memory::trim();
        })
    };
    for _ in 0..runs {
        let t = Instant::now();
        let r = gw.readings().unwrap();
        read.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.len(), n as usize);
        let (w, c) = timed(|| rt.block_on(gw.poll()).unwrap());
        idle_wall.push(w);
        idle_cpu.push(c);
        // Every client sends 1,500 bytes: the next poll charges every device.
        let (w, c) = traffic_then_poll(&mut (0..n));
        busy_wall.push(w);
        busy_cpu.push(c);
        // The gateway writes what polls charged to the store's log once a second.
        let (w, c) = commit();
        commit_wall.push(w);
        commit_cpu.push(c);
        // Once a second the poll checks the whole table against the sessions.
        let (w, c) = timed(|| {
            let found = gw.enforce_sessions().unwrap();
            assert!(found.is_empty(), "the datapath differs: {found:?}");
        });
        check_wall.push(w);
        check_cpu.push(c);
        // 1,000 devices, spread over the table, moved traffic: a poll and a
        // commit of what changed (at 1,000 devices, all of them).
        let (w, c) = traffic_then_poll(
            &mut (0..n)
                .step_by((n / ACTIVE).max(1) as usize)
                .take(ACTIVE as usize),
        );
        some_wall.push(w);
        some_cpu.push(c);
        some_commit_cpu.push(commit().1);
        // A real second of polls (one every 250 ms, the default): with no
        // traffic, with the 1,000 moving traffic before each, and with every
        // device. Connected time comes due over real time, so only polls
        // spread over a second show what charging it costs.
        let second = |active: &dyn Fn() -> Box<dyn Iterator<Item = u32>>, churn: bool| {
            let mut cpu = 0.0;
            for _ in 0..4 {
                std::thread::sleep(Duration::from_millis(250));
                if churn {
                    // A device goes and the one that went before comes back.
                    let k = turn.get();
                    turn.set(k + 1);
                    let d = devices[(k * 7_919 + 1) % devices.len()];
                    cpu += timed(|| {
                        rt.block_on(async {
                            gw.disconnect(d, "").await.unwrap();
                            if let Some(back) = gone.replace(Some(d)) {
                                gw.connect(back, "").await.unwrap();
                            }
                        })
                    })
                    .1;
                }
                {
                    let maps = gw.lans()[0].maps.lock().unwrap();
                    for slot in active() {
                        maps.add_up_bytes(slot, 1500).unwrap();
                    }
                }
                // As the run loop polls.
                cpu += timed(|| rt.block_on(gw.poll_round()).unwrap()).1;
            }
            // Every device connected again, and what the second left
            // uncharged (the next second's charge), so that the next
            // measurement starts from nothing.
            if let Some(back) = gone.take() {
                rt.block_on(gw.connect(back, "")).unwrap();
            }
            rt.block_on(gw.poll()).unwrap();
            commit();
            cpu
        };
        let spread = || -> Box<dyn Iterator<Item = u32>> {
            Box::new(
                (0..n)
                    .step_by((n / ACTIVE).max(1) as usize)
                    .take(ACTIVE as usize),
            )
        };
        second_idle.push(second(&|| Box::new(std::iter::empty()), false));
        second_some.push(second(&spread, false));
        second_all.push(second(&|| Box::new(0..n), false));
        // The same 1,000, with a device going and another coming back
        // before each poll (a busy hotspot's connects), their CPU included.
        second_churn.push(second(&spread, true));
    }
    let mut out = agent_rows(
        n,
        vec![
            ("read_counters", "wall_ms", "ms", read),
            ("poll_idle", "wall_ms", "ms", idle_wall),
            ("poll_idle", "cpu_ms", "ms", idle_cpu),
            ("poll_all_charged", "wall_ms", "ms", busy_wall),
            ("poll_all_charged", "cpu_ms", "ms", busy_cpu),
            ("commit_all_charged", "wall_ms", "ms", commit_wall),
            ("commit_all_charged", "cpu_ms", "ms", commit_cpu),
            ("check_table", "wall_ms", "ms", check_wall),
            ("check_table", "cpu_ms", "ms", check_cpu),
            ("poll_1000_charged", "wall_ms", "ms", some_wall),
            ("poll_1000_charged", "cpu_ms", "ms", some_cpu),
            ("commit_1000_charged", "cpu_ms", "ms", some_commit_cpu),
            ("second_of_polls_idle", "cpu_ms", "ms", second_idle),
            ("second_of_polls_1000", "cpu_ms", "ms", second_some),
            ("second_of_polls_all", "cpu_ms", "ms", second_all),
            ("second_of_polls_1000_churn", "cpu_ms", "ms", second_churn),
        ],
    );
    let rss = rss_kib() / 1024.0;
    // The peak: the commit of every device and the all-charged polls hold
    // large buffers for a moment, each in huge pages where it fills them.
    let peak = status_kib("VmHWM:") / 1024.0;
    out.extend(agent_rows(
        n,
        vec![
            ("resident_memory", "rss_mib", "MiB", vec![rss]),
            ("resident_memory_peak", "rss_mib", "MiB", vec![peak]),
        ],
    ));
    if small_pages {
        let kept: Vec<Measurement> = out
            .into_iter()
            .filter(|m| m.case.starts_with("second_of_polls") || m.case.starts_with("resident"))
            .map(|m| Measurement {
                case: format!("{}_4k", m.case),
                ..m
            })
            .collect();
        println!("{}", serde_json::to_string(&kept).unwrap());
        return;
    }
    out.extend(history(&gw, n, runs));
    out.extend(bindings(&gw, root, n, runs));
    out.extend(radius_books(&rt, &gw, db, n, runs));
    println!("{}", serde_json::to_string(&out).unwrap());
}

/// Scenario 5's measurements at `n` clients: (case, metric, unit, runs) each.
fn agent_rows(n: u32, rows: Vec<(&str, &str, &str, Vec<f64>)>) -> Vec<Measurement> {
    rows.into_iter()
        .map(|(case, metric, unit, v)| Measurement {
            scenario: "agent_cost".into(),
            case: case.into(),
            clients: n,
            metric: metric.into(),
            unit: unit.into(),
            median: median(&v),
            runs: v,
            baseline: None,
        })
        .collect()
}

/// The operator page's traffic history with every device active every
/// minute: a minute's sample (every connected device's counters read, the
/// minute's, the hour's and the day's records written in one durable write),
/// and the bytes a minute adds and the history holds at most.
fn history(gw: &Arc<Gateway>, n: u32, runs: u32) -> Vec<Measurement> {
    use session_agent::history::{
        History, CLIENT_HOURS_KEPT, CLIENT_MINUTES_KEPT, DAYS_KEPT, MINUTES_KEPT,
    };
    use session_model::Shelf;
    let t0 = 1_800_000_000i64;
    let h = History::open(gw.clone(), t0).unwrap();
    h.sample(t0).unwrap();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for r in 0..runs {
        {
            let maps = gw.lans()[0].maps.lock().unwrap();
            for slot in 0..n {
                maps.add_up_bytes(slot, 1500).unwrap();
            }
        }
        let at = t0 + 60 * (i64::from(r) + 1);
        let (w, c) = timed(|| {
            let m = h.sample(at).unwrap();
            assert_eq!(m.up, 1500 * u64::from(n), "every device's bytes recorded");
        });
        wall.push(w);
        cpu.push(c);
    }
    let store = gw.sessions().store();
    // The largest record of each kind: every device moved in it.
    let size = |shelf: Shelf| -> f64 {
        let recs = store.shelf(shelf).unwrap();
        recs.iter()
            .map(|(k, v)| (k.len() + v.len()) as f64)
            .fold(0.0, f64::max)
    };
    let (minute_clients, hour_clients) = (size(Shelf::MinuteClients), size(Shelf::HourClients));
    let (minute_totals, day_totals) = (size(Shelf::MinuteTotals), size(Shelf::DayTotals));
    let per_minute = minute_clients + hour_clients + minute_totals + day_totals;
    let bound = CLIENT_MINUTES_KEPT as f64 * minute_clients
        + CLIENT_HOURS_KEPT as f64 * hour_clients
        + MINUTES_KEPT as f64 * minute_totals
        + DAYS_KEPT as f64 * day_totals;
    agent_rows(
        n,
        vec![
            ("history_minute", "wall_ms", "ms", wall),
            ("history_minute", "cpu_ms", "ms", cpu),
            (
                "history_written_per_minute",
                "kib",
                "KiB",
                vec![per_minute / 1024.0],
            ),
            (
                "history_on_disk_at_most",
                "mib",
                "MiB",
                vec![bound / 1024.0 / 1024.0],
            ),
        ],
    )
}

/// The address bindings of every device (an IPv4 and an IPv6 address each):
/// reading them as the sweep does, in batches, against walking the keys as
/// aya's iterator does (two `bpf` calls per binding) in the same run; and the
/// sweep itself, which finds none expired.
fn bindings(gw: &Gateway, root: &str, n: u32, runs: u32) -> Vec<Measurement> {
    use session_agent::dataplane::addr_key;
    use session_common::{AddrKey, Binding, MAP_BINDINGS};
    let path =
        session_agent::dataplane::pins::clients_dir(std::path::Path::new(root)).join(MAP_BINDINGS);
    let data = aya::maps::MapData::from_pin(&path).expect("the pinned bindings");
    let mut map: aya::maps::HashMap<_, AddrKey, Binding> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
    let now = session_agent::dataplane::coarse_ns();
    for i in 0..n {
        let b = Binding {
            mac: mac(i),
            _pad: [0; 2],
            last_ns: now,
        };
        let v4 = Ipv4Addr::from(0x0a00_0000 + i);
        let v6 = std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i));
        map.insert(addr_key(v4.into()), b, 0).unwrap();
        map.insert(addr_key(v6.into()), b, 0).unwrap();
    }
    let maps = gw.lans()[0].maps.lock().unwrap();
    let (mut walk, mut batch, mut sweep) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (w, _) = timed(|| assert_eq!(map.iter().count(), 2 * n as usize));
        walk.push(w);
        let (w, _) = timed(|| assert_eq!(maps.bindings().unwrap().len(), 2 * n as usize));
        batch.push(w);
        let (w, _) = timed(|| {
            let s = maps.sweep_bindings(Duration::from_secs(3600)).unwrap();
            assert_eq!((s.live, s.expired), (2 * u64::from(n), 0));
        });
        sweep.push(w);
    }
    let mut out = Vec::new();
    let walked = median(&walk);
    for (case, v, baseline) in [
        ("bindings_walk", walk, None),
        ("bindings_batch", batch, Some(walked)),
        ("bindings_sweep", sweep, None),
    ] {
        out.push(Measurement {
            scenario: "agent_cost".into(),
            case: case.into(),
            clients: n,
            metric: "wall_ms".into(),
            unit: "ms".into(),
            median: median(&v),
            runs: v,
            baseline,
        });
    }
    out
}

/// RADIUS's once-a-second bookkeeping with every connected device's session
/// open at the accounting server, interim updates every 10 minutes: a
/// round with one in 600 sessions due (what each second brings), against the
/// round that looks at every open session (every 30 s; what each second cost
/// when the bookkeeping read the whole book), in the same run; and the
/// resident memory with the book open.
fn radius_books(
    rt: &tokio::runtime::Runtime,
    gw: &Gateway,
    db: &str,
    n: u32,
    runs: u32,
) -> Vec<Measurement> {
    use session_agent::radius::{Radius, RadiusOptions};
    use session_radius::acct::{Book, OpenSession, Reading};
    const INTERIM: u64 = 600;
    let path = std::path::PathBuf::from(format!("{db}.radius.redb"));
    let now = gw.sessions().clock().now_secs();
    let open = |device_id, session_id, next_interim, at: Reading| OpenSession {
        session_id,
        device_id,
        acct_session_id: format!("5A000000-{session_id:08X}"),
        user_name: format!("user{session_id}"),
        calling: "02-00-00-00-00-01".into(),
        framed_ip: None,
        class: vec![b"plan".to_vec()],
        state: None,
        started_at: now,
        interim_secs: INTERIM,
        next_interim,
        base_up: 0,
        base_down: 0,
        mark: at,
        last: at,
    };
    // One in 600 sessions comes due each second, from the next one on.
    {
        let book = Book::open(Some(&path), u64::MAX).unwrap();
        let all: Vec<_> = gw
            .sessions()
            .connected()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, &(d, s))| {
                // Its counters as they stand, as at a Start.
                let mac = gw.sessions().device(d).unwrap().mac;
                let (epoch, split) = rt.block_on(gw.usage_split(mac));
                let at = Reading::of(epoch, split);
                (open(d, s, now + 1 + (i as i64 % INTERIM as i64), at), None)
            })
            .collect();
        book.record_many(&all).unwrap();
    }
    let opts = || RadiusOptions {
        book: Some(path.clone()),
        queue_limit: u64::MAX,
        ..RadiusOptions::default()
    };
    let (mut open_wall, mut sweep_wall, mut sweep_cpu, mut second_wall, mut second_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (w, _) = timed(|| drop(Radius::open(opts(), None).unwrap()));
        open_wall.push(w);
        let radius = Radius::open(opts(), None).unwrap();
        // The first round after a start looks at every open session.
        let (w, c) = timed(|| rt.block_on(radius.books_once(gw)).unwrap());
        sweep_wall.push(w);
        sweep_cpu.push(c);
        // An ordinary second: the sessions that came due in it.
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        std::thread::sleep(Duration::from_millis(u64::from(1000 - ms) + 5));
        // The 1,000 moved traffic in it (the others' interim updates carry
        // counters that stood still).
        {
            let maps = gw.lans()[0].maps.lock().unwrap();
            for slot in (0..n)
                .step_by((n / ACTIVE).max(1) as usize)
                .take(ACTIVE as usize)
            {
                maps.add_up_bytes(slot, 1500).unwrap();
            }
        }
        let (w, c) = timed(|| rt.block_on(radius.books_once(gw)).unwrap());
        second_wall.push(w);
        second_cpu.push(c);
        assert_eq!(radius.open_count(), n as usize, "no session was stopped");
        assert!(radius.queued() > 0, "no interim update was queued");
    }
    // A second as the daemon runs it, from a trimmed heap (with one book
    // open, as the daemon holds it): 4 polls 250 ms apart with the 1,000
    // moving traffic, RADIUS's round and the commit. Resident memory before
    // the heap trim the daemon does after the commit (what the process holds
    // until then) and after it.
    // What the earlier measurements' traffic left uncharged (the history's
    // samples moved every device) is charged and committed first, as the
    // daemon's polls would have long before: the second starts from it.
    let radius = Radius::open(opts(), None).unwrap();
    rt.block_on(radius.books_once(gw)).unwrap();
    rt.block_on(gw.poll()).unwrap();
    gw.sessions().flush().unwrap();
    session_agent::memory::trim();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(250));
        {
            let maps = gw.lans()[0].maps.lock().unwrap();
            for slot in (0..n)
                .step_by((n / ACTIVE).max(1) as usize)
                .take(ACTIVE as usize)
            {
                maps.add_up_bytes(slot, 1500).unwrap();
            }
        }
        rt.block_on(gw.poll_round()).unwrap();
    }
    rt.block_on(radius.books_once(gw)).unwrap();
    gw.sessions().flush().unwrap();
    let untrimmed = rss_kib() / 1024.0;
    session_agent::memory::trim();
    let rss = rss_kib() / 1024.0;
    drop(radius);
    let mut out = Vec::new();
    for (case, metric, v) in [
        ("radius_open_book", "wall_ms", open_wall),
        ("radius_books_sweep", "wall_ms", sweep_wall),
        ("radius_books_sweep", "cpu_ms", sweep_cpu),
        ("radius_books_second", "wall_ms", second_wall),
        ("radius_books_second", "cpu_ms", second_cpu),
        ("resident_memory_radius", "rss_mib", vec![rss]),
        (
            "resident_memory_radius_untrimmed",
            "rss_mib",
            vec![untrimmed],
        ),
    ] {
        out.push(Measurement {
            scenario: "agent_cost".into(),
            case: case.into(),
            clients: n,
            metric: metric.into(),
            unit: if metric == "rss_mib" { "MiB" } else { "ms" }.into(),
            median: median(&v),
            runs: v,
            baseline: None,
        });
    }
    out
}

fn timed(f: impl FnOnce()) -> (f64, f64) {
    let (t, c) = (Instant::now(), cpu_time());
    f();
    (
        t.elapsed().as_secs_f64() * 1e3,
        (cpu_time() - c).as_secs_f64() * 1e3,
    )
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sa-bench-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// As the daemon's binary: large tables in 2 MiB pages.
#[global_allocator]
static ALLOCATOR: session_agent::memory::Allocator = session_agent::memory::Allocator;

fn main() {
    if let Ok(spec) = std::env::var(MEASURE_ENV) {
        return measure_agent(&spec);
    }
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the datapath benchmark needs root (BPF): run `cargo xtask bench`"
    );
    // `cargo bench` passes `--bench`; nothing else is taken.
    let runs = env_u32("SESSION_BENCH_RUNS", 5).max(1);
    let quick = std::env::var("SESSION_BENCH_QUICK").is_ok_and(|v| v == "1");
    let only = std::env::var("SESSION_BENCH_ONLY").unwrap_or_default();
    let mut out = Vec::new();
    if only.is_empty() || only == "program_cost" {
        program_cost(&mut out, runs, quick);
    }
    if only.is_empty() || only == "agent_cost" {
        agent_cost(&mut out, runs, quick);
    }
    println!(
        "{:<14} {:<18} {:>7} {:<8} {:>12} {:>10}",
        "SCENARIO", "CASE", "CLIENTS", "METRIC", "MEDIAN", "VS NOOP"
    );
    for m in &out {
        let ratio = m
            .baseline
            .map(|b| format!("{:.2}x", m.median / b))
            .unwrap_or_default();
        println!(
            "{:<14} {:<18} {:>7} {:<8} {:>12.3} {:>10}",
            m.scenario, m.case, m.clients, m.unit, m.median, ratio
        );
    }
    if let Ok(path) = std::env::var("SESSION_BENCH_OUT") {
        std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap())
            .unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}
