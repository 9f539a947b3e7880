//! The portal flow through the real control API socket: a device appears by
//! sending traffic, gets a session, connects, its traffic flows and is charged
//! exactly (nftables reference), a disconnect pauses it, a reconnect resumes
//! it, and a data-quota cut-off arrives on the event stream.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use session_tests::{
    require_root, AgentBuilder, Hotspot, NftRef, ServerSet, TcpTransfer, UdpTransfer,
};

const T: Duration = Duration::from_secs(10);

/// Polls the session until `pred` holds.
fn wait_session(
    api: &session_tests::api::ApiClient,
    id: i64,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let s = api.session(id);
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("session {id}: {what} not reached within {T:?}: {s}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn portal_flow_connect_traffic_pause_resume_quota_cutoff() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let c = hs.client(0).clone();
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5101, 5102);
    let nft = NftRef::install(&hs);
    let agent = AgentBuilder::new(&hs).arg("--poll-ms").arg("100").start();
    let api = agent.api();
    let mut events = api.events("");

    // 1. The device appears by sending traffic (blocked: the walled garden only).
    let _ = UdpTransfer::run(&c.ns, servers.udp(false).addr, 3, 100, 0, 0);
    let seen = events.wait_for("client_seen", T, |n, v| {
        n == "client_seen" && v["mac"] == c.mac.as_str()
    });
    let id = seen["device_id"]
        .as_i64()
        .expect("client_seen carries the new device id");
    let dev = api
        .get(&format!("/v1/devices/by-mac/{}", c.mac))
        .ok("by mac");
    assert_eq!(dev["id"].as_i64(), Some(id));
    assert_eq!(dev["connected"], false);
    let by_ip = api
        .get(&format!("/v1/devices/by-ip/{}", c.addr(false)))
        .ok("by ip v4");
    assert_eq!(by_ip["id"].as_i64(), Some(id), "IPv4 neighbour lookup");
    let by_ip6 = api
        .get(&format!("/v1/devices/by-ip/{}", c.addr(true)))
        .ok("by ip v6");
    assert_eq!(by_ip6["id"].as_i64(), Some(id), "IPv6 neighbour lookup");
    assert_eq!(
        nft.get(&c.mac).up_bytes,
        0,
        "nothing forwarded before connect"
    );

    // 2. A time_or_data session, connect.
    let s = api.create_session(id, 2, 3600, 50.0, Some(30), 0, 0, false);
    let sid = s["id"].as_i64().unwrap();
    assert_eq!(s["status"], "unstarted");
    assert_eq!(s["remaining_time"], 3600);
    assert_eq!(
        s["expires_at"],
        Value::Null,
        "no expiry before the first start"
    );
    let r = api
        .connect(id, "You are now connected to internet.")
        .ok("connect");
    assert_eq!(r["id"].as_i64(), Some(sid));
    events.wait_for("connected", T, |n, v| {
        n == "connected"
            && v["device_id"] == id
            && v["notification"] == "You are now connected to internet."
    });
    events.wait_for("session_started", T, |n, v| {
        n == "session_started" && v["session_id"] == sid
    });
    let conn = api
        .get(&format!("/v1/devices/{id}/connected"))
        .ok("is connected");
    assert_eq!(conn["connected"], true);
    assert_eq!(conn["session_id"].as_i64(), Some(sid));
    let cur = api
        .get(&format!("/v1/devices/{id}/current-session"))
        .ok("current");
    assert_eq!(cur["id"].as_i64(), Some(sid));
    assert!(
        cur["expires_at"].as_i64().is_some(),
        "expires_at once started: {cur}"
    );

    // 3. Traffic flows and is charged exactly as the reference counts it.
    let t = TcpTransfer::run(&c.ns, servers.tcp(false).addr, 200_000, 300_000)
        .expect("tcp after connect");
    assert_eq!(t.received, 300_000);
    let t6 = TcpTransfer::run(&c.ns, servers.tcp(true).addr, 50_000, 80_000)
        .expect("tcp6 after connect");
    assert_eq!(t6.received, 80_000);
    let want = |nft: &NftRef| {
        let r = nft.get(&c.mac);
        r.up_bytes + r.down_bytes
    };
    let forwarded = want(&nft);
    assert!(forwarded > 630_000, "reference saw {forwarded} bytes");
    let s = wait_session(&api, sid, "charged as forwarded", |s| {
        s["data_cons_bytes"].as_u64() == Some(want(&nft))
    });
    assert_eq!(s["status"], "running");
    assert_eq!(
        s["remaining_data_bytes"].as_u64().unwrap(),
        50_000_000 - s["data_cons_bytes"].as_u64().unwrap()
    );

    // 4. Disconnect pauses: traffic stops, consumption stays.
    api.disconnect(id, "bye").ok("disconnect");
    events.wait_for("disconnected", T, |n, v| {
        n == "disconnected" && v["device_id"] == id && v["notification"] == "bye"
    });
    events.wait_for("session_paused", T, |n, v| {
        n == "session_paused" && v["session_id"] == sid
    });
    let paused = api.session(sid);
    assert_eq!(paused["status"], "paused");
    assert_eq!(
        api.get(&format!("/v1/devices/{id}/current-session"))
            .ok("current"),
        Value::Null
    );
    let before = want(&nft);
    let r = TcpTransfer::run_timeout(
        &c.ns,
        servers.tcp(false).addr,
        1000,
        1000,
        Duration::from_millis(800),
    );
    assert!(r.is_err(), "TCP must fail while disconnected: {r:?}");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(want(&nft), before, "nothing forwarded while disconnected");
    assert_eq!(
        api.session(sid)["data_cons_bytes"],
        paused["data_cons_bytes"]
    );

    // 5. Reconnect resumes the same session.
    let r = api.connect(id, "welcome back").ok("reconnect");
    assert_eq!(r["id"].as_i64(), Some(sid));
    events.wait_for("session_resumed", T, |n, v| {
        n == "session_resumed" && v["session_id"] == sid
    });
    TcpTransfer::run(&c.ns, servers.tcp(false).addr, 10_000, 100_000).expect("tcp after reconnect");
    wait_session(&api, sid, "charged after resume", |s| {
        s["data_cons_bytes"].as_u64() == Some(want(&nft))
    });

    // 6. Lower the data allocation (seed SetDataMb + Save) to just above what is used:
    // the kernel cuts the device off and the cut-off arrives on the stream.
    let used = api.session(sid)["data_cons_bytes"].as_u64().unwrap();
    let new_mb = (used + 200_000) as f64 / 1e6;
    let p = api
        .patch(
            &format!("/v1/sessions/{sid}"),
            &json!({ "data_mb": new_mb }),
        )
        .ok("set data_mb");
    assert_eq!(p["data_bytes"].as_u64(), Some(used + 200_000));
    // 600 datagrams of 1000 bytes down: more than the 200 kB left.
    let _ = UdpTransfer::run(&c.ns, servers.udp(false).addr, 1, 100, 600, 1000);
    let cut = events.wait_for("quota_cutoff", T, |n, v| {
        n == "quota_cutoff" && v["device_id"] == id
    });
    assert_eq!(cut["mac"], c.mac.as_str());
    events.wait_for("session_consumed", T, |n, v| {
        n == "session_consumed" && v["session_id"] == sid
    });
    events.wait_for("disconnected", T, |n, v| {
        n == "disconnected" && v["device_id"] == id && v["notification"] == "no session left"
    });
    let s = api.session(sid);
    assert_eq!(s["status"], "consumed", "{s}");
    assert_eq!(s["remaining_data_bytes"], 0);
    let conn = api
        .get(&format!("/v1/devices/{id}/connected"))
        .ok("is connected");
    assert_eq!(conn["connected"], false);
    assert_eq!(
        api.get(&format!("/v1/devices/{id}/session")).status,
        409,
        "GetSession: none available"
    );
    let r = api.connect(id, "again");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("no_available_session"))
    );
    drop(agent);
}

#[test]
fn devices_and_sessions_are_removed_only_when_idle_or_forced() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let c = hs.client(0).clone();
    let agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    let dev = api
        .post("/v1/devices", &json!({ "mac": c.mac }))
        .ok("create device");
    let id = dev["id"].as_i64().unwrap();
    let running = api.create_session(id, 0, 3_600, 0.0, None, 0, 0, false)["id"]
        .as_i64()
        .unwrap();
    let queued = api.create_session(id, 0, 600, 0.0, None, 0, 0, false)["id"]
        .as_i64()
        .unwrap();
    api.connect(id, "go").ok("connect");
    assert!(agent.client_or_zero(&c.mac).allowed);

    let r = api.request("DELETE", &format!("/v1/sessions/{running}"), None);
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("session_running")),
        "{}",
        r.body
    );
    let r = api.request("DELETE", &format!("/v1/sessions/{queued}"), None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(api.get(&format!("/v1/sessions/{queued}")).status, 404);
    let r = api.request("DELETE", &format!("/v1/devices/{id}"), None);
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("device_connected")),
        "{}",
        r.body
    );
    let r = api.request("DELETE", &format!("/v1/devices/{id}?force=maybe"), None);
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("invalid_query")),
        "{}",
        r.body
    );
    assert!(
        agent.client_or_zero(&c.mac).allowed,
        "a refused removal changes nothing"
    );

    // Forced through the CLI: disconnected (blocked at once), then removed.
    let sock = agent.builder().api_socket.to_str().unwrap().to_string();
    let ctl = |args: &[&str]| {
        std::process::Command::new(session_tests::agent_bin())
            .args(args)
            .args(["--api-socket", &sock])
            .output()
            .expect("spawn session-agent")
    };
    let out = ctl(&["devices", "remove", &id.to_string(), "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(api.get(&format!("/v1/devices/{id}")).status, 404);
    assert_eq!(api.get(&format!("/v1/sessions/{running}")).status, 404);
    assert!(
        !agent.client_or_zero(&c.mac).allowed,
        "still let through after removal"
    );
    let out = ctl(&["sessions", "remove", &running.to_string()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown_session"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
