//! RADIUS against a real FreeRADIUS: portal logins (Accept attributes become
//! the session and the kernel's limits, Reject leaves the client blocked),
//! accounting whose octets equal the nftables reference of the same traffic,
//! none lost to a server outage or a kill -9 of the agent, and answers that
//! do not check out refused.

use std::time::Duration;

use serde_json::{json, Value};
use session_tests::radius::{attr, link_to_aaa, octets, FreeRadius, RadiusConfig};
use session_tests::{
    mixed_traffic, require_root, Agent, AgentBuilder, Hotspot, Mix, NftRef, ServerSet, TcpTransfer,
};

const SECRET: &str = "t3st-s3cret";

/// `short` and `trunc` get malformed limits: FreeRADIUS sends an `Attr-N`
/// (or `Attr-26.VENDOR.N`) given in hex as those bytes, whatever its type.
const USERS: &str = r#"alice	Cleartext-Password := "wonder"
	Session-Timeout = 3600,
	ChilliSpot-Max-Total-Octets = 705032704,
	ChilliSpot-Max-Total-Gigawords = 1,
	WISPr-Bandwidth-Max-Down = 20000000,
	ChilliSpot-Bandwidth-Max-Up = 8000,
	Acct-Interim-Interval = 60,
	Class = "plan-gold",
	Reply-Message = "Welcome, Alice"

bob	Cleartext-Password := "builder"
	ChilliSpot-Max-Total-Octets = 300000

dave	Cleartext-Password := "diver"
	Session-Timeout = 3600,
	Acct-Interim-Interval = 60,
	Class = "plan-gold",
	Reply-Message = "Welcome, Dave"

ivy	Cleartext-Password := "idle"
	Idle-Timeout = 2

eve	Cleartext-Password := "right"
	Reply-Message = "Wrong password"

short	Cleartext-Password := "timeout"
	Attr-27 = 0x0e10

trunc	Cleartext-Password := "octets"
	Session-Timeout = 3600,
	Attr-26.14559.3 = 0x0f4240
"#;

fn secret_file(hs: &Hotspot) -> String {
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let path = hs.state_dir.join("radius.secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path.display().to_string()
}

fn agent_with(hs: &Hotspot, radius: &FreeRadius) -> AgentBuilder {
    agent_after(AgentBuilder::new(hs), hs, radius)
}

/// `b` (which may name servers of its own first) with `radius` as server.
fn agent_after(b: AgentBuilder, hs: &Hotspot, radius: &FreeRadius) -> AgentBuilder {
    b.arg("--radius-server")
        .arg(radius.auth_addr().to_string())
        .arg("--radius-acct-server")
        .arg(radius.acct_addr().to_string())
        .arg("--radius-secret-file")
        .arg(secret_file(hs))
        .arg("--radius-nas-id")
        .arg("gw-test")
        .arg("--radius-timeout-ms")
        .arg("300")
        .arg("--radius-retries")
        .arg("1")
}

/// A hotspot, traffic servers on `port` and `port + 1` in its server
/// namespace, and FreeRADIUS there (dropped in reverse: the server, then the
/// namespaces).
fn site(clients: usize, port: u16, cfg: &RadiusConfig) -> (Hotspot, ServerSet, FreeRadius) {
    let hs = Hotspot::builder().clients(clients).build();
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, port, port + 1);
    let radius = FreeRadius::start(&hs.server_ns, hs.server_v4.into(), cfg);
    (hs, servers, radius)
}

fn device(agent: &Agent, mac: &str) -> i64 {
    agent
        .api()
        .post("/v1/devices", &json!({ "mac": mac }))
        .ok("device")["id"]
        .as_i64()
        .unwrap()
}

fn login(agent: &Agent, id: i64, user: &str, password: &str) -> session_tests::api::Response {
    agent.api().post(
        &format!("/v1/devices/{id}/login"),
        &json!({ "username": user, "password": password }),
    )
}

fn mix() -> Mix {
    Mix {
        tcp_up: 700_000,
        tcp_down: 2_300_000,
        udp_up: 40,
        udp_up_size: 900,
        udp_down: 30,
        udp_down_size: 1100,
    }
}

#[test]
fn an_accepted_login_gets_the_servers_limits_and_its_accounting_equals_the_reference() {
    require_root();
    let (hs, servers, radius) = site(2, 5101, &RadiusConfig::new(SECRET, USERS));
    let nft = NftRef::install(&hs);
    let agent = agent_with(&hs, &radius).start();
    let c = &hs.clients[0];
    let id = device(&agent, &c.mac);

    let r = login(&agent, id, "alice", "wonder");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["reply_message"], "Welcome, Alice");
    let s = &r.body["session"];
    // time_or_data: 3600 s, 1 GiB x 1 + 705032704 = 5000000000 bytes (past 32 bits).
    assert_eq!(s["type"], 2, "{s}");
    assert_eq!(s["time_secs"], 3600, "{s}");
    assert_eq!(s["data_bytes"], 5_000_000_000u64, "{s}");
    assert_eq!(
        (s["down_mbits"].as_i64(), s["up_mbits"].as_i64()),
        (Some(20), Some(8)),
        "{s}"
    );
    assert_eq!(s["provider"], "radius");
    // The kernel lets it through (its data limit: see the test with bob).
    let e = agent.client(&c.mac).expect("client in the table");
    assert!(e.allowed, "{e:?}");
    let start = radius.wait_status("Start", None);
    assert_eq!(attr(&start, "User-Name"), Some("alice"));
    assert_eq!(attr(&start, "NAS-Identifier"), Some("gw-test"));
    assert_eq!(
        attr(&start, "Class"),
        Some("0x706c616e2d676f6c64"),
        "{start:?}"
    );
    assert_eq!(
        attr(&start, "Framed-IP-Address"),
        Some(c.ipv4.to_string().as_str()),
        "the client's address, from the neighbour table: {start:?}"
    );
    assert!(attr(&start, "NAS-IP-Address").is_some(), "{start:?}");
    let calling = c.mac.to_uppercase().replace(':', "-");
    assert_eq!(attr(&start, "Calling-Station-Id"), Some(calling.as_str()));

    // Speeds are enforced by dropping what exceeds them, which the nftables
    // reference (before the datapath) would count: exactness is shown on dave,
    // who has no speed limit, on the other client.
    let c1 = &hs.clients[1];
    let id1 = device(&agent, &c1.mac);
    let r = login(&agent, id1, "dave", "diver");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["session"]["use_global_speed"], true, "{}", r.body);
    // Tens of megabytes, both ways, TCP and UDP over IPv4 and IPv6.
    let big = Mix {
        tcp_up: 4_000_000,
        tcp_down: 12_000_000,
        ..mix()
    };
    let result = mixed_traffic(&c1.ns, &servers, big, "dave's traffic");
    let r = agent.api().post(
        &format!("/v1/devices/{id1}/disconnect"),
        &json!({ "notification": "bye" }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let stop = radius.wait_status("Stop", None);
    let reference = nft.get(&c1.mac);
    assert_eq!(
        (octets(&stop, "Input"), octets(&stop, "Output")),
        (reference.up_bytes, reference.down_bytes),
        "FreeRADIUS's octets against the nftables reference ({result:?}); Stop: {stop:?}"
    );
    assert!(
        reference.up_bytes > 8_000_000 && reference.down_bytes > 24_000_000,
        "{reference:?}"
    );
    assert_eq!(attr(&stop, "Acct-Terminate-Cause"), Some("User-Request"));
    let dave_start = radius.wait_status("Start", Some("dave"));
    assert_eq!(
        attr(&stop, "Acct-Session-Id"),
        attr(&dave_start, "Acct-Session-Id")
    );
    assert_ne!(
        attr(&dave_start, "Acct-Session-Id"),
        attr(&start, "Acct-Session-Id")
    );
    assert_eq!(attr(&stop, "Acct-Authentic"), Some("RADIUS"));
    // Stopped is ended: the session is gone and the client blocked.
    let sessions = agent
        .api()
        .get(&format!("/v1/devices/{id1}/sessions"))
        .ok("sessions");
    assert_eq!(sessions.as_array().map(Vec::len), Some(0), "{sessions}");
    assert!(TcpTransfer::run_timeout(
        &c1.ns,
        servers.tcp4.addr,
        1000,
        1000,
        Duration::from_millis(500)
    )
    .is_err());
    // Alice is still online, untouched.
    assert!(agent.client_or_zero(&c.mac).allowed);
    let metrics = agent.metrics();
    for line in [
        "session_agent_radius_accepts_total 2",
        "session_agent_radius_sessions_open 1",
        "session_agent_radius_acct_queued 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in {metrics}"
        );
    }
}

#[test]
fn a_rejected_login_answers_403_with_the_servers_message_and_the_client_stays_blocked() {
    require_root();
    let (hs, servers, radius) = site(1, 5111, &RadiusConfig::new(SECRET, USERS));
    // The first server named is down (nothing listens there): each login
    // fails over to the second.
    let dead = std::net::SocketAddr::new(hs.server_v4.into(), 1999);
    let first = AgentBuilder::new(&hs)
        .arg("--radius-server")
        .arg(dead.to_string());
    let agent = agent_after(first, &hs, &radius).start();
    let c = &hs.clients[0];
    let id = device(&agent, &c.mac);
    let r = login(&agent, id, "eve", "guess");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (403, Some("login_rejected")),
        "{}",
        r.body
    );
    let r2 = login(&agent, id, "nobody", "x");
    assert_eq!(r2.status, 403, "{}", r2.body);
    assert!(!agent.client_or_zero(&c.mac).allowed);
    assert!(TcpTransfer::run_timeout(
        &c.ns,
        servers.tcp4.addr,
        1000,
        1000,
        Duration::from_millis(500)
    )
    .is_err());
    let sessions: Value = agent
        .api()
        .get(&format!("/v1/devices/{id}/sessions"))
        .ok("sessions");
    assert_eq!(sessions.as_array().map(Vec::len), Some(0), "{sessions}");
    // The CLI reads the password from stdin: a wrong one fails with the
    // server's message, the right one logs the device in.
    let cli_login = |password: &str| {
        session_tests::agent::run_with_input(
            std::process::Command::new(session_tests::agent_bin())
                .args(["login", &id.to_string(), "eve", "--api-socket"])
                .arg(&agent.builder().api_socket),
            password.as_bytes(),
        )
    };
    let out = cli_login("guess\n");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Wrong password"),
        "{out:?}"
    );
    let out = cli_login("right\n");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("logged in as eve"),
        "{out:?}"
    );
    assert!(agent.client_or_zero(&c.mac).allowed);
}

#[test]
fn answers_signed_with_another_secret_or_without_a_message_authenticator_are_refused() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let c = &hs.clients[0];
    // The server knows another secret: its answers do not check out.
    {
        let radius = FreeRadius::start(
            &hs.server_ns,
            hs.server_v4.into(),
            &RadiusConfig::new("other", USERS),
        );
        let mut agent = agent_with(&hs, &radius).start();
        let id = device(&agent, &c.mac);
        let r = login(&agent, id, "alice", "wonder");
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (503, Some("radius_unavailable")),
            "{}",
            r.body
        );
        assert!(!agent.client_or_zero(&c.mac).allowed);
        agent.stop();
    }
    // Right secret, but the Accept carries no Message-Authenticator (BlastRADIUS).
    let mut cfg = RadiusConfig::new(SECRET, USERS);
    cfg.sign_answers = false;
    let radius = FreeRadius::start(&hs.server_ns, hs.server_v4.into(), &cfg);
    let agent = agent_with(&hs, &radius).start();
    let id = agent
        .api()
        .get(&format!("/v1/devices/by-mac/{}", c.mac))
        .ok("device")["id"]
        .as_i64()
        .unwrap();
    let r = login(&agent, id, "alice", "wonder");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (503, Some("radius_unavailable")),
        "{}",
        r.body
    );
    assert!(
        agent.log().contains("Message-Authenticator"),
        "{}",
        agent.log_tail()
    );
    assert!(!agent.client_or_zero(&c.mac).allowed);
}

#[test]
fn a_server_outage_and_a_kill_9_of_the_agent_lose_no_accounting() {
    require_root();
    let (hs, servers, mut radius) = site(1, 5121, &RadiusConfig::new(SECRET, USERS));
    let nft = NftRef::install(&hs);
    let mut agent = agent_with(&hs, &radius).start();
    let c = &hs.clients[0];
    let id = device(&agent, &c.mac);
    assert_eq!(login(&agent, id, "dave", "diver").status, 201);
    radius.wait_status("Start", None);
    // The server goes away; traffic goes on; the agent is killed.
    radius.stop();
    mixed_traffic(&c.ns, &servers, mix(), "during the outage");
    agent.kill9();
    let agent = agent.restart();
    mixed_traffic(&c.ns, &servers, mix(), "after the restart");
    let r = agent
        .api()
        .post(&format!("/v1/devices/{id}/disconnect"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    // The server comes back: the Stop arrives, late and exact.
    std::thread::sleep(Duration::from_secs(2));
    radius.resume();
    let stop = radius.wait_status("Stop", None);
    let reference = nft.get(&c.mac);
    assert_eq!(
        (octets(&stop, "Input"), octets(&stop, "Output")),
        (reference.up_bytes, reference.down_bytes),
        "Stop after an outage and a kill -9: {stop:?}"
    );
    let delay: u64 = stop
        .get("Acct-Delay-Time")
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    assert!(delay >= 1, "the Stop waited: {stop:?}");
    // Each request once, at most one repeat: one Start and one Stop.
    let all = radius.accounting();
    let count = |s: &str| {
        all.iter()
            .filter(|r| attr(r, "Acct-Status-Type") == Some(s))
            .count()
    };
    assert!(count("Stop") >= 1 && count("Stop") <= 2, "{all:#?}");
    // Accounting-On at the first start only: the session ran across the restart.
    assert_eq!(count("Accounting-On"), 1, "{all:#?}");
}

#[test]
fn a_client_that_logs_out_logs_in_again_at_once_and_each_session_has_its_stop() {
    require_root();
    let (hs, servers, radius) = site(1, 5181, &RadiusConfig::new(SECRET, USERS));
    let nft = NftRef::install(&hs);
    let agent = agent_with(&hs, &radius).start();
    let c = &hs.clients[0];
    let id = device(&agent, &c.mac);
    let first = login(&agent, id, "dave", "diver");
    assert_eq!(first.status, 201, "{}", first.body);
    mixed_traffic(&c.ns, &servers, mix(), "the first session");
    // A datagram every 200 µs throughout: the second session has bytes from
    // its first instant, before any accounting round.
    let stream = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let sock = session_tests::traffic::udp_socket(&c.ns, "0.0.0.0:0".parse().unwrap())
            .expect("a UDP socket in the client");
        let (to, on) = (servers.udp(false).addr, stream.clone());
        std::thread::spawn(move || {
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sock.send_to(&[0x5a; 100], to);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Out and straight back in, before the accounting round has sent the
    // first session's Stop (and removed it from the store).
    let r = agent
        .api()
        .post(&format!("/v1/devices/{id}/disconnect"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let second = login(&agent, id, "dave", "diver");
    assert_eq!(
        second.status, 201,
        "logging in again at once: {}",
        second.body
    );
    std::thread::sleep(Duration::from_millis(1500));
    stream.store(false, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    mixed_traffic(&c.ns, &servers, mix(), "the second session");
    let sessions: Value = agent
        .api()
        .get(&format!("/v1/devices/{id}/sessions"))
        .ok("sessions");
    let listed: Vec<&Value> = sessions.as_array().unwrap().iter().collect();
    assert!(
        listed.len() == 1 && listed[0]["running"] == true,
        "the device keeps its new session alone: {sessions}"
    );
    let r = agent
        .api()
        .post(&format!("/v1/devices/{id}/disconnect"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    // Two sessions, two Stops, which together carry every byte.
    let stops = session_tests::sessions::wait_for(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let all = radius.accounting();
            let ids: std::collections::BTreeSet<String> = all
                .iter()
                .filter(|r| attr(r, "Acct-Status-Type") == Some("Stop"))
                .filter_map(|r| attr(r, "Acct-Session-Id").map(str::to_string))
                .collect();
            (ids.len() == 2).then_some(all)
        },
    )
    .unwrap_or_else(|| panic!("two Stops: {:#?}", radius.accounting()));
    let mut by_id = std::collections::BTreeMap::new();
    for r in stops
        .iter()
        .filter(|r| attr(r, "Acct-Status-Type") == Some("Stop"))
    {
        by_id.insert(
            attr(r, "Acct-Session-Id").unwrap().to_string(),
            (octets(r, "Input"), octets(r, "Output")),
        );
    }
    let (up, down) = by_id.values().fold((0, 0), |(u, d), (i, o)| (u + i, d + o));
    let reference = nft.get(&c.mac);
    assert_eq!(
        (up, down),
        (reference.up_bytes, reference.down_bytes),
        "the Stops against the reference: {by_id:?}"
    );
}

#[test]
fn a_data_limit_from_the_server_is_enforced_in_the_kernel_and_ends_with_session_timeout() {
    require_root();
    let (hs, servers, radius) = site(1, 5131, &RadiusConfig::new(SECRET, USERS));
    let nft = NftRef::install(&hs);
    let agent = agent_with(&hs, &radius).start();
    let c = &hs.clients[0];
    let id = device(&agent, &c.mac);
    let r = login(&agent, id, "bob", "builder");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["session"]["type"], 1, "{}", r.body);
    assert_eq!(r.body["session"]["data_bytes"], 300_000);
    // More than the limit: the kernel cuts it off.
    let _ = TcpTransfer::run_timeout(
        &c.ns,
        servers.tcp4.addr,
        0,
        2_000_000,
        Duration::from_secs(5),
    );
    let stop = radius.wait_status("Stop", None);
    assert_eq!(
        attr(&stop, "Acct-Terminate-Cause"),
        Some("Session-Timeout"),
        "{stop:?}"
    );
    // The reference sees what came in before the datapath dropped it: it
    // is at least what was delivered.
    let reference = nft.get(&c.mac);
    let total = octets(&stop, "Input") + octets(&stop, "Output");
    assert!(
        octets(&stop, "Output") <= reference.down_bytes
            && octets(&stop, "Input") <= reference.up_bytes,
        "{stop:?} against {reference:?}"
    );
    let s = agent
        .api()
        .get(&format!("/v1/sessions/{}", r.body["session"]["id"]))
        .ok("session");
    assert_eq!(
        s["data_cons_bytes"].as_u64(),
        Some(total),
        "the session was charged what was accounted: {s}"
    );
    // The packet that crosses the limit still passes (at most a GSO aggregate).
    assert!(
        total <= 300_000 + 65_536,
        "delivered {total} of a 300000-byte limit"
    );
    assert!(total > 250_000, "the limit was used: {total}");
}

#[test]
fn an_idle_timeout_from_the_server_ends_a_quiet_session_with_idle_timeout() {
    require_root();
    let (hs, _servers, radius) = site(1, 5171, &RadiusConfig::new(SECRET, USERS));
    let agent = agent_with(&hs, &radius).start();
    let c = &hs.clients[0];
    let id = device(&agent, &c.mac);
    assert_eq!(login(&agent, id, "ivy", "idle").status, 201);
    assert!(agent.client_or_zero(&c.mac).allowed);
    let stop = radius.wait_status("Stop", None);
    assert_eq!(
        attr(&stop, "Acct-Terminate-Cause"),
        Some("Idle-Timeout"),
        "{stop:?}"
    );
    assert!(!agent.client_or_zero(&c.mac).allowed);
}

#[test]
fn disconnect_and_coa_requests_from_the_server_act_at_once_and_forged_ones_are_refused() {
    require_root();
    let (hs, servers, radius) = site(2, 5141, &RadiusConfig::new(SECRET, USERS));
    let coa = std::net::SocketAddr::new(hs.gw_wan_v4.into(), 3799);
    let agent = agent_with(&hs, &radius)
        .arg("--radius-coa-listen")
        .arg(coa.to_string())
        .start();
    let (c0, c1) = (&hs.clients[0], &hs.clients[1]);
    let (id0, id1) = (device(&agent, &c0.mac), device(&agent, &c1.mac));
    assert_eq!(login(&agent, id0, "alice", "wonder").status, 201);
    assert_eq!(login(&agent, id1, "dave", "diver").status, 201);
    let start = radius.wait_status("Start", Some("alice"));
    let acct_id = start["Acct-Session-Id"].clone();

    // Forged: from a client (not a configured CoA client), even with the secret;
    // and from the server with the wrong secret. Neither is answered.
    let req = format!("Acct-Session-Id = \"{acct_id}\", Message-Authenticator = 0x00");
    let (answered, out) = session_tests::radius::radclient(&c1.ns, coa, "disconnect", SECRET, &req);
    assert!(!answered, "{out}");
    let (answered, out) =
        session_tests::radius::radclient(&hs.server_ns, coa, "disconnect", "wrong", &req);
    assert!(!answered, "{out}");
    assert!(
        agent.client_or_zero(&c0.mac).allowed,
        "alice is still online"
    );

    // A CoA for dave: a data limit and a speed, applied to the running session.
    let (answered, out) = session_tests::radius::radclient(
        &hs.server_ns,
        coa,
        "coa",
        SECRET,
        "User-Name = dave, ChilliSpot-Max-Total-Octets = 400000, WISPr-Bandwidth-Max-Down = 5000000, Message-Authenticator = 0x00",
    );
    assert!(answered && out.contains("CoA-ACK"), "{out}");
    let s = agent
        .api()
        .get(&format!("/v1/devices/{id1}/current-session"))
        .ok("session");
    assert_eq!(
        (s["type"].as_u64(), s["data_bytes"].as_u64()),
        (Some(2), Some(400_000)),
        "{s}"
    );
    assert_eq!(
        (s["down_mbits"].as_i64(), s["use_global_speed"].as_bool()),
        (Some(5), Some(false)),
        "{s}"
    );
    // The kernel holds the new limit: more than 400000 bytes do not pass.
    let _ = TcpTransfer::run_timeout(
        &c1.ns,
        servers.tcp4.addr,
        0,
        1_000_000,
        Duration::from_secs(5),
    );
    let dave_stop = radius.wait_status("Stop", Some("dave"));
    let total = octets(&dave_stop, "Input") + octets(&dave_stop, "Output");
    assert!(
        total <= 400_000 + 65_536 && total > 300_000,
        "{dave_stop:?}"
    );

    // A session nobody has: NAK, Session-Context-Not-Found.
    let (answered, out) = session_tests::radius::radclient(
        &hs.server_ns,
        coa,
        "disconnect",
        SECRET,
        "User-Name = nobody, Message-Authenticator = 0x00",
    );
    assert!(answered && out.contains("Disconnect-NAK"), "{out}");
    assert!(out.contains("Session-Context-Not-Found"), "{out}");

    // The real Disconnect: alice is cut off at once and her Stop says Admin-Reset.
    let (answered, out) =
        session_tests::radius::radclient(&hs.server_ns, coa, "disconnect", SECRET, &req);
    assert!(answered && out.contains("Disconnect-ACK"), "{out}");
    assert!(!agent.client_or_zero(&c0.mac).allowed);
    let stop = radius.wait_status("Stop", Some("alice"));
    assert_eq!(
        attr(&stop, "Acct-Terminate-Cause"),
        Some("Admin-Reset"),
        "{stop:?}"
    );
    assert!(TcpTransfer::run_timeout(
        &c0.ns,
        servers.tcp4.addr,
        1000,
        1000,
        Duration::from_millis(500)
    )
    .is_err());
}

/// A signed Access-Accept with an attribute of the wrong length: the login is
/// refused with the attribute named, and no session, no Start, no traffic.
fn refused_for(
    agent: &Agent,
    radius: &FreeRadius,
    c: &session_tests::Client,
    user: &str,
    password: &str,
    attribute: &str,
) {
    let id = device(agent, &c.mac);
    let r = login(agent, id, user, password);
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (503, Some("radius_invalid_accept")),
        "{}",
        r.body
    );
    let msg = r.body["message"].as_str().unwrap_or_default();
    assert!(msg.contains(attribute), "{msg}");
    assert!(
        agent.log_shows(
            |l| l.contains(&format!("attribute=\"{attribute}\""))
                || l.contains(&format!("attribute={attribute}")),
            Duration::from_secs(3)
        ),
        "{}",
        agent.log_tail()
    );
    let sessions: Value = agent
        .api()
        .get(&format!("/v1/devices/{id}/sessions"))
        .ok("sessions");
    assert_eq!(sessions.as_array().map(Vec::len), Some(0), "{sessions}");
    assert!(!agent.client_or_zero(&c.mac).allowed);
    assert!(
        !radius
            .accounting()
            .iter()
            .any(|r| attr(r, "User-Name") == Some(user)),
        "{:?}",
        radius.accounting()
    );
}

#[test]
fn an_accept_with_a_malformed_limit_is_refused_and_names_the_attribute() {
    require_root();
    let (hs, _servers, radius) = site(2, 5151, &RadiusConfig::new(SECRET, USERS));
    let agent = agent_with(&hs, &radius).start();
    // Session-Timeout of 2 bytes (RFC 2865: 4).
    refused_for(
        &agent,
        &radius,
        &hs.clients[0],
        "short",
        "timeout",
        "Session-Timeout",
    );
    // ChilliSpot-Max-Total-Octets of 3 bytes.
    refused_for(
        &agent,
        &radius,
        &hs.clients[1],
        "trunc",
        "octets",
        "ChilliSpot-Max-Total-Octets",
    );
}

#[test]
fn coa_and_disconnect_requests_with_a_malformed_attribute_are_naked_and_change_nothing() {
    require_root();
    let (hs, _servers, radius) = site(1, 5161, &RadiusConfig::new(SECRET, USERS));
    let coa = std::net::SocketAddr::new(hs.gw_wan_v4.into(), 3799);
    let agent = agent_with(&hs, &radius)
        .arg("--radius-coa-listen")
        .arg(coa.to_string())
        .start();
    let c = &hs.clients[0];
    let id = device(&agent, &c.mac);
    assert_eq!(login(&agent, id, "dave", "diver").status, 201);
    // What a CoA-Request may change.
    let session = || {
        let s = agent
            .api()
            .get(&format!("/v1/devices/{id}/current-session"))
            .ok("session");
        [
            "type",
            "time_secs",
            "data_bytes",
            "down_mbits",
            "up_mbits",
            "use_global_speed",
        ]
        .map(|k| s[k].clone())
    };
    let before = session();
    let send = |kind: &str, attrs: &str| {
        let (answered, out) = session_tests::radius::radclient(
            &hs.server_ns,
            coa,
            kind,
            SECRET,
            &format!("User-Name = dave, {attrs}, Message-Authenticator = 0x00"),
        );
        assert!(answered, "{out}");
        out
    };
    // A good speed next to a 2-byte Session-Timeout: nothing of it applies.
    let out = send(
        "coa",
        "WISPr-Bandwidth-Max-Down = 5000000, Attr-27 = 0x0e10",
    );
    assert!(out.contains("CoA-NAK"), "{out}");
    assert!(out.contains("Error-Cause = Invalid-Request"), "{out}");
    // A 3-byte ChilliSpot-Max-Total-Octets.
    let out = send("coa", "Attr-26.14559.3 = 0x0f4240");
    assert!(out.contains("CoA-NAK"), "{out}");
    assert!(out.contains("Error-Cause = Invalid-Request"), "{out}");
    // A terminate time that is no time: a value the agent cannot take.
    let out = send("coa", "WISPr-Session-Terminate-Time = \"soon\"");
    assert!(out.contains("CoA-NAK"), "{out}");
    assert!(
        out.contains("Error-Cause = Invalid-Attribute-Value"),
        "{out}"
    );
    assert_eq!(session(), before);
    // A Disconnect-Request with a malformed attribute disconnects nobody.
    let out = send("disconnect", "Attr-27 = 0x0e10");
    assert!(out.contains("Disconnect-NAK"), "{out}");
    assert!(out.contains("Error-Cause = Invalid-Request"), "{out}");
    assert!(agent.client_or_zero(&c.mac).allowed);
    assert!(
        agent.log().contains("Session-Timeout"),
        "{}",
        agent.log_tail()
    );
}

#[test]
fn mac_authentication_lets_a_known_client_in_when_it_is_first_seen_and_keeps_others_out() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5151, 5152);
    let known = hs.clients[0].mac.to_uppercase().replace(':', "-");
    let users = format!(
        "\"{known}\"\tCleartext-Password := \"{known}\"\n\tSession-Timeout = 600,\n\tReply-Message = \"Known device\"\n"
    );
    let radius = FreeRadius::start(
        &hs.server_ns,
        hs.server_v4.into(),
        &RadiusConfig::new(SECRET, &users),
    );
    let agent = agent_with(&hs, &radius).arg("--radius-mac-auth").start();
    // Their first frames make them known to the gateway.
    for c in &hs.clients {
        let _ = TcpTransfer::run_timeout(
            &c.ns,
            servers.tcp4.addr,
            100,
            100,
            Duration::from_millis(300),
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.client_or_zero(&hs.clients[0].mac).allowed {
        assert!(
            std::time::Instant::now() < deadline,
            "the known MAC was not let in: {}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    TcpTransfer::run(&hs.clients[0].ns, servers.tcp4.addr, 10_000, 10_000)
        .expect("the known client is online");
    assert!(
        !agent.client_or_zero(&hs.clients[1].mac).allowed,
        "an unknown MAC stays out"
    );
    let start = radius.wait_status("Start", None);
    assert_eq!(attr(&start, "User-Name"), Some(known.as_str()));
    assert!(
        radius.log().contains("Call-Check"),
        "MAC logins say Service-Type Call-Check"
    );
}

#[test]
fn two_gateways_share_one_allowance_through_the_servers_counter() {
    require_root();
    let (a, b) = (
        Hotspot::builder().clients(1).build(),
        Hotspot::builder().clients(1).build(),
    );
    // One AAA server for both, in a namespace of its own linked to each gateway.
    let aaa = session_tests::Netns::new(&format!("{}-aaa", a.id));
    let (_, aaa_a) = link_to_aaa(&a.gw_ns, aaa.name(), 1);
    let (_, aaa_b) = link_to_aaa(&b.gw_ns, aaa.name(), 2);
    let allowance = 10_000_000u64;
    let mut cfg = RadiusConfig::new(
        SECRET,
        &format!("carol\tCleartext-Password := \"roam\", Max-Total-Octets := {allowance}\n\tSession-Timeout = 3600\n"),
    );
    cfg.data_counter = true;
    let radius = FreeRadius::start(aaa.name(), std::net::Ipv4Addr::UNSPECIFIED.into(), &cfg);
    let gateway = |hs: &Hotspot, server: std::net::Ipv4Addr, nas: &str| {
        AgentBuilder::new(hs)
            .arg("--radius-server")
            .arg(format!("{server}:1812"))
            .arg("--radius-acct-server")
            .arg(format!("{server}:1813"))
            .arg("--radius-secret-file")
            .arg(secret_file(hs))
            .arg("--radius-nas-id")
            .arg(nas)
            .start()
    };
    let (agent_a, agent_b) = (gateway(&a, aaa_a, "gw-a"), gateway(&b, aaa_b, "gw-b"));
    let (nft_a, nft_b) = (NftRef::install(&a), NftRef::install(&b));
    let srv_a = ServerSet::start(&a.server_ns, a.server_v4, a.server_v6, 5161, 5162);
    let srv_b = ServerSet::start(&b.server_ns, b.server_v4, b.server_v6, 5161, 5162);
    let stop_of = |nas: &str| {
        radius.wait_record(&format!("Stop at {nas}"), Duration::from_secs(15), |r| {
            attr(r, "NAS-Identifier") == Some(nas) && attr(r, "Acct-Status-Type") == Some("Stop")
        })
    };

    // At gateway A carol uses about 3 MB, then leaves.
    let (ca, cb) = (&a.clients[0], &b.clients[0]);
    let id_a = device(&agent_a, &ca.mac);
    let r = login(&agent_a, id_a, "carol", "roam");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["session"]["data_bytes"].as_u64(),
        Some(allowance),
        "{}",
        r.body
    );
    TcpTransfer::run(&ca.ns, srv_a.tcp4.addr, 200_000, 3_000_000).expect("carol at A");
    agent_a
        .api()
        .post(&format!("/v1/devices/{id_a}/disconnect"), &json!({}));
    let stop_a = stop_of("gw-a");
    let used_a = octets(&stop_a, "Input") + octets(&stop_a, "Output");
    let ref_a = nft_a.get(&ca.mac);
    assert_eq!(
        used_a,
        ref_a.up_bytes + ref_a.down_bytes,
        "{stop_a:?} against {ref_a:?}"
    );

    // At gateway B she gets what is left, and no more passes.
    let id_b = device(&agent_b, &cb.mac);
    let r = login(&agent_b, id_b, "carol", "roam");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["session"]["data_bytes"].as_u64(),
        Some(allowance - used_a),
        "{}",
        r.body
    );
    let _ = TcpTransfer::run_timeout(
        &cb.ns,
        srv_b.tcp4.addr,
        0,
        12_000_000,
        Duration::from_secs(10),
    );
    let stop_b = stop_of("gw-b");
    let used_b = octets(&stop_b, "Input") + octets(&stop_b, "Output");
    assert_eq!(
        attr(&stop_b, "Acct-Terminate-Cause"),
        Some("Session-Timeout"),
        "{stop_b:?}"
    );
    // Across both: the allowance, and at most the one packet that crossed it at B.
    assert!(
        used_a + used_b <= allowance + 65_536 && used_a + used_b > allowance - 100_000,
        "A {used_a} + B {used_b} against {allowance}"
    );
    assert!(used_b <= nft_b.get(&cb.mac).up_bytes + nft_b.get(&cb.mac).down_bytes);
    // A third login finds nothing left.
    let r = login(&agent_b, id_b, "carol", "roam");
    let log = radius.log();
    let counting: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("datacounter:") || l.contains("Executing query"))
        .collect();
    assert_eq!(
        r.status,
        403,
        "{}\nthe server's counting:\n{}",
        r.body,
        counting.join("\n")
    );
}
