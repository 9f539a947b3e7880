//! The gate with real frames on the wire: raw frames (AF_PACKET) from client
//! namespaces, judged against what arrives in the server namespace (nftables
//! there, before anything else) and the gateway's forward chain.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use session_tests::check::{assert_usage_matches, settle};
use session_tests::netns::ns_command;
use session_tests::nft::ServerWatch;
use session_tests::raw::{
    arp, eth, ipv4_header, ipv4_udp, ipv6_header, ipv6_icmp, ipv6_udp, nd_message, tagged,
    RawSender, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6,
};
use session_tests::topo::{parse_mac, Client};
use session_tests::traffic::udp_echo;
use session_tests::{
    require_root, AgentBuilder, Hotspot, NftRef, ServerSet, TcpTransfer, UdpServer,
};

type Frames = Vec<(String, Vec<u8>)>;

/// Tag stacks: none, priority tags up to two deep, three tags, a VLAN ID.
const STACKS: [&[(u16, u16)]; 6] = [
    &[],
    &[(0x8100, 0)],
    &[(0x8100, 0), (0x8100, 0)],
    &[(0x88a8, 0), (0x8100, 0)],
    &[(0x8100, 0), (0x8100, 0), (0x8100, 0)],
    &[(0x8100, 5)],
];

/// A TCP SYN (IP header onwards).
fn tcp_syn4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut p = ipv4_header(src, dst, 6, 40, 5);
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40001u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = 0x02;
    p.extend_from_slice(&t);
    p
}

/// An IP packet of protocol `proto` with a junk payload (ICMP echo, GRE, ...).
fn other4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Vec<u8> {
    let mut p = ipv4_header(src, dst, proto, 20 + 64, 5);
    let mut body = vec![0x5au8; 64];
    if proto == 1 {
        body[0] = 8;
        body[1] = 0;
        body[2..4].fill(0);
        let c = session_tests::raw::checksum(&body);
        body[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&body);
    p
}

/// Every kind of IP packet the sweep sends from `c`, to the server and odd places.
fn packets(c: &Client, hs: &Hotspot) -> Vec<(String, u16, Vec<u8>)> {
    let mut v = Vec::new();
    let dsts4 = [
        ("server", hs.server_v4),
        ("gateway WAN", hs.gw_wan_v4),
        ("broadcast", Ipv4Addr::BROADCAST),
        ("class E", Ipv4Addr::new(240, 0, 0, 1)),
        ("WAN broadcast", Ipv4Addr::new(10, 202, 0, 255)),
    ];
    let ports = [53u16, 67, 68, 123, 443, 547, 853, 4789];
    for (what, d) in dsts4 {
        for p in ports {
            v.push((
                format!("UDP to {what}:{p}"),
                ETH_P_IPV4,
                ipv4_udp(c.ipv4, d, 68, p, &[0x11; 100]),
            ));
        }
        for p in [22u16, 53, 80, 443] {
            v.push((
                format!("TCP SYN to {what}:{p}"),
                ETH_P_IPV4,
                tcp_syn4(c.ipv4, d, p),
            ));
        }
        for proto in [1u8, 47, 50, 132] {
            v.push((
                format!("protocol {proto} to {what}"),
                ETH_P_IPV4,
                other4(c.ipv4, d, proto),
            ));
        }
    }
    let mapped: Ipv6Addr = hs.server_v4.to_ipv6_mapped();
    for (what, d) in [
        ("server", hs.server_v6),
        ("IPv4-mapped server", mapped),
        ("gateway WAN", hs.gw_wan_v6),
    ] {
        for p in ports {
            v.push((
                format!("UDPv6 to {what}:{p}"),
                ETH_P_IPV6,
                ipv6_udp(c.ipv6, d, 546, p, &[0x22; 100]),
            ));
        }
        for (ty, hop) in [
            (128u8, 64u8),
            (133, 255),
            (134, 255),
            (135, 255),
            (136, 255),
            (137, 255),
            (135, 64),
        ] {
            let mut m = nd_message(ty, d, Some(c.mac_bytes()));
            m[0] = ty;
            m.extend_from_slice(&[0x5a; 200]);
            v.push((
                format!("ICMPv6 type {ty} hop limit {hop} with a payload to {what}"),
                ETH_P_IPV6,
                ipv6_icmp(c.ipv6, d, hop, &m),
            ));
        }
        let mut p = ipv6_header(c.ipv6, d, 47, 64);
        p.extend_from_slice(&[0x5a; 64]);
        v.push((format!("GRE over IPv6 to {what}"), ETH_P_IPV6, p));
    }
    v
}

/// The sweep: every packet kind in every tag stack to the gateway's MAC and to
/// broadcast, plus ARP and other ethertypes. Without `to_gateway`, none to the
/// gateway's own addresses (a paying client's traffic with them is usage that
/// never reaches the server: `floods.rs` compares it with the gateway's socket).
fn sweep(c: &Client, hs: &Hotspot, to_gateway: bool) -> Frames {
    let gw = parse_mac(&hs.gw_lan_mac);
    let src = c.mac_bytes();
    let mut out = Vec::new();
    let pk: Vec<_> = packets(c, hs)
        .into_iter()
        .filter(|(what, ..)| to_gateway || !what.contains("WAN"))
        .collect();
    for dst in [gw, [0xff; 6]] {
        for tags in STACKS {
            for (what, et, p) in &pk {
                let mut f = eth(dst, src, *et);
                f.extend_from_slice(p);
                out.push((
                    format!("{what}, tags {tags:x?}, to {dst:x?}"),
                    tagged(&f, tags),
                ));
            }
            for et in [0x8863u16, 0x8864, 0x88cc, 0x8847, 0x86de, 0x0801] {
                let mut f = eth(dst, src, et);
                f.extend_from_slice(&pk[0].2);
                out.push((
                    format!("ethertype {et:#06x} around UDP, tags {tags:x?}"),
                    tagged(&f, tags),
                ));
            }
        }
    }
    out
}

fn send_all(c: &Client, frames: &Frames) {
    let tx = RawSender::open(&c.ns, &c.ifname).expect("raw socket");
    for (i, (what, f)) in frames.iter().enumerate() {
        tx.send(f)
            .unwrap_or_else(|e| panic!("sending {what} ({} bytes): {e}", f.len()));
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn an_unpaid_client_gets_nothing_past_the_garden_whatever_it_sends() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let watch = ServerWatch::install(&hs);
    let dns = UdpServer::start(&hs.gw_ns, hs.gw_lan_sock(false, 53));
    let agent = AgentBuilder::new(&hs).start();
    let c = hs.client(0);
    let frames = sweep(c, &hs, true);
    send_all(c, &frames);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        (watch.from_client(0), watch.other()),
        ((0, 0), (0, 0)),
        "{} frames from a client that has not paid; what reached the server: {:?}\nagent log:\n{}",
        frames.len(),
        watch.all(),
        agent.log_tail()
    );
    // The garden still answers: DNS on the gateway.
    let r = udp_echo(
        &c.ns,
        "0.0.0.0:0".parse().unwrap(),
        hs.gw_lan_sock(false, 53),
        b"q",
        None,
        Duration::from_secs(2),
    );
    assert!(r.is_ok(), "DNS on the gateway: {r:?}");
    assert!(dns.datagrams() >= 1);
    let s = agent.client_or_zero(&c.mac);
    assert_eq!((s.up_bytes, s.down_bytes), (0, 0), "{s:?}");
    assert!(s.unknown_packets > 0 && s.blocked_packets > 0, "{s:?}");

    // The same frames from a paying client: what the gateway forwards reaches
    // the server (so the watch would have seen a leak), and it is charged
    // exactly what arrives there.
    agent.allow(&c.mac);
    let before = agent.client_or_zero(&c.mac);
    let frames = sweep(c, &hs, false);
    send_all(c, &frames);
    std::thread::sleep(Duration::from_millis(500));
    let arrived = watch.from_client(0);
    let after = agent.client_or_zero(&c.mac);
    assert!(
        arrived.0 > 0,
        "nothing reached the server from a paying client"
    );
    assert_eq!(
        (
            after.up_packets - before.up_packets,
            after.up_bytes - before.up_bytes
        ),
        arrived,
        "charged upload differs from what reached the server: {after:?}\n{:?}",
        watch.all()
    );
    assert_eq!(watch.other(), (0, 0), "{:?}", watch.all());
}

/// ARP and NA from `from` claiming `ip`/`ip6` for `mac`.
fn claims(
    from: &Client,
    gw: [u8; 6],
    mac: [u8; 6],
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
    gw6: Ipv6Addr,
) -> Frames {
    let src = from.mac_bytes();
    let mut v = Vec::new();
    let mut f = eth(gw, src, ETH_P_ARP);
    f.extend_from_slice(&arp(2, mac, ip, gw, Ipv4Addr::new(10, 201, 0, 1)));
    v.push((format!("ARP reply {ip} is-at {mac:x?}"), f));
    let mut f = eth([0xff; 6], src, ETH_P_ARP);
    f.extend_from_slice(&arp(1, mac, ip, [0; 6], Ipv4Addr::new(10, 201, 0, 1)));
    v.push((format!("ARP request from {ip} at {mac:x?}"), f));
    let mut f = eth(gw, src, ETH_P_IPV6);
    f.extend_from_slice(&ipv6_icmp(ip6, gw6, 255, &nd_message(136, ip6, Some(mac))));
    v.push((format!("NA {ip6} is-at {mac:x?}"), f));
    v
}

fn neighbour(hs: &Hotspot, ip: IpAddr) -> String {
    let out = ns_command(&hs.gw_ns, "ip")
        .args(["neigh", "show", &ip.to_string(), "dev", &hs.lan_if])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn paying_clients_pay_for_their_own_traffic_and_no_one_elses() {
    require_root();
    // Real ARP and ND between the clients and the gateway.
    let hs = Hotspot::builder().clients(2).dynamic_neighbours().build();
    let nft = NftRef::install(&hs);
    let watch = ServerWatch::install(&hs);
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let agent = AgentBuilder::new(&hs).start();
    let (a, b) = (hs.client(0), hs.client(1));
    agent.allow(&a.mac);
    agent.allow(&b.mac);
    let gw = parse_mac(&hs.gw_lan_mac);
    for (addr, what) in [(servers.tcp4.addr, "v4"), (servers.tcp6.addr, "v6")] {
        let r = TcpTransfer::run(&a.ns, addr, 200_000, 300_000);
        assert!(
            matches!(r, Ok(ref x) if x.received == 300_000),
            "A's TCP over {what}: {r:?}"
        );
    }
    let a_v4 = neighbour(&hs, a.ipv4.into());
    assert!(
        a_v4.contains(&a.mac),
        "the gateway did not learn A by ARP: {a_v4}"
    );
    // B sends with A's addresses, claims them for itself and for A's MAC
    // from its own, and sends some traffic of its own, tagged.
    let mut frames: Frames = Vec::new();
    for i in 0..50u8 {
        let mut f = eth(gw, b.mac_bytes(), ETH_P_IPV4);
        f.extend_from_slice(&ipv4_udp(a.ipv4, hs.server_v4, 40000, 5002, &[i; 400]));
        frames.push(("UDP from A's address".into(), f));
        let mut f = eth(gw, b.mac_bytes(), ETH_P_IPV6);
        f.extend_from_slice(&ipv6_udp(a.ipv6, hs.server_v6, 40000, 5002, &[i; 400]));
        frames.push(("UDPv6 from A's address".into(), f));
    }
    let gw_ll: Ipv6Addr = hs.gw_lan_v6;
    frames.extend(claims(b, gw, b.mac_bytes(), a.ipv4, a.ipv6, gw_ll));
    frames.extend(claims(b, gw, a.mac_bytes(), b.ipv4, b.ipv6, gw_ll));
    let spoofed = frames.len();
    for i in 0..20u8 {
        let mut f = eth(gw, b.mac_bytes(), ETH_P_IPV4);
        f.extend_from_slice(&ipv4_udp(b.ipv4, hs.server_v4, 40000, 5002, &[i; 300]));
        frames.push((
            "B's own UDP, priority-tagged".into(),
            tagged(&f, &[(0x8100, 0)]),
        ));
    }
    send_all(b, &frames);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        neighbour(&hs, a.ipv4.into()),
        a_v4,
        "a forged claim moved A's neighbour entry"
    );
    // A's downloads still reach A, and B sees none of them.
    let r = TcpTransfer::run(&a.ns, servers.tcp4.addr, 1_000, 200_000);
    assert!(
        matches!(r, Ok(ref x) if x.received == 200_000),
        "A after B's claims: {r:?}"
    );
    assert_usage_matches(
        &agent,
        &nft,
        &[a.mac.clone(), b.mac.clone()],
        "TCP of A with real ARP/ND, spoofed and tagged frames of B",
    );
    let (s, _) = settle(&agent, &nft);
    let (sa, sb) = (&s[&a.mac], &s[&b.mac]);
    assert_eq!(
        (sa.up_packets, sa.up_bytes),
        watch.from_client(0),
        "A is charged for exactly what reached the server from its addresses"
    );
    assert_eq!(
        (sb.up_packets, sb.up_bytes),
        watch.from_client(1),
        "B likewise"
    );
    assert_eq!((sb.up_packets, sb.up_bytes), (20, 20 * 328), "{sb:?}");
    assert!(sb.spoof_packets >= spoofed as u64, "{sb:?}");
    assert_eq!(sb.down_bytes, 0, "B was charged for A's download: {sb:?}");
}

#[test]
fn a_cloned_mac_is_reported_as_a_mac_conflict() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let watch = ServerWatch::install(&hs);
    let agent = AgentBuilder::new(&hs).start();
    let api = agent.api();
    let mut events = api.events("");
    let (a, b) = (hs.client(0), hs.client(1));
    agent.allow(&a.mac);
    let gw = parse_mac(&hs.gw_lan_mac);
    let from = |c: &Client, mac: [u8; 6]| {
        let mut f = eth(gw, mac, ETH_P_IPV4);
        f.extend_from_slice(&ipv4_udp(c.ipv4, hs.server_v4, 40000, 5002, &[7; 100]));
        f
    };
    // A uses its address; B clones A's MAC and sends from its own.
    send_all(a, &vec![("A".into(), from(a, a.mac_bytes()))]);
    std::thread::sleep(Duration::from_millis(100));
    send_all(b, &vec![("B as A".into(), from(b, a.mac_bytes()))]);
    let e = events.wait_for("mac_conflict", Duration::from_secs(5), |n, _| {
        n == "mac_conflict"
    });
    assert_eq!(e["mac"], a.mac.as_str(), "{e}");
    assert_eq!(e["address"], b.ipv4.to_string().as_str(), "{e}");
    let m = api.get("/metrics").body;
    let text = m.as_str().unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l == "session_agent_mac_conflicts_total 1"),
        "{text}"
    );
    // Both datagrams went through as A's (the documented limit of a clone):
    // A is charged for exactly what reached the server from its MAC.
    let s = agent.client_or_zero(&a.mac);
    let (p0, b0) = watch.from_client(0);
    let (p1, b1) = watch.from_client(1);
    assert_eq!((s.up_packets, s.up_bytes), (p0 + p1, b0 + b1), "{s:?}");
}
