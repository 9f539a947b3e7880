//! The gate against an attacker with as many MACs as it likes and against
//! the gateway as a relay, judged by the kernel on crafted frames
//! (BPF_PROG_TEST_RUN): MACs without a slot, the limits all clients share,
//! and a paying client's traffic with the gateway's own services. Needs root
//! and bpffs.

mod common;

use common::*;
use session_agent::dataplane::testrun::frames::set_ipv4_csum;
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
    let nd = |src: Ipv6Addr, lla: Option<[u8; 6]>| {
        let mut f = session_tests::raw::eth(sn_mac, m, ETH_P_IPV6);
        f.extend_from_slice(&ipv6_icmp(src, sn, 255, &nd_message(135, GW_LL, lla)));
        f
    };
    let passes = [
        ("ARP for the gateway", arp_frame),
        ("DHCP discovery", dhcp_request(m)),
        ("DHCP renewal", udp4(GW_MAC, m, v4, GW_V4, 68, 67, 300)),
        (
            "duplicate address detection",
            nd(Ipv6Addr::UNSPECIFIED, None),
        ),
    ];
    for (what, f) in &passes {
        assert_eq!(dp.up(f), TC_PASS, "{what}");
    }
    let garden = Ipv4Addr::new(10, 97, 0, 9);
    let drops = [
        // From an address it may not hold: the gateway would learn it.
        ("ND from a link-local address", nd(ll, Some(m))),
        ("DNS to the gateway", dns_query(m, v4, GW_V4)),
        ("the portal", tcp4(GW_MAC, m, v4, GW_V4, 40000, 80, 0)),
        ("a garden address", udp4(GW_MAC, m, v4, garden, 1, 443, 10)),
        ("the way out", udp4(GW_MAC, m, v4, SERVER_V4, 1, 443, 10)),
        (
            "DHCP to a server",
            udp4(GW_MAC, m, v4, SERVER_V4, 68, 67, 300),
        ),
    ];
    let before = stat(&dp, STAT_SLOTLESS);
    for (what, f) in &drops {
        assert_eq!(dp.up(f), TC_DROP, "{what}");
    }
    assert_eq!(stat(&dp, STAT_SLOTLESS) - before, drops.len() as u64);
    // Down: the gateway's DHCP answer passes, its DNS answer and the garden's do not.
    assert_eq!(dp.down(&udp4(m, GW_MAC, GW_V4, v4, 67, 68, 300)), TC_PASS);
    assert_eq!(
        dp.down(&udp4(m, GW_MAC, GW_V4, v4, 53, 40000, 100)),
        TC_DROP
    );
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
        .filter(|&i| {
            dp.down(&udp4(flood_mac(i), GW_MAC, GW_V4, flood_v4(i), 67, 68, 300)) == TC_PASS
        })
        .count();
    assert_eq!(answers, 50);
}

#[test]
fn no_mac_without_a_slot_bills_a_paying_client() {
    let mut dp = gate_without_room(0);
    let victim = 1;
    dp.allow(client_mac(victim));
    assert_eq!(
        dp.up(&up4(victim, 443, 10)),
        TC_PASS,
        "the victim binds its address"
    );
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
    assert_eq!(
        dp.down(&udp4(mac(n), GW_MAC, GW_V4, v4, 67, 68, 300)),
        TC_PASS
    );
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
    assert_eq!(
        (c2.up_bytes, c2.down_bytes),
        (c.up_bytes, c.down_bytes),
        "no usage after the cut-off"
    );
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

/// `f` (an IPv4 frame) with `opts` (a multiple of 4 bytes) as IP options.
fn with_options(f: &[u8], opts: &[u8]) -> Vec<u8> {
    let mut out = f[..34].to_vec();
    out.extend_from_slice(opts);
    out.extend_from_slice(&f[34..]);
    out[14] = 0x40 | ((20 + opts.len()) / 4) as u8;
    let total = u16::from_be_bytes([out[16], out[17]]) + opts.len() as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    set_ipv4_csum(&mut out);
    out
}

/// `f` (an IPv4 frame) as a fragment of datagram `id` at `offset` (8-byte units).
fn fragment(f: &[u8], id: u16, offset: u16, more: bool) -> Vec<u8> {
    let mut out = f.to_vec();
    out[18..20].copy_from_slice(&id.to_be_bytes());
    let word = offset | if more { 0x2000 } else { 0 };
    out[20..22].copy_from_slice(&word.to_be_bytes());
    set_ipv4_csum(&mut out);
    out
}

#[test]
fn source_routed_packets_never_pass_whatever_their_first_hop() {
    let mut dp = Datapath::new();
    let (unpaid, paying) = (5, 6);
    dp.allow(client_mac(paying));
    // A loose source route (after a no-op and a router alert) through the
    // gateway's DNS port, and a strict one.
    let lsrr = [1, 0x94, 4, 0, 0, 0x83, 7, 4, 10, 98, 0, 2];
    let ssrr = [0x89, 7, 4, 10, 98, 0, 2, 0];
    for (n, what) in [(unpaid, "unpaid"), (paying, "paying")] {
        let dns = udp4(GW_MAC, mac(n), client_v4(n), GW_V4, 40000, 53, 30);
        let before = stat(&dp, STAT_SOURCE_ROUTE);
        assert_eq!(dp.up(&with_options(&dns, &lsrr)), TC_DROP, "{what}: LSRR");
        assert_eq!(dp.up(&with_options(&dns, &ssrr)), TC_DROP, "{what}: SSRR");
        assert_eq!(stat(&dp, STAT_SOURCE_ROUTE) - before, 2);
        // Other options are judged as the packet is: a router alert, and an
        // empty record route.
        let other = [0x94, 4, 0, 0, 7, 7, 4, 0, 0, 0, 0, 0];
        assert_eq!(
            dp.up(&with_options(&dns, &other)),
            TC_PASS,
            "{what}: router alert"
        );
    }
    let c = dp.counters(client_mac(paying));
    assert_eq!(c.unknown_packets, 2, "counted to the client that sent them");
}

#[test]
fn later_fragments_pass_only_after_a_first_the_garden_passed() {
    let dp = Datapath::new();
    let n = 7;
    let v4 = client_v4(n);
    // A large DNS answer of the gateway's resolver in three fragments.
    let answer = udp4(mac(n), GW_MAC, GW_V4, v4, 53, 40000, 1472);
    let rest = udp4(mac(n), GW_MAC, GW_V4, v4, 9, 9, 1472);
    assert_eq!(dp.down(&fragment(&answer, 77, 0, true)), TC_PASS, "first");
    assert_eq!(dp.down(&fragment(&rest, 77, 185, true)), TC_PASS, "second");
    assert_eq!(dp.down(&fragment(&rest, 77, 370, false)), TC_PASS, "last");
    let c = dp.counters(client_mac(n));
    assert_eq!((c.garden_packets, c.up_bytes, c.down_bytes), (3, 0, 0));
    // Fragments of another datagram, of another server, or of a flow the
    // garden does not pass: dropped.
    let stray = [
        fragment(&rest, 78, 185, false),
        fragment(
            &udp4(mac(n), GW_MAC, SERVER_V4, v4, 9, 9, 1472),
            77,
            185,
            false,
        ),
    ];
    for f in &stray {
        assert_eq!(dp.down(f), TC_DROP);
    }
    let out = udp4(GW_MAC, mac(n), v4, SERVER_V4, 40000, 443, 1472);
    assert_eq!(dp.up(&fragment(&out, 79, 0, true)), TC_DROP);
    assert_eq!(dp.up(&fragment(&out, 79, 185, false)), TC_DROP);
    // The client's own datagrams pass unfragmented only (queries are small):
    // the first fragment of one to the gateway's resolver, not the rest.
    let query = udp4(GW_MAC, mac(n), v4, GW_V4, 40000, 53, 1472);
    assert_eq!(dp.up(&fragment(&query, 80, 0, true)), TC_PASS);
    let tail = udp4(GW_MAC, mac(n), v4, GW_V4, 9, 9, 100);
    assert_eq!(dp.up(&fragment(&tail, 80, 185, false)), TC_DROP);
}

/// The `mac_conflict` events the datapath sent (once: the ring is taken).
fn mac_conflicts(dp: &mut Datapath) -> usize {
    dp.events()
        .iter()
        .filter(|e| e.kind() == Ok(EventKind::MacConflict))
        .count()
}

#[test]
fn a_paying_client_sends_from_one_ipv4_address_at_a_time() {
    let mut dp = Datapath::new();
    let (n, unpaid) = (8, 9);
    dp.allow(client_mac(n));
    let from = |a: Ipv4Addr| udp4(GW_MAC, mac(n), a, SERVER_V4, 1, 443, 10);
    let (first, clone) = (client_v4(n), Ipv4Addr::new(10, 99, 3, 3));
    assert_eq!(dp.up(&from(first)), TC_PASS);
    // A device with the same MAC and its own address: dropped, reported once.
    for _ in 0..5 {
        assert_eq!(dp.up(&from(clone)), TC_DROP);
    }
    let mut arp_frame = session_tests::raw::eth([0xff; 6], mac(n), ETH_P_ARP);
    arp_frame.extend_from_slice(&arp(1, mac(n), clone, [0; 6], GW_V4));
    assert_eq!(dp.up(&arp_frame), TC_DROP, "nor may it claim it by ARP");
    assert_eq!(
        dp.up(&from(first)),
        TC_PASS,
        "the first device keeps its service"
    );
    let c = dp.counters(client_mac(n));
    assert_eq!((c.up_packets, c.spoof_packets), (2, 6));
    let conflicts = mac_conflicts(&mut dp);
    assert_eq!(conflicts, 1, "reported once a quarter TTL");
    // IPv6 keeps several addresses.
    for i in 1..4 {
        let a = Ipv6Addr::new(0xfd00, 0x99, 0, 2, 0, 0, 0, i);
        assert_eq!(
            dp.up(&udp6(GW_MAC, mac(n), a, SERVER_V6, 1, 443, 10)),
            TC_PASS
        );
    }
    // The gateway's DHCP server moves the client to another address.
    assert_eq!(
        dp.down(&udp4(mac(n), GW_MAC, GW_V4, clone, 67, 68, 300)),
        TC_PASS
    );
    assert_eq!(dp.up(&from(clone)), TC_PASS, "its address now");
    assert_eq!(dp.up(&from(first)), TC_DROP, "and only that one");
    // The same MAC on another LAN (a device that moved): its address there is its own.
    let mut cfg = dp.h.maps.lan();
    cfg.lan_id = 2;
    dp.h.maps.set_lan(&cfg);
    assert_eq!(
        dp.up(&from(Ipv4Addr::new(10, 99, 5, 5))),
        TC_PASS,
        "on another LAN"
    );
    // A client that has not paid is not held to one (its garden, DNS to the gateway).
    for i in 0..3 {
        let a = Ipv4Addr::new(10, 99, 4, i);
        let q = udp4(GW_MAC, mac(unpaid), a, GW_V4, 40000, 53, 30);
        assert_eq!(dp.up(&q), TC_PASS, "unpaid address {a}");
    }
}

#[test]
fn a_paying_client_whose_ipv4_address_went_unused_for_the_ttl_may_send_from_another() {
    let mut dp = Datapath::new();
    let n = 10;
    dp.allow(client_mac(n));
    let ttl = std::time::Duration::from_millis(400);
    dp.h.maps.set_bind_ttl(ttl);
    let from = |a: Ipv4Addr| udp4(GW_MAC, mac(n), a, SERVER_V4, 1, 443, 10);
    let (first, second) = (client_v4(n), Ipv4Addr::new(10, 99, 3, 4));
    assert_eq!(dp.up(&from(first)), TC_PASS);
    assert_eq!(dp.up(&from(second)), TC_DROP, "a second device on the MAC");
    // No sweep runs: the datapath itself finds the first unused for the TTL.
    std::thread::sleep(ttl + std::time::Duration::from_millis(50));
    assert_eq!(dp.up(&from(second)), TC_PASS, "its address now");
    assert_eq!(dp.up(&from(first)), TC_DROP, "and only that one");
    let conflicts = mac_conflicts(&mut dp);
    assert_eq!(conflicts, 2, "each refusal reported (a TTL apart)");
}

#[test]
fn clients_that_have_not_paid_never_take_the_room_of_paying_clients_bindings() {
    let mut dp = Datapath::new();
    // 20,000 MACs that have not paid claim 4 addresses each: 80,000 claims,
    // more than their half of the table holds.
    let claims = 20_000u32;
    for i in 0..claims {
        let b = i.to_be_bytes();
        let m = [0x02, 0xef, 0, b[1], b[2], b[3]];
        for k in 0..4u8 {
            let a = Ipv4Addr::new(10, 100 + k, b[2], b[3]);
            dp.up(&udp4(GW_MAC, m, a, GW_V4, 40000, 53, 30));
        }
    }
    let unpaid_full = stat(&dp, STAT_BINDINGS_FULL);
    assert_eq!(
        unpaid_full, 0,
        "the unpaid share evicts its least recently used"
    );
    // A new paying client still binds its addresses, and so does the
    // gateway's DHCP answer to a new client.
    let (n, m) = (11, 12);
    dp.allow(client_mac(n));
    assert_eq!(dp.up(&up4(n, 443, 10)), TC_PASS);
    let v6 = Ipv6Addr::new(0xfd00, 0x99, 0, 5, 0, 0, 0, 1);
    assert_eq!(
        dp.up(&udp6(GW_MAC, mac(n), v6, SERVER_V6, 1, 443, 10)),
        TC_PASS
    );
    assert_eq!(
        dp.down(&udp4(mac(m), GW_MAC, GW_V4, client_v4(m), 67, 68, 300)),
        TC_PASS
    );
    let bindings = dp.h.maps.bindings().unwrap();
    assert!(
        bindings.len() <= (MAX_BINDINGS / 2) as usize + 3,
        "{}",
        bindings.len()
    );
    for a in [IpAddr::from(client_v4(n)), v6.into(), client_v4(m).into()] {
        assert!(bindings.iter().any(|(ip, _, _)| *ip == a), "{a} bound");
    }
    // A paying client's claim takes an address that a client that has not
    // paid holds; the reverse never happens.
    let (p, u) = (13, 14);
    let ttl = std::time::Duration::from_secs(2);
    dp.h.maps.set_bind_ttl(ttl);
    let shared = Ipv4Addr::new(10, 99, 9, 9);
    let q = |n: u8| udp4(GW_MAC, mac(n), shared, GW_V4, 40000, 53, 30);
    assert_eq!(dp.up(&q(u)), TC_PASS, "the unpaid client claims it first");
    dp.allow(client_mac(p));
    assert_eq!(dp.up(&q(p)), TC_PASS, "the paying client takes it");
    // (The unpaid client's entry remembers the address a quarter TTL at most.)
    std::thread::sleep(ttl / 4 + std::time::Duration::from_millis(20));
    assert_eq!(dp.up(&q(u)), TC_DROP, "no longer the unpaid client's");
    assert_eq!(dp.up(&q(p)), TC_PASS);
    assert_eq!(dp.h.maps.sweep_bindings(ttl).unwrap().expired, 0);
}

#[test]
fn a_flood_of_macs_is_forgotten_under_pressure_and_new_customers_find_room() {
    use std::time::{Duration, Instant};
    let mut dp = Datapath::new();
    let (paying, connected, customer) = (client_mac(1), client_mac(2), client_mac(3));
    dp.allow(paying);
    dp.h.maps.ensure_slot(&connected).unwrap();
    dp.h.maps.ensure_slot(&customer).unwrap();
    let flood = |dp: &Datapath, i: u32| {
        dp.up(&udp4(
            GW_MAC,
            flood_mac(i),
            flood_v4(i),
            SERVER_V4,
            1,
            443,
            10,
        ))
    };
    let room = MAX_CLIENTS - 3;
    for i in 0..room {
        flood(&dp, i);
    }
    assert_eq!(dp.h.maps.clients_live(), MAX_CLIENTS as u64, "full");
    assert_eq!(dp.up(&up4(4, 443, 10)), TC_DROP);
    assert_eq!(
        dp.h.maps.slot_of(&client_mac(4)),
        None,
        "no room for a new customer"
    );
    let day = Duration::from_secs(86_400);
    let (t0, mut t) = (Instant::now(), IdleTracker::default());
    let keep = |m: &MacAddr| *m == connected;
    let run = |dp: &Datapath, t: &mut IdleTracker, at: u64| {
        dp.h.maps
            .forget_idle(
                t,
                t0 + Duration::from_secs(at),
                day,
                Pressure::DEFAULT,
                keep,
            )
            .unwrap()
    };
    // The first run learns who is active; nobody is forgotten for it.
    assert_eq!(run(&dp, &mut t, 0), Forgotten::default());
    // The customer and the last 1,000 flood MACs are active again; the rest are not.
    assert_eq!(
        dp.up(&udp4(
            GW_MAC,
            customer.addr,
            client_v4(3),
            GW_V4,
            40000,
            53,
            30
        )),
        TC_PASS
    );
    for i in room - 1000..room {
        flood(&dp, i);
    }
    let f = run(&dp, &mut t, 1);
    let low = Pressure::DEFAULT.low;
    assert_eq!(f.pressed, MAX_CLIENTS - low, "down to the low-water mark");
    assert_eq!(f.retired, f.pressed);
    for mac in [paying, connected, customer] {
        assert!(dp.h.maps.slot_of(&mac).is_some(), "{mac} kept");
    }
    assert!(
        (room - 1000..room).all(|i| dp.h.maps.slot_of(&MacAddr::new(flood_mac(i))).is_some()),
        "the least recently active go first"
    );
    // The next run frees their slots: a new customer takes one at once.
    let f = run(&dp, &mut t, 2);
    assert_eq!((f.freed, f.pressed), (MAX_CLIENTS - low, 0));
    assert_eq!(dp.up(&up4(4, 443, 10)), TC_DROP);
    assert!(dp.h.maps.slot_of(&client_mac(4)).is_some(), "room again");
    assert_eq!(
        dp.up(&up4(1, 443, 10)),
        TC_PASS,
        "the paying client never noticed"
    );
}

#[test]
fn the_cli_says_a_lan_is_not_attached_until_the_agent_configured_it() {
    let clients = |root: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
            .args(["clients", "--pin-root"])
            .arg(root)
            .output()
            .unwrap()
    };
    // Loaded and pinned, as between the loader and the attach: an empty table.
    let loaded = ProgramHarness::new("sa-cli", &test_garden()).unwrap();
    let out = clients(loaded.root());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not attached yet"), "{err}");
    // Configured by the agent: the table, even when empty.
    let dp = Datapath::new();
    let out = clients(dp.h.root());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
