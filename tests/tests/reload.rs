//! SIGHUP (`systemctl reload`): the agent reads its configuration file again and
//! applies what can change at run time (walled garden, global speeds, metrics
//! options, ...) without detaching or losing a counter or a session; settings only
//! a restart applies are named in a log line and left as they were; a file that
//! does not check changes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use session_tests::agent::cli_root;
use session_tests::sessions::{iperf, IperfServer};
use session_tests::{require_root, Agent, AgentBuilder, Hotspot, TcpServer, TcpTransfer};

fn hup(agent: &Agent) {
    // SAFETY: kill has no memory effects; the pid is the agent's.
    unsafe { libc::kill(agent.pid().unwrap() as i32, libc::SIGHUP) };
}

/// Waits until the agent's log holds `needle` `n` times.
fn wait_log(agent: &Agent, needle: &str, n: usize) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.log();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(
            Instant::now() < end,
            "no {needle:?} (x{n}) in the log:\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_reload_applies_the_garden_and_speeds_keeps_the_counters_and_names_what_needs_a_restart() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let cfg = hs.state_dir.join("config.toml");
    write(&cfg, "global_down_mbits = 20\nglobal_up_mbits = 20\n");
    let agent = AgentBuilder::new(&hs)
        .arg("--config")
        .arg(cfg.display().to_string())
        .start();
    let api = agent.api();
    let (paying, other) = (hs.client(0).clone(), hs.client(1).clone());
    let garden_srv = TcpServer::start(&hs.server_ns, hs.server_sock(false, 5002));
    let iperf_srv = IperfServer::start(&hs.server_ns, hs.server_sock(false, 5201));
    let reach = |ns: &str| {
        TcpTransfer::run_timeout(ns, garden_srv.addr, 100, 1000, Duration::from_millis(700)).is_ok()
    };
    assert!(
        !reach(&other.ns),
        "the server is in the garden before the reload"
    );

    let dev = api.device_id(&paying.mac);
    let s = api.create_session(dev, 0, 600, 0.0, None, 0, 0, true);
    api.connect(dev, "").ok("connect");
    let before = iperf(&paying.ns, iperf_srv.addr, 2, 1, true);
    assert!(before.recv_mbits > 15.0, "{before:?}");
    let counted = agent.client_or_zero(&paying.mac);
    let sid = s["id"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let used = api.session(sid)["time_cons"].as_u64().unwrap();

    // The server joins the garden, the global speed drops to 5 Mbit/s, and the
    // shaper changes (only a restart applies that).
    write(
        &cfg,
        &format!(
            "global_down_mbits = 5\nglobal_up_mbits = 5\nshaper = \"htb\"\nlog_level = \"warn\"\nwalled_garden = [\"{}/32:5002\"]\n[api]\nmetrics_top_clients = 1\n[admin]\nadmin_plain_http = true\n",
            hs.server_addr(false)
        ),
    );
    hup(&agent);
    let log = wait_log(&agent, "configuration reloaded", 1);
    assert!(
        log.contains("only a restart applies them")
            && log.contains("shaper")
            && log.contains("admin.*"),
        "{log}"
    );
    assert!(reach(&other.ns), "the reloaded garden entry does not pass");
    // 3 s after a 1 s warm-up: the token bucket (250 ms deep) may add a
    // twelfth over the rate when TCP idles and it refills, plus noise. The
    // bounds tell which limit is in force (20, 5 or 50 Mbit/s); how close TCP
    // comes to it is the shaping tests' and the benchmark's to judge, and a
    // loaded machine's TCP may stay a tenth or more under it.
    let after = iperf(&paying.ns, iperf_srv.addr, 3, 1, true);
    eprintln!(
        "RELOAD global speed 20 -> 5 Mbit/s: {:.3} -> {:.3} Mbit/s",
        before.recv_mbits, after.recv_mbits
    );
    assert!((3.5..=5.7).contains(&after.recv_mbits), "{after:?}");
    // Nothing was lost: the counters go on from where they were, the session too.
    let now = agent.client_or_zero(&paying.mac);
    assert!(
        now.down_bytes > counted.down_bytes,
        "{counted:?} -> {now:?}"
    );
    assert!(api.session(sid)["time_cons"].as_u64().unwrap() >= used);
    assert!(
        api.get(&format!("/v1/devices/{dev}/connected")).ok("c")["connected"]
            .as_bool()
            .unwrap()
    );
    assert_eq!(
        agent.log().matches("datapath attached").count(),
        1,
        "re-attached on reload"
    );
    // log_level = "warn": a new device's info line is no longer written.
    api.post(
        "/v1/devices",
        &serde_json::json!({"mac": "02:00:00:00:77:77"}),
    )
    .ok("device after the reload");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !agent.log().contains("02:00:00:00:77:77"),
        "info lines after log_level = warn"
    );
    let metrics = api.get("/metrics").ok("metrics");
    let listed = metrics
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("session_agent_client_allowed{"))
        .count();
    assert_eq!(listed, 1, "metrics_top_clients = 1 not applied");

    // A file that does not check changes nothing.
    write(&cfg, "poll_ms = 5\nglobal_down_mbits = 50\n");
    hup(&agent);
    let log = wait_log(
        &agent,
        "the configuration was not reloaded, nothing changed",
        1,
    );
    assert!(log.contains("poll_ms"), "{log}");
    assert!(reach(&other.ns), "the garden changed with a refused file");
    let still = iperf(&paying.ns, iperf_srv.addr, 3, 1, true);
    assert!(
        (3.5..=5.7).contains(&still.recv_mbits),
        "speed changed with a refused file: {still:?}"
    );
}

/// A file with a mistake is refused at its line and column, naming the key, what
/// is wrong and what the key allows: `check-config` prints the line, and a reload
/// logs the same line and keeps the configuration the agent runs with.
#[test]
fn a_bad_file_is_refused_at_its_line_alike_by_check_config_and_by_a_reload_which_keeps_the_old_one()
{
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let cfg = hs.state_dir.join("config.toml");
    let garden = format!("walled_garden = [\"{}/32:5002\"]\n", hs.server_addr(false));
    write(&cfg, &garden);
    let agent = AgentBuilder::new(&hs)
        .arg("--config")
        .arg(cfg.display().to_string())
        .start();
    let srv = TcpServer::start(&hs.server_ns, hs.server_sock(false, 5002));
    let reach = || {
        TcpTransfer::run_timeout(
            &hs.client(0).ns,
            srv.addr,
            100,
            1000,
            Duration::from_millis(700),
        )
        .is_ok()
    };
    assert!(reach(), "the garden of the first file does not pass");
    let at = cfg.display();
    // Each file leaves the server out of the garden: applied, it would cut it off.
    let bad = [
        (
            "global_down_mbits = 20\npoll_ms = 5\n",
            format!("{at}:2:11: poll_ms: 5 is out of range, allowed 10..=10000"),
        ),
        (
            "[api]\nsokcet = \"/run/x.sock\"\n",
            format!("{at}:2:1: api.sokcet: unknown field `sokcet`, expected one of `socket`, `tcp`, `token`, `token_file`, `api_tls`, `metrics_top_clients`"),
        ),
        (
            "# speeds\nburst_ms = 25O\n",
            format!("{at}:2:14: burst_ms: cannot read `25O` (expected newline, `#`); allowed: a whole number in 1..=10000"),
        ),
        (
            "[radius]\nretries = \"two\"\n",
            format!("{at}:2:11: radius.retries: invalid type: string \"two\", expected a whole number in 0..=10"),
        ),
    ];
    for (n, (text, line)) in bad.iter().enumerate() {
        write(&cfg, text);
        let out = cli_root(&[
            "check-config",
            "--config",
            &cfg.display().to_string(),
            "--lan",
            "lan0",
        ]);
        assert!(!out.status.success(), "check-config took {text:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            format!("session-agent: {line}"),
            "check-config of {text:?}"
        );
        hup(&agent);
        let log = wait_log(&agent, "was not reloaded", n + 1);
        let refused = log
            .lines()
            .filter(|l| l.contains("was not reloaded"))
            .nth(n)
            .unwrap();
        assert!(
            refused.ends_with(&format!("nothing changed: {line}")),
            "the reload says otherwise than check-config:\n{refused}\ncheck-config: {line}"
        );
        assert!(reach(), "the garden changed with a refused file {text:?}");
    }
    // A good file is still taken.
    write(&cfg, "");
    hup(&agent);
    wait_log(&agent, "configuration reloaded", 1);
    assert!(!reach(), "the emptied garden still passes");
}

/// Idle timeout, forgetting and the portal ports, each off at start and
/// switched on by a reload: a silent paying device is paused, an idle client
/// that has not paid leaves the table, and a new portal port on the gateway is
/// reachable before payment.
#[test]
fn a_reload_applies_the_idle_timeout_forgetting_and_the_portal_ports() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let cfg = hs.state_dir.join("config.toml");
    write(
        &cfg,
        "idle_timeout_secs = 0\nforget_idle_secs = 0\nportal_ports = [80]\n",
    );
    let agent = AgentBuilder::new(&hs)
        .arg("--config")
        .arg(cfg.display().to_string())
        .arg("--poll-ms")
        .arg("100")
        .start();
    let api = agent.api();
    let (paying, unpaid) = (hs.client(0).clone(), hs.client(1).clone());
    let srv = TcpServer::start(&hs.server_ns, hs.server_sock(false, 5001));
    // A service on the gateway itself, on a port that is not the portal's yet.
    let portal = TcpServer::start(&hs.gw_ns, hs.gw_lan_sock(false, 8081));
    let reach = |ns: &str, addr| {
        TcpTransfer::run_timeout(ns, addr, 100, 1000, Duration::from_millis(700)).is_ok()
    };
    assert!(
        !reach(&unpaid.ns, portal.addr),
        "port 8081 passes before the reload"
    );
    let dev = api.device_id(&paying.mac);
    api.create_session(dev, 0, 600, 0.0, None, 0, 0, true);
    api.connect(dev, "").ok("connect");
    assert!(reach(&paying.ns, srv.addr));
    let connected = || {
        api.get(&format!("/v1/devices/{dev}/connected")).ok("c")["connected"]
            .as_bool()
            .unwrap()
    };
    // Silent for 3 s, never paused, and the unpaid client never forgotten.
    std::thread::sleep(Duration::from_secs(3));
    assert!(connected(), "paused with idle_timeout_secs = 0");
    assert!(
        agent.client(&unpaid.mac).is_some(),
        "forgotten with forget_idle_secs = 0"
    );

    write(
        &cfg,
        "idle_timeout_secs = 2\nforget_idle_secs = 2\nportal_ports = [80, 8081]\n",
    );
    hup(&agent);
    wait_log(&agent, "configuration reloaded", 1);
    assert!(
        reach(&unpaid.ns, portal.addr),
        "the new portal port does not pass"
    );
    let end = Instant::now() + Duration::from_secs(10);
    while connected() {
        assert!(
            Instant::now() < end,
            "not paused 10 s after the reload\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    while agent.client(&unpaid.mac).is_some() {
        assert!(
            Instant::now() < end + Duration::from_secs(10),
            "the idle unpaid client is still in the table\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!reach(&paying.ns, srv.addr), "a paused device still passes");
}

/// `burst_ms` by reload: a connected device's bucket is programmed again, so
/// after a quiet moment a deeper bucket lets a bigger download through at once.
#[test]
fn a_reload_applies_the_burst_to_connected_devices() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let cfg = hs.state_dir.join("config.toml");
    write(&cfg, "burst_ms = 100\n");
    let agent = AgentBuilder::new(&hs)
        .arg("--config")
        .arg(cfg.display().to_string())
        .start();
    let api = agent.api();
    let client = hs.client(0).clone();
    let srv = TcpServer::start(&hs.server_ns, hs.server_sock(false, 5001));
    let dev = api.device_id(&client.mac);
    // 4 Mbit/s: 50 KB of bucket at 100 ms, 1.5 MB at 3 s.
    api.create_session(dev, 0, 600, 0.0, None, 4, 4, false);
    api.connect(dev, "").ok("connect");
    let after_quiet = |what: &str| {
        std::thread::sleep(Duration::from_millis(3500));
        let t = Instant::now();
        TcpTransfer::run_timeout(
            &client.ns,
            srv.addr,
            100,
            1_000_000,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        t.elapsed()
    };
    let shallow = after_quiet("burst 100 ms");
    write(&cfg, "burst_ms = 3000\n");
    hup(&agent);
    wait_log(&agent, "configuration reloaded", 1);
    let deep = after_quiet("burst 3000 ms");
    eprintln!("RELOAD burst 100 -> 3000 ms: 1 MB at 4 Mbit/s in {shallow:?} -> {deep:?}");
    // 1 MB at 4 Mbit/s is 2 s through a shallow bucket; a full deep one passes it at once.
    assert!(shallow > Duration::from_millis(1500), "{shallow:?}");
    assert!(deep < Duration::from_millis(700), "{deep:?}");
}

#[test]
fn a_reload_adds_and_removes_garden_names_and_keeps_those_added_through_the_api() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let cfg = hs.state_dir.join("config.toml");
    write(
        &cfg,
        "walled_garden_domains = [\"a.test\", \"keep.test\"]\n",
    );
    let agent = AgentBuilder::new(&hs)
        .arg("--config")
        .arg(cfg.display().to_string())
        .start();
    let api = agent.api();
    let names = || -> Vec<String> {
        let v = api.get("/v1/garden/domains").ok("garden names");
        v["domains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(), ["a.test", "keep.test"]);
    api.post(
        "/v1/garden/domains",
        &serde_json::json!({"domain": "*.api.test"}),
    )
    .ok("adding a name");
    write(
        &cfg,
        "walled_garden_domains = [\"keep.test\", \"b.test:443\"]\ngarden_ttl_min_secs = 5\n",
    );
    hup(&agent);
    let log = wait_log(&agent, "configuration reloaded", 1);
    assert_eq!(names(), ["*.api.test", "b.test:443", "keep.test"]);
    assert!(log.contains("walled_garden_domains"), "{log}");
    assert!(
        log.contains("garden_ttl_*_secs"),
        "a restart-only setting is named:\n{log}"
    );
    // A file with a bad name changes nothing.
    write(&cfg, "walled_garden_domains = [\"bad name\"]\n");
    hup(&agent);
    wait_log(&agent, "was not reloaded", 1);
    assert_eq!(names(), ["*.api.test", "b.test:443", "keep.test"]);
}

#[test]
fn garden_names_changed_through_the_api_survive_a_restart() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let cfg = hs.state_dir.join("config.toml");
    write(
        &cfg,
        "walled_garden_domains = [\"a.test\", \"keep.test\"]\n",
    );
    let mut agent = AgentBuilder::new(&hs)
        .arg("--config")
        .arg(cfg.display().to_string())
        .start();
    let names = |agent: &Agent| -> Vec<String> {
        let v = agent.api().get("/v1/garden/domains").ok("garden names");
        v["domains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    };
    let api = agent.api();
    api.post(
        "/v1/garden/domains",
        &serde_json::json!({"domain": "x.test"}),
    )
    .ok("adding a name");
    let r = api.request("DELETE", "/v1/garden/domains/a.test", None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(names(&agent), ["keep.test", "x.test"]);
    agent.stop();
    let agent = agent.restart();
    assert_eq!(names(&agent), ["keep.test", "x.test"], "after a restart");
    // A reload applies what the file adds; what the API took out stays out.
    write(
        &cfg,
        "walled_garden_domains = [\"keep.test\", \"a.test\", \"b.test\"]\n",
    );
    hup(&agent);
    wait_log(&agent, "configuration reloaded", 1);
    assert_eq!(names(&agent), ["b.test", "keep.test", "x.test"]);
}
