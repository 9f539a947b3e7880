//! The gate against an attacker with as many MACs as it likes and against
//! the gateway as a relay, judged by the kernel on crafted frames
//! (BPF_PROG_TEST_RUN): MACs without a slot, the limits all clients share,
//! and a paying client's traffic with the gateway's own services. Needs root
//! and bpffs.

mod common;

use common::*;
use session_tests::raw::{arp, ipv6_icmp, nd_message, solicited_node, ETH_P_ARP, ETH_P_IPV6};

/// Client `i` of a flood: a MAC of its own (never a group MAC, never zero).
fn flood_mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, 0xee, b[0], b[1], b[2], b[3]]
}

fn flood_v4(i: u32) -> Ipv4Addr {
    let b = i.to_be_bytes();
    Ipv4Addr::new(10, 99, 100 + b[2] % 100, b[3])
}

fn dns_query(mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    udp4(GW_MAC, mac, src, dst, 40000, 53, 30)
}

fn dhcp_request(mac: [u8; 6]) -> Vec<u8> {
    udp4(
        [0xff; 6],
        mac,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        68,
        67,
        300,
    )
}

fn stat(dp: &Datapath, i: u32) -> u64 {
    dp.h.maps.stats().unwrap()[i as usize]
}

/// A gate whose client table is full, client 1 of the test's own in it;
/// MACs without a slot share `slotless_pps`.
fn gate_without_room(slotless_pps: u64) -> Datapath {
    let mut dp = Datapath::with_gate(GateOptions {
        slotless_pps,
        ..GATE
    });
    dp.h.maps.ensure_slot(&client_mac(1)).unwrap();
    for i in 1..MAX_CLIENTS {
        let b = i.to_be_bytes();
        dp.h.maps
            .ensure_slot(&MacAddr::new([0x02, 0xdd, b[0], b[1], b[2], b[3]]))
            .unwrap_or_else(|e| panic!("slot {i}: {e}"));
    }
    assert_eq!(dp.h.maps.slots_used(), MAX_CLIENTS);
    dp
}

#[test]
fn macs_without_a_slot_get_only_arp_nd_and_dhcp_with_the_gateway() {
    let dp = gate_without_room(0);
    let m = flood_mac(1);
    let v4 = flood_v4(1);
    let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xee, 1);
    let (sn, sn_mac) = solicited_node(GW_LL);
    let mut arp_frame = session_tests::raw::eth([0xff; 6], m, ETH_P_ARP);
    arp_frame.extend_from_slice(&arp(1, m, v4, [0; 6], GW_V4));
    let mut ns = session_tests::raw::eth(sn_mac, m, ETH_P_IPV6);
    ns.extend_from_slice(&ipv6_icmp(ll, sn, 255, &nd_message(135, GW_LL, Some(m))));
    let passes = [
        ("ARP for the gateway", arp_frame),
        ("DHCP discovery", dhcp_request(m)),
        ("DHCP renewal", udp4(GW_MAC, m, v4, GW_V4, 68, 67, 300)),
        ("ND with the gateway", ns),
    ];
    for (what, f) in &passes {
        assert_eq!(dp.up(f), TC_PASS, "{what}");
    }
    let garden = Ipv4Addr::new(10, 97, 0, 9);
    let drops = [
        ("DNS to the gateway", dns_query(m, v4, GW_V4)),
        ("the portal", tcp4(GW_MAC, m, v4, GW_V4, 40000, 80, 0)),
        ("a garden address", udp4(GW_MAC, m, v4, garden, 1, 443, 10)),
        ("the way out", udp4(GW_MAC, m, v4, SERVER_V4, 1, 443, 10)),
        ("DHCP to a server", udp4(GW_MAC, m, v4, SERVER_V4, 68, 67, 300)),
    ];
    let before = stat(&dp, STAT_SLOTLESS);
    for (what, f) in &drops {
        assert_eq!(dp.up(f), TC_DROP, "{what}");
    }
    assert_eq!(stat(&dp, STAT_SLOTLESS) - before, drops.len() as u64);
    // Down: the gateway's DHCP answer passes, its DNS answer and the garden's do not.
    assert_eq!(dp.down(&udp4(m, GW_MAC, GW_V4, v4, 67, 68, 300)), TC_PASS);
    assert_eq!(dp.down(&udp4(m, GW_MAC, GW_V4, v4, 53, 40000, 100)), TC_DROP);
    assert_eq!(dp.down(&udp4(m, GW_MAC, garden, v4, 443, 1, 100)), TC_DROP);
    assert_eq!(dp.h.maps.slot_of(&MacAddr::new(m)), None, "nothing counted");
    // The all-zero MAC is no station: dropped as a group MAC would be.
    let groups = stat(&dp, STAT_GROUP_SRC);
    assert_eq!(dp.up(&dhcp_request([0; 6])), TC_DROP);
    assert_eq!(stat(&dp, STAT_GROUP_SRC), groups + 1);
}

#[test]
fn all_macs_without_a_slot_share_one_limit() {
    // 20 frames a second for every MAC without a slot together, a second's burst.
    let dp = gate_without_room(20);
    let passed = (0..400)
        .filter(|&i| dp.up(&dhcp_request(flood_mac(i))) == TC_PASS)
        .count();
    // (A second more of the test's time would add 20.)
    assert!(
        (20..=41).contains(&passed),
        "{passed} of 400 DHCP requests of 400 MACs passed"
    );
    // The gateway's answers are not held by it.
    let answers = (0..50)
        .filter(|&i| dp.down(&udp4(flood_mac(i), GW_MAC, GW_V4, flood_v4(i), 67, 68, 300)) == TC_PASS)
        .count();
    assert_eq!(answers, 50);
}

#[test]
fn no_mac_without_a_slot_bills_a_paying_client() {
    let mut dp = gate_without_room(0);
    let victim = 1;
    dp.allow(client_mac(victim));
    assert_eq!(dp.up(&up4(victim, 443, 10)), TC_PASS, "the victim binds its address");
    let before = dp.counters(client_mac(victim));
    // With the victim's address, to the garden, the gateway's DNS and beyond.
    let v4 = client_v4(victim);
    for i in 0..30 {
        let m = flood_mac(i);
        for f in [
            dns_query(m, v4, GW_V4),
            udp4(GW_MAC, m, v4, Ipv4Addr::new(10, 97, 0, 9), 1, 53, 400),
            udp4(GW_MAC, m, v4, SERVER_V4, 1, 443, 400),
        ] {
            assert_eq!(dp.up(&f), TC_DROP);
        }
    }
    let after = dp.counters(client_mac(victim));
    assert_eq!(
        (after.up_bytes, after.down_bytes, after.garden_bytes),
        (before.up_bytes, before.down_bytes, before.garden_bytes),
        "nothing charged to the victim"
    );
}

#[test]
fn new_clients_take_slots_at_a_bounded_rate() {
    let dp = Datapath::with_gate(GateOptions {
        new_clients_per_sec: 100,
        ..GATE
    });
    for i in 0..1000 {
        dp.up(&dhcp_request(flood_mac(i)));
    }
    let admitted = dp.h.maps.slots_used();
    // A second's worth at once; the test runs well within a second more.
    assert!(
        (100..=200).contains(&admitted),
        "{admitted} of 1000 new MACs took a slot"
    );
    assert!(stat(&dp, STAT_ADMISSION_LIMITED) >= 800 - admitted as u64);
}

#[test]
fn all_unpaid_clients_together_get_at_most_the_total_garden_limit() {
    // Each client 256 kbit/s and 50 packets/s (a second's burst: 50 small
    // packets); all together 512 kbit/s: 100 small packets.
    let dp = Datapath::with_gate(GateOptions {
        garden_rate_kbits: 256,
        garden_pps: 50,
        garden_total_kbits: 512,
        ..GATE
    });
    let mut passed = 0;
    for n in 20..36 {
        let q = udp4(GW_MAC, mac(n), client_v4(n), GW_V4, 40000, 53, 30);
        passed += (0..60).filter(|_| dp.up(&q) == TC_PASS).count();
    }
    assert!(
        (100..=102).contains(&passed),
        "16 MACs got {passed} DNS queries through (one MAC gets 50)"
    );
    assert!(stat(&dp, STAT_GARDEN_TOTAL) >= 16 * 50 - 102);
    // The gateway's portal is not held by the total: each client's own limit only.
    let n = 40;
    let portal = tcp4(GW_MAC, mac(n), client_v4(n), GW_V4, 40000, 80, 0);
    let through = (0..60).filter(|_| dp.up(&portal) == TC_PASS).count();
    assert!((50..=51).contains(&through), "{through} portal packets");
}

fn mac(n: u8) -> [u8; 6] {
    client_mac(n).addr
}

#[test]
fn a_paying_clients_dns_through_the_gateway_is_usage_until_the_cut_off() {
    let mut dp = Datapath::with_gate(GateOptions {
        garden_rate_kbits: 256,
        garden_pps: 50,
        ..GATE
    });
    let n = 3;
    let slot = dp.allow(client_mac(n));
    dp.h.maps.set_budget(slot, Some(10_000)).unwrap();
    let v4 = client_v4(n);
    let query = udp4(GW_MAC, mac(n), v4, GW_V4, 40000, 53, 972); // 1000 IP bytes
    let answer = udp4(mac(n), GW_MAC, GW_V4, v4, 53, 40000, 1972); // 2000
    assert_eq!(dp.up(&query), TC_PASS);
    assert_eq!(dp.down(&answer), TC_PASS);
    let c = dp.counters(client_mac(n));
    assert_eq!((c.up_bytes, c.down_bytes, c.garden_bytes), (1000, 2000, 0));
    assert_eq!(dp.h.maps.budget(slot).unwrap(), 7_000);
    // Anything else with the gateway is usage too, but DHCP, the portal and ND.
    let ssh = tcp4(GW_MAC, mac(n), v4, GW_V4, 40000, 22, 60); // 100 bytes
    assert_eq!(dp.up(&ssh), TC_PASS);
    let free = [
        udp4(GW_MAC, mac(n), v4, GW_V4, 68, 67, 300),
        tcp4(GW_MAC, mac(n), v4, GW_V4, 40000, 80, 0),
    ];
    for f in &free {
        assert_eq!(dp.up(f), TC_PASS);
    }
    assert_eq!(dp.down(&udp4(mac(n), GW_MAC, GW_V4, v4, 67, 68, 300)), TC_PASS);
    let c = dp.counters(client_mac(n));
    assert_eq!(c.up_bytes, 1100, "the SSH packet is usage");
    assert_eq!(c.garden_packets, 3, "DHCP both ways and the portal are not");
    // A tunnel through the resolver ends with the budget: the query that
    // spends it passes (one packet of overshoot), then DNS is garden again,
    // under the garden limit.
    let tunnel = (0..20).filter(|_| dp.up(&query) == TC_PASS).count();
    let c = dp.counters(client_mac(n));
    assert!(c.up_bytes + c.down_bytes <= 10_000 + 1000, "{c:?}");
    assert!(dp.h.maps.budget(slot).unwrap() <= 0, "spent");
    assert!(
        tunnel > 6,
        "{tunnel} queries: garden after the cut-off, within the garden limit"
    );
    let small = udp4(GW_MAC, mac(n), v4, GW_V4, 40000, 53, 30);
    let after = (0..200).filter(|_| dp.up(&small) == TC_PASS).count();
    assert!(after <= 51, "{after} small queries after the cut-off");
    let c2 = dp.counters(client_mac(n));
    assert_eq!((c2.up_bytes, c2.down_bytes), (c.up_bytes, c.down_bytes), "no usage after the cut-off");
    assert!(c2.garden_ratelimit_packets > 0);
}

#[test]
fn a_paying_clients_dns_through_the_gateway_is_held_to_its_speed() {
    let mut dp = Datapath::new();
    let n = 4;
    let slot = dp.allow(client_mac(n));
    dp.h.maps
        .set_rates(
            slot,
            RateLimit {
                rate_bytes: 1,
                burst_bytes: 1500,
            },
            RateLimit {
                rate_bytes: 1,
                burst_bytes: 1500,
            },
        )
        .unwrap();
    let query = udp4(GW_MAC, mac(n), client_v4(n), GW_V4, 40000, 53, 972);
    let verdicts: Vec<u32> = (0..4).map(|_| dp.up(&query)).collect();
    assert_eq!(verdicts, [TC_PASS, TC_PASS, TC_DROP, TC_DROP]);
    assert_eq!(dp.counters(client_mac(n)).ratelimit_packets, 2);
}
