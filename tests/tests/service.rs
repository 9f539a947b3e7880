//! The agent as the packaged systemd service runs it: notifications over
//! `$NOTIFY_SOCKET` (`READY=1` once serving, `WATCHDOG=1` from the poll loop,
//! `STOPPING=1` on SIGTERM), and only the unit's capabilities; a listener that
//! cannot be bound, or fails later, and a capability the agent lacks end it
//! with an error (never `READY=1`, never a successful exit).

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use serde_json::json;
use session_tests::agent::SERVICE_CAPS;
use session_tests::{
    in_netns, ns_command, require_root, AgentBuilder, Hotspot, TcpServer, TcpTransfer,
};

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
    let pings = got.iter().filter(|m| m.trim_end() == "WATCHDOG=1").count();
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
        again.iter().any(|m| m.trim_end() == "WATCHDOG=1"),
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

/// The notification socket of a hotspot's agents, as systemd would offer it.
fn notify_socket(hs: &Hotspot) -> (UnixDatagram, String) {
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let path = hs.state_dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    (
        UnixDatagram::bind(&path).unwrap(),
        path.display().to_string(),
    )
}

/// The lines of `log` that name `addr`.
fn naming<'a>(log: &'a str, addr: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(addr)).collect()
}

/// Panics if a line of `log` holds a Debug-formatted error.
fn assert_no_debug_error(log: &str) {
    for l in log.lines() {
        for debug in ["Io {", "Os {", "kind:", "Custom {", "Ok(Err", "AddrInUse"] {
            assert!(!l.contains(debug), "a Debug-formatted error: {l}\n{log}");
        }
    }
}

/// The one line that says why the agent ended: it names `addr` and `setting`.
fn assert_one_line_naming(log: &str, addr: &str, setting: &str) {
    let lines = naming(log, addr);
    assert_eq!(lines.len(), 1, "not one line naming {addr}:\n{log}");
    assert!(
        lines[0].starts_with("session-agent: ") && lines[0].contains(setting),
        "the line naming {addr} is not the error naming {setting}: {}\n{log}",
        lines[0]
    );
    assert_no_debug_error(log);
}

#[test]
fn an_agent_whose_listener_address_is_taken_never_says_ready_and_exits_naming_the_address() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let (sock, path) = notify_socket(&hs);
    let captive = SocketAddr::from((hs.gw_lan_addr(false), 8908));
    let api_tcp = SocketAddr::from((hs.gw_lan_addr(false), 8909));
    let redirect: SocketAddr = "127.0.0.1:3990".parse().unwrap();
    // Another program holds the addresses.
    let _taken: Vec<TcpListener> = in_netns(&hs.gw_ns, || {
        [captive, api_tcp, redirect]
            .iter()
            .map(|a| TcpListener::bind(a).unwrap())
            .collect()
    });
    let (captive_s, api_tcp_s) = (captive.to_string(), api_tcp.to_string());
    let cases: [(Vec<&str>, SocketAddr, &str); 3] = [
        (
            vec!["--captive-listen", &captive_s],
            captive,
            "--captive-listen",
        ),
        (
            vec![
                "--api-tcp",
                &api_tcp_s,
                "--api-token",
                "a-token-of-the-test",
            ],
            api_tcp,
            "--api-tcp",
        ),
        (
            vec![
                "--portal-redirect",
                "--portal-url",
                "http://portal.example/",
            ],
            redirect,
            "--redirect-port",
        ),
    ];
    for (args, addr, setting) in cases {
        // The listener's error once raced the readiness wait: several starts.
        for _ in 0..3 {
            let mut b = AgentBuilder::new(&hs).env("NOTIFY_SOCKET", &path);
            for a in &args {
                b = b.arg(*a);
            }
            let out = b.run_to_exit(Duration::from_secs(30));
            let heard = messages(&sock, Duration::from_millis(200), None);
            assert!(
                !heard.iter().any(|m| m.contains("READY=1")) && !out.stdout.contains("READY"),
                "READY with {addr} taken: {heard:?}\n{}",
                out.stderr
            );
            assert!(
                !out.status.success(),
                "exit {} with {addr} taken:\n{}",
                out.status,
                out.stderr
            );
            assert_one_line_naming(&out.stderr, &addr.to_string(), setting);
            assert!(out.stderr.contains("in use"), "{}", out.stderr);
        }
    }
}

#[test]
fn a_listener_shut_down_after_ready_ends_the_agent_with_an_error() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let (sock, path) = notify_socket(&hs);
    let captive = SocketAddr::from((hs.gw_lan_addr(false), 8908)).to_string();
    let cases: [(Vec<&str>, String, &str); 2] = [
        (
            vec!["--captive-listen", &captive],
            captive.clone(),
            "the captive-portal API",
        ),
        (
            vec![
                "--portal-redirect",
                "--portal-url",
                "http://portal.example/",
                "--redirect-port",
                "3991",
            ],
            // It listens on 127.0.0.1 and ::1; `ss -K` destroys both, and the
            // error names the one the agent heard of first.
            ":3991".into(),
            "the portal redirect",
        ),
    ];
    for (args, addr, what) in cases {
        let mut b = AgentBuilder::new(&hs).env("NOTIFY_SOCKET", &path);
        for a in &args {
            b = b.arg(*a);
        }
        let mut agent = b.start();
        let heard = messages(&sock, Duration::from_secs(5), Some("READY=1"));
        assert!(heard.iter().any(|m| m.contains("READY=1")), "{heard:?}");
        // The listening socket destroyed from outside (SOCK_DESTROY).
        let port = addr.rsplit(':').next().unwrap();
        let ss = ns_command(&hs.gw_ns, "ss")
            .args(["-K", "-ltn", &format!("sport = :{port}")])
            .output()
            .unwrap();
        assert!(ss.status.success(), "ss -K: {ss:?}");
        let status = agent.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
            panic!(
                "still running with {what}'s listener on {addr} gone:\n{}",
                agent.log_tail()
            )
        });
        assert!(!status.success(), "exit {status}:\n{}", agent.log());
        let log = agent.log();
        let lines = naming(&log, &addr);
        let errors: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("session-agent: "))
            .collect();
        assert_eq!(errors.len(), 1, "not one error naming {addr}:\n{log}");
        assert!(
            errors[0].contains(what) && errors[0].contains("stopped listening"),
            "{}",
            errors[0]
        );
        assert_no_debug_error(&log);
        let bye = messages(&sock, Duration::from_secs(2), Some("STOPPING=1"));
        assert!(bye.iter().any(|m| m.contains("STOPPING=1")), "{bye:?}");
    }
}

/// Every `CAP_...` word of `line`.
fn caps_named(line: &str) -> Vec<&str> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("CAP_"))
        .collect()
}

#[test]
fn each_capability_the_agent_lacks_is_named_by_its_own_name() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let portal = SocketAddr::from((hs.gw_lan_addr(false), 80)).to_string();
    // The capability dropped, what needs it, and the address the error names.
    let cases: [(&str, Vec<&str>, &str, Option<&str>); 5] = [
        (
            "net_bind_service",
            vec!["--captive-listen", &portal],
            "CAP_NET_BIND_SERVICE",
            Some(&portal),
        ),
        ("bpf", vec![], "CAP_BPF", None),
        ("perfmon", vec![], "CAP_PERFMON", None),
        ("net_admin", vec![], "CAP_NET_ADMIN", None),
        (
            "net_raw",
            vec!["--walled-garden-domain", "pay.example.com"],
            "CAP_NET_RAW",
            None,
        ),
    ];
    for (drop, args, cap, addr) in cases {
        let mut b = AgentBuilder::new(&hs).service_caps_without(drop);
        for a in &args {
            b = b.arg(*a);
        }
        let out = b.run_to_exit(Duration::from_secs(30));
        assert!(!out.status.success(), "without {cap}: {}", out.stderr);
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("session-agent: "))
            .collect();
        assert_eq!(errors.len(), 1, "{}", out.stderr);
        let named = caps_named(errors[0]);
        assert!(
            !named.is_empty() && named.iter().all(|c| *c == cap),
            "without {cap}, the error names {named:?}: {}",
            errors[0]
        );
        if let Some(addr) = addr {
            assert!(errors[0].contains(addr), "{}", errors[0]);
        }
        assert_no_debug_error(&out.stderr);
    }
}
