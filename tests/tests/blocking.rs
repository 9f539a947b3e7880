//! Enforcement: a blocked client gets only the walled garden; `allow` opens
//! the path, `block` closes it again.

use session_tests::agent::ClientStats;
use session_tests::check::settle;
use session_tests::traffic::udp_echo;
use session_tests::{
    require_root, AgentBuilder, Hotspot, NftRef, ServerSet, TcpServer, TcpTransfer, UdpServer,
    UdpTransfer,
};
use std::net::SocketAddr;
use std::time::Duration;

const PORTAL: u16 = 8080;
const GARDEN_PORT: u16 = 8443;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Asserts the server is unreachable from `ns` for TCP and UDP, v4 and v6.
fn assert_cut_off(ns: &str, servers: &ServerSet, label: &str, log: &dyn Fn() -> String) {
    for v6 in [false, true] {
        let dst = servers.tcp(v6).addr;
        let r = TcpTransfer::run_timeout(ns, dst, 1000, 1000, Duration::from_millis(800));
        assert!(
            r.is_err(),
            "{label}: TCP to {dst} should fail for a blocked client, got {r:?}\nagent log:\n{}",
            log()
        );
        let udp = servers.udp(v6);
        let before = udp.datagrams();
        UdpTransfer::run(ns, udp.addr, 20, 500, 0, 0).expect("udp send");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            udp.datagrams(),
            before,
            "{label}: UDP to {} delivered for a blocked client\nagent log:\n{}",
            udp.addr,
            log()
        );
    }
}

/// Asserts the server is reachable from `ns` for TCP and UDP, v4 and v6.
fn assert_reaches(ns: &str, servers: &ServerSet, label: &str, log: &dyn Fn() -> String) {
    for v6 in [false, true] {
        let dst = servers.tcp(v6).addr;
        let r = TcpTransfer::run(ns, dst, 20_000, 30_000);
        assert!(
            matches!(r, Ok(t) if t.received == 30_000),
            "{label}: TCP to {dst} should work, got {r:?}\nagent log:\n{}",
            log()
        );
        let udp = servers.udp(v6);
        let before = udp.datagrams();
        let t = UdpTransfer::run(ns, udp.addr, 20, 500, 10, 700).expect("udp");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            (udp.datagrams() - before, t.received_datagrams),
            (20, 10),
            "{label}: UDP to {} not fully delivered\nagent log:\n{}",
            udp.addr,
            log()
        );
    }
}

#[test]
fn blocked_client_gets_only_walled_garden_until_allowed() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let garden_srv = TcpServer::start(&hs.server_ns, hs.server_sock(false, GARDEN_PORT));
    let garden_srv6 = TcpServer::start(&hs.server_ns, hs.server_sock(true, GARDEN_PORT));
    // Gateway services: DHCP, DNS (UDP+TCP, v4+v6), the portal, and a port
    // that is not part of the walled garden.
    let gw = &hs.gw_ns;
    let dhcp = UdpServer::start(gw, sa("0.0.0.0:67"));
    let dns4 = UdpServer::start(gw, hs.gw_lan_sock(false, 53));
    let dns6 = UdpServer::start(gw, hs.gw_lan_sock(true, 53));
    let dns_tcp = TcpServer::start(gw, hs.gw_lan_sock(false, 53));
    let portal4 = TcpServer::start(gw, hs.gw_lan_sock(false, PORTAL));
    let portal6 = TcpServer::start(gw, hs.gw_lan_sock(true, PORTAL));
    let other = TcpServer::start(gw, hs.gw_lan_sock(false, 9090));

    let agent = AgentBuilder::new(&hs)
        .portal_port(PORTAL)
        .walled_garden(&format!("{}/32:{GARDEN_PORT}", hs.server_v4))
        .walled_garden(&format!("[{}/128]:{GARDEN_PORT}", hs.server_v6))
        .start();
    let log = || agent.log_tail();
    let blocked = hs.client(0);
    let control = hs.client(1);
    agent.allow(&control.mac);

    // The control client proves the path itself works.
    assert_reaches(&control.ns, &servers, "allowed control client", &log);
    let conns_before = servers.tcp4.connections() + servers.tcp6.connections();

    // Blocked by default.
    assert_cut_off(&blocked.ns, &servers, "blocked by default", &log);
    let r = TcpTransfer::run_timeout(&blocked.ns, other.addr, 10, 10, Duration::from_millis(800));
    assert!(
        r.is_err(),
        "gateway port 9090 is not in the walled garden but was reachable: {r:?}"
    );

    // Walled garden passes.
    let ns = &blocked.ns;
    let t = Duration::from_secs(2);
    udp_echo(
        ns,
        sa("0.0.0.0:68"),
        hs.gw_lan_sock(false, 67),
        b"dhcp-unicast",
        None,
        t,
    )
    .unwrap_or_else(|e| panic!("DHCP unicast to the gateway: {e}\n{}", log()));
    udp_echo(
        ns,
        sa("0.0.0.0:68"),
        sa("255.255.255.255:67"),
        b"dhcp-broadcast",
        Some(&blocked.ifname),
        t,
    )
    .unwrap_or_else(|e| panic!("DHCP broadcast: {e}\n{}", log()));
    assert_eq!(dhcp.datagrams(), 2);
    udp_echo(ns, sa("0.0.0.0:0"), dns4.addr, b"dns4", None, t)
        .unwrap_or_else(|e| panic!("DNS/UDP v4 to the gateway: {e}\n{}", log()));
    udp_echo(ns, sa("[::]:0"), dns6.addr, b"dns6", None, t)
        .unwrap_or_else(|e| panic!("DNS/UDP v6 to the gateway: {e}\n{}", log()));
    for (what, addr) in [
        ("DNS/TCP v4", dns_tcp.addr),
        ("portal v4", portal4.addr),
        ("portal v6", portal6.addr),
        ("walled-garden CIDR:port", garden_srv.addr),
        ("walled-garden [CIDR6]:port", garden_srv6.addr),
    ] {
        let r = TcpTransfer::run(ns, addr, 2_000, 5_000);
        assert!(
            matches!(r, Ok(x) if x.received == 5_000),
            "{what} ({addr}) must pass for a blocked client: {r:?}\nagent log:\n{}",
            log()
        );
    }

    let s: ClientStats = agent.client(&blocked.mac).unwrap_or_else(|| {
        panic!(
            "blocked client {} not listed: {:#?}",
            blocked.mac,
            agent.clients()
        )
    });
    assert!(!s.allowed, "client should be blocked: {s:?}");
    assert!(s.blocked_packets > 0, "drops not counted: {s:?}");
    assert!(
        s.garden_packets > 0 && s.garden_bytes > 0,
        "walled-garden traffic not counted: {s:?}"
    );
    assert_eq!(
        (s.up_bytes, s.down_bytes, s.up_packets, s.down_packets),
        (0, 0, 0, 0),
        "blocked and walled-garden traffic must not count as usage: {s:?}"
    );
    assert_eq!(
        servers.tcp4.connections() + servers.tcp6.connections(),
        conns_before,
        "a blocked client's connection reached the server"
    );

    // allow: works.
    agent.allow(&blocked.mac);
    assert_reaches(&blocked.ns, &servers, "after allow", &log);
    let s2 = agent.client_or_zero(&blocked.mac);
    assert!(s2.allowed, "{s2:?}");
    assert!(
        s2.up_bytes > 40_000 && s2.down_bytes > 60_000,
        "usage after allow not counted: {s2:?}"
    );

    // block: stops again, drops keep being counted.
    agent.block(&blocked.mac);
    assert_cut_off(&blocked.ns, &servers, "after block", &log);
    let s3 = agent.client_or_zero(&blocked.mac);
    assert!(!s3.allowed, "{s3:?}");
    assert!(
        s3.blocked_packets > s2.blocked_packets,
        "blocked_packets did not grow after block: before {s2:?} after {s3:?}"
    );
    assert_eq!(
        (s3.up_bytes, s3.down_bytes),
        (s2.up_bytes, s2.down_bytes),
        "blocked traffic counted as usage"
    );
    // The control client was never affected.
    assert_reaches(&control.ns, &servers, "control client at the end", &log);
}

#[test]
fn walled_garden_cidr_without_port_and_default_portal() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let portal = TcpServer::start(&hs.gw_ns, hs.gw_lan_sock(false, 80));
    let portal6 = TcpServer::start(&hs.gw_ns, hs.gw_lan_sock(true, 80));
    // The whole WAN IPv4 subnet, any port; IPv6 stays closed. No garden
    // rate limit: the reference counts what the limit would drop after forwarding.
    let agent = AgentBuilder::new(&hs)
        .walled_garden("10.202.0.0/24")
        .arg("--garden-rate-kbits=0")
        .start();
    let nft = NftRef::install(&hs);
    let c = hs.client(0);
    let log = || agent.log_tail();
    // Forwarded walled-garden traffic only first: the reference sees all of
    // it, and garden_* must equal it (both directions together).
    let r = TcpTransfer::run(&c.ns, servers.tcp4.addr, 30_000, 40_000);
    assert!(
        matches!(r, Ok(x) if x.received == 40_000),
        "garden CIDR, TCP 5001 must pass for a blocked client: {r:?}\nagent log:\n{}",
        log()
    );
    let u = UdpTransfer::run(&c.ns, servers.udp4.addr, 10, 400, 5, 300).expect("udp");
    assert_eq!(
        u.received_datagrams,
        5,
        "garden CIDR, UDP: {u:?}\n{}",
        log()
    );
    let (a, refs) = settle(&agent, &nft);
    let s = a
        .get(&c.mac)
        .cloned()
        .unwrap_or_else(|| panic!("{} not listed: {a:?}", c.mac));
    let rf = refs[&c.mac];
    assert_eq!(
        (s.garden_bytes, s.garden_packets),
        (rf.up_bytes + rf.down_bytes, rf.up_packets + rf.down_packets),
        "garden counters differ from the forwarded reference {rf:?}: {s:?}\n{}",
        nft.dump()
    );
    // Then the default portal on the gateway itself.
    for (what, addr) in [
        ("default portal port 80 (v4)", portal.addr),
        ("default portal port 80 (v6)", portal6.addr),
    ] {
        let r = TcpTransfer::run(&c.ns, addr, 3_000, 4_000);
        assert!(
            matches!(r, Ok(x) if x.received == 4_000),
            "{what} ({addr}) must pass for a blocked client: {r:?}\nagent log:\n{}",
            log()
        );
    }
    let r = TcpTransfer::run_timeout(&c.ns, servers.tcp6.addr, 10, 10, Duration::from_millis(800));
    assert!(
        r.is_err(),
        "IPv6 server is outside the garden but reachable: {r:?}"
    );
    let s = agent.client_or_zero(&c.mac);
    assert!(!s.allowed, "{s:?}");
    assert_eq!(
        (s.up_bytes, s.down_bytes),
        (0, 0),
        "walled-garden traffic counted as usage: {s:?}"
    );
    // At least the TCP payloads and the UDP datagrams, both ways.
    assert!(
        s.garden_bytes > 30_000 + 40_000 + 2 * (3_000 + 4_000) + 10 * 400 + 5 * 300,
        "walled-garden traffic under-counted: {s:?}"
    );
    assert!(s.blocked_packets > 0, "{s:?}");
}
