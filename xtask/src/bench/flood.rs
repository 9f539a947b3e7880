//! Scenario 6: a flood of MACs. One client of the test hotspot sends UDP
//! frames from 200,000 random source MACs through the gateway, as fast as one
//! sender goes, for 30 s (10 s with `--quick`); another client pays throughout
//! and probes the server every 50 ms. Some seconds into the flood (when the
//! client table is full and the agent reclaims under pressure) a new customer
//! arrives: how long until it reaches the portal (a UDP echo from the
//! gateway's DNS port, its garden), and how long from paying (connect) until
//! its traffic reaches the server.
//!
//! - `quiet`: the same hotspot and customer without the flood, in the same run
//!   (the reference of the ratios);
//! - `flood`: with the flood, the agent as configured by default (new MACs
//!   take slots at 500 a second);
//! - `flood_unthrottled`: with the flood and no admission rate
//!   (`--new-clients-per-sec 0`): the table fills within a second and the
//!   agent reclaims unpaid clients under pressure.
//!
//! Also measured under the flood: the client table's largest occupancy (the
//! agent's `session_agent_clients` gauge, sampled every second), the paying
//! client's lost probes and the agent's resident memory before and after.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use session_tests::{
    raw::MacFlood,
    sessions::{connect, new_session, wait_for, Probe, TIME},
    topo::parse_mac,
    traffic::udp_echo,
    Agent, AgentBuilder, Hotspot, ServerSet, UdpServer,
};

use super::{progress, Measurement, Opts};

const SCENARIO: &str = "flood";
/// Distinct MACs of the flood.
const MACS: u32 = 200_000;

/// One run of one case.
/// The cases, in the order each run takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Quiet,
    Flood,
    Unthrottled,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Quiet => "quiet",
            Case::Flood => "flood",
            Case::Unthrottled => "flood_unthrottled",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    portal_ms: f64,
    online_ms: f64,
    payer_lost: f64,
    table_max: f64,
    rss_growth_mib: f64,
    frames: f64,
}

fn rss_kib(agent: &Agent) -> u64 {
    let Some(pid) = agent.pid() else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `session_agent_clients` gauge (the client table's occupancy).
fn table_clients(agent: &Agent) -> f64 {
    agent
        .metrics()
        .lines()
        .find(|l| l.starts_with("session_agent_clients{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn echo(ns: &str, dst: std::net::SocketAddr, tag: &[u8]) -> Option<()> {
    udp_echo(
        ns,
        "0.0.0.0:0".parse().unwrap(),
        dst,
        tag,
        None,
        Duration::from_millis(300),
    )
    .ok()
    .map(|_| ())
}

fn one(case: Case, opts: &Opts) -> Result<Outcome> {
    let flood = case != Case::Quiet;
    let (flood_secs, arrive_secs) = if opts.quick { (10, 5) } else { (30, 20) };
    let hs = Hotspot::builder().clients(3).dynamic_neighbours().build();
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let dns = UdpServer::start(&hs.gw_ns, hs.gw_lan_sock(false, 53));
    let mut b = AgentBuilder::new(&hs);
    if case == Case::Unthrottled {
        b = b.arg("--new-clients-per-sec").arg("0");
    }
    let agent = b.start();
    let api = agent.api();
    let (payer, attacker, customer) = (hs.client(0), hs.client(1), hs.client(2));
    let paying = api.device_id(&payer.mac);
    new_session(&api, paying, TIME, 3600, 0.0, 0, 0);
    connect(&api, paying);
    let probe = Probe::start(&payer.ns, servers.udp4.addr, Duration::from_millis(50));
    let rss_before = rss_kib(&agent);
    let (sent, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(flood_secs);
    let flooder = flood.then(|| {
        let (c, sent, stop) = (attacker.clone(), sent.clone(), stop.clone());
        let gw_mac = parse_mac(&hs.gw_lan_mac);
        let server = hs.server_v4;
        std::thread::spawn(move || {
            MacFlood {
                pool: MACS,
                frames: u64::MAX,
                until,
            }
            .send(&c, gw_mac, server, &sent, &stop)
        })
    });
    let mut table_max = 0f64;
    while started.elapsed() < Duration::from_secs(arrive_secs) {
        std::thread::sleep(Duration::from_secs(1));
        table_max = table_max.max(table_clients(&agent));
    }
    // The new customer: the portal first, then it pays.
    let t = Instant::now();
    let reached = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        echo(&customer.ns, dns.addr, b"portal")
    });
    if reached.is_none() {
        stop.store(true, Ordering::Relaxed);
        bail!("the new customer did not reach the portal within 20 s");
    }
    let portal_ms = t.elapsed().as_secs_f64() * 1e3;
    let id = api.device_id(&customer.mac);
    new_session(&api, id, TIME, 600, 0.0, 0, 0);
    let t = Instant::now();
    connect(&api, id);
    let online = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        echo(&customer.ns, servers.udp4.addr, b"online")
    });
    if online.is_none() {
        stop.store(true, Ordering::Relaxed);
        bail!("the new customer was not online within 20 s of paying");
    }
    let online_ms = t.elapsed().as_secs_f64() * 1e3;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(1));
        table_max = table_max.max(table_clients(&agent));
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = flooder {
        f.join()
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?;
    }
    let results = probe.results();
    drop(probe);
    let lost = results.iter().filter(|r| !r.ok).count();
    let rss_after = rss_kib(&agent);
    Ok(Outcome {
        portal_ms,
        online_ms,
        payer_lost: lost as f64,
        table_max,
        rss_growth_mib: (rss_after as f64 - rss_before as f64) / 1024.0,
        frames: sent.load(Ordering::Relaxed) as f64,
    })
}

pub fn run(opts: &Opts) -> Result<(Vec<Measurement>, Vec<String>)> {
    let cases = [Case::Quiet, Case::Flood, Case::Unthrottled];
    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(); cases.len()];
    for r in 0..opts.runs {
        for (i, &case) in cases.iter().enumerate() {
            progress(
                SCENARIO,
                format!("run {}/{}: {}", r + 1, opts.runs, case.name()),
            );
            let o = one(case, opts).with_context(|| case.name())?;
            progress(
                SCENARIO,
                format!(
                    "{:.0} frames; portal after {:.1} ms, online {:.1} ms after paying; table up to {:.0}; {} probes lost; RSS {:+.1} MiB",
                    o.frames, o.portal_ms, o.online_ms, o.table_max, o.payer_lost, o.rss_growth_mib
                ),
            );
            outcomes[i].push(o);
        }
    }
    let mut out = Vec::new();
    let col = |v: &[Outcome], f: fn(&Outcome) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    let quiet = &outcomes[0];
    for (case, v) in cases.iter().zip(&outcomes) {
        for (metric, unit, f) in [
            (
                "portal_ms",
                "ms",
                (|o: &Outcome| o.portal_ms) as fn(&Outcome) -> f64,
            ),
            ("online_ms", "ms", |o| o.online_ms),
            ("payer_lost_probes", "probes", |o| o.payer_lost),
            ("table_clients_max", "clients", |o| o.table_max),
            ("agent_rss_growth_mib", "MiB", |o| o.rss_growth_mib),
            ("frames", "frames", |o| o.frames),
        ] {
            let mut m = Measurement::new(SCENARIO, case.name(), 3, metric, unit, col(v, f));
            if *case != Case::Quiet && matches!(metric, "portal_ms" | "online_ms") {
                // Same-run ratio: this run's flood against this run's quiet.
                let ratios: Vec<f64> = v
                    .iter()
                    .zip(quiet)
                    .map(|(a, b)| f(a) / f(b).max(1e-3))
                    .collect();
                m.baseline = Some(super::median(&col(quiet, f)));
                m.ratio_median = Some(super::median(&ratios));
            }
            out.push(m);
        }
    }
    let secs = if opts.quick { "10 s (quick)" } else { "30 s" };
    let notes = vec![format!(
        "One client sends UDP frames from {MACS} random source MACs through the gateway for {secs}, as fast as one sender goes; another client pays and probes the server every 50 ms (a probe is lost if its echo is not back within 200 ms). A new customer arrives into the flood (20 s in; 5 s with --quick): portal_ms is from its first try until the gateway's DNS port (its garden) answers, online_ms from paying (connect) until the server answers. `quiet` is the same without the flood, in the same run; the floods' ratios are to it. `flood` runs the agent as configured by default (new MACs take slots at 500 a second per LAN), `flood_unthrottled` with `--new-clients-per-sec 0`, so that the table fills and the agent reclaims unpaid clients under pressure. table_clients_max is the largest `session_agent_clients` seen (the table holds 65,536)."
    )];
    Ok((out, notes))
}
