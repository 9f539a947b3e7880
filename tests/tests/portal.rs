//! The built-in portal page, driven by Debian's Chromium in a client's network
//! namespace: the customer types a voucher code, is online at the voucher's
//! speed, sees what is left, pauses (traffic stops, the clock stops) and resumes.
//! And the page answers each client about itself only.
//!
//! Screenshots of each step are saved under `target/portal-screenshots/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use session_tests::sessions::{iperf_until, IperfServer};
use session_tests::traffic::http;
use session_tests::{require_root, AgentBuilder, Browser, Hotspot, TcpServer, TcpTransfer};

const PORT: u16 = 8908;

fn shots() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/portal-screenshots"
    ))
}

fn can_reach(ns: &str, server: SocketAddr) -> bool {
    TcpTransfer::run_timeout(ns, server, 2000, 20_000, Duration::from_millis(700)).is_ok()
}

fn session_of(api: &session_tests::api::ApiClient, device: i64) -> Value {
    let list = api
        .get(&format!("/v1/devices/{device}/sessions"))
        .ok("sessions");
    list[0].clone()
}

#[test]
fn a_customer_redeems_a_code_in_chromium_then_pauses_and_resumes() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let captive = SocketAddr::from((hs.gw_lan_addr(false), PORT));
    // The shop's name, colour and logo, from one texts file.
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let texts = hs.state_dir.join("portal.toml");
    std::fs::write(
        hs.state_dir.join("logo.svg"),
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><circle cx="16" cy="16" r="14" fill="#e0a020"/></svg>"##,
    )
    .unwrap();
    std::fs::write(
        &texts,
        "name = \"Café Luna\"\ncolor_accent = \"#6a1b9a\"\nlogo = \"logo.svg\"\n",
    )
    .unwrap();
    let agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .arg("--portal-texts")
        .arg(texts.display().to_string())
        .arg("--poll-ms")
        .arg("100")
        .start();
    let api = agent.api();
    let client = hs.client(0).clone();
    let tcp = TcpServer::start(&hs.server_ns, hs.server_sock(false, 5001));
    let iperf_srv = IperfServer::start(&hs.server_ns, hs.server_sock(false, 5201));
    let made = api
        .post(
            "/v1/vouchers",
            &json!({"count": 1, "batch": "portal", "price": "10 PHP", "type": 0,
                    "time_secs": 900, "down_mbits": 5, "up_mbits": 5}),
        )
        .ok("vouchers");
    let code = made[0]["display_code"].as_str().unwrap().to_string();
    assert!(!can_reach(&client.ns, tcp.addr), "online before paying");
    // The RFC 8908 API points at the built-in page.
    let (_, _, body) = http(&client.ns, captive, "GET", "/captive-portal/api", &[], "");
    let api8908: Value = serde_json::from_str(&body).expect("captive JSON");
    assert_eq!(
        api8908["user-portal-url"],
        format!("http://{captive}/portal")
    );
    let b = Browser::start(&client.ns);

    let dir = shots();
    b.goto(&format!("http://{captive}/portal"));
    let text = b.page_text();
    assert!(text.contains("Enter the code from your voucher"), "{text}");
    assert!(text.contains("Café Luna"), "{text}");
    let logo = b.execute(
        "var i = document.querySelector('header img'); return i ? i.naturalWidth : -1",
        &[],
    );
    assert_eq!(logo.as_i64(), Some(32), "the logo did not load");
    let width = b.execute("return document.documentElement.scrollWidth", &[]);
    assert!(
        width.as_u64().unwrap() <= 360,
        "the page is wider than the phone: {width}"
    );
    b.screenshot(&dir.join("1-code-form.png"));

    // Typed the way people type it.
    b.find("#code").type_text(&code.to_lowercase());
    b.find("#redeem").click();
    let text = b.wait_for_text("You are online", Duration::from_secs(10));
    assert!(
        b.current_url().ends_with("/portal?done=redeemed"),
        "{}",
        b.current_url()
    );
    assert!(
        text.contains("Code accepted") && text.contains("Time left"),
        "{text}"
    );
    assert!(text.contains("↓ 5 Mbit/s"), "{text}");
    b.screenshot(&dir.join("2-online.png"));
    assert!(
        can_reach(&client.ns, tcp.addr),
        "not online after redeeming"
    );

    // At the voucher's speed.
    let sells = 4.5..=5.5;
    let down = iperf_until(&client.ns, iperf_srv.addr, 3, 1, true, |r| {
        sells.contains(&r.recv_mbits)
    });
    eprintln!(
        "PORTAL download after redeeming: {:.3} Mbit/s (voucher: 5)",
        down.recv_mbits
    );
    assert!(
        sells.contains(&down.recv_mbits),
        "download at {:.3} Mbit/s, the voucher sells 5",
        down.recv_mbits
    );

    // What is left counts down on the page by itself.
    let first = b.find("#time").text();
    std::thread::sleep(Duration::from_millis(3500));
    let later = b.find("#time").text();
    assert_ne!(first, later, "the time left did not move");

    // Pause: traffic stops and so does the clock.
    b.find("#pause").click();
    let text = b.wait_for_text("Your time is paused", Duration::from_secs(10));
    assert!(text.contains("Resume"), "{text}");
    b.screenshot(&dir.join("3-paused.png"));
    assert!(
        !can_reach(&client.ns, tcp.addr),
        "traffic passes while paused"
    );
    let dev = api.device_id(&client.mac);
    let used = session_of(&api, dev)["time_cons"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let s = session_of(&api, dev);
    assert_eq!(
        s["time_cons"].as_u64().unwrap(),
        used,
        "the clock ran while paused: {s}"
    );
    assert_eq!(s["status"], "paused");

    // Resume.
    b.find("#resume").click();
    b.wait_for_text("You are online", Duration::from_secs(10));
    assert!(can_reach(&client.ns, tcp.addr), "not online after resuming");
    b.screenshot(&dir.join("4-resumed.png"));

    // A wrong code says why.
    b.find("#code").type_text("WRONG-CODE2");
    b.find("#redeem").click();
    let text = b.wait_for_text("does not exist", Duration::from_secs(10));
    assert!(text.contains("You are online"), "{text}");
    b.screenshot(&dir.join("5-wrong-code.png"));
}

const FORM: &str = "Content-Type: application/x-www-form-urlencoded";

#[test]
fn the_portal_answers_each_client_about_itself_only() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let captive = SocketAddr::from((hs.gw_lan_addr(false), PORT));
    let agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .start();
    let api = agent.api();
    let (a, b) = (hs.client(0).clone(), hs.client(1).clone());
    let made = api
        .post(
            "/v1/vouchers",
            &json!({"count": 2, "batch": "x", "type": 1, "data_mb": 50.0}),
        )
        .ok("vouchers");
    let code = made[0]["code"].as_str().unwrap();

    // Redeeming works without JavaScript: a plain form post, then a redirect.
    let (st, head, _) = http(
        &a.ns,
        captive,
        "POST",
        "/portal/redeem",
        &[FORM],
        &format!("code={code}"),
    );
    assert_eq!(st, 303, "{head}");
    assert!(head.contains("location: /portal?done=redeemed"), "{head}");
    let (st, _, page) = http(&a.ns, captive, "GET", "/portal", &[], "");
    assert_eq!(st, 200);
    assert!(
        page.contains("You are online") && page.contains("50 MB"),
        "{page}"
    );

    // B sees nothing of A's session, and its pause pauses nothing of A's.
    let (st, _, body) = http(&b.ns, captive, "GET", "/portal/status", &[], "");
    assert_eq!(st, 200);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s["online"].as_bool(), s["bytes_remaining"].is_null()),
        (Some(false), true),
        "{s}"
    );
    let (_, _, page) = http(&b.ns, captive, "GET", "/portal", &[], "");
    assert!(
        !page.contains("You are online") && page.contains("id=\"code\""),
        "{page}"
    );
    let (st, _, page) = http(&b.ns, captive, "POST", "/portal/pause", &[FORM], "");
    assert_eq!(st, 303, "{page}");
    let (st, _, _) = http(&b.ns, captive, "POST", "/portal/resume", &[FORM], "");
    assert_eq!(st, 409);
    let ida = api.device_id(&a.mac);
    assert!(
        api.get(&format!("/v1/devices/{ida}/connected")).ok("a")["connected"]
            .as_bool()
            .unwrap()
    );
    // B may not take A's code either.
    let (st, _, page) = http(
        &b.ns,
        captive,
        "POST",
        "/portal/redeem",
        &[FORM],
        &format!("code={code}"),
    );
    assert_eq!(st, 403, "{page}");
    assert!(page.contains("in use on another device"), "{page}");

    // A's own status: online, with what is left.
    let (_, _, body) = http(&a.ns, captive, "GET", "/portal/status", &[], "");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["online"], true, "{s}");
    assert_eq!(s["bytes_remaining"], 50_000_000, "{s}");

    // A form posted from another site cannot pause A.
    let (st, _, _) = http(
        &a.ns,
        captive,
        "POST",
        "/portal/pause",
        &[FORM, "Origin: http://evil.example"],
        "",
    );
    assert_eq!(st, 403);
    assert!(
        api.get(&format!("/v1/devices/{ida}/connected")).ok("a")["connected"]
            .as_bool()
            .unwrap()
    );
    // Its own page can.
    let origin = format!("Origin: http://{captive}");
    let (st, _, _) = http(
        &a.ns,
        captive,
        "POST",
        "/portal/pause",
        &[FORM, &origin],
        "",
    );
    assert_eq!(st, 303);
    assert!(
        !api.get(&format!("/v1/devices/{ida}/connected")).ok("a")["connected"]
            .as_bool()
            .unwrap()
    );
}

#[test]
fn the_page_counts_down_its_seconds_and_shows_data_used_and_left_in_chromium() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let captive = SocketAddr::from((hs.gw_lan_addr(false), PORT));
    let agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .arg("--poll-ms")
        .arg("100")
        .start();
    let api = agent.api();
    let client = hs.client(0).clone();
    let tcp = TcpServer::start(&hs.server_ns, hs.server_sock(false, 5001));
    // Two hours or 200 MB.
    let made = api
        .post(
            "/v1/vouchers",
            &json!({"count": 1, "batch": "2h", "type": 2, "time_secs": 7200, "data_mb": 200.0}),
        )
        .ok("vouchers");
    let code = made[0]["display_code"].as_str().unwrap().to_string();
    let b = Browser::start(&client.ns);
    b.goto(&format!("http://{captive}/portal"));
    b.find("#code").type_text(&code);
    b.find("#redeem").click();
    let text = b.wait_for_text("You are online", Duration::from_secs(10));
    assert!(text.contains("Data used"), "{text}");

    // Over an hour left, the seconds show and move.
    let first = b.find("#time").text();
    assert!(
        (first.starts_with("1 h 59 min ") || first == "2 h 00 min 00 s") && first.ends_with(" s"),
        "time left without its seconds: {first:?}"
    );
    let t0 = std::time::Instant::now();
    let mut later = first.clone();
    while later == first && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(250));
        later = b.find("#time").text();
    }
    assert_ne!(first, later, "the seconds did not move in 5 s");

    // Nothing used yet; then 300 kB down, and the page tells, by itself.
    assert_eq!(b.find("#used").text(), "0 B");
    assert_eq!(b.find("#data").text(), "200 MB");
    TcpTransfer::run(&client.ns, tcp.addr, 0, 300_000).expect("download");
    let t0 = std::time::Instant::now();
    let mut used = b.find("#used").text();
    while !used.ends_with(" kB") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(250));
        used = b.find("#used").text();
    }
    assert!(used.ends_with(" kB"), "data used after 300 kB: {used:?}");
    let n: f64 = used.trim_end_matches(" kB").parse().unwrap();
    assert!(
        (300.0..400.0).contains(&n),
        "data used after 300 kB: {used:?}"
    );
    let left = b.find("#data").text();
    assert_eq!(left, "200 MB", "200 MB less {used} to three figures");
    b.screenshot(&shots().join("6-seconds-and-data-used.png"));
}

#[test]
fn the_code_form_says_what_was_wrong_with_it() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let captive = SocketAddr::from((hs.gw_lan_addr(false), PORT));
    let _agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .start();
    let client = hs.client(0).clone();
    let long = format!("code={}", "A".repeat(40));
    for (headers, body, status, says) in [
        (&[FORM][..], "", 400, "Type your code."),
        (&[FORM], "other=1", 400, "Type your code."),
        (&[FORM], "code=", 400, "Type your code."),
        (&[FORM], "code=+-+", 400, "Type your code."),
        (&[FORM], &long, 400, "This code is too long"),
        (&[FORM], "code=AB%3CC", 400, "only letters and digits"),
        (&[FORM], "code=%FF%FE", 400, "only letters and digits"),
        (
            &["Content-Type: application/json"],
            r#"{"code":"ABCDEFGH"}"#,
            415,
            "application/x-www-form-urlencoded",
        ),
        (
            &[],
            "code=ABCDEFGH",
            415,
            "application/x-www-form-urlencoded",
        ),
    ] {
        let (st, head, page) = http(&client.ns, captive, "POST", "/portal/redeem", headers, body);
        assert_eq!(st, status, "{headers:?} {body:?}: {head}\n{page}");
        assert!(
            page.contains(says) && !page.contains("does not exist"),
            "{headers:?} {body:?}: no {says:?} in\n{page}"
        );
        assert!(page.contains("id=\"error\""), "{page}");
    }
    // A code that could be one but is not, is unknown.
    let (st, _, page) = http(
        &client.ns,
        captive,
        "POST",
        "/portal/redeem",
        &[FORM],
        "code=ABCD-EFGH",
    );
    assert_eq!(st, 404);
    assert!(page.contains("does not exist"), "{page}");
}
