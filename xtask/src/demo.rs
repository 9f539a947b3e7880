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
    traffic::{ServerSet, TcpTransfer, UdpTransfer},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(agent_bin: &Path, seconds: u64) -> Result<()> {
    // The harness starts the agent from this path.
    std::env::set_var("SESSION_AGENT_BIN", agent_bin);
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    println!("==> creating the hotspot: gateway, access point, 3 clients, upstream server");
    let hs = Hotspot::builder().clients(3).build();
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
    let names = [
        "phone (allowed, TCP download)",
        "laptop (allowed, UDP both ways)",
        "tablet (allowed half-way)",
    ];
    agent.allow(&hs.clients[0].mac);
    agent.allow(&hs.clients[1].mac);

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    {
        let (ns, dst, stop) = (
            hs.clients[0].ns.clone(),
            servers.tcp(false).addr,
            stop.clone(),
        );
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = TcpTransfer::run(&ns, dst, 32 * 1024, 4 * 1024 * 1024);
                thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    {
        let (ns, dst, stop) = (
            hs.clients[1].ns.clone(),
            servers.udp(true).addr,
            stop.clone(),
        );
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = UdpTransfer::run(&ns, dst, 200, 1200, 200, 1200);
                thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    {
        let (ns, dst, stop) = (
            hs.clients[2].ns.clone(),
            servers.tcp(false).addr,
            stop.clone(),
        );
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Refused at the gateway until the tablet is allowed.
                let _ = TcpTransfer::run_timeout(&ns, dst, 1024, 1024, Duration::from_millis(500));
                thread::sleep(Duration::from_millis(300));
            }
        }));
    }

    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    let mut last_t = Instant::now();
    let mut allowed_tablet = false;
    while !STOP.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(seconds) {
        thread::sleep(Duration::from_secs(1));
        if !allowed_tablet && start.elapsed() > Duration::from_secs(seconds / 2) {
            agent.allow(&hs.clients[2].mac);
            allowed_tablet = true;
        }
        let rows = agent.clients();
        let dt = last_t.elapsed().as_secs_f64();
        last_t = Instant::now();
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&format!(
            "session-agent demo: {} on {} ({:>3.0}s of {seconds}s, Ctrl-C to stop){}\n\n",
            hs.lan_if,
            hs.gw_ns,
            start.elapsed().as_secs_f64(),
            if allowed_tablet {
                "; the tablet was allowed half-way"
            } else {
                ""
            }
        ));
        out.push_str(&format!(
            "{:<32} {:<17} {:<7} {:>10} {:>10} {:>9} {:>9} {:>8} {:>8}\n",
            "CLIENT",
            "MAC",
            "ALLOWED",
            "UP MB",
            "DOWN MB",
            "UP Mb/s",
            "DOWN Mb/s",
            "GARDEN",
            "BLOCKED"
        ));
        for (i, c) in hs.clients.iter().enumerate() {
            let Some(r) = rows.iter().find(|r| r.mac == c.mac) else {
                continue;
            };
            let (pu, pd) = last
                .insert(c.mac.clone(), (r.up_bytes, r.down_bytes))
                .unwrap_or((r.up_bytes, r.down_bytes));
            let rate = |now: u64, before: u64| (now.saturating_sub(before)) as f64 * 8.0 / 1e6 / dt;
            out.push_str(&format!(
                "{:<32} {:<17} {:<7} {:>10.3} {:>10.3} {:>9.2} {:>9.2} {:>8} {:>8}\n",
                names[i],
                r.mac,
                if r.allowed { "yes" } else { "no" },
                r.up_bytes as f64 / 1e6,
                r.down_bytes as f64 / 1e6,
                rate(r.up_bytes, pu),
                rate(r.down_bytes, pd),
                r.garden_packets,
                r.blocked_packets
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
    for w in workers {
        let _ = w.join();
    }
    agent.terminate();
    drop(servers);
    drop(hs);
    println!("==> done");
    Ok(())
}
