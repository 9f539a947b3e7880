//! Bad input on every route of the control API gets a 4xx with a JSON error
//! and changes nothing; the served routes match the OpenAPI document; the TCP
//! listener wants its token; metrics and the RFC 8908 API answer.

use std::time::Duration;

use serde_json::{json, Value};
use session_tests::{api::ApiClient, require_root, AgentBuilder, Hotspot};

/// Everything the API shows that a request could change.
fn state(api: &ApiClient) -> Value {
    let devices = api.get("/v1/devices").ok("list devices");
    let mut sessions = Vec::new();
    for d in devices.as_array().unwrap() {
        let id = d["id"].as_i64().unwrap();
        sessions.push(
            api.get(&format!("/v1/devices/{id}/sessions"))
                .ok("sessions"),
        );
    }
    json!({ "devices": devices, "sessions": sessions })
}

#[track_caller]
fn expect_4xx(api: &ApiClient, method: &str, path: &str, body: Option<&[u8]>, what: &str) {
    let r = api
        .raw(method, path, body)
        .unwrap_or_else(|e| panic!("{what}: {method} {path}: {e}"));
    assert!(
        (400..500).contains(&r.status),
        "{what}: {method} {path} -> HTTP {} {} (expected 4xx)",
        r.status,
        r.body
    );
    assert!(
        r.body["code"].as_str().is_some_and(|c| !c.is_empty()) && r.body["message"].is_string(),
        "{what}: {method} {path}: error body without code/message: {}",
        r.body
    );
}

#[test]
fn bad_input_gets_4xx_and_changes_nothing() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    let dev = api
        .post(
            "/v1/devices",
            &json!({ "mac": "02:00:00:00:aa:01", "hostname": "a" }),
        )
        .ok("create device");
    let d = dev["id"].as_i64().unwrap();
    let other = api
        .post("/v1/devices", &json!({ "mac": "02:00:00:00:aa:02" }))
        .ok("create device 2");
    let s = api.create_session(d, 2, 600, 10.0, Some(1), 5, 2, false);
    let sid = s["id"].as_i64().unwrap();
    let before = state(&api);

    // Duplicate MAC: a stable 409, not a server error.
    let r = api.post("/v1/devices", &json!({ "mac": "02:00:00:00:aa:01" }));
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("duplicate_mac")),
        "{}",
        r.body
    );
    // Rekey to a MAC whose device has sessions: a 409 that says so.
    let other_id = other["id"].as_i64().unwrap();
    let other_session = api.create_session(other_id, 0, 60, 0.0, None, 0, 0, false);
    let r = api.post(
        &format!("/v1/devices/{d}/rekey"),
        &json!({ "mac": other["mac"] }),
    );
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("mac_has_sessions")),
        "{}",
        r.body
    );
    api.request(
        "DELETE",
        &format!("/v1/sessions/{}", other_session["id"]),
        None,
    )
    .ok("remove the other device's session");

    // Addresses no client can send from: a clear 400, nothing created or changed.
    for mac in [
        "00:00:00:00:00:00",
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
    ] {
        let r = api.post("/v1/devices", &json!({ "mac": mac }));
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (400, Some("malformed_mac")),
            "{mac}: {}",
            r.body
        );
        let r = api.post(&format!("/v1/devices/{d}/rekey"), &json!({ "mac": mac }));
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (400, Some("malformed_mac")),
            "rekey to {mac}: {}",
            r.body
        );
    }

    let huge = b"1e400".as_slice();
    let big_int = b"123456789012345678901234567890".as_slice();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"mac\": ".to_vec()),
        ("not an object", b"[1,2,3]".to_vec()),
        (
            "string for a number",
            br#"{"type": "2", "time_secs": "ten"}"#.to_vec(),
        ),
        (
            "NaN as a string",
            br#"{"type": 1, "data_mb": "NaN"}"#.to_vec(),
        ),
        ("NaN literal", br#"{"type": 1, "data_mb": NaN}"#.to_vec()),
        (
            "overflowing number",
            [br#"{"type": 1, "data_mb": "#.as_slice(), huge, b"}"].concat(),
        ),
        (
            "huge integer",
            [br#"{"type": 0, "time_secs": "#.as_slice(), big_int, b"}"].concat(),
        ),
        ("negative", br#"{"type": 0, "time_secs": -5}"#.to_vec()),
        (
            "fraction for an integer",
            br#"{"type": 0, "time_secs": 1.5}"#.to_vec(),
        ),
        (
            "unknown key",
            br#"{"type": 0, "time_secs": 10, "bogus": 1}"#.to_vec(),
        ),
        (
            "out of range",
            br#"{"type": 0, "time_secs": 18446744073709551615}"#.to_vec(),
        ),
        ("bad type", br#"{"type": 7, "time_secs": 10}"#.to_vec()),
        (
            "negative speed",
            br#"{"type": 0, "time_secs": 10, "down_mbits": -1}"#.to_vec(),
        ),
        ("zero allocation", br#"{"type": 1, "data_mb": 0}"#.to_vec()),
        ("huge data", br#"{"type": 1, "data_mb": 1e300}"#.to_vec()),
        ("oversize body", {
            let mut v = br#"{"notification": ""#.to_vec();
            v.extend(std::iter::repeat_n(b'x', 200_000));
            v.extend(b"\"}");
            v
        }),
    ];
    let posts = [
        "/v1/devices".to_string(),
        format!("/v1/devices/{d}/sessions"),
        format!("/v1/devices/{d}/rekey"),
        format!("/v1/devices/{d}/connect"),
        format!("/v1/devices/{d}/disconnect"),
        format!("/v1/sessions/{sid}/inc"),
    ];
    for path in &posts {
        for (what, b) in &bodies {
            // connect/disconnect/inc accept some of these shapes' keys; every body
            // above is wrong for every route (bad JSON, unknown keys or bad values).
            if (path.ends_with("/connect") || path.ends_with("/disconnect"))
                && !(what.contains("JSON")
                    || *what == "not an object"
                    || what.contains("unknown")
                    || what.contains("oversize")
                    || b.starts_with(b"{\"type\""))
            {
                continue;
            }
            expect_4xx(&api, "POST", path, Some(b), what);
        }
    }
    let patches: Vec<(&str, &[u8])> = vec![
        ("malformed", b"{"),
        ("string for a number", br#"{"time_secs": "x"}"#),
        ("NaN", br#"{"data_mb": "NaN"}"#),
        ("infinite", br#"{"data_mb": 1e400}"#),
        ("negative", br#"{"data_cons": -1}"#),
        ("too large", br#"{"time_cons": 99999999999999}"#),
        ("negative speed", br#"{"down_mbits": -3}"#),
        ("speed overflow", br#"{"up_mbits": 4294967296}"#),
        ("timestamp", br#"{"started_at": -1}"#),
        ("exp days", br#"{"exp_days": 99999999}"#),
        ("zero allocation", br#"{"time_secs": 0}"#),
        ("unknown key", br#"{"remaining_time": 5}"#),
        ("wrong bool", br#"{"use_global_speed": "yes"}"#),
        ("empty body", b""),
    ];
    for (what, b) in &patches {
        expect_4xx(&api, "PATCH", &format!("/v1/sessions/{sid}"), Some(b), what);
    }
    // Unknown and malformed ids on every route with one.
    for id in ["999999", "abc", "-1x", "18446744073709551616"] {
        for (m, p) in [
            ("GET", format!("/v1/devices/{id}")),
            ("GET", format!("/v1/devices/{id}/sessions")),
            ("GET", format!("/v1/devices/{id}/current-session")),
            ("GET", format!("/v1/devices/{id}/session")),
            ("GET", format!("/v1/devices/{id}/connected")),
            ("POST", format!("/v1/devices/{id}/connect")),
            ("POST", format!("/v1/devices/{id}/disconnect")),
            ("GET", format!("/v1/sessions/{id}")),
            ("POST", format!("/v1/sessions/{id}/save")),
            ("POST", format!("/v1/sessions/{id}/reload")),
            ("GET", format!("/v1/events?device={id}")),
        ] {
            expect_4xx(&api, m, &p, None, "unknown/malformed id");
        }
        expect_4xx(
            &api,
            "POST",
            &format!("/v1/devices/{id}/sessions"),
            Some(br#"{"type":0,"time_secs":5}"#),
            "session for unknown device",
        );
        expect_4xx(
            &api,
            "POST",
            &format!("/v1/devices/{id}/rekey"),
            Some(br#"{"mac":"02:00:00:00:aa:09"}"#),
            "rekey unknown device",
        );
        expect_4xx(
            &api,
            "PATCH",
            &format!("/v1/sessions/{id}"),
            Some(br#"{"time_secs":5}"#),
            "patch unknown session",
        );
        expect_4xx(
            &api,
            "POST",
            &format!("/v1/sessions/{id}/inc"),
            Some(br#"{"time_cons":5}"#),
            "inc unknown session",
        );
    }
    for mac in ["zz:zz", "02:00:00:00:aa:99", "02-00-00-00-aa-01x"] {
        expect_4xx(
            &api,
            "GET",
            &format!("/v1/devices/by-mac/{mac}"),
            None,
            "by-mac",
        );
    }
    for ip in ["not-an-ip", "10.201.0.250", "fd00:201::fe", "999.1.1.1"] {
        expect_4xx(
            &api,
            "GET",
            &format!("/v1/devices/by-ip/{ip}"),
            None,
            "by-ip",
        );
    }
    expect_4xx(
        &api,
        "GET",
        "/v1/events?device=1&bogus=2",
        None,
        "unknown query key",
    );
    expect_4xx(&api, "GET", "/v1/nope", None, "unknown route");
    // Wrong content type.
    let r = api
        .raw_with_headers(
            "POST",
            "/v1/devices",
            &["Content-Type: text/plain"],
            br#"{"mac":"02:00:00:00:aa:05"}"#,
        )
        .unwrap();
    assert!(
        (400..500).contains(&r.status) || r.status == 201,
        "content type: {}",
        r.status
    );
    if r.status == 201 {
        // Accepted as JSON anyway: undo for the comparison below.
        panic!("a text/plain body must not create a device: {}", r.body);
    }
    // Connecting a device without a session: 409, nothing changes.
    let r = api.connect(other["id"].as_i64().unwrap(), "x");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("no_available_session"))
    );

    assert_eq!(state(&api), before, "bad requests changed the state");
    // The agent is still fine.
    api.get("/v1/status").ok("status after the bad requests");
}

#[test]
fn served_routes_match_openapi() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    let doc = api.get("/v1/openapi.json").ok("openapi");
    let in_repo: Value =
        serde_json::from_str(include_str!("../../session-agent/openapi.json")).unwrap();
    assert_eq!(
        doc, in_repo,
        "served document differs from session-agent/openapi.json"
    );
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", "999999")
            .replace("{mac}", "02:00:00:00:00:99")
            .replace("{ip}", "10.201.0.250")
            .replace("{code}", "ZZZZZZZZZZ");
        let documented: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.to_uppercase())
            .collect();
        for m in methods {
            if m == "GET" && path == "/v1/events" {
                // An endless stream; its route is checked with a bad query.
                let r = api.get("/v1/events?device=999999");
                assert_eq!(r.status, 404, "events route");
                continue;
            }
            let r = api
                .raw_with_headers(
                    m,
                    &concrete,
                    &["Content-Type: application/json"],
                    if m == "GET" { b"" } else { b"{}" },
                )
                .unwrap_or_else(|e| panic!("{m} {concrete}: {e}"));
            if documented.contains(&m.to_string()) {
                assert!(
                    r.status != 405 && r.body["code"] != "no_route",
                    "{m} {path} is documented but not served: HTTP {} {}",
                    r.status,
                    r.body
                );
                assert!(r.status < 500, "{m} {path}: HTTP {} {}", r.status, r.body);
            } else {
                assert_eq!(
                    (r.status, r.body["code"].as_str()),
                    (405, Some("method_not_allowed")),
                    "{m} {path} is served but not documented, or its 405 is not the API's JSON error: {}",
                    r.body
                );
            }
            checked += 1;
        }
    }
    // A path that is not documented is not served, and says so in JSON.
    let r = api.get("/v1/sessions");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (404, Some("no_route")),
        "{}",
        r.body
    );
    assert!(checked >= 80, "only {checked} combinations checked");
}

use session_tests::traffic::http_raw as http;

#[test]
fn tcp_token_metrics_and_captive_api() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let gw4 = hs.gw_lan_addr(false);
    let captive: std::net::SocketAddr = (gw4, 8908).into();
    let agent = AgentBuilder::new(&hs)
        .arg("--api-tcp")
        .arg("127.0.0.1:7800")
        .arg("--api-token")
        .arg("t0k3n")
        .arg("--captive-listen")
        .arg(captive.to_string())
        .arg("--portal-url")
        .arg("https://portal.example/")
        .arg("--metrics-top-clients")
        .arg("1")
        .arg("--poll-ms")
        .arg("100")
        .arg("--commit-ms")
        .arg("100")
        .start();
    let api = agent.api();
    let tcp: std::net::SocketAddr = "127.0.0.1:7800".parse().unwrap();
    let get = |path: &str, auth: Option<&str>| {
        let a = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        http(
            &hs.gw_ns,
            tcp,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{a}\r\n"),
        )
    };
    assert_eq!(get("/v1/status", None).0, 401, "no token");
    assert_eq!(get("/v1/status", Some("wrong")).0, 401, "wrong token");
    let (st, _, body) = get("/v1/status", Some("t0k3n"));
    assert_eq!(st, 200, "{body}");

    // Two clients: one connected with a time_or_data session, one not.
    let (a, b) = (hs.client(0).clone(), hs.client(1).clone());
    let da = api.device_id(&a.mac);
    let db = api.device_id(&b.mac);
    api.create_session(da, 2, 3600, 5.0, None, 0, 0, false);
    api.connect(da, "hi").ok("connect a");
    let q = format!("GET /captive-portal/api HTTP/1.1\r\nHost: {gw4}\r\nConnection: close\r\n\r\n");
    let (st, head, body) = http(&a.ns, captive, &q);
    assert_eq!(st, 200, "{body}");
    assert!(
        head.contains("content-type: application/captive+json"),
        "{head}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["captive"], false, "{v}");
    assert_eq!(v["user-portal-url"], "https://portal.example/");
    let secs = v["seconds-remaining"].as_u64().expect("seconds-remaining");
    assert!((3590..=3600).contains(&secs), "{v}");
    assert_eq!(v["bytes-remaining"].as_u64(), Some(5_000_000), "{v}");
    assert_eq!(v["can-extend-session"], true);
    let (st, _, body) = http(&b.ns, captive, &q);
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["captive"], true, "client b has no session: {v}");
    assert!(v.get("seconds-remaining").is_none(), "{v}");
    let _ = db;

    // Metrics: per-client series capped at 1 client per LAN.
    std::thread::sleep(Duration::from_millis(300));
    let (st, head, m) = get("/metrics", Some("t0k3n"));
    assert_eq!(st, 200);
    assert!(head.contains("text/plain"), "{head}");
    let (_, _, m1) = get("/v1/metrics", Some("t0k3n"));
    for name in [
        "session_agent_connected_devices 1",
        "session_agent_sessions{state=\"running\"} 1",
        "session_agent_poll_duration_seconds_count",
        "session_agent_ring_events_total{kind=\"new_client\"}",
        "session_agent_checkpoint_duration_seconds_count",
        "session_agent_commit_duration_seconds_count",
        "session_agent_commit_errors_total 0",
        "session_agent_devices 2",
        "session_agent_sessions{state=\"paused\"} 0",
        "session_agent_datapath_events_lost_total{lan=\"lan0\"} 0",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
        assert!(m1.contains(name), "/v1/metrics lacks {name}");
    }
    let macs: std::collections::BTreeSet<&str> = m
        .lines()
        .filter(|l| l.starts_with("session_agent_client_bytes_total{"))
        .filter_map(|l| l.split("mac=\"").nth(1)?.split('"').next())
        .collect();
    assert!(macs.len() <= 1, "cap of 1 client exceeded: {macs:?}");
    let count = |family: &str| -> u64 {
        let prefix = format!("{family}_count ");
        m.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}in the metrics"))
    };
    assert!(
        count("session_agent_poll_duration_seconds") > 0,
        "no polls counted"
    );
    assert!(
        count("session_agent_commit_duration_seconds") > 0,
        "no commits counted with --commit-ms 100"
    );
    drop(agent);
}

#[test]
fn tcp_listener_without_token_is_refused() {
    require_root();
    let out =
        session_tests::agent::cli_root(&["run", "--lan", "lo", "--api-tcp", "127.0.0.1:7801"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without a token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// Sends a raw request to the captive listener from `ns`; the status and the
/// JSON error body.
fn captive_error(ns: &str, captive: std::net::SocketAddr, req: &str) -> (u16, Value) {
    let (status, head, body) = session_tests::traffic::http_raw(ns, captive, req);
    assert!(
        head.contains("content-type: application/json"),
        "{head}\n{body}"
    );
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {head}\n{body}"));
    assert!(
        v["code"].as_str().is_some_and(|c| !c.is_empty())
            && v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    (status, v)
}

#[test]
fn errors_the_http_server_answers_itself_carry_code_and_message() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let captive: std::net::SocketAddr = (hs.gw_lan_addr(false), 8908).into();
    let agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .start();
    let api = agent.api();

    // The control API, on its socket.
    let long = format!("/v1/devices/{}", "1".repeat(100 * 1024));
    let r = api.raw("GET", &long, None).expect("100 KB path");
    assert_eq!(
        (r.status, &r.body["code"]),
        (414, &json!("uri_too_long")),
        "{}",
        r.body
    );
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("65534")),
        "{}",
        r.body
    );
    let r = api
        .raw_with_headers("GET", "/v1/status", &["Not a header"], b"")
        .expect("broken header");
    assert_eq!(
        (r.status, &r.body["code"]),
        (400, &json!("bad_request")),
        "{}",
        r.body
    );
    // More header lines than the server takes (100): refused whatever the
    // reads' sizes (a head of too many bytes is refused only at a read
    // boundary past the limit, so a large one may slip in whole).
    let pads: Vec<String> = (0..150).map(|i| format!("X-Pad-{i}: p")).collect();
    let many: Vec<&str> = pads.iter().map(String::as_str).collect();
    let r = api
        .raw_with_headers("GET", "/v1/status", &many, b"")
        .expect("large head");
    assert_eq!(
        (r.status, &r.body["code"]),
        (431, &json!("headers_too_large")),
        "{}",
        r.body
    );
    let big = vec![b' '; 100 * 1024];
    let r = api
        .raw("POST", "/v1/vouchers", Some(&big))
        .expect("large body");
    assert_eq!(
        (r.status, &r.body["code"]),
        (413, &json!("body_too_large")),
        "{}",
        r.body
    );
    expect_4xx(&api, "GET", "/v1/nowhere", None, "unknown path");
    expect_4xx(&api, "DELETE", "/v1/status", None, "unknown method");

    // The captive listener: the RFC 8908 API and the portal page.
    let ns = &hs.client(0).ns;
    let req = |line: &str| format!("{line}\r\nHost: {captive}\r\nConnection: close\r\n\r\n");
    for (request, status, code) in [
        (
            req(&format!("GET /{} HTTP/1.1", "a".repeat(100 * 1024))),
            414,
            "uri_too_long",
        ),
        (
            "GET / HTTP/1.1\r\nHost x\r\n\r\n".to_string(),
            400,
            "bad_request",
        ),
        (req("GET /nowhere HTTP/1.1"), 404, "no_route"),
        (
            req("DELETE /captive-portal/api HTTP/1.1"),
            405,
            "method_not_allowed",
        ),
        (
            req("GET /portal/redeem HTTP/1.1"),
            405,
            "method_not_allowed",
        ),
        (req("GET /portal/logo HTTP/1.1"), 404, "no_logo"),
    ] {
        let (st, v) = captive_error(ns, captive, &request);
        assert_eq!(
            (st, v["code"].as_str().unwrap()),
            (status, code),
            "{:.80}: {v}",
            request
        );
    }
}
