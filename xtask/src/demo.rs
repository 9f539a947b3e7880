//! `cargo xtask demo`: a small hotspot in network namespaces (gateway, access
//! point, four clients, upstream server) metered by session-agent, with a
//! live per-client table. Three clients' sessions are sold through the control
//! API; the fourth reaches a payment page by name through the walled garden,
//! then buys a voucher code and redeems it on the built-in portal page, as a
//! customer's phone does. Everything is removed on exit or Ctrl-C.

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

use anyhow::{bail, Context, Result};
use serde_json::json;
use session_tests::{
    agent::AgentBuilder,
    dns::{resolve, Dnsmasq, QueryType},
    netns::in_netns,
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
    /// Bought as a voucher code, redeemed on the portal page.
    voucher: bool,
}

/// The payment page's host, in the walled garden by name (`--walled-garden-domain`).
const PAY_HOST: &str = "pay.demo";

/// Where the portal page and the RFC 8908 API listen, on the gateway's LAN address.
const PORTAL_PORT: u16 = 8908;

const PLANS: [Plan; 4] = [
    Plan {
        name: "phone",
        session_type: 0,
        time_secs: 20,
        data_mb: 0.0,
        down_mbits: 10,
        up_mbits: 5,
        voucher: false,
    },
    Plan {
        name: "laptop",
        session_type: 1,
        time_secs: 0,
        data_mb: 25.0,
        down_mbits: 20,
        up_mbits: 10,
        voucher: false,
    },
    Plan {
        name: "tablet",
        session_type: 2,
        time_secs: 60,
        data_mb: 12.0,
        down_mbits: 5,
        up_mbits: 2,
        voucher: false,
    },
    Plan {
        name: "visitor",
        session_type: 0,
        time_secs: 45,
        data_mb: 0.0,
        down_mbits: 8,
        up_mbits: 4,
        voucher: true,
    },
];

/// A form post from the client's namespace, as a browser without JavaScript
/// sends it; returns the status line and the `Location` header.
fn post_form(
    ns: &str,
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
) -> Result<(String, String)> {
    request(
        ns,
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// One HTTP request from the client's namespace; the status line and the `Location` header.
fn request(ns: &str, addr: std::net::SocketAddr, req: &str) -> Result<(String, String)> {
    use std::io::Read;
    let mut s = in_netns(ns, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.lines().next().unwrap_or("").to_string();
    let location = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap_or("")
        .to_string();
    Ok((status, location))
}

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
    println!("==> creating the hotspot: gateway, access point, 4 clients, upstream server");
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
    // The LAN's resolver on the gateway, which also knows the payment page's host.
    let _dns = Dnsmasq::start(
        &hs.gw_ns,
        &[hs.gw_lan_v4.into(), hs.gw_lan_v6.into()],
        &[
            format!("--host-record={PAY_HOST},{},{}", hs.server_v4, hs.server_v6),
            "--local-ttl=60".into(),
        ],
    );
    let portal = std::net::SocketAddr::from((hs.gw_lan_addr(false), PORTAL_PORT));
    let mut agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(portal.to_string())
        .arg("--portal-redirect")
        .arg("--walled-garden-domain")
        .arg(format!("{PAY_HOST}:5001"))
        .start();
    let api = agent.api();
    println!("==> selling sessions through the control API");
    let mut devices = Vec::new();
    for (c, p) in hs.clients.iter().zip(PLANS.iter()) {
        let id = api.device_id(&c.mac);
        if p.voucher {
            devices.push(id);
            continue;
        }
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

    let (c, p) = hs
        .clients
        .iter()
        .zip(PLANS.iter())
        .find(|(_, p)| p.voucher)
        .context("no voucher plan")?;
    println!("==> printing a roll of voucher codes (POST /v1/vouchers)");
    let roll = api
        .post(
            "/v1/vouchers",
            &json!({"count": 3, "batch": "demo roll", "price": "10 PHP", "type": p.session_type,
                    "time_secs": p.time_secs, "down_mbits": p.down_mbits, "up_mbits": p.up_mbits}),
        )
        .ok("voucher batch");
    let codes: Vec<&str> = roll
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v["display_code"].as_str())
                .collect()
        })
        .unwrap_or_default();
    println!("    {}  ({}, 10 PHP each)", codes.join("  "), describe(p));
    let code = codes.first().context("the batch has no codes")?;
    // Before paying, any http:// address lands on the portal (--portal-redirect).
    let probe = std::net::SocketAddr::from((hs.server_addr(false), 80));
    let (status, location) = request(
        &c.ns,
        probe,
        "GET /generate_204 HTTP/1.1\r\nHost: connectivitycheck.test\r\nConnection: close\r\n\r\n",
    )?;
    println!(
        "==> the {} opens http://connectivitycheck.test/generate_204 ({probe}) before paying",
        p.name
    );
    println!("    {status} -> {location}");
    if !location.starts_with(&format!("http://{portal}/portal?")) {
        bail!(
            "the client was not sent to the portal: {status} {location}\n{}",
            agent.log_tail()
        );
    }
    // A payment provider by name (--walled-garden-domain): reachable before paying.
    let dns = std::net::SocketAddr::from((hs.gw_lan_addr(false), 53));
    let answer = resolve(&c.ns, dns, PAY_HOST, QueryType::A)
        .with_context(|| format!("looking up {PAY_HOST} at {dns}"))?;
    let pay = *answer
        .addrs
        .first()
        .with_context(|| format!("{PAY_HOST} has no address"))?;
    let t = TcpTransfer::run_timeout(
        &c.ns,
        std::net::SocketAddr::new(pay, 5001),
        100,
        10_000,
        Duration::from_secs(3),
    )
    .with_context(|| {
        format!(
            "{PAY_HOST} ({pay}:5001) is not reachable before paying\n{}",
            agent.log_tail()
        )
    })?;
    println!(
        "==> the {} looks up {PAY_HOST} (a garden name) before paying: {pay}, port 5001 answers ({} bytes)",
        p.name, t.received
    );
    println!(
        "==> the {} redeems {code} on the portal page http://{portal}/portal from its own namespace",
        p.name
    );
    let (status, location) = post_form(&c.ns, portal, "/portal/redeem", &format!("code={code}"))?;
    println!("    POST /portal/redeem: {status} -> {location}");
    if !location.contains("done=redeemed") {
        bail!(
            "the portal did not take the code: {status} {location}\n{}",
            agent.log_tail()
        );
    }
    println!("    {:<7} {}  {}", p.name, c.mac, describe(p));

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
