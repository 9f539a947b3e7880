//! The agent as the packaged systemd service runs it: notifications over
//! `$NOTIFY_SOCKET` (`READY=1` once serving, `WATCHDOG=1` from the poll loop,
//! `STOPPING=1` on SIGTERM), and only the unit's capabilities.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use serde_json::json;
use session_tests::agent::SERVICE_CAPS;
use session_tests::{require_root, AgentBuilder, Hotspot, TcpServer, TcpTransfer};

/// Datagrams received within `for_`, or until one contains `until`.
fn messages(sock: &UnixDatagram, for_: Duration, until: Option<&str>) -> Vec<String> {
    let end = Instant::now() + for_;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = until.is_some_and(|u| m.contains(u));
                out.push(m);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

#[test]
fn the_service_manager_hears_ready_then_watchdog_pings_then_stopping() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let path = hs.state_dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut agent = AgentBuilder::new(&hs)
        .env("NOTIFY_SOCKET", path.display().to_string())
        .env("WATCHDOG_USEC", "1000000")
        .arg("--poll-ms")
        .arg("100")
        .start();
    let got = messages(&sock, Duration::from_millis(2600), None);
    let ready = got
        .iter()
        .position(|m| m.contains("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 in {got:?}"));
    assert!(
        got[ready].contains(&format!("STATUS=serving 1 LAN(s): {}", hs.lan_if)),
        "{got:?}"
    );
    // Every half second of the one-second watchdog interval.
    let pings = got.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
    assert!((4..=7).contains(&pings), "{pings} pings in 2.6 s: {got:?}");

    // A stopped process stops pinging: the service manager would restart it.
    let pid = agent.pid().unwrap() as i32;
    // SAFETY: kill has no memory effects; the pid is the agent's.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let silent = messages(&sock, Duration::from_millis(1500), None);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(
        silent.is_empty(),
        "pings from a stopped process: {silent:?}"
    );
    let again = messages(&sock, Duration::from_millis(1500), Some("WATCHDOG=1"));
    assert!(
        again.iter().any(|m| m == "WATCHDOG=1"),
        "no pings after SIGCONT: {again:?}"
    );

    let status = agent.terminate();
    assert!(status.success(), "{status}");
    let bye = messages(&sock, Duration::from_secs(2), Some("STOPPING=1"));
    assert!(bye.iter().any(|m| m.contains("STOPPING=1")), "{bye:?}");
}

/// The capabilities in /proc/PID/status `CapEff`, as names.
fn effective_caps(pid: u32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    let out = std::process::Command::new("capsh")
        .arg(format!("--decode={hex}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let list = text.split('=').nth(1).unwrap_or("").trim();
    let mut v: Vec<String> = list
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_start_matches("cap_").to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn the_agent_serves_with_only_the_capabilities_of_its_unit() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs)
        .service_caps()
        .arg("--shaper")
        .arg("htb")
        .start();
    let mut want: Vec<String> = SERVICE_CAPS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(effective_caps(agent.pid().unwrap()), want);

    let api = agent.api();
    let client = hs.client(0).clone();
    let server = TcpServer::start(&hs.server_ns, hs.server_sock(false, 5001));
    assert!(TcpTransfer::run_timeout(
        &client.ns,
        server.addr,
        100,
        1000,
        Duration::from_millis(700)
    )
    .is_err());
    let code = api
        .post("/v1/vouchers", &json!({"count": 1, "batch": "caps", "type": 1, "data_mb": 5.0, "down_mbits": 20, "up_mbits": 20}))
        .ok("voucher")[0]["code"]
        .as_str()
        .unwrap()
        .to_string();
    let dev = api.device_id(&client.mac);
    api.post(
        &format!("/v1/devices/{dev}/redeem"),
        &json!({ "code": code }),
    )
    .ok("redeem");
    let t = TcpTransfer::run(&client.ns, server.addr, 100_000, 1_000_000)
        .expect("online after redeeming");
    assert_eq!(t.received, 1_000_000);
    // The agent's view of the client, read over the pins it made.
    let row = agent.client_or_zero(&client.mac);
    assert!(row.down_bytes >= 1_000_000, "{row:?}");
}
