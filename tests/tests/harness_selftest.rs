//! The harness proven on its own, without the agent: topology, TCP/UDP over
//! IPv4/IPv6 from clients to the server, and the nftables reference meter.

use session_tests::traffic::udp_echo;
use session_tests::{
    require_root, Hotspot, NftRef, TcpServer, TcpTransfer, UdpServer, UdpTransfer,
};
use std::time::Duration;

#[test]
fn topology_traffic_and_reference_without_agent() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    // The topology is quiet: no ARP/ND/MLD chatter on the gateway LAN.
    let s0 = Hotspot::link_stats(&hs.gw_ns, &hs.lan_if);
    std::thread::sleep(Duration::from_millis(1500));
    let s1 = Hotspot::link_stats(&hs.gw_ns, &hs.lan_if);
    assert_eq!(
        s0, s1,
        "unexpected frames on the gateway LAN of an idle topology"
    );
    let nft = NftRef::install(&hs);
    let tcp4 = TcpServer::start(&hs.server_ns, hs.server_sock(false, 5001));
    let tcp6 = TcpServer::start(&hs.server_ns, hs.server_sock(true, 5001));
    let udp4 = UdpServer::start(&hs.server_ns, hs.server_sock(false, 5002));
    let udp6 = UdpServer::start(&hs.server_ns, hs.server_sock(true, 5002));

    let c0 = hs.client(0);
    let t = TcpTransfer::run(&c0.ns, tcp4.addr, 300_000, 500_000).expect("tcp v4");
    assert_eq!((t.sent, t.received), (300_016, 500_000));
    let t = TcpTransfer::run(&c0.ns, tcp6.addr, 200_000, 100_000).expect("tcp v6");
    assert_eq!((t.sent, t.received), (200_016, 100_000));
    let u = UdpTransfer::run(&c0.ns, udp4.addr, 100, 1000, 50, 1200).expect("udp v4");
    assert_eq!(u.sent_datagrams, 101);
    assert_eq!(u.received_datagrams, 50, "udp v4 download: {u:?}");
    let u = UdpTransfer::run(&c0.ns, udp6.addr, 80, 1300, 0, 0).expect("udp v6");
    assert_eq!(u.sent_datagrams, 80);

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(tcp4.received(), 300_016);
    assert_eq!(tcp6.received(), 200_016);
    assert_eq!(udp4.datagrams(), 100);
    assert_eq!(udp4.received(), 100 * 1000);
    assert_eq!(udp6.datagrams(), 80);

    let r = nft.read();
    let r0 = r[&c0.mac];
    let r1 = r[&hs.client(1).mac];
    eprintln!("reference: c0 {r0:?} c1 {r1:?}\n{}", nft.dump());
    // Client 1 sent nothing: nothing may be counted for it.
    assert_eq!(r1, Default::default(), "idle client counted");
    // Lower bounds from payload: IP+UDP headers on top of every datagram.
    let udp_up = 100 * (1000 + 28) + (5 + 8 + 28) + 80 * (1300 + 48);
    assert!(r0.up_bytes > 300_016 + 200_016 + udp_up, "{r0:?}");
    assert!(r0.up_packets >= 100 + 1 + 80 + 4, "{r0:?}");
    assert!(r0.down_bytes > 500_000 + 100_000 + 50 * 1228, "{r0:?}");
    assert!(r0.down_packets >= 50 + 4, "{r0:?}");
    // UDP datagrams have an exact IP size: an extra UDP burst of known size
    // must move the reference by exactly that much.
    let before = nft.get(&c0.mac);
    UdpTransfer::run(&c0.ns, udp6.addr, 10, 700, 0, 0).expect("udp v6 burst");
    UdpTransfer::run(&c0.ns, udp4.addr, 0, 0, 7, 333).expect("udp v4 download");
    std::thread::sleep(Duration::from_millis(200));
    let after = nft.get(&c0.mac);
    assert_eq!(after.up_packets - before.up_packets, 10 + 1);
    assert_eq!(
        after.up_bytes - before.up_bytes,
        10 * (700 + 8 + 40) + (5 + 8 + 8 + 20)
    );
    assert_eq!(after.down_packets - before.down_packets, 7);
    assert_eq!(after.down_bytes - before.down_bytes, 7 * (333 + 8 + 20));

    // Gateway-local UDP service and limited broadcast (as DHCP would use).
    let gw_udp = UdpServer::start(&hs.gw_ns, "0.0.0.0:5067".parse().unwrap());
    udp_echo(
        &c0.ns,
        "0.0.0.0:0".parse().unwrap(),
        hs.gw_lan_sock(false, 5067),
        b"unicast",
        None,
        Duration::from_secs(2),
    )
    .expect("unicast echo from the gateway");
    udp_echo(
        &c0.ns,
        "0.0.0.0:5068".parse().unwrap(),
        "255.255.255.255:5067".parse().unwrap(),
        b"bcast",
        Some("eth0"),
        Duration::from_secs(2),
    )
    .expect("broadcast echo from the gateway");
    assert_eq!(gw_udp.datagrams(), 2);
}

#[test]
fn topologies_are_independent_and_cleaned_up() {
    require_root();
    let names;
    {
        let a = Hotspot::builder().clients(1).build();
        let b = Hotspot::builder().clients(1).build();
        assert_ne!(a.gw_ns, b.gw_ns);
        assert_ne!(a.pin_root, b.pin_root);
        assert_ne!(a.client(0).mac, b.client(0).mac);
        let srv = TcpServer::start(&b.server_ns, b.server_sock(false, 7000));
        // Same addresses in both topologies, yet traffic stays in its own.
        TcpTransfer::run(&b.client(0).ns, srv.addr, 1000, 1000).expect("b");
        assert!(TcpTransfer::run_timeout(
            &a.client(0).ns,
            srv.addr,
            1000,
            1000,
            Duration::from_millis(500)
        )
        .is_err());
        names = vec![
            a.gw_ns.clone(),
            a.ap_ns.clone(),
            b.server_ns.clone(),
            b.client(0).ns.clone(),
        ];
    }
    for n in names {
        assert!(
            !std::path::Path::new(&format!("/run/netns/{n}")).exists(),
            "namespace {n} left behind"
        );
    }
}

/// The reference never counts the malformed frames of the malformed-frame
/// test (the kernel drops them before forwarding), while valid raw frames
/// with trailing padding count at their IP length.
#[test]
fn reference_ignores_malformed_frames_and_counts_ip_length() {
    use session_tests::raw::{
        eth, ipv4_udp, ipv6_udp, malformed_frames, RawSender, ETH_P_IPV4, ETH_P_IPV6,
    };
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let nft = NftRef::install(&hs);
    let udp4 = UdpServer::start(&hs.server_ns, hs.server_sock(false, 5002));
    let udp6 = UdpServer::start(&hs.server_ns, hs.server_sock(true, 5002));
    let c = hs.client(0);
    let gw_mac = session_tests::topo::parse_mac(&hs.gw_lan_mac);
    let tx = RawSender::open(&c.ns, &c.ifname).expect("raw socket");
    let frames = malformed_frames(c, gw_mac, hs.server_v4, hs.server_v6);
    assert!(frames.len() > 40);
    for _ in 0..3 {
        for (what, f) in &frames {
            tx.send(f).unwrap_or_else(|e| panic!("send {what}: {e}"));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        nft.get(&c.mac),
        Default::default(),
        "malformed frames were forwarded:\n{}",
        nft.dump()
    );
    assert_eq!(udp4.datagrams() + udp6.datagrams(), 0);
    for i in 0..5u8 {
        let mut f = eth(gw_mac, c.mac_bytes(), ETH_P_IPV4);
        f.extend_from_slice(&ipv4_udp(c.ipv4, hs.server_v4, 41000, 5002, &[i; 100]));
        f.extend_from_slice(&[0u8; 30]);
        tx.send(&f).unwrap();
        let mut f = eth(gw_mac, c.mac_bytes(), ETH_P_IPV6);
        f.extend_from_slice(&ipv6_udp(c.ipv6, hs.server_v6, 41000, 5002, &[i; 200]));
        f.extend_from_slice(&[0u8; 17]);
        tx.send(&f).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((udp4.datagrams(), udp6.datagrams()), (5, 5));
    let r = nft.get(&c.mac);
    assert_eq!(r.up_packets, 10);
    assert_eq!(r.up_bytes, 5 * (20 + 8 + 100) + 5 * (40 + 8 + 200));
}
