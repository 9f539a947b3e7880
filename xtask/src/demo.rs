//! `cargo xtask demo`: a small hotspot in network namespaces (gateway, access
//! point, three clients, upstream server) metered by session-agent, with a
//! live per-client table. Everything is removed on exit or Ctrl-C.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use session_tests::{
    agent::AgentBuilder,
    topo::Hotspot,
    traffic::{ServerSet, TcpTransfer},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// One demo client: the session it buys and the traffic it makes.
struct Plan {
    name: &'static str,
    /// Session type (Flarehotspot SDK): 0 time, 1 data, 2 time_or_data.
    session_type: u8,
    time_secs: u64,
    data_mb: f64,
    down_mbits: i32,
    up_mbits: i32,
}

const PLANS: [Plan; 3] = [
    Plan {
        name: "phone",
        session_type: 0,
        time_secs: 20,
        data_mb: 0.0,
        down_mbits: 10,
        up_mbits: 5,
    },
    Plan {
        name: "laptop",
        session_type: 1,
        time_secs: 0,
        data_mb: 25.0,
        down_mbits: 20,
        up_mbits: 10,
    },
    Plan {
        name: "tablet",
        session_type: 2,
        time_secs: 60,
        data_mb: 12.0,
        down_mbits: 5,
        up_mbits: 2,
    },
];

fn describe(p: &Plan) -> String {
    let what = match p.session_type {
        0 => format!("{} s", p.time_secs),
        1 => format!("{} MB", p.data_mb),
        _ => format!("{} s or {} MB", p.time_secs, p.data_mb),
    };
    format!("{what} @ {}/{} Mbit/s", p.down_mbits, p.up_mbits)
}

pub fn run(agent_bin: &Path, seconds: u64) -> Result<()> {
    // The harness starts the agent from this path.
    std::env::set_var("SESSION_AGENT_BIN", agent_bin);
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    println!("==> creating the hotspot: gateway, access point, 3 clients, upstream server");
    let hs = Hotspot::builder().clients(PLANS.len()).build();
    let servers = Arc::new(ServerSet::start(
        &hs.server_ns,
        hs.server_v4,
        hs.server_v6,
        5001,
        5002,
    ));
    println!(
        "==> starting session-agent on {} in {}",
        hs.lan_if, hs.gw_ns
    );
    let mut agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    println!("==> selling sessions through the control API");
    let mut devices = Vec::new();
    for (c, p) in hs.clients.iter().zip(PLANS.iter()) {
        let id = api.device_id(&c.mac);
        api.create_session(
            id,
            p.session_type,
            p.time_secs,
            p.data_mb,
            None,
            p.down_mbits,
            p.up_mbits,
            false,
        );
        api.connect(id, &format!("Welcome, {}!", p.name))
            .ok("connect");
        println!("    {:<7} {}  {}", p.name, c.mac, describe(p));
        devices.push(id);
    }

    // Every client downloads (and the phone also uploads) until it is cut off.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (i, c) in hs.clients.iter().enumerate() {
        let (ns, dst, stop) = (c.ns.clone(), servers.tcp(i % 2 == 1).addr, stop.clone());
        let up = if i == 0 { 256 * 1024 } else { 16 * 1024 };
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if TcpTransfer::run_timeout(
                    &ns,
                    dst,
                    up,
                    2 * 1024 * 1024,
                    Duration::from_millis(500),
                )
                .is_err()
                {
                    thread::sleep(Duration::from_millis(300));
                }
            }
        }));
    }

    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    let mut last_t = Instant::now();
    let mut cut: Vec<Option<f64>> = vec![None; PLANS.len()];
    while !STOP.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(seconds) {
        thread::sleep(Duration::from_secs(1));
        let rows = agent.clients();
        let dt = last_t.elapsed().as_secs_f64();
        last_t = Instant::now();
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&format!(
            "session-agent demo: {} on {} ({:>3.0}s of {seconds}s, Ctrl-C to stop)\n\n",
            hs.lan_if,
            hs.gw_ns,
            start.elapsed().as_secs_f64()
        ));
        out.push_str(&format!(
            "{:<7} {:<17} {:<28} {:<10} {:>11} {:>9} {:>9} {:>9}\n",
            "CLIENT", "MAC", "SESSION", "STATE", "REMAINING", "USED MB", "DOWN Mb/s", "UP Mb/s"
        ));
        for (i, (c, p)) in hs.clients.iter().zip(PLANS.iter()).enumerate() {
            let connected = api.get(&format!("/v1/devices/{}", devices[i])).ok("device")
                ["connected"]
                .as_bool()
                .unwrap_or(false);
            let sessions = api.sessions(devices[i]);
            let s = &sessions[0];
            let remaining = match p.session_type {
                0 => format!("{} s", s["remaining_time"]),
                1 => format!("{:.2} MB", s["remaining_data"].as_f64().unwrap_or(0.0)),
                _ => format!(
                    "{}s/{:.1}MB",
                    s["remaining_time"],
                    s["remaining_data"].as_f64().unwrap_or(0.0)
                ),
            };
            if !connected && cut[i].is_none() {
                cut[i] = Some(start.elapsed().as_secs_f64());
            }
            let state = match cut[i] {
                Some(t) => format!("cut {t:.0}s"),
                None => "online".to_string(),
            };
            let r = rows.iter().find(|r| r.mac == c.mac);
            let (up, down) = r.map(|r| (r.up_bytes, r.down_bytes)).unwrap_or((0, 0));
            let (pu, pd) = last.insert(c.mac.clone(), (up, down)).unwrap_or((up, down));
            let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 * 8.0 / 1e6 / dt;
            out.push_str(&format!(
                "{:<7} {:<17} {:<28} {:<10} {:>11} {:>9.2} {:>9.2} {:>9.2}\n",
                p.name,
                c.mac,
                describe(p),
                state,
                remaining,
                (up + down) as f64 / 1e6,
                rate(down, pd),
                rate(up, pu)
            ));
        }
        if !tty {
            out.push('\n');
        }
        print!("{out}");
        std::io::stdout().flush().ok();
    }
    println!("==> stopping traffic and the agent, removing the namespaces");
    stop.store(true, Ordering::Relaxed);
    // A transfer of a client that was cut off waits for its timeout: do not wait for it.
    drop(workers);
    agent.terminate();
    drop(servers);
    drop(hs);
    println!("==> done");
    Ok(())
}
