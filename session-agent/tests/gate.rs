//! The gate: what a client that has not paid gets through, and to whom each
//! byte is charged, judged by the kernel on hostile frames (BPF_PROG_TEST_RUN).
//! Each test is one way through or around the garden found by trying; needs
//! root and bpffs.

mod common;

use common::*;
use session_tests::raw::{
    arp, eth, ipv6_icmp, nd_message, solicited_node, tagged, ETH_P_ARP, ETH_P_IPV6,
};

fn mac(n: u8) -> [u8; 6] {
    client_mac(n).addr
}

fn client_v6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x10 + n as u16)
}

fn client_ll(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10 + n as u16)
}

fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = eth(dst, src, ethertype);
    f.extend_from_slice(payload);
    f
}

/// An ICMPv6 frame from `src_mac`.
fn icmp6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    msg: &[u8],
) -> Vec<u8> {
    frame(dst_mac, src_mac, ETH_P_IPV6, &ipv6_icmp(src, dst, hop, msg))
}

impl Datapath {
    fn stat(&self, i: u32) -> u64 {
        self.h.maps.stats().unwrap()[i as usize]
    }
}

#[test]
fn dhcp_ports_reach_only_the_gateway_and_the_broadcast() {
    let dp = Datapath::new();
    let n = 1;
    let v4 = client_v4(n);
    // A tunnel to a server's port 67 or 547 (or from it) finds no garden.
    let tunnels = [
        (
            "to a server's port 67",
            dp.up(&udp4(GW_MAC, mac(n), v4, SERVER_V4, 4789, 67, 100)),
        ),
        (
            "from port 67 to a server",
            dp.up(&udp4(GW_MAC, mac(n), v4, SERVER_V4, 67, 4789, 100)),
        ),
        (
            "a server's port 67 answering",
            dp.down(&udp4(mac(n), GW_MAC, SERVER_V4, v4, 67, 68, 100)),
        ),
        (
            "to a server's port 547",
            dp.up(&udp6(
                GW_MAC,
                mac(n),
                client_v6(n),
                SERVER_V6,
                546,
                547,
                100,
            )),
        ),
        (
            "a server's port 547 answering",
            dp.down(&udp6(
                mac(n),
                GW_MAC,
                SERVER_V6,
                client_v6(n),
                547,
                546,
                100,
            )),
        ),
        (
            "DHCPv6 to the gateway's global address",
            dp.up(&udp6(GW_MAC, mac(n), client_v6(n), GW_V6, 546, 547, 100)),
        ),
    ];
    for (what, v) in tunnels {
        assert_eq!(v, TC_DROP, "{what}");
    }
    let dhcp = [
        (
            "discover",
            dp.up(&udp4(
                [0xff; 6],
                mac(n),
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                68,
                67,
                300,
            )),
        ),
        (
            "renewal",
            dp.up(&udp4(GW_MAC, mac(n), v4, GW_V4, 68, 67, 300)),
        ),
        (
            "acknowledgement",
            dp.down(&udp4(mac(n), GW_MAC, GW_V4, v4, 67, 68, 300)),
        ),
        (
            "solicit",
            dp.up(&udp6(
                [0x33, 0x33, 0, 1, 0, 2],
                mac(n),
                client_ll(n),
                "ff02::1:2".parse().unwrap(),
                546,
                547,
                100,
            )),
        ),
        (
            "request to the gateway's link-local",
            dp.up(&udp6(GW_MAC, mac(n), client_ll(n), GW_LL, 546, 547, 100)),
        ),
        (
            "reply",
            dp.down(&udp6(mac(n), GW_MAC, GW_LL, client_ll(n), 547, 546, 100)),
        ),
    ];
    for (what, v) in dhcp {
        assert_eq!(v, TC_PASS, "{what}");
    }
    let c = dp.counters(client_mac(n));
    assert_eq!((c.blocked_packets, c.garden_packets), (6, 6));
    assert_eq!((c.up_bytes, c.down_bytes), (0, 0));
}

#[test]
fn tagged_frames_are_judged_by_the_ip_they_carry() {
    let mut dp = Datapath::new();
    let (n, paid) = (2, 3);
    let out = up4(n, 443, 100);
    let stacks: [&[(u16, u16)]; 4] = [
        &[(0x8100, 0)],
        &[(0x8100, 0), (0x8100, 0)],
        &[(0x88a8, 0), (0x8100, 0)],
        &[(0x9100, 0x2000), (0x8100, 0xe000)],
    ];
    for tags in stacks {
        assert_eq!(dp.up(&tagged(&out, tags)), TC_DROP, "tc, tags {tags:x?}");
        assert_eq!(
            dp.run(PROG_XDP_INGRESS, &tagged(&out, tags)),
            XDP_DROP,
            "xdp, tags {tags:x?}"
        );
    }
    let dns = udp4(GW_MAC, mac(n), client_v4(n), GW_V4, 40000, 53, 30);
    assert_eq!(
        dp.up(&tagged(&dns, stacks[1])),
        TC_PASS,
        "the garden through two tags"
    );
    let unknown = dp.stat(STAT_UNKNOWN);
    assert_eq!(
        dp.up(&tagged(&out, &[(0x8100, 0); 3])),
        TC_DROP,
        "three tags"
    );
    assert_eq!(
        dp.up(&tagged(&up4(n, 443, 100), &[(0x8100, 5)])),
        TC_DROP,
        "a tag with a VLAN ID"
    );
    assert_eq!(dp.stat(STAT_UNKNOWN), unknown + 2);
    let c = dp.counters(client_mac(n));
    assert_eq!((c.blocked_packets, c.blocked_bytes), (8, 8 * 128));
    assert_eq!((c.garden_packets, c.up_bytes), (1, 0));
    // A paying client's tagged traffic is usage, exactly, both ways.
    dp.allow(client_mac(paid));
    let down = down4(paid, 443, 200);
    for tags in stacks {
        assert_eq!(dp.up(&tagged(&up4(paid, 443, 100), tags)), TC_PASS);
        assert_eq!(dp.down(&tagged(&down, tags)), TC_PASS);
    }
    let c = dp.counters(client_mac(paid));
    assert_eq!((c.up_packets, c.up_bytes), (4, 4 * 128));
    assert_eq!((c.down_packets, c.down_bytes), (4, 4 * 228));
}

#[test]
fn group_macs_never_stand_for_a_client() {
    let mut dp = Datapath::new();
    let n = 4;
    dp.allow(client_mac(n));
    assert_eq!(dp.up(&up4(n, 443, 10)), TC_PASS);
    let malformed = dp.stat(STAT_MALFORMED);
    // Downloads in frames to a group MAC (a neighbour entry pointing at one).
    for group in [
        [0xff; 6],
        [0x33, 0x33, 0, 0, 0, 1],
        [0x01, 0, 0x5e, 0, 0, 1],
    ] {
        let f = udp4(group, GW_MAC, SERVER_V4, client_v4(n), 443, 40000, 500);
        assert_eq!(dp.down(&f), TC_DROP, "download to {group:x?}");
        let f = udp6(group, GW_MAC, SERVER_V6, client_v6(n), 443, 40000, 500);
        assert_eq!(dp.down(&f), TC_DROP, "IPv6 download to {group:x?}");
    }
    // Uploads of IP unicast in a frame for every station.
    let f = udp4([0xff; 6], mac(n), client_v4(n), SERVER_V4, 40000, 443, 100);
    assert_eq!(dp.up(&f), TC_DROP, "unicast IP in a broadcast frame");
    assert_eq!(dp.stat(STAT_MALFORMED), malformed + 7);
    let c = dp.counters(client_mac(n));
    assert_eq!((c.down_bytes, c.up_packets, c.malformed_packets), (0, 1, 1));
    // A group source MAC is nobody: dropped, and it takes no slot.
    let group_src = [0x03, 0xaa, 0, 0, 0, 9];
    let f = udp4(GW_MAC, group_src, client_v4(9), SERVER_V4, 1, 443, 10);
    assert_eq!(dp.up(&f), TC_DROP);
    assert_eq!(dp.h.maps.slot_of(&MacAddr::new(group_src)), None);
    assert_eq!(dp.stat(STAT_GROUP_SRC), 1);
    // ARP and ND that give a group MAC as an address's link-layer address.
    let a = arp(2, [0xff; 6], client_v4(n), GW_MAC, GW_V4);
    assert_eq!(
        dp.up(&frame(GW_MAC, mac(n), ETH_P_ARP, &a)),
        TC_DROP,
        "ARP reply"
    );
    let na = nd_message(136, client_v6(n), Some([0xff; 6]));
    let f = icmp6(GW_MAC, mac(n), client_v6(n), GW_LL, 255, &na);
    assert_eq!(dp.up(&f), TC_DROP, "NA");
    assert_eq!(dp.counters(client_mac(n)).spoof_packets, 2);
}

#[test]
fn no_client_can_make_the_gateway_charge_another() {
    let mut dp = Datapath::new();
    let (a, b) = (5, 6);
    dp.allow(client_mac(a));
    dp.allow(client_mac(b));
    // A's first packets bind its addresses to its MAC.
    assert_eq!(dp.up(&up4(a, 443, 100)), TC_PASS);
    let a6 = udp6(GW_MAC, mac(a), client_v6(a), SERVER_V6, 1, 443, 100);
    assert_eq!(dp.up(&a6), TC_PASS);
    let spoofs = [
        (
            "B sends with A's address",
            dp.up(&udp4(GW_MAC, mac(b), client_v4(a), SERVER_V4, 1, 443, 100)),
        ),
        (
            "B sends with A's IPv6 address",
            dp.up(&udp6(GW_MAC, mac(b), client_v6(a), SERVER_V6, 1, 443, 100)),
        ),
        (
            "B claims A's address in ARP",
            dp.up(&frame(
                GW_MAC,
                mac(b),
                ETH_P_ARP,
                &arp(2, mac(b), client_v4(a), GW_MAC, GW_V4),
            )),
        ),
        (
            "B's ARP names A's MAC",
            dp.up(&frame(
                GW_MAC,
                mac(b),
                ETH_P_ARP,
                &arp(2, mac(a), client_v4(b), GW_MAC, GW_V4),
            )),
        ),
        (
            "B advertises A's IPv6 address",
            dp.up(&icmp6(
                GW_MAC,
                mac(b),
                client_ll(b),
                GW_LL,
                255,
                &nd_message(136, client_v6(a), Some(mac(b))),
            )),
        ),
        (
            "B's NA names A's MAC",
            dp.up(&icmp6(
                GW_MAC,
                mac(b),
                client_ll(b),
                GW_LL,
                255,
                &nd_message(136, client_v6(b), Some(mac(a))),
            )),
        ),
        (
            "B's NS names A's MAC",
            dp.up(&icmp6(
                GW_MAC,
                mac(b),
                client_ll(b),
                GW_LL,
                255,
                &nd_message(135, GW_LL, Some(mac(a))),
            )),
        ),
        (
            "B sends with the gateway's address",
            dp.up(&udp4(GW_MAC, mac(b), GW_V4, SERVER_V4, 1, 443, 100)),
        ),
        (
            "B claims the gateway's address",
            dp.up(&frame(
                GW_MAC,
                mac(b),
                ETH_P_ARP,
                &arp(2, mac(b), GW_V4, GW_MAC, GW_V4),
            )),
        ),
        // A forged neighbour entry: A's download in a frame to B's MAC.
        (
            "A's download to B's MAC",
            dp.down(&udp4(mac(b), GW_MAC, SERVER_V4, client_v4(a), 443, 1, 500)),
        ),
    ];
    for (what, v) in spoofs {
        assert_eq!(v, TC_DROP, "{what}");
    }
    // Their own traffic still passes, each charged to its sender.
    assert_eq!(dp.down(&down4(a, 443, 100)), TC_PASS);
    assert_eq!(dp.up(&up4(b, 443, 100)), TC_PASS);
    let arp_b = arp(2, mac(b), client_v4(b), GW_MAC, GW_V4);
    assert_eq!(dp.up(&frame(GW_MAC, mac(b), ETH_P_ARP, &arp_b)), TC_PASS);
    let ca = dp.counters(client_mac(a));
    let cb = dp.counters(client_mac(b));
    assert_eq!((ca.up_bytes, ca.down_bytes), (128 + 148, 128));
    assert_eq!((cb.up_bytes, cb.down_bytes), (128, 0));
    // The forged download counts against the MAC it was sent to.
    assert_eq!((cb.spoof_packets, ca.spoof_packets), (10, 0));
    let bound = dp.h.maps.bindings().unwrap();
    let owner = |ip: IpAddr| bound.iter().find(|(a, _, _)| *a == ip).map(|(_, m, _)| *m);
    assert_eq!(owner(client_v4(a).into()), Some(client_mac(a)));
    assert_eq!(owner(client_v6(a).into()), Some(client_mac(a)));
    assert_eq!(owner(client_v4(b).into()), Some(client_mac(b)));
    assert_eq!(
        owner(client_ll(b).into()),
        Some(client_mac(b)),
        "from its ND"
    );
    assert_eq!(owner(GW_V4.into()), None);
    assert_eq!((ca.bound_addrs, cb.bound_addrs), (2, 2));
}

#[test]
fn a_binding_in_use_is_kept_and_one_unused_for_the_ttl_is_free_without_a_sweep() {
    let mut dp = Datapath::new();
    let (a, b) = (7, 8);
    dp.allow(client_mac(a));
    dp.allow(client_mac(b));
    let ttl = std::time::Duration::from_millis(400);
    dp.h.maps.set_bind_ttl(ttl);
    assert_eq!(dp.up(&up4(a, 443, 10)), TC_PASS);
    let taken = udp4(GW_MAC, mac(b), client_v4(a), SERVER_V4, 1, 443, 10);
    assert_eq!(dp.up(&taken), TC_DROP);
    // In use for three TTLs, from the address A's entry remembers: the
    // datapath looks it up and stamps it again itself, every quarter TTL.
    let until = std::time::Instant::now() + ttl * 3;
    while std::time::Instant::now() < until {
        assert_eq!(dp.up(&up4(a, 443, 10)), TC_PASS);
        std::thread::sleep(std::time::Duration::from_millis(40));
    }
    assert_eq!(dp.up(&taken), TC_DROP, "B took an address in use");
    // Unused for the TTL: free at once, with no sweep. B's claim takes it,
    // and A may not send with it any more.
    std::thread::sleep(ttl + std::time::Duration::from_millis(50));
    assert_eq!(dp.h.maps.binding_of(client_v4(a).into()).unwrap(), None);
    assert_eq!(dp.up(&taken), TC_PASS);
    assert_eq!(dp.up(&up4(a, 443, 10)), TC_DROP);
    assert_eq!(
        dp.h.maps.binding_of(client_v4(a).into()).unwrap(),
        Some(client_mac(b))
    );
    // The sweep removes none in use and counts again: A holds none, B one.
    let done = dp.h.maps.sweep_bindings(ttl).unwrap();
    assert_eq!((done.expired, done.live), (0, 1));
    assert_eq!(dp.counters(client_mac(a)).bound_addrs, 0);
    assert_eq!(dp.counters(client_mac(b)).bound_addrs, 1);
}

#[test]
fn the_sweep_removes_bindings_unused_for_the_ttl_and_counts_addresses_again() {
    let mut dp = Datapath::new();
    let (a, b) = (7, 8);
    dp.allow(client_mac(a));
    dp.allow(client_mac(b));
    let ttl = std::time::Duration::from_millis(300);
    dp.h.maps.set_bind_ttl(ttl);
    assert_eq!(dp.up(&up4(a, 443, 10)), TC_PASS);
    let taken = udp4(GW_MAC, mac(b), client_v4(a), SERVER_V4, 1, 443, 10);
    assert_eq!(dp.up(&taken), TC_DROP);
    // In use: a sweep keeps it.
    assert_eq!(dp.h.maps.sweep_bindings(ttl).unwrap().expired, 0);
    std::thread::sleep(ttl + std::time::Duration::from_millis(50));
    let done = dp.h.maps.sweep_bindings(ttl).unwrap();
    assert_eq!((done.expired, done.live), (1, 0));
    assert_eq!(dp.counters(client_mac(a)).bound_addrs, 0);
    // Free: B may take it now, and A may not send with it any more.
    assert_eq!(dp.up(&taken), TC_PASS);
    assert_eq!(dp.up(&up4(a, 443, 10)), TC_DROP);
}

#[test]
fn a_client_holds_a_bounded_number_of_addresses() {
    let mut dp = Datapath::new();
    let (n, unpaid) = (9, 10);
    dp.allow(client_mac(n));
    let v6 = |i: u8| Ipv6Addr::new(0xfd00, 0x99, 0, 1, 0, 0, 0, i as u16);
    let passed = (0..40u8)
        .filter(|&i| dp.up(&udp6(GW_MAC, mac(n), v6(i), SERVER_V6, 1, 443, 10)) == TC_PASS)
        .count() as u64;
    assert_eq!(passed, MAX_ADDRS_PER_CLIENT);
    let c = dp.counters(client_mac(n));
    assert_eq!((c.bound_addrs, c.spoof_packets), (16, 40 - 16));
    assert_eq!(dp.stat(STAT_BINDINGS_FULL), 40 - 16);
    // A client that has not paid holds fewer (DNS to the gateway is its garden).
    let held = (0..40u8)
        .filter(|&i| {
            let f = udp4(
                GW_MAC,
                mac(unpaid),
                Ipv4Addr::new(10, 99, 2, i),
                GW_V4,
                1,
                53,
                10,
            );
            dp.up(&f) == TC_PASS
        })
        .count() as u64;
    assert_eq!(held, MAX_ADDRS_UNPAID);
    assert_eq!(
        dp.counters(client_mac(unpaid)).bound_addrs,
        MAX_ADDRS_UNPAID
    );
}

#[test]
fn neighbour_discovery_passes_only_with_the_gateway() {
    let dp = Datapath::new();
    let n = 10;
    let (gw_sn, gw_sn_mac) = solicited_node(GW_LL);
    let ns = nd_message(135, GW_LL, Some(mac(n)));
    let ok = [
        (
            "NS to the gateway's solicited-node group",
            icmp6(gw_sn_mac, mac(n), client_ll(n), gw_sn, 255, &ns),
        ),
        (
            "DAD NS",
            icmp6(
                gw_sn_mac,
                mac(n),
                Ipv6Addr::UNSPECIFIED,
                gw_sn,
                255,
                &nd_message(135, client_ll(n), None),
            ),
        ),
        (
            "NS to the gateway's address",
            icmp6(GW_MAC, mac(n), client_v6(n), GW_V6, 255, &ns),
        ),
        (
            "NA to the gateway",
            icmp6(
                GW_MAC,
                mac(n),
                client_ll(n),
                GW_LL,
                255,
                &nd_message(136, client_ll(n), Some(mac(n))),
            ),
        ),
        (
            "RS",
            icmp6(
                [0x33, 0x33, 0, 0, 0, 2],
                mac(n),
                client_ll(n),
                "ff02::2".parse().unwrap(),
                255,
                &[133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0xaa, 0, 0, 0, 10],
            ),
        ),
    ];
    for (what, f) in ok {
        assert_eq!(dp.up(&f), TC_PASS, "{what}");
    }
    let mut channel = ns.clone();
    channel.extend_from_slice(&[0x5a; 600]);
    let refused = [
        (
            "NS to a server",
            icmp6(GW_MAC, mac(n), client_v6(n), SERVER_V6, 255, &ns),
        ),
        (
            "NA with a payload to a server",
            icmp6(GW_MAC, mac(n), client_v6(n), SERVER_V6, 255, &channel),
        ),
        (
            "NS with hop limit 64",
            icmp6(gw_sn_mac, mac(n), client_ll(n), gw_sn, 64, &ns),
        ),
        (
            "NS with a payload after its options",
            icmp6(gw_sn_mac, mac(n), client_ll(n), gw_sn, 255, &channel),
        ),
        (
            "NS naming another MAC",
            icmp6(
                gw_sn_mac,
                mac(n),
                client_ll(n),
                gw_sn,
                255,
                &nd_message(135, GW_LL, Some(mac(11))),
            ),
        ),
    ];
    for (what, f) in refused {
        assert_eq!(dp.up(&f), TC_DROP, "{what}");
    }
    // From the gateway itself (hop limit 255), not forwarded from anywhere.
    let na = nd_message(136, GW_LL, Some(GW_MAC));
    assert_eq!(
        dp.down(&icmp6(mac(n), GW_MAC, GW_LL, client_ll(n), 255, &na)),
        TC_PASS
    );
    assert_eq!(
        dp.down(&icmp6(mac(n), GW_MAC, SERVER_V6, client_v6(n), 254, &na)),
        TC_DROP
    );
    assert_eq!(
        dp.down(&icmp6(mac(n), GW_MAC, SERVER_V6, client_v6(n), 255, &na)),
        TC_DROP
    );
    let c = dp.counters(client_mac(n));
    assert_eq!((c.garden_packets, c.up_bytes, c.down_bytes), (6, 0, 0));
}

#[test]
fn odd_destinations_and_mapped_addresses_never_pass() {
    let mut dp = Datapath::new();
    let (n, paid) = (12, 13);
    // An IPv4-mapped IPv6 address is not the IPv4 garden (10.97.0.0/16).
    let mapped: Ipv6Addr = "::ffff:10.97.0.5".parse().unwrap();
    let f = udp6(GW_MAC, mac(n), client_v6(n), mapped, 1, 443, 10);
    assert_eq!(dp.up(&f), TC_DROP, "IPv4-mapped garden address");
    assert_eq!(
        dp.up(&up4_to(n, Ipv4Addr::new(10, 97, 0, 5))),
        TC_PASS,
        "the garden itself"
    );
    // Broadcast and multicast reach only the gateway's services.
    let group = [
        (
            "broadcast to a wildcard port",
            udp4(
                [0xff; 6],
                mac(n),
                client_v4(n),
                Ipv4Addr::BROADCAST,
                1,
                9999,
                10,
            ),
        ),
        (
            "broadcast DNS",
            udp4(
                [0xff; 6],
                mac(n),
                client_v4(n),
                Ipv4Addr::BROADCAST,
                1,
                53,
                10,
            ),
        ),
        (
            "mDNS",
            udp4(
                [1, 0, 0x5e, 0, 0, 0xfb],
                mac(n),
                client_v4(n),
                Ipv4Addr::new(224, 0, 0, 251),
                5353,
                5353,
                10,
            ),
        ),
        (
            "IPv6 multicast",
            udp6(
                [0x33, 0x33, 0, 0, 0, 1],
                mac(n),
                client_v6(n),
                "ff02::1".parse().unwrap(),
                1,
                9999,
                10,
            ),
        ),
        (
            "another port of the gateway",
            udp4(GW_MAC, mac(n), client_v4(n), GW_V4, 1, 9, 10),
        ),
    ];
    for (what, f) in group {
        assert_eq!(dp.up(&f), TC_DROP, "{what}");
    }
    // Never routed: dropped for paying clients too, and not usage.
    dp.allow(client_mac(paid));
    let from = |src: Ipv4Addr| udp4(GW_MAC, mac(paid), src, SERVER_V4, 1, 443, 10);
    let odd: [(&str, Vec<u8>); 9] = [
        ("from 0.0.0.0 to a server", from(Ipv4Addr::UNSPECIFIED)),
        ("from loopback", from(Ipv4Addr::LOCALHOST)),
        (
            "from IPv6 ::",
            udp6(
                GW_MAC,
                mac(paid),
                Ipv6Addr::UNSPECIFIED,
                SERVER_V6,
                1,
                443,
                10,
            ),
        ),
        ("class E", up4_to(paid, Ipv4Addr::new(240, 0, 0, 1))),
        ("0.0.0.0/8", up4_to(paid, Ipv4Addr::new(0, 0, 0, 5))),
        ("loopback", up4_to(paid, Ipv4Addr::LOCALHOST)),
        (
            "IPv4-mapped",
            udp6(
                GW_MAC,
                mac(paid),
                client_v6(paid),
                "::ffff:10.98.0.2".parse().unwrap(),
                1,
                443,
                10,
            ),
        ),
        (
            "IPv6 loopback",
            udp6(
                GW_MAC,
                mac(paid),
                client_v6(paid),
                Ipv6Addr::LOCALHOST,
                1,
                443,
                10,
            ),
        ),
        (
            "another host's link-local",
            udp6(GW_MAC, mac(paid), client_ll(paid), client_ll(n), 1, 443, 10),
        ),
    ];
    let before = dp.stat(STAT_ODD_DST);
    for (what, f) in &odd {
        assert_eq!(dp.up(f), TC_DROP, "{what}");
    }
    assert_eq!(dp.stat(STAT_ODD_DST), before + odd.len() as u64);
    let c = dp.counters(client_mac(paid));
    assert_eq!((c.up_packets, c.unknown_packets), (0, odd.len() as u64));
}

fn up4_to(n: u8, dst: Ipv4Addr) -> Vec<u8> {
    udp4(GW_MAC, mac(n), client_v4(n), dst, 1, 443, 10)
}

#[test]
fn garden_traffic_before_payment_is_rate_limited() {
    let mut dp = Datapath::with_gate(GateOptions {
        anti_spoof: true,
        garden_rate_kbits: 256,
        garden_pps: 50,
        ..GATE
    });
    let (n, paid) = (14, 15);
    // 256 kbit/s and 50 packets/s, with a second's worth of burst: small
    // packets back to back get 50 through, and what the bucket refills while
    // they are sent (in an emulated guest 200 test runs take a while).
    let query = udp4(GW_MAC, mac(n), client_v4(n), GW_V4, 40000, 53, 30);
    let started = std::time::Instant::now();
    let passed = (0..200).filter(|_| dp.up(&query) == TC_PASS).count();
    let took = started.elapsed();
    let refilled = (took.as_secs_f64() * 50.0).ceil() as usize;
    assert!(
        (50..=52 + refilled).contains(&passed),
        "{passed} small garden packets passed in {took:?}"
    );
    let c = dp.counters(client_mac(n));
    assert_eq!(c.garden_ratelimit_packets, 200 - passed as u64);
    assert_eq!(c.garden_packets, passed as u64);
    assert!(dp.stat(STAT_GARDEN_RATELIMIT) >= 148);
    // Large packets: about 32 kB in the burst.
    let big = udp4(mac(n), GW_MAC, GW_V4, client_v4(n), 53, 40000, 1372);
    let started = std::time::Instant::now();
    let passed = (0..100).filter(|_| dp.down(&big) == TC_PASS).count();
    let took = started.elapsed();
    // 256 kbit/s is 32,000 bytes a second: 23 of these frames.
    let refilled = (took.as_secs_f64() * 32_000.0 / 1_414.0).ceil() as usize;
    assert!(
        (22..=24 + refilled).contains(&passed),
        "{passed} large garden packets passed in {took:?} (download has its own bucket)"
    );
    // A paying client's traffic is never held by the garden limit.
    dp.allow(client_mac(paid));
    let dns = udp4(GW_MAC, mac(paid), client_v4(paid), GW_V4, 40000, 53, 30);
    assert!((0..200).all(|_| dp.up(&dns) == TC_PASS));
    assert!((0..200).all(|_| dp.up(&up4(paid, 443, 30)) == TC_PASS));
}

#[test]
fn traffic_with_the_gateway_is_garden_for_paying_clients_even_after_the_cut_off() {
    let mut dp = Datapath::new();
    let n = 16;
    let slot = dp.allow(client_mac(n));
    dp.h.maps.set_budget(slot, Some(500)).unwrap();
    assert_eq!(
        dp.up(&up4(n, 443, 472)),
        TC_PASS,
        "the budget's last packet"
    );
    assert_eq!(dp.up(&up4(n, 443, 10)), TC_DROP, "cut off");
    let dns = udp4(GW_MAC, mac(n), client_v4(n), GW_V4, 40000, 53, 30);
    assert_eq!(dp.up(&dns), TC_PASS, "DNS to the gateway after the cut-off");
    let reply = udp4(mac(n), GW_MAC, GW_V4, client_v4(n), 53, 40000, 100);
    assert_eq!(dp.down(&reply), TC_PASS, "its answer");
    let portal = tcp4(GW_MAC, mac(n), client_v4(n), GW_V4, 40000, 80, 0);
    assert_eq!(dp.up(&portal), TC_PASS, "the portal");
    let (sn, sn_mac) = solicited_node(GW_LL);
    let ns = icmp6(
        sn_mac,
        mac(n),
        client_ll(n),
        sn,
        255,
        &nd_message(135, GW_LL, Some(mac(n))),
    );
    assert_eq!(dp.up(&ns), TC_PASS, "ND");
    let c = dp.counters(client_mac(n));
    assert_eq!((c.up_bytes, c.down_bytes), (500, 0));
    assert_eq!((c.garden_packets, c.garden_bytes), (4, 58 + 128 + 40 + 72));
    assert_eq!(dp.h.maps.budget(slot).unwrap(), 0);
}

#[test]
fn the_gateways_dhcp_server_moves_an_address_to_the_mac_it_gives_it() {
    let mut dp = Datapath::new();
    let (a, b) = (17, 18);
    let ttl = std::time::Duration::from_secs(2);
    dp.h.maps.set_bind_ttl(ttl);
    dp.allow(client_mac(a));
    dp.allow(client_mac(b));
    let addr = client_v4(a);
    assert_eq!(dp.up(&up4(a, 443, 10)), TC_PASS, "A uses the address");
    let from_b = udp4(GW_MAC, mac(b), addr, SERVER_V4, 1, 443, 10);
    assert_eq!(dp.up(&from_b), TC_DROP, "bound to A");
    // A forwarded packet that looks like a DHCP answer moves nothing.
    let forged = udp4(mac(b), GW_MAC, SERVER_V4, addr, 67, 68, 300);
    assert_eq!(dp.down(&forged), TC_DROP);
    // The gateway's DHCP server acknowledges the address to B's MAC.
    let ack = udp4(mac(b), GW_MAC, GW_V4, addr, 67, 68, 300);
    assert_eq!(dp.down(&ack), TC_PASS);
    assert_eq!(dp.up(&from_b), TC_PASS, "B's now");
    // A's entry remembers the address for a quarter TTL at most; then A is
    // refused. (The sweep removes nothing: the address is in use, B's.)
    std::thread::sleep(ttl / 4 + std::time::Duration::from_millis(20));
    assert_eq!(dp.up(&up4(a, 443, 10)), TC_DROP, "no longer A's");
    let done = dp.h.maps.sweep_bindings(ttl).unwrap();
    assert_eq!(done.expired, 0);
    let (ca, cb) = (dp.counters(client_mac(a)), dp.counters(client_mac(b)));
    assert_eq!(
        (ca.bound_addrs, cb.bound_addrs),
        (0, 1),
        "counts from the table"
    );
}
