//! Forgetting idle clients (`--forget-idle-secs`): a client that is not allowed
//! and has had no traffic for that long leaves the client table, so its slot
//! serves new clients; an allowed client stays; a forgotten client that comes
//! back is a new client, counted from zero; its speed limits (HTB classes) go
//! with it.

use std::time::{Duration, Instant};

use session_tests::{
    agent::htb_class_1, require_root, Agent, AgentBuilder, Hotspot, ServerSet, UdpTransfer,
};

/// The LAN's IFB device, where upload is shaped (`--shaper htb`).
const IFB: &str = "ifb-lan0";

/// Waits (up to 20 s) until `mac` is no longer in the agent's client table.
fn wait_forgotten(agent: &Agent, mac: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.client(mac).is_some() {
        assert!(
            Instant::now() < deadline,
            "idle client {mac} still in the table after 20 s\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn idle_clients_that_are_not_allowed_are_forgotten_and_counted_afresh_when_back() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let agent = AgentBuilder::new(&hs)
        .arg("--forget-idle-secs")
        .arg("2")
        .start();
    let (kept, idle) = (&hs.clients[0], &hs.clients[1]);
    agent.allow(&kept.mac);
    let udp = servers.udp(false);
    UdpTransfer::run(&kept.ns, udp.addr, 5, 100, 0, 0).expect("udp from the allowed client");
    UdpTransfer::run(&idle.ns, udp.addr, 7, 100, 0, 0).expect("udp from the blocked client");
    // The idle client's blocked, up and allowed figures, once its packets are counted.
    let idle_row = |agent: &Agent, what: &str| {
        std::thread::sleep(Duration::from_millis(300));
        let c = agent
            .client(&idle.mac)
            .unwrap_or_else(|| panic!("{what}: not in the table\n{}", agent.log_tail()));
        (c.blocked_packets, c.up_packets, c.allowed)
    };
    assert_eq!(idle_row(&agent, "blocked client"), (7, 0, false));

    // Idle for 2 s: forgotten within a few runs (one a second here).
    wait_forgotten(&agent, &idle.mac);
    assert!(
        agent.log().contains("forgot idle clients"),
        "{}",
        agent.log_tail()
    );
    let metrics = agent.api().get("/metrics").body;
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics.contains("session_agent_clients_forgotten_total 1\n")
            && metrics.contains("session_agent_forget_errors_total 0\n"),
        "{metrics}"
    );
    let status = agent.api().get("/v1/status").ok("status");
    assert_eq!(status["lans"][0]["clients"], 1, "{status}");
    let still = agent
        .client(&kept.mac)
        .unwrap_or_else(|| panic!("the allowed client was forgotten\n{}", agent.log_tail()));
    assert!(still.allowed && still.up_packets >= 5, "{still:?}");

    // A restart with the forgotten client's slot between owners: the new
    // agent takes over the table as it is and finishes the forgetting.
    let mut old = agent;
    old.stop();
    let agent = old.restart();
    assert!(agent.client(&kept.mac).is_some_and(|c| c.allowed));

    // Back: a new entry, counted from zero, still blocked.
    UdpTransfer::run(&idle.ns, udp.addr, 3, 100, 0, 0).expect("udp after coming back");
    assert_eq!(idle_row(&agent, "returning client"), (3, 0, false));
    // The allowed client was never forgotten, however long it idled meanwhile.
    assert!(agent.client(&kept.mac).is_some_and(|c| c.allowed));
}

#[test]
fn a_forgotten_client_loses_its_htb_classes() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs)
        .arg("--shaper")
        .arg("htb")
        .arg("--forget-idle-secs")
        .arg("2")
        .start();
    let c = hs.client(0).clone();
    // Limited but never allowed, and silent: forgotten after 2 s.
    agent.limit(&c.mac, 10);
    for dev in [hs.lan_if.as_str(), IFB] {
        assert!(
            htb_class_1(&hs.gw_ns, dev).is_some(),
            "no class 5a:1 on {dev}\n{}",
            agent.log_tail()
        );
    }
    wait_forgotten(&agent, &c.mac);
    for dev in [hs.lan_if.as_str(), IFB] {
        assert_eq!(
            htb_class_1(&hs.gw_ns, dev),
            None,
            "class 5a:1 left on {dev} after forgetting\n{}",
            agent.log_tail()
        );
    }
}
