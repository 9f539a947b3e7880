//! Vouchers through the control API and the CLI of a real agent: batches,
//! states, export, revocation, redemption (one winner of many at once, the MAC
//! lock, the limit on wrong codes), bad input, and codes surviving kill -9.

use std::sync::{Arc, Barrier};

use serde_json::{json, Value};
use session_tests::{api::ApiClient, require_root, AgentBuilder, Hotspot};

fn batch(count: u32, extra: Value) -> Value {
    let mut b = json!({
        "count": count, "batch": "morning", "price": "20 PHP", "type": 0,
        "time_secs": 3600, "down_mbits": 5, "up_mbits": 2,
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn codes(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["code"].as_str().unwrap().to_string())
        .collect()
}

fn new_device(api: &ApiClient, n: u32) -> i64 {
    let mac = format!("02:00:00:00:{:02x}:{:02x}", n >> 8, n & 0xff);
    api.post("/v1/devices", &json!({ "mac": mac })).ok("device")["id"]
        .as_i64()
        .unwrap()
}

#[track_caller]
fn refused(r: session_tests::api::Response, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (status, Some(code)),
        "{}",
        r.body
    );
}

#[test]
fn a_batch_is_made_listed_exported_and_revoked_through_the_api() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs).start();
    let api = agent.api();

    let made = api
        .post("/v1/vouchers", &batch(3, json!({"group": 4})))
        .ok("create");
    let list = codes(&made);
    assert_eq!(list.len(), 3);
    for v in made.as_array().unwrap() {
        let code = v["code"].as_str().unwrap();
        assert_eq!(code.len(), 10);
        assert!(
            code.bytes()
                .all(|b| b"23456789ABCDEFGHJKMNPQRSTUVWXYZ".contains(&b)),
            "{code}"
        );
        assert_eq!(v["display_code"].as_str().unwrap().len(), 12, "{v}");
        assert_eq!(v["state"], "unused");
        assert_eq!(
            (v["time_secs"].as_u64(), v["down_mbits"].as_i64()),
            (Some(3600), Some(5))
        );
    }
    let other = api
        .post(
            "/v1/vouchers",
            &batch(2, json!({"batch": "evening", "type": 1, "data_mb": 500.0})),
        )
        .ok("second batch");
    assert_eq!(other[0]["data_mb"], 500.0);

    let all: Vec<Value> = api
        .get("/v1/vouchers")
        .ok("list")
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(all.len(), 5);
    let morning = api.get("/v1/vouchers?batch=morning").ok("by batch");
    assert_eq!(codes(&morning).len(), 3);
    // Typed the way a customer does: lower case, with the printed dashes.
    let typed = made[0]["display_code"].as_str().unwrap().to_lowercase();
    let one = api.get(&format!("/v1/vouchers/{typed}")).ok("one");
    assert_eq!(one["code"], made[0]["code"]);

    // Revoke one unused code; it stays listed, as revoked, and cannot be revoked twice.
    let gone = api
        .request("DELETE", &format!("/v1/vouchers/{}", list[2]), None)
        .ok("revoke");
    assert_eq!(gone["state"], "revoked");
    refused(
        api.request("DELETE", &format!("/v1/vouchers/{}", list[2]), None),
        409,
        "voucher_not_revocable",
    );
    assert_eq!(
        codes(&api.get("/v1/vouchers?state=revoked").ok("revoked")),
        [list[2].clone()]
    );
    assert_eq!(
        codes(
            &api.get("/v1/vouchers?batch=morning&state=unused")
                .ok("unused")
        )
        .len(),
        2
    );

    // CSV: a header and one line per code of the batch.
    let csv = api.get("/v1/vouchers/export?batch=morning").ok("csv");
    let csv = csv.as_str().expect("CSV is text");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("code,display_code,batch,price,state"),
        "{csv}"
    );
    assert_eq!(lines.len(), 4, "{csv}");
    for c in &list {
        assert!(csv.contains(c.as_str()), "{c} missing from {csv}");
    }
    assert!(lines.iter().any(|l| l.contains(",revoked,")), "{csv}");
    // The printable sheet names each code as printed, and what it buys.
    let html = api
        .get("/v1/vouchers/export?batch=morning&format=html")
        .ok("html");
    let html = html.as_str().unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains(made[0]["display_code"].as_str().unwrap()));
    assert!(
        html.contains("1 h 00 min") && html.contains("20 PHP"),
        "{html}"
    );
}

#[test]
fn bad_voucher_requests_get_the_apis_error_codes_and_change_nothing() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    let dev = new_device(&api, 1);
    for (body, code) in [
        (batch(0, json!({})), "invalid_batch"),
        (batch(1_001, json!({})), "invalid_batch"),
        (batch(1, json!({"code_length": 3})), "invalid_batch"),
        (batch(1, json!({"group": 11})), "invalid_batch"),
        (batch(1, json!({"max_devices": 0})), "invalid_batch"),
        (batch(1, json!({"batch": ""})), "invalid_batch"),
        (batch(1, json!({"valid_until": 1})), "invalid_batch"),
        (batch(1, json!({"time_secs": 0})), "zero_allocation"),
        (batch(1, json!({"type": 7})), "invalid_session_type"),
        (batch(1, json!({"down_mbits": -1})), "out_of_range"),
        (batch(1, json!({"colour": "red"})), "invalid_body"),
        (json!({"count": 1, "batch": "x"}), "invalid_body"),
    ] {
        refused(api.post("/v1/vouchers", &body), 400, code);
    }
    refused(api.get("/v1/vouchers?state=lost"), 400, "invalid_query");
    refused(
        api.get("/v1/vouchers/export?format=pdf"),
        400,
        "invalid_query",
    );
    refused(api.get("/v1/vouchers/ABCDEFGHJK"), 404, "unknown_voucher");
    refused(api.get("/v1/vouchers/0O1Il"), 404, "unknown_voucher");
    refused(
        api.request("DELETE", "/v1/vouchers/ABCDEFGHJK", None),
        404,
        "unknown_voucher",
    );
    refused(
        api.post(&format!("/v1/devices/{dev}/redeem"), &json!({"code": 5})),
        400,
        "invalid_body",
    );
    refused(
        api.post("/v1/devices/999999/redeem", &json!({"code": "ABCDEFGHJK"})),
        404,
        "unknown_voucher",
    );
    assert!(api
        .get("/v1/vouchers")
        .ok("list")
        .as_array()
        .unwrap()
        .is_empty());
    assert!(api
        .get(&format!("/v1/devices/{dev}/sessions"))
        .ok("sessions")
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn of_fifty_devices_redeeming_one_code_at_once_exactly_one_is_served() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    let code = codes(&api.post("/v1/vouchers", &batch(1, json!({}))).ok("create"))[0].clone();
    let devices: Vec<i64> = (0..50).map(|i| new_device(&api, 0x100 + i)).collect();
    let barrier = Arc::new(Barrier::new(devices.len()));
    let socket = agent.builder().api_socket.clone();
    let threads: Vec<_> = devices
        .iter()
        .map(|&d| {
            let (barrier, code, socket) = (barrier.clone(), code.clone(), socket.clone());
            std::thread::spawn(move || {
                let api = ApiClient::new(&socket);
                barrier.wait();
                let r = api.post(&format!("/v1/devices/{d}/redeem"), &json!({ "code": code }));
                (d, r)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let won: Vec<_> = results.iter().filter(|(_, r)| r.status == 201).collect();
    assert_eq!(
        won.len(),
        1,
        "winners: {:?}",
        won.iter().map(|(d, _)| d).collect::<Vec<_>>()
    );
    for (d, r) in &results {
        if r.status != 201 {
            assert_eq!(
                (r.status, r.body["code"].as_str()),
                (403, Some("voucher_locked")),
                "device {d}: {}",
                r.body
            );
        }
    }
    let (winner, r) = won[0];
    assert_eq!(r.body["session"]["device_id"], *winner);
    assert_eq!(r.body["session"]["running"], true, "{}", r.body);
    assert_eq!(r.body["queued"], false);
    let v = api.get(&format!("/v1/vouchers/{code}")).ok("voucher");
    assert_eq!(v["state"], "active");
    assert_eq!(v["redemptions"].as_array().unwrap().len(), 1);
    assert_eq!(v["redemptions"][0]["device_id"], *winner);
    // One session in all, the winner's.
    let sessions: usize = devices
        .iter()
        .map(|d| {
            api.get(&format!("/v1/devices/{d}/sessions"))
                .ok("s")
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(sessions, 1);
}

#[test]
fn a_code_is_locked_to_its_device_and_wrong_codes_are_limited_per_client() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    let made = api.post("/v1/vouchers", &batch(3, json!({}))).ok("create");
    let c = codes(&made);
    let a = api.device_id(&hs.client(0).mac);
    let b = new_device(&api, 7);

    // By the client's address, as a portal that only knows it does.
    let ip = hs.client(0).addr(false);
    let r = api
        .post(
            &format!("/v1/devices/by-ip/{ip}/redeem"),
            &json!({"code": c[0]}),
        )
        .ok("redeem by ip");
    assert_eq!(r["session"]["device_id"], a);
    assert_eq!(r["session"]["time_secs"], 3600);
    assert_eq!(r["session"]["down_mbits"], 5);
    assert!(
        api.get(&format!("/v1/devices/{a}/connected")).ok("c")["connected"]
            .as_bool()
            .unwrap()
    );

    refused(
        api.post(&format!("/v1/devices/{b}/redeem"), &json!({"code": c[0]})),
        403,
        "voucher_locked",
    );
    refused(
        api.post(&format!("/v1/devices/{a}/redeem"), &json!({"code": c[0]})),
        409,
        "voucher_already_redeemed",
    );
    // A second code on a connected device waits behind the running session.
    let r = api
        .post(&format!("/v1/devices/{a}/redeem"), &json!({"code": c[1]}))
        .ok("second");
    assert_eq!(r["queued"], true);
    assert_eq!(r["session"]["status"], "unstarted");

    refused(
        api.post(&format!("/v1/devices/{b}/redeem"), &json!({"code": c[0]})),
        403,
        "voucher_locked",
    );
    // Device b: five codes that do not exist (a code in use is no guess and
    // does not count); then even a good code is held back.
    for wrong in [
        "ZZZZZZZZZZ",
        "YYYYYYYYYY",
        "XXXXXXXXXX",
        "WWWWWWWWWW",
        "VVVVVVVVVV",
    ] {
        refused(
            api.post(&format!("/v1/devices/{b}/redeem"), &json!({"code": wrong})),
            404,
            "unknown_voucher",
        );
    }
    refused(
        api.post(&format!("/v1/devices/{b}/redeem"), &json!({"code": c[2]})),
        429,
        "too_many_tries",
    );
    assert_eq!(
        api.get(&format!("/v1/vouchers/{}", c[2])).ok("c2")["state"],
        "unused"
    );
    // Another client is not held back.
    let d = new_device(&api, 8);
    api.post(&format!("/v1/devices/{d}/redeem"), &json!({"code": c[2]}))
        .ok("other client");

    let m = api.get("/metrics").ok("metrics");
    let m = m.as_str().unwrap();
    for line in [
        "session_agent_voucher_redemptions_total 3",
        "session_agent_voucher_refusals_total{reason=\"unknown_voucher\"} 5",
        "session_agent_voucher_refusals_total{reason=\"voucher_locked\"} 2",
        "session_agent_voucher_refusals_total{reason=\"voucher_already_redeemed\"} 1",
        "session_agent_voucher_tries_limited_total 1",
    ] {
        assert!(m.lines().any(|l| l == line), "no {line:?} in\n{m}");
    }
}

#[test]
fn codes_and_redemptions_survive_kill_9() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let mut agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    let c = codes(&api.post("/v1/vouchers", &batch(2, json!({}))).ok("create"));
    let dev = api.device_id(&hs.client(0).mac);
    let r = api
        .post(&format!("/v1/devices/{dev}/redeem"), &json!({"code": c[0]}))
        .ok("redeem");
    let sid = r["session"]["id"].clone();
    let before = api.get("/v1/vouchers").ok("before");
    agent.kill9();
    let agent = agent.restart();
    let api = agent.api();
    let after = api.get("/v1/vouchers").ok("after");
    assert_eq!(after, before);
    let redeemed = api.get(&format!("/v1/vouchers/{}", c[0])).ok("redeemed");
    assert_eq!(redeemed["state"], "active");
    assert_eq!(redeemed["redemptions"][0]["session_id"], sid);
    assert_eq!(
        api.get(&format!("/v1/sessions/{sid}")).ok("session")["device_id"],
        dev
    );
    // Still locked to its device, and the other code still redeemable.
    refused(
        api.post(&format!("/v1/devices/{dev}/redeem"), &json!({"code": c[0]})),
        409,
        "voucher_already_redeemed",
    );
    api.post(&format!("/v1/devices/{dev}/redeem"), &json!({"code": c[1]}))
        .ok("second code after restart");
}

use session_tests::agent::cli_over_socket as cli;

#[track_caller]
fn cli_ok(sock: &std::path::Path, args: &[&str]) -> String {
    let out = cli(sock, args);
    assert!(
        out.status.success(),
        "session-agent {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_cli_makes_lists_exports_redeems_and_revokes_codes() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs).start();
    let sock = agent.builder().api_socket.clone();
    let made: Value = serde_json::from_str(&cli_ok(
        &sock,
        &[
            "vouchers",
            "create",
            "--count",
            "2",
            "--batch",
            "cli roll",
            "--type",
            "data",
            "--data-mb",
            "100",
            "--valid-days",
            "30",
            "--code-length",
            "8",
            "--group",
            "4",
            "--json",
        ],
    ))
    .unwrap();
    let c = codes(&made);
    assert_eq!(c[0].len(), 8);
    assert!(made[0]["valid_until"].as_i64().unwrap() > 1_700_000_000);
    let table = cli_ok(&sock, &["vouchers", "list", "--batch", "cli roll"]);
    assert!(
        table.contains("CODE") && table.contains(made[1]["display_code"].as_str().unwrap()),
        "{table}"
    );
    assert!(table.contains("100 MB") && table.contains("0/1"), "{table}");

    let dir = hs.state_dir.join("export");
    std::fs::create_dir_all(&dir).unwrap();
    let sheet = dir.join("sheet.html");
    cli_ok(
        &sock,
        &[
            "vouchers",
            "export",
            "--batch",
            "cli roll",
            "--format",
            "html",
            "--output",
            sheet.to_str().unwrap(),
        ],
    );
    let html = std::fs::read_to_string(&sheet).unwrap();
    assert!(
        html.contains(made[0]["display_code"].as_str().unwrap()) && html.contains("100 MB"),
        "{html}"
    );
    let csv = cli_ok(&sock, &["vouchers", "export"]);
    assert_eq!(csv.lines().count(), 3, "{csv}");

    let dev = agent.api().device_id(&hs.client(0).mac).to_string();
    let said = cli_ok(&sock, &["vouchers", "redeem", &dev, &c[0].to_lowercase()]);
    assert!(said.contains("connected"), "{said}");
    let shown = cli_ok(&sock, &["vouchers", "show", &c[0]]);
    assert!(shown.contains("active"), "{shown}");
    cli_ok(&sock, &["vouchers", "revoke", &c[1]]);
    let out = cli(&sock, &["vouchers", "revoke", &c[0]]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be revoked"), "{err}");
}

#[test]
fn a_code_becomes_used_up_when_its_session_ends_and_expired_past_its_last_day() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs).arg("--poll-ms").arg("100").start();
    let api = agent.api();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let short = codes(
        &api.post("/v1/vouchers", &batch(1, json!({"time_secs": 2})))
            .ok("short"),
    );
    let dated = codes(
        &api.post("/v1/vouchers", &batch(1, json!({"valid_until": now + 3})))
            .ok("dated"),
    );
    assert_eq!(
        api.get(&format!("/v1/vouchers/{}", dated[0])).ok("d")["state"],
        "unused"
    );

    let dev = api.device_id(&hs.client(0).mac);
    api.post(
        &format!("/v1/devices/{dev}/redeem"),
        &json!({"code": short[0]}),
    )
    .ok("redeem");
    let other = new_device(&api, 9);
    std::thread::sleep(std::time::Duration::from_secs(4));
    // The 2 s session ran out at the gateway's clock: the code is used up.
    let v = api
        .get(&format!("/v1/vouchers/{}", short[0]))
        .ok("short after");
    assert_eq!(v["state"], "used_up", "{v}");
    refused(
        api.post(
            &format!("/v1/devices/{other}/redeem"),
            &json!({"code": short[0]}),
        ),
        409,
        "voucher_used_up",
    );
    // Past its last day, never redeemed: expired, and refused.
    assert_eq!(
        api.get(&format!("/v1/vouchers/{}", dated[0])).ok("d")["state"],
        "expired"
    );
    refused(
        api.post(
            &format!("/v1/devices/{other}/redeem"),
            &json!({"code": dated[0]}),
        ),
        409,
        "voucher_expired",
    );
    assert_eq!(
        codes(&api.get("/v1/vouchers?state=expired").ok("expired")),
        dated
    );
    assert_eq!(
        codes(&api.get("/v1/vouchers?state=used_up").ok("used up")),
        short
    );
}

#[test]
fn the_same_code_again_from_its_offline_device_puts_it_back_online_and_buys_nothing() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    let c = codes(&api.post("/v1/vouchers", &batch(1, json!({}))).ok("create"));
    let dev = api.device_id(&hs.client(0).mac);
    let redeem = || api.post(&format!("/v1/devices/{dev}/redeem"), &json!({"code": c[0]}));
    let connected = || {
        api.get(&format!("/v1/devices/{dev}/connected"))
            .ok("connected")["connected"]
            == true
    };
    let sid = redeem().ok("redeem")["session"]["id"].clone();
    assert!(connected());
    // Online: the code is spent.
    refused(redeem(), 409, "voucher_already_redeemed");
    // Offline with its session still to use (as after a connect that failed,
    // or a disconnect): the same code connects the session it bought.
    api.post(&format!("/v1/devices/{dev}/disconnect"), &json!({}))
        .ok("disconnect");
    assert!(!connected());
    let again = redeem().ok("the same code again");
    assert_eq!(again["session"]["id"], sid, "{again}");
    assert!(connected());
    let sessions = api
        .get(&format!("/v1/devices/{dev}/sessions"))
        .ok("sessions");
    assert_eq!(sessions.as_array().map(|a| a.len()), Some(1), "{sessions}");
    let v = api.get(&format!("/v1/vouchers/{}", c[0])).ok("voucher");
    assert_eq!(v["redemptions"].as_array().map(|a| a.len()), Some(1), "{v}");
    refused(redeem(), 409, "voucher_already_redeemed");
}
