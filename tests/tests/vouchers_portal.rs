//! Voucher codes typed again on the portal page, over real HTTP from client
//! namespaces: a used-up code says it is used up, tapping Connect again does
//! not lock a customer out, and a code follows its phone to a new MAC once the
//! old one has gone silent (and not while it is heard from).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use session_tests::api::ApiClient;
use session_tests::netns::ip_n;
use session_tests::sessions::CHARGE_SETTLE;
use session_tests::traffic::{http, portal_redeem};
use session_tests::{require_root, AgentBuilder, Hotspot, TcpServer, TcpTransfer};

const PORT: u16 = 8908;

fn captive(hs: &Hotspot) -> SocketAddr {
    SocketAddr::from((hs.gw_lan_addr(false), PORT))
}

fn code(api: &ApiClient, spec: Value) -> String {
    let mut b = json!({"count": 1, "batch": "shop"});
    for (k, v) in spec.as_object().unwrap() {
        b[k] = v.clone();
    }
    api.post("/v1/vouchers", &b).ok("vouchers")[0]["display_code"]
        .as_str()
        .unwrap()
        .to_string()
}

#[track_caller]
fn accepted(r: (u16, String, String), done: &str) {
    let (st, head, page) = r;
    assert_eq!(st, 303, "{head}\n{page}");
    assert!(
        head.contains(&format!("location: /portal?done={done}")),
        "{head}"
    );
}

#[track_caller]
fn refused(r: (u16, String, String), status: u16, says: &str) {
    let (st, head, page) = r;
    assert_eq!(st, status, "{head}\n{page}");
    assert!(
        page.contains(says),
        "the page does not say {says:?}:\n{page}"
    );
}

#[test]
fn a_used_up_code_typed_again_says_it_is_used_up() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let captive = captive(&hs);
    let agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .arg("--poll-ms")
        .arg("100")
        .start();
    let api = agent.api();
    let a = hs.client(0).clone();
    let c = code(&api, json!({"type": 0, "time_secs": 2}));
    accepted(portal_redeem(&a.ns, captive, &c), "redeemed");
    // The customer's time runs out; they type their code again.
    std::thread::sleep(Duration::from_secs(4));
    let dev = api.device_id(&a.mac);
    assert_eq!(
        api.get(&format!("/v1/devices/{dev}/connected")).ok("c")["connected"],
        false
    );
    let (st, head, page) = portal_redeem(&a.ns, captive, &c);
    assert!(
        !page.contains("already active"),
        "a used-up code said it is active:\n{page}"
    );
    refused((st, head, page), 409, "This code has been used up.");
    // The API says the same.
    let r = api.post(&format!("/v1/devices/{dev}/redeem"), &json!({"code": c}));
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("voucher_used_up")),
        "{}",
        r.body
    );
}

#[test]
fn tapping_connect_again_does_not_lock_a_customer_out_of_a_new_code() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let captive = captive(&hs);
    let agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .start();
    let api = agent.api();
    let (a, b) = (hs.client(0).clone(), hs.client(1).clone());
    let hour = json!({"type": 0, "time_secs": 3600});
    let (first, second, other) = (
        code(&api, hour.clone()),
        code(&api, hour.clone()),
        code(&api, hour),
    );
    accepted(portal_redeem(&a.ns, captive, &first), "redeemed");
    // The customer taps Connect again and again (more than the 5 wrong codes
    // a minute allows), then adds another code.
    for _ in 0..7 {
        refused(
            portal_redeem(&a.ns, captive, &first),
            409,
            "already active on this device",
        );
    }
    accepted(portal_redeem(&a.ns, captive, &second), "queued");

    // Another customer types the code in use, again and again, then their own.
    for _ in 0..7 {
        refused(
            portal_redeem(&b.ns, captive, &first),
            403,
            "in use on another device",
        );
    }
    accepted(portal_redeem(&b.ns, captive, &other), "redeemed");

    // Codes that do not exist still count: the sixth guess in a minute waits.
    for _ in 0..5 {
        refused(
            portal_redeem(&b.ns, captive, "WRONG-CODE2"),
            404,
            "does not exist",
        );
    }
    refused(
        portal_redeem(&b.ns, captive, &second),
        429,
        "Too many wrong codes",
    );
}

/// Changes the MAC of client `c` to `mac` as a phone does, with the new IPv4
/// address `ip` its DHCP lease would bring, and tells the gateway's static
/// neighbour table (ARP would).
fn change_mac(hs: &Hotspot, c: &session_tests::Client, mac: &str, ip: &str) {
    ip_n(&c.ns, &["link", "set", &c.ifname, "down"]);
    ip_n(&c.ns, &["link", "set", &c.ifname, "address", mac]);
    ip_n(&c.ns, &["-4", "addr", "flush", "dev", &c.ifname]);
    ip_n(
        &c.ns,
        &["addr", "add", &format!("{ip}/24"), "dev", &c.ifname],
    );
    ip_n(&c.ns, &["link", "set", &c.ifname, "up"]);
    let gw = hs.gw_lan_addr(false).to_string();
    ip_n(&c.ns, &["route", "replace", "default", "via", &gw]);
    ip_n(
        &c.ns,
        &[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &hs.gw_lan_mac,
            "dev",
            &c.ifname,
            "nud",
            "permanent",
        ],
    );
    ip_n(
        &hs.gw_ns,
        &[
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac,
            "dev",
            &hs.lan_if,
            "nud",
            "permanent",
        ],
    );
}

fn only_session(api: &ApiClient, device: i64) -> Value {
    let list = api
        .get(&format!("/v1/devices/{device}/sessions"))
        .ok("sessions");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    list[0].clone()
}

#[test]
fn a_code_follows_its_phone_to_a_new_mac_once_the_old_one_is_silent() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let captive = captive(&hs);
    let agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .arg("--poll-ms")
        .arg("100")
        .arg("--voucher-move-after-secs")
        .arg("3")
        .start();
    let api = agent.api();
    let (a, b) = (hs.client(0).clone(), hs.client(1).clone());
    let tcp = TcpServer::start(&hs.server_ns, hs.server_sock(false, 5001));
    let c = code(&api, json!({"type": 1, "data_mb": 50.0}));
    accepted(portal_redeem(&a.ns, captive, &c), "redeemed");
    let dev = api.device_id(&a.mac);
    TcpTransfer::run(&a.ns, tcp.addr, 0, 1_000_000).expect("download while online");

    // While the phone is heard from, the code is refused to another MAC, for
    // longer than the silence that would move it.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (ns, addr, stop) = (a.ns.clone(), tcp.addr, stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                TcpTransfer::run(&ns, addr, 100, 1000).expect("traffic while online");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    refused(
        portal_redeem(&b.ns, captive, &c),
        403,
        "in use on another device",
    );
    std::thread::sleep(Duration::from_secs(4));
    refused(
        portal_redeem(&b.ns, captive, &c),
        403,
        "in use on another device",
    );
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    std::thread::sleep(CHARGE_SETTLE);
    let before = only_session(&api, dev);
    assert!(
        before["data_cons_bytes"].as_u64().unwrap() >= 1_000_000,
        "{before}"
    );

    // The phone comes back with a new private address and types its code.
    let mut events = api.events("");
    let new_mac = "06:5a:00:00:77:02";
    change_mac(&hs, &a, new_mac, "10.201.0.200");
    // Its old MAC fell silent just now: not yet.
    refused(
        portal_redeem(&a.ns, captive, &c),
        403,
        "in use on another device",
    );
    std::thread::sleep(Duration::from_secs(4));
    accepted(portal_redeem(&a.ns, captive, &c), "moved");

    // What was left moved, neither reset nor doubled, with the device.
    let moved = api
        .get(&format!("/v1/devices/by-mac/{new_mac}"))
        .ok("moved");
    assert_eq!(moved["id"].as_i64(), Some(dev), "{moved}");
    let after = only_session(&api, dev);
    assert_eq!(after["id"], before["id"], "{after}");
    assert_eq!(
        after["data_cons_bytes"], before["data_cons_bytes"],
        "{after}"
    );
    assert_eq!(
        after["remaining_data_bytes"], before["remaining_data_bytes"],
        "{after}"
    );
    assert_eq!(
        api.get(&format!("/v1/devices/by-mac/{}", a.mac)).status,
        404,
        "the old MAC still has a device"
    );
    assert!(agent.client_or_zero(new_mac).allowed, "the new MAC is held");
    assert!(
        !agent.client_or_zero(&a.mac).allowed,
        "the old MAC is let through"
    );
    let (_, _, page) = http(&a.ns, captive, "GET", "/portal?done=moved", &[], "");
    assert!(
        page.contains("moved to this device") && page.contains("You are online"),
        "{page}"
    );
    // Online on the new MAC, charged to the same session.
    TcpTransfer::run(&a.ns, tcp.addr, 0, 1_000_000).expect("download after the move");
    std::thread::sleep(CHARGE_SETTLE);
    let later = only_session(&api, dev);
    assert!(
        later["data_cons_bytes"].as_u64() > before["data_cons_bytes"].as_u64(),
        "{later}"
    );

    // The voucher's history and the event stream tell of the move.
    let v = api.get(&format!("/v1/vouchers/{c}")).ok("voucher");
    let r = &v["redemptions"];
    assert_eq!(r.as_array().map(|a| a.len()), Some(1), "{v}");
    assert_eq!(r[0]["mac"], a.mac.as_str(), "{v}");
    assert_eq!(
        (
            r[0]["moves"][0]["from"].as_str(),
            r[0]["moves"][0]["to"].as_str()
        ),
        (Some(a.mac.as_str()), Some(new_mac)),
        "{v}"
    );
    let m = api.get("/metrics").ok("metrics");
    assert!(
        m.as_str()
            .unwrap()
            .lines()
            .any(|l| l == "session_agent_voucher_moves_total 1"),
        "{m}"
    );
    let ev = events.wait_for("voucher_moved", Duration::from_secs(5), |n, _| {
        n == "voucher_moved"
    });
    assert_eq!(
        (
            ev["device_id"].as_i64(),
            ev["old_mac"].as_str(),
            ev["new_mac"].as_str()
        ),
        (Some(dev), Some(a.mac.as_str()), Some(new_mac)),
        "{ev}"
    );
}
