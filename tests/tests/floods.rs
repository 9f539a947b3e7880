//! The gate under an attacker with as many MACs as it likes, and the gateway
//! as a relay, with real traffic between namespaces: a DNS tunnel through the
//! gateway's resolver is a paying client's usage (compared with what the
//! resolver's socket received), and a flood of random MACs (bounded in count
//! and time) locks out neither a paying client nor a new customer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use session_tests::raw::MacFlood;
use session_tests::sessions::*;
use session_tests::topo::parse_mac;
use session_tests::traffic::UdpTransfer;
use session_tests::traffic::{ServerSet, UdpServer};
use session_tests::{require_root, AgentBuilder, Hotspot};

/// IPv4 and UDP headers of each datagram.
const HEADERS: u64 = 28;

#[test]
fn a_dns_tunnel_through_the_gateway_is_charged_to_the_paying_client_and_ends_with_its_budget() {
    let s = Setup::new(&[]);
    // A "resolver" on the gateway that answers whatever it is sent, as a
    // tunnel's far end would.
    let resolver = UdpServer::start(&s.hs.gw_ns, s.hs.gw_lan_sock(false, 53));
    let id = new_session(&s.api, s.device, DATA, 0, 1.0, 0, 0);
    connect(&s.api, s.device);
    // Within the budget: every byte with the resolver is usage, exactly what
    // its socket received (up) and sent (down), headers included.
    let t = UdpTransfer::run(&s.client.ns, resolver.addr, 300, 1000, 300, 1000)
        .expect("the tunnel's traffic");
    std::thread::sleep(Duration::from_millis(300));
    let c = s.agent.client_or_zero(&s.client.mac);
    // (Plus the one request for the answers: b"SAREQ", a count and a size.)
    let up = resolver.received() + HEADERS * resolver.datagrams() + HEADERS + 13;
    assert_eq!(
        c.up_bytes,
        up,
        "upload charged differs from what the resolver received ({} datagrams)",
        resolver.datagrams()
    );
    assert_eq!(
        c.down_bytes,
        t.received_bytes + HEADERS * t.received_datagrams,
        "download charged differs from what the client received: {t:?}"
    );
    assert_eq!(c.up_bytes + c.down_bytes, 300 * 1028 * 2 + HEADERS + 13);
    // Past the budget: cut off at 1 MB plus at most one packet.
    let _ = UdpTransfer::run(&s.client.ns, resolver.addr, 500, 1000, 500, 1000);
    let ended = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        (!is_connected(&s.api, s.device)).then_some(())
    });
    assert!(
        ended.is_some(),
        "the session did not end with its budget\n{}",
        s.context()
    );
    let c = s.agent.client_or_zero(&s.client.mac);
    let charged = c.up_bytes + c.down_bytes;
    let budget = 1_000_000;
    assert!(
        (budget..=budget + MTU).contains(&charged),
        "charged {charged} for a budget of {budget}: {c:?}\n{}",
        s.context()
    );
    let view = s.api.get(&format!("/v1/sessions/{id}")).ok("the session");
    assert!(field(&view, "data_cons_bytes") >= budget, "{view}");
    // Cut off, DNS with the gateway is garden again, under the garden limit
    // (256 kbit/s, a second's burst): a lookup gets through, a tunnel does not.
    std::thread::sleep(Duration::from_millis(1100));
    let before = resolver.datagrams();
    let _ = UdpTransfer::run(&s.client.ns, resolver.addr, 300, 1000, 0, 0);
    std::thread::sleep(Duration::from_millis(300));
    let through = resolver.datagrams() - before;
    assert!(
        (1..=40).contains(&through),
        "{through} of 300 datagrams to the resolver after the cut-off"
    );
    let after = s.agent.client_or_zero(&s.client.mac);
    assert_eq!(
        after.up_bytes + after.down_bytes,
        charged,
        "no usage after the cut-off"
    );
}

/// One UDP echo from `ns` to `dst`, answered within 300 ms.
fn echo(ns: &str, dst: std::net::SocketAddr, payload: &[u8]) -> Option<()> {
    session_tests::traffic::udp_echo(
        ns,
        "0.0.0.0:0".parse().unwrap(),
        dst,
        payload,
        None,
        Duration::from_millis(300),
    )
    .ok()
    .map(|_| ())
}

#[test]
fn a_flood_of_random_macs_locks_out_neither_a_paying_client_nor_a_new_customer() {
    require_root();
    let hs = Hotspot::builder().clients(3).dynamic_neighbours().build();
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    let (payer, attacker, customer) = (hs.client(0), hs.client(1), hs.client(2));
    // The paying client talks to the server throughout.
    let paying = api.device_id(&payer.mac);
    new_session(&api, paying, TIME, 600, 0.0, 0, 0);
    connect(&api, paying);
    let probe = Probe::start(&payer.ns, servers.udp4.addr, Duration::from_millis(50));
    let rss = |agent: &session_tests::Agent| agent.rss_kib().expect("the agent runs");
    let rss_before = rss(&agent);
    // 200,000 random MACs, as fast as one sender goes, for at most 30 s.
    let (sent, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let gw_mac = parse_mac(&hs.gw_lan_mac);
    let server = hs.server_v4;
    let flooder = {
        let (c, sent, stop) = (attacker.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || {
            MacFlood {
                pool: 200_000,
                frames: 200_000,
                until: deadline,
            }
            .send(&c, gw_mac, server, &sent, &stop)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // A new customer arrives during the flood, reaches the portal (here: DNS
    // on the gateway, its garden), pays, and is online within 5 s of paying.
    let dns = UdpServer::start(&hs.gw_ns, hs.gw_lan_sock(false, 53));
    let reached = wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        echo(&customer.ns, dns.addr, b"portal")
    });
    assert!(
        reached.is_some(),
        "a new customer found no way to the gateway during the flood ({} frames sent)\n{}",
        sent.load(Ordering::Relaxed),
        agent.log_tail()
    );
    let customer_id = api.device_id(&customer.mac);
    new_session(&api, customer_id, TIME, 600, 0.0, 0, 0);
    let paid = Instant::now();
    connect(&api, customer_id);
    let online = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        echo(&customer.ns, servers.udp4.addr, b"online")
    });
    assert!(
        online.is_some(),
        "the customer was not online within 5 s of paying\n{}",
        agent.log_tail()
    );
    let to_online = paid.elapsed();
    while !flooder.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    let results = probe.results();
    drop(probe);
    let lost = results.iter().filter(|r| !r.ok).count();
    assert!(
        lost <= 2,
        "the paying client lost {lost} of {} round trips during the flood",
        results.len()
    );
    let clients = agent.clients().len();
    let rss_after = rss(&agent);
    eprintln!(
        "flood: {} frames; customer online {:?} after paying; {clients} clients in the table; {lost} of {} probes lost; agent RSS {rss_before} -> {rss_after} kB",
        sent.load(Ordering::Relaxed),
        to_online,
        results.len()
    );
    assert!(clients <= 65_536, "{clients} clients");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the agent's memory grew from {rss_before} to {rss_after} kB"
    );
    let m = agent.metrics();
    assert!(
        m.lines().any(
            |l| l.starts_with("session_agent_datapath_admission_limited_total")
                && !l.ends_with(" 0")
        ),
        "no new MAC was held back by the admission rate:\n{m}"
    );
}

/// Sends `n` datagrams of 1,000 bytes from `ns` to `dst`.
fn send_udp(ns: &str, dst: std::net::SocketAddr, n: u32) {
    let s = session_tests::traffic::udp_socket(ns, "0.0.0.0:0".parse().unwrap()).unwrap();
    for _ in 0..n {
        let _ = s.send_to(&[0x5a; 1000], dst);
    }
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn the_gateways_addresses_are_the_kernels_and_followed_when_they_change() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs).start();
    let c = hs.client(0);
    agent.allow(&c.mac);
    let up = || agent.client_or_zero(&c.mac).up_bytes;
    // The WAN's network address is no address of the gateway's (the kernel
    // keeps no local route for it): what goes there is forwarded, so usage.
    let before = up();
    send_udp(&c.ns, "10.202.0.0:9".parse().unwrap(), 100);
    assert_eq!(
        up() - before,
        100 * (1000 + HEADERS),
        "to the WAN's network address"
    );
    // An address the gateway takes later: DHCP with it is not usage once the
    // agent has read it (within its 2 s), as with the gateway's other addresses.
    let new: std::net::SocketAddr = "10.199.0.77:67".parse().unwrap();
    let before = up();
    send_udp(&c.ns, new, 10);
    assert_eq!(
        up() - before,
        10 * (1000 + HEADERS),
        "not the gateway's yet"
    );
    session_tests::ns_command(&hs.gw_ns, "ip")
        .args(["addr", "add", "10.199.0.77/32", "dev", &hs.lan_if])
        .status()
        .expect("ip addr add");
    std::thread::sleep(Duration::from_secs(3));
    let before = up();
    send_udp(&c.ns, new, 10);
    assert_eq!(
        up() - before,
        0,
        "the gateway's address now: DHCP with it is no usage"
    );
}

/// What the package's boot unit does (`session-agent close-lans`) keeps the
/// LAN from forwarding until the agent has attached, which lifts it.
#[test]
fn the_lan_forwards_nothing_from_boot_until_the_agent_has_attached() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let client = hs.client(0).clone();
    let server = UdpServer::start(&hs.server_ns, hs.server_sock(false, 5009));
    let send = |n: u32| {
        let _ = UdpTransfer::run(&client.ns, server.addr, n, 100, 0, 0);
        std::thread::sleep(Duration::from_millis(300));
        server.datagrams()
    };
    let table = || {
        session_tests::netns::run_ok(
            session_tests::ns_command(&hs.gw_ns, "nft").args(["list", "ruleset"]),
        )
        .stdout
    };
    // Control: with nothing attached and nothing closed, the gateway forwards.
    assert_eq!(send(5), 5, "the gateway does not forward at all");
    let out = session_tests::agent::cli(&hs.gw_ns, &["close-lans", "--lan", &hs.lan_if]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("closed"),
        "close-lans: {out:?}"
    );
    assert_eq!(send(20), 5, "forwarded from a closed LAN");
    let rules = String::from_utf8_lossy(&table()).to_string();
    assert!(
        rules.contains("session_agent_closed") && rules.contains("packets 20"),
        "the closing table did not count the 20 datagrams:\n{rules}"
    );
    // The agent attaches and lifts it: a paying client is served, an unpaid one is gated.
    let agent = AgentBuilder::new(&hs).start();
    let rules = String::from_utf8_lossy(&table()).to_string();
    assert!(
        !rules.contains("session_agent_closed"),
        "the table is still there after the agent attached:\n{rules}"
    );
    assert!(
        agent.log().contains("forward again"),
        "the agent did not say it opened the LANs:\n{}",
        agent.log_tail()
    );
    assert_eq!(send(5), 5, "an unpaid client was forwarded once open");
    let api = agent.api();
    let device = api.device_id(&client.mac);
    new_session(&api, device, TIME, 600, 0.0, 0, 0);
    connect(&api, device);
    assert_eq!(
        send(5),
        10,
        "a paying client is not served after the agent attached"
    );
    // Again: nothing to open, and `open-lans` says so.
    let out = session_tests::agent::cli(&hs.gw_ns, &["open-lans"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("were not closed"),
        "{out:?}"
    );
}
