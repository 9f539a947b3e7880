//! A phone that randomises its MAC keeps its credit: the portal moves the
//! device to the MAC it now sees (`rekey`), which absorbs the device the
//! gateway made for that MAC, and the running session goes on at once on the
//! new MAC with nothing charged twice.

use session_tests::netns::ip_n;
use session_tests::sessions::*;
use std::time::{Duration, Instant};

#[test]
fn a_client_that_changes_its_mac_mid_session_keeps_its_session_once_rekeyed() {
    let s = Setup::new(&[]);
    let id = new_session(&s.api, s.device, TIME_OR_DATA, 600, 100.0, 0, 0);
    connect(&s.api, s.device);
    let t0 = Instant::now();
    let first = tcp_download(&s.client.ns, s.tcp4(), MB, Duration::from_secs(3));
    let before = s.settled(id);
    let old_kernel = s.agent.client_or_zero(&s.client.mac);

    // The phone comes back with a new random MAC (same address, static here;
    // the gateway's neighbour entry follows it as ARP would).
    let new_mac = "06:5a:00:00:77:01";
    ip_n(&s.client.ns, &["link", "set", "eth0", "down"]);
    ip_n(&s.client.ns, &["link", "set", "eth0", "address", new_mac]);
    ip_n(&s.client.ns, &["link", "set", "eth0", "up"]);
    // Down took the route and the neighbour entry with it.
    let gw = s.hs.gw_lan_v4.to_string();
    ip_n(&s.client.ns, &["route", "replace", "default", "via", &gw]);
    ip_n(
        &s.client.ns,
        &[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &s.hs.gw_lan_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    let client_ip = s.client.ipv4.to_string();
    ip_n(
        &s.hs.gw_ns,
        &[
            "neigh",
            "replace",
            &client_ip,
            "lladdr",
            new_mac,
            "dev",
            &s.hs.lan_if,
            "nud",
            "permanent",
        ],
    );
    let blocked_as_new = s.tcp_blocked();
    // The gateway saw the new MAC and made a device for it (or the portal does).
    let seen = wait_for(Duration::from_secs(3), Duration::from_millis(100), || {
        let r = s.api.get(&format!("/v1/devices/by-mac/{new_mac}"));
        (r.status == 200).then(|| r.body["id"].as_i64().unwrap())
    });
    let new_device = seen.unwrap_or_else(|| s.api.device_id(new_mac));

    let r = s.api.post(
        &format!("/v1/devices/{}/rekey", s.device),
        &serde_json::json!({ "mac": new_mac }),
    );
    let rekeyed = Instant::now();
    let after_rekey = s.settled(id);
    let second = tcp_download(&s.client.ns, s.tcp4(), MB, Duration::from_secs(3));
    let end = s.settled(id);
    let new_kernel = s.agent.client_or_zero(new_mac);
    let old_now = s.agent.client_or_zero(&s.client.mac);
    let absorbed = s.api.get(&format!("/v1/devices/{new_device}"));
    let report = format!(
        "first download {first:?}\nsession before {} B; old MAC kernel {old_kernel:?}\n\
         new MAC blocked before the rekey: {blocked_as_new}; device {new_device} made for it\n\
         rekey: {} {}\nsession right after {} B; second download {second:?}\n\
         session at the end {} B, time_cons {} ({:?} since connect)\nnew MAC kernel {new_kernel:?}\n\
         old MAC now {old_now:?}\nabsorbed device: {} {}\n{}",
        before.cons(),
        r.status,
        r.body,
        after_rekey.cons(),
        end.cons(),
        field(&end.session, "time_cons"),
        t0.elapsed(),
        absorbed.status,
        absorbed.body,
        s.context()
    );
    eprintln!("{report}");
    assert!(
        first.completed && second.completed,
        "a download failed\n{report}"
    );
    assert!(
        blocked_as_new,
        "the new MAC got through before the rekey\n{report}"
    );
    assert_eq!(r.status, 200, "rekey refused\n{report}");
    assert_eq!(
        absorbed.status, 404,
        "the new MAC's device was not absorbed\n{report}"
    );
    assert_eq!(
        after_rekey.cons(),
        before.cons(),
        "the rekey charged something\n{report}"
    );
    assert_eq!(
        end.cons() - after_rekey.cons(),
        new_kernel.up_bytes + new_kernel.down_bytes,
        "the new MAC's traffic was not charged exactly once\n{report}"
    );
    assert!(
        !old_now.allowed,
        "the old MAC is still let through\n{report}"
    );
    assert!(is_connected(&s.api, s.device), "{report}");
    let tc = field(&end.session, "time_cons");
    assert!(
        tc <= t0.elapsed().as_secs() + 1 && tc + 2 >= rekeyed.duration_since(t0).as_secs(),
        "time charged other than connected\n{report}"
    );
}
