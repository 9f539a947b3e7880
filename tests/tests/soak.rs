//! A busy hotspot compressed: paying clients move traffic while a schedule
//! buys, pauses, resumes and tops up their sessions, an unpaid client keeps
//! trying, and the agent is killed (-9) and restarted and reloaded (SIGHUP,
//! with a changed setting) along the way. Checked from references the agent
//! does not keep: every byte a paying client moved through the gateway is
//! charged once to its sessions (nftables on the forward path and in the
//! client's namespace), no byte of the unpaid client (nor of the 5,000
//! further MACs it plays) reaches the server, a device
//! with a session and data left is never blocked for more than a second, a
//! paused session is charged no time, and the agent's memory stays flat.
//!
//! The short run is part of the test suite; `cargo xtask soak` runs the long
//! one (`SESSION_SOAK_SECS`, default 1,800) and writes its report to
//! `target/soak/`.

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use session_tests::{
    api::ApiClient, nft::ServerWatch, raw::MacFlood, require_root, sessions::*, topo::parse_mac,
    AgentBuilder, Client, Hotspot, NftRef, ServerSet,
};

/// Paying clients; one more never pays.
const PAYING: usize = 3;
/// Further MACs the unpaid client's namespace plays, from its address: a
/// burst of one frame each every [`HOSTILE_EVERY`].
const HOSTILE_MACS: u32 = 5_000;
const HOSTILE_EVERY: Duration = Duration::from_secs(2);
/// Every paying session's speed: its data lasts tens of seconds.
const MBITS: i32 = 8;
/// Longest a device with a running session and data left may go without a
/// probe answered (the probes' own 200 ms wait included).
const MAX_BLOCKED: Duration = Duration::from_millis(1_000);

/// A seeded, reproducible schedule (splitmix64): the seed is printed, so a
/// failing run can be played again with `SESSION_SOAK_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One paying client and what the schedule did to it.
struct Paying {
    client: Client,
    device: i64,
    rx: RxRef,
    probe: Probe,
    traffic: Background,
    /// The running session's time consumed when it was paused.
    paused: Option<(i64, u64)>,
}

/// What a run found, for the report.
#[derive(Default)]
struct Report {
    seed: u64,
    secs: u64,
    events: Vec<(f64, String)>,
    /// Seconds from a kill -9 until the restarted agent said READY.
    restarts: Vec<f64>,
    reloads: u32,
    /// Frames sent from the hostile MACs.
    hostile_frames: u64,
    /// Per paying client: (charged, delivered, forwarded) bytes.
    usage: Vec<(String, u64, u64, u64)>,
    /// Longest time a device with data left went without an answered probe.
    worst_blocked: Duration,
    /// Resident memory of the agent, KiB, with the time it was read and the process.
    rss: Vec<(f64, u64, u32)>,
    /// Agent CPU ms per second between samples.
    cpu: Vec<(f64, f64)>,
}

impl Report {
    fn markdown(&self) -> String {
        let mut s = format!(
            "# Soak: {} s, seed {}\n\n{} events, {} kill -9 and restart (READY after {:.2} s at worst), {} reloads; {} frames from {} hostile MACs, none of which reached the server.\n\n\
             Longest a device with data left went without an answered probe: {} ms (limit {} ms).\n\n\
             | client | charged bytes | delivered (reference) | forwarded (gateway) |\n|---|---:|---:|---:|\n",
            self.secs,
            self.seed,
            self.events.len(),
            self.restarts.len(),
            self.restarts.iter().copied().fold(0.0, f64::max),
            self.reloads,
            self.hostile_frames,
            HOSTILE_MACS,
            self.worst_blocked.as_millis(),
            MAX_BLOCKED.as_millis(),
        );
        for (mac, charged, delivered, forwarded) in &self.usage {
            let _ = writeln!(s, "| {mac} | {charged} | {delivered} | {forwarded} |");
        }
        let _ = writeln!(s, "\n## Resident memory (KiB) and CPU (ms per second) over the run\n\n| s | RSS KiB | CPU ms/s |\n|---:|---:|---:|");
        for ((t, rss, _), (_, cpu)) in self.rss.iter().zip(&self.cpu) {
            // No CPU figure for the first sample of a process.
            let cpu = if cpu.is_nan() {
                "-".into()
            } else {
                format!("{cpu:.1}")
            };
            let _ = writeln!(s, "| {t:.1} | {rss} | {cpu} |");
        }
        let _ = writeln!(s, "\n## Events\n");
        for (t, e) in &self.events {
            let _ = writeln!(s, "- {t:.1} s: {e}");
        }
        s
    }
}

/// The data charged to all of a device's sessions.
fn charged(api: &ApiClient, device: i64) -> u64 {
    api.sessions(device)
        .iter()
        .map(|s| field(s, "data_cons_bytes"))
        .sum()
}

/// The device's running session: its id, data left and time consumed.
fn running(api: &ApiClient, device: i64) -> Option<(i64, u64, u64)> {
    api.sessions(device)
        .iter()
        .find(|s| s["running"] == true)
        .map(|s| {
            (
                sid(s),
                field(s, "remaining_data_bytes"),
                field(s, "time_cons"),
            )
        })
}

/// The longest stretch of failed probes that began while the device was
/// let through with data left, up to `until`.
fn longest_failure(probe: &Probe, from: Instant, until: Instant) -> Duration {
    let mut worst = Duration::ZERO;
    let mut since: Option<Instant> = None;
    for r in probe.results() {
        if r.at < from || r.at > until {
            continue;
        }
        match (r.ok, since) {
            (false, None) => since = Some(r.at),
            (true, Some(s)) => {
                worst = worst.max(r.at - s);
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        worst = worst.max(until - s);
    }
    worst
}

fn soak(secs: u64) -> Report {
    require_root();
    let seed = std::env::var("SESSION_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("soak: {secs} s, seed {seed} (SESSION_SOAK_SEED={seed} plays it again)");
    let mut rng = Rng(seed);
    let mut report = Report {
        seed,
        secs,
        ..Report::default()
    };
    let hs = Hotspot::builder().clients(PAYING + 1).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let cfg = hs.state_dir.join("config.toml");
    std::fs::write(&cfg, "idle_timeout_secs = 0\n").unwrap();
    let nft = NftRef::install(&hs);
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let mut agent = AgentBuilder::new(&hs)
        .arg("--config")
        .arg(cfg.display().to_string())
        .start();
    let mut api = agent.api();
    let watch = ServerWatch::install(&hs);
    let unpaid = hs.client(PAYING).clone();
    let mut unpaid_traffic = Background::start(&unpaid.ns, &servers);
    let (hostile_sent, hostile_stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let hostile = {
        let (c, sent, stop) = (unpaid.clone(), hostile_sent.clone(), hostile_stop.clone());
        let (gw_mac, server) = (parse_mac(&hs.gw_lan_mac), hs.server_v4);
        let end = Instant::now() + Duration::from_secs(secs + 60);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                MacFlood {
                    pool: HOSTILE_MACS,
                    frames: u64::from(HOSTILE_MACS),
                    until: end,
                }
                .send(&c, gw_mac, server, &sent, &stop);
                std::thread::sleep(HOSTILE_EVERY);
            }
        })
    };
    let mut paying: Vec<Paying> = (0..PAYING)
        .map(|i| {
            let client = hs.client(i).clone();
            Paying {
                device: api.device_id(&client.mac),
                rx: RxRef::install(&client),
                probe: Probe::start(&client.ns, servers.udp4.addr, Duration::from_millis(100)),
                traffic: Background::start(&client.ns, &servers),
                paused: None,
                client,
            }
        })
        .collect();
    let t0 = Instant::now();
    let at = |t: Instant| t.duration_since(t0).as_secs_f64();
    // Every paying client buys once before the schedule plays: a short run's
    // random draws might otherwise leave one without a purchase, proving nothing.
    for p in &paying {
        let mb = 4 + rng.below(21);
        let id = new_session(&api, p.device, TIME_OR_DATA, 3_600, mb as f64, MBITS, MBITS);
        let _ = api.connect(p.device, "soak");
        report.events.push((
            at(Instant::now()),
            format!("{} buys {mb} MB (session {id})", p.client.mac),
        ));
    }
    let mut last_cpu: Option<(u32, Instant, f64)> = None;
    // Reloads of the agent process running now (its log is its own).
    let mut reloads_here = 0;
    let mut step = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        step += 1;
        let who = rng.below(PAYING as u64) as usize;
        let p = &mut paying[who];
        let now_running = running(&api, p.device);
        let event = match rng.below(20) {
            // Buy: a session of 4 to 24 MB at 8 Mbit/s, connected at once.
            0..=4 => {
                let mb = 4 + rng.below(21);
                let id = new_session(&api, p.device, TIME_OR_DATA, 3_600, mb as f64, MBITS, MBITS);
                if now_running.is_none() {
                    let _ = api.connect(p.device, "soak");
                    p.paused = None;
                }
                format!("{} buys {mb} MB (session {id})", p.client.mac)
            }
            // Pause.
            5..=7 => match now_running {
                Some((id, _, _)) => {
                    let r = api.disconnect(p.device, "soak pause");
                    p.paused = Some((id, field(&api.session(id), "time_cons")));
                    format!("{} pauses ({})", p.client.mac, r.status)
                }
                None => continue,
            },
            // Resume: a paused session is charged no time while paused.
            8..=10 => match (now_running, p.paused.take()) {
                (None, Some((id, time_cons))) => {
                    let before = field(&api.session(id), "time_cons");
                    assert_eq!(
                        before, time_cons,
                        "session {id} of {} was charged time while paused",
                        p.client.mac
                    );
                    let r = api.connect(p.device, "soak resume");
                    format!("{} resumes session {id} ({})", p.client.mac, r.status)
                }
                (None, None) => {
                    let r = api.connect(p.device, "soak resume");
                    format!("{} connects ({})", p.client.mac, r.status)
                }
                _ => continue,
            },
            // Top up a running session: no break.
            11..=13 => match now_running {
                Some(_) => {
                    let id = new_session(&api, p.device, TIME_OR_DATA, 3_600, 8.0, MBITS, MBITS);
                    format!("{} tops up (session {id})", p.client.mac)
                }
                None => continue,
            },
            // kill -9, down for up to 1.5 s, restart.
            14..=15 => {
                let down = Duration::from_millis(rng.below(1_500));
                agent.kill9();
                std::thread::sleep(down);
                let t = Instant::now();
                agent = agent.restart();
                api = agent.api();
                let ready = t.elapsed().as_secs_f64();
                report.restarts.push(ready);
                last_cpu = None;
                reloads_here = 0;
                format!(
                    "kill -9, down {} ms, READY after {ready:.2} s",
                    down.as_millis()
                )
            }
            // SIGHUP with a changed setting.
            16 => {
                let idle = if report.reloads.is_multiple_of(2) {
                    3_600
                } else {
                    0
                };
                std::fs::write(&cfg, format!("idle_timeout_secs = {idle}\n")).unwrap();
                // SAFETY: kill has no memory effects; the pid is the agent's.
                unsafe { libc::kill(agent.pid().unwrap() as i32, libc::SIGHUP) };
                report.reloads += 1;
                reloads_here += 1;
                let n = reloads_here;
                let ok = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
                    (agent.log().matches("configuration reloaded").count() >= n).then_some(())
                });
                assert!(
                    ok.is_some(),
                    "reload {n} not applied:\n{}",
                    agent.log_tail()
                );
                format!("SIGHUP, idle_timeout_secs = {idle}")
            }
            _ => "quiet".to_string(),
        };
        report.events.push((at(Instant::now()), event));
        let window_start = Instant::now();
        std::thread::sleep(Duration::from_millis(400 + rng.below(1_200)));
        // No byte of the unpaid client (or the MACs it plays) passes, ever.
        let u = nft.get(&unpaid.mac);
        assert_eq!(
            (u.up_bytes, u.down_bytes),
            (0, 0),
            "the unpaid client's traffic was forwarded at step {step}\n{}",
            report.markdown()
        );
        assert_eq!(
            (watch.from_client(PAYING), watch.other()),
            ((0, 0), (0, 0)),
            "unpaid frames reached the server at step {step}: {:?}\n{}",
            watch.all(),
            report.markdown()
        );
        // A device let through with plenty of data left answers its probes.
        for p in &paying {
            let Some((_, left, _)) = running(&api, p.device) else {
                continue;
            };
            if left < 4 * MB {
                continue;
            }
            let from = window_start + Duration::from_millis(200);
            let worst =
                longest_failure(&p.probe, from, Instant::now() - Duration::from_millis(250));
            report.worst_blocked = report.worst_blocked.max(worst);
            assert!(
                worst <= MAX_BLOCKED,
                "{} had {left} bytes left and went {} ms without an answered probe at step {step}\n{}\n{}",
                p.client.mac,
                worst.as_millis(),
                device_report(&api, p.device),
                report.markdown()
            );
        }
        if let (Some(pid), Some(rss), Some(cpu_ms)) = (agent.pid(), agent.rss_kib(), agent.cpu_ms())
        {
            let now = Instant::now();
            report.rss.push((at(now), rss, pid));
            let cpu = match last_cpu {
                Some((p, t, ms)) if p == pid => (cpu_ms - ms) / now.duration_since(t).as_secs_f64(),
                _ => f64::NAN,
            };
            report.cpu.push((at(now), cpu));
            last_cpu = Some((pid, now, cpu_ms));
        }
    }
    // The end: traffic stops, the agent charges the last bytes.
    hostile_stop.store(true, Ordering::Relaxed);
    hostile.join().expect("the hostile MACs' sender");
    report.hostile_frames = hostile_sent.load(Ordering::Relaxed);
    assert!(
        report.hostile_frames >= u64::from(HOSTILE_MACS),
        "the hostile MACs sent {} frames",
        report.hostile_frames
    );
    let _ = unpaid_traffic.finish();
    for p in &mut paying {
        let _ = p.traffic.finish();
        p.probe.stop();
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let mut failures = Vec::new();
    for p in &paying {
        let read = || {
            let r = Refs::read(&nft, &p.rx, &p.client.mac);
            (charged(&api, p.device), r.delivered(), r.forwarded())
        };
        // Settled: two reads a poll apart agree.
        let mut last = read();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(600));
            let next = read();
            if next == last {
                break;
            }
            last = next;
        }
        let (c, delivered, forwarded) = last;
        report
            .usage
            .push((p.client.mac.clone(), c, delivered, forwarded));
        if c != delivered {
            failures.push(format!(
                "{}: charged {c}, delivered {delivered} (forwarded {forwarded})\n{}",
                p.client.mac,
                device_report(&api, p.device)
            ));
        }
        assert!(
            delivered > 0,
            "{} moved nothing: the run proves nothing",
            p.client.mac
        );
    }
    assert!(
        failures.is_empty(),
        "charged usage differs from the reference:\n{}\n{}\n{}",
        failures.join("\n"),
        report.markdown(),
        agent.log_tail()
    );
    // Memory stays flat: the last process's resident memory after its first
    // third of samples grows by no more than 4 MiB.
    let pid = agent.pid();
    let last: Vec<u64> = report
        .rss
        .iter()
        .filter(|(_, _, p)| Some(*p) == pid)
        .map(|(_, r, _)| *r)
        .collect();
    if last.len() >= 6 {
        let (warm, end) = (last[last.len() / 3], *last.last().unwrap());
        assert!(
            end <= warm + 4 * 1024,
            "resident memory grew from {warm} to {end} KiB\n{}",
            report.markdown()
        );
    }
    report
}

fn report_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/soak")
}

#[test]
fn a_busy_minute_with_kills_and_reloads_charges_every_byte_once_and_lets_nothing_unpaid_through() {
    let secs = std::env::var("SESSION_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let report = soak(secs);
    let dir = report_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.md");
    std::fs::write(&path, report.markdown()).unwrap();
    eprintln!("soak report: {}", path.display());
}
