//! The datapath programs run by the kernel on crafted frames (BPF_PROG_TEST_RUN):
//! verdicts and counters for every path, exactly. Needs root and bpffs.

mod common;

use common::*;

#[test]
fn new_clients_are_blocked_and_counted_as_blocked() {
    let dp = Datapath::new();
    assert_eq!(dp.up(&up4(1, 443, 100)), TC_DROP);
    assert_eq!(dp.down(&down4(1, 443, 50)), TC_DROP);
    let c = dp.counters(client_mac(1));
    assert_eq!(c.mac, client_mac(1).to_string());
    assert_eq!((c.blocked_packets, c.blocked_bytes), (2, 128 + 78));
    assert_eq!((c.up_bytes, c.down_bytes, c.garden_bytes), (0, 0, 0));
}

#[test]
fn allowed_clients_count_ip_bytes_exactly_in_both_directions() {
    let mut dp = Datapath::new();
    dp.allow(client_mac(2));
    dp.allow(client_mac(3));
    for payload in [0usize, 1, 100, 1472] {
        assert_eq!(dp.up(&up4(2, 443, payload)), TC_PASS);
        assert_eq!(dp.down(&down4(3, 443, payload)), TC_PASS);
    }
    let v6 = udp6(
        GW_MAC,
        client_mac(2).addr,
        "fd00:99::12".parse().unwrap(),
        SERVER_V6,
        40000,
        443,
        1000,
    );
    assert_eq!(dp.up(&v6), TC_PASS);
    let want: u64 = [0u64, 1, 100, 1472].iter().map(|p| 28 + p).sum();
    let c2 = dp.counters(client_mac(2));
    assert_eq!(
        (c2.up_packets, c2.up_bytes),
        (5, want + 1048),
        "IPv6 counts payload + 40"
    );
    assert_eq!((c2.down_packets, c2.down_bytes), (0, 0));
    let c3 = dp.counters(client_mac(3));
    assert_eq!((c3.down_packets, c3.down_bytes, c3.up_bytes), (4, want, 0));
    // A header with options (IHL 6) and a valid checksum counts like any other.
    let mut opt = up4(2, 443, 100);
    opt[14] = 0x46;
    opt.splice(34..34, [1u8, 1, 1, 1]);
    let tot = u16::from_be_bytes([opt[16], opt[17]]) + 4;
    opt[16..18].copy_from_slice(&tot.to_be_bytes());
    set_ipv4_csum(&mut opt);
    assert_eq!(dp.up(&opt), TC_PASS);
    let want = want + 132;
    // Trailing bytes past the IP length (Ethernet padding) are not usage.
    let mut padded = up4(2, 443, 1);
    padded.resize(60, 0);
    dp.up(&padded);
    assert_eq!(dp.counters(client_mac(2)).up_bytes, want + 1048 + 29);
}

#[test]
fn xdp_ingress_meters_like_tc() {
    let mut dp = Datapath::new();
    assert_eq!(dp.run(PROG_XDP_INGRESS, &up4(4, 443, 200)), XDP_DROP);
    dp.allow(client_mac(4));
    assert_eq!(dp.run(PROG_XDP_INGRESS, &up4(4, 443, 200)), XDP_PASS);
    let c = dp.counters(client_mac(4));
    assert_eq!((c.blocked_bytes, c.up_bytes), (228, 228));
}

#[test]
fn walled_garden_passes_for_blocked_clients_and_is_not_usage() {
    let dp = Datapath::new();
    let n = 5;
    let to_gw = |dport| {
        udp4(
            GW_MAC,
            client_mac(n).addr,
            client_v4(n),
            GW_V4,
            40000,
            dport,
            30,
        )
    };
    assert_eq!(dp.up(&to_gw(53)), TC_PASS, "DNS to the gateway");
    assert_eq!(
        dp.up(&tcp4(
            GW_MAC,
            client_mac(n).addr,
            client_v4(n),
            GW_V4,
            40000,
            80,
            30
        )),
        TC_PASS,
        "portal"
    );
    assert_eq!(dp.up(&to_gw(80)), TC_DROP, "the portal is TCP only");
    assert_eq!(
        dp.up(&to_gw(22)),
        TC_DROP,
        "other gateway ports stay closed"
    );
    assert_eq!(dp.up(&to_gw(67)), TC_PASS, "DHCP");
    let garden_net = udp4(
        GW_MAC,
        client_mac(n).addr,
        client_v4(n),
        Ipv4Addr::new(10, 97, 3, 4),
        1,
        9999,
        30,
    );
    assert_eq!(dp.up(&garden_net), TC_PASS, "configured CIDR, any port");
    let reply = udp4(
        client_mac(n).addr,
        GW_MAC,
        GW_V4,
        client_v4(n),
        53,
        40000,
        30,
    );
    assert_eq!(dp.down(&reply), TC_PASS, "DNS reply");
    let v6 = udp6(
        GW_MAC,
        client_mac(n).addr,
        "fd00:99::15".parse().unwrap(),
        GW_V6,
        40000,
        53,
        30,
    );
    assert_eq!(dp.up(&v6), TC_PASS, "DNS to the gateway over IPv6");
    let c = dp.counters(client_mac(n));
    assert_eq!((c.garden_packets, c.garden_bytes), (6, 4 * 58 + 70 + 78));
    assert_eq!((c.blocked_packets, c.up_bytes, c.down_bytes), (2, 0, 0));
}

#[test]
fn broadcast_and_multicast_are_garden_not_usage() {
    let mut dp = Datapath::new();
    let n = 6;
    let discover = udp4(
        [0xff; 6],
        client_mac(n).addr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        68,
        67,
        300,
    );
    assert_eq!(dp.up(&discover), TC_PASS);
    dp.allow(client_mac(n));
    let mdns = udp4(
        [0x01, 0, 0x5e, 0, 0, 0xfb],
        client_mac(n).addr,
        client_v4(n),
        Ipv4Addr::new(224, 0, 0, 251),
        5353,
        5353,
        40,
    );
    assert_eq!(dp.up(&mdns), TC_PASS);
    let c = dp.counters(client_mac(n));
    assert_eq!(
        (c.up_packets, c.blocked_packets, c.garden_packets),
        (0, 0, 2)
    );
    // Frames to a group MAC are not any client's download.
    assert_eq!(
        dp.down(&udp4(
            [0xff; 6],
            GW_MAC,
            GW_V4,
            Ipv4Addr::BROADCAST,
            67,
            68,
            300
        )),
        TC_PASS
    );
}

#[test]
fn malformed_frames_are_dropped_and_never_usage() {
    let mut dp = Datapath::new();
    let n = 7;
    dp.allow(client_mac(n));
    let good = up4(n, 443, 100);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut f = good.clone();
    f[24] ^= 0x01;
    cases.push(("bad header checksum", f));
    let mut f = good.clone();
    f[14] = 0x44; // IHL 4 words < 20 bytes
    cases.push(("short IHL", f));
    let mut f = good.clone();
    f[14] = 0x65; // version 6 in an IPv4 ethertype
    cases.push(("wrong version", f));
    let mut f = good.clone();
    f[16..18].copy_from_slice(&2000u16.to_be_bytes());
    cases.push(("total length beyond the frame", f));
    let mut f = good.clone();
    f[16..18].copy_from_slice(&10u16.to_be_bytes());
    cases.push(("total length below the header", f));
    cases.push((
        "total length 0 outside a GSO aggregate",
        ipv4_total_len_0(&good),
    ));
    let v6 = udp6(
        GW_MAC,
        client_mac(n).addr,
        "fd00:99::17".parse().unwrap(),
        SERVER_V6,
        1,
        2,
        100,
    );
    let mut f = v6.clone();
    f[18..20].copy_from_slice(&5000u16.to_be_bytes());
    cases.push(("IPv6 payload beyond the frame", f));
    for (what, frame) in &cases {
        assert_eq!(dp.up(frame), TC_DROP, "{what}");
    }
    // The kernel's skb test runs refuse frames shorter than an IP header; XDP
    // runs the same parser on them.
    let truncated = [
        ("truncated IPv4 header", good[..14 + 12].to_vec()),
        ("truncated IPv6 header", v6[..14 + 30].to_vec()),
    ];
    for (what, frame) in &truncated {
        assert_eq!(dp.run(PROG_XDP_INGRESS, frame), XDP_DROP, "{what}");
    }
    let c = dp.counters(client_mac(n));
    assert_eq!(c.malformed_packets, (cases.len() + truncated.len()) as u64);
    assert_eq!((c.up_packets, c.up_bytes), (0, 0));
    // Frames the datapath cannot judge (a truncated ARP, a tag around an
    // unknown ethertype) are dropped and counted, never usage.
    assert_eq!(dp.up(&eth([0xff; 6], client_mac(n).addr, 0x0806)), TC_DROP);
    assert_eq!(
        dp.up(&[eth(GW_MAC, client_mac(n).addr, 0x8100), vec![0; 40]].concat()),
        TC_DROP
    );
    assert_eq!(dp.counters(client_mac(n)).unknown_packets, 2);
    // Garbage from an unknown MAC takes no slot.
    let mut f = up4(99, 443, 10);
    f[14] = 0x41;
    assert_eq!(dp.up(&f), TC_DROP);
    assert_eq!(dp.h.maps.slot_of(&client_mac(99)), None);
    assert_eq!(dp.counters(client_mac(n)).up_bytes, 0);
}

#[test]
fn data_budget_cuts_off_with_at_most_one_packet_of_overshoot() {
    let mut dp = Datapath::new();
    let n = 8;
    let slot = dp.allow(client_mac(n));
    dp.h.maps.set_budget(slot, Some(1000)).unwrap();
    let pkt = up4(n, 443, 572); // 600 IP bytes
    assert_eq!(dp.up(&pkt), TC_PASS); // 1000 -> 400
    assert_eq!(dp.down(&down4(n, 443, 272)), TC_PASS); // 300 bytes: 400 -> 100 (budget covers both directions)
    assert_eq!(dp.up(&pkt), TC_PASS); // 100 > 0: the one packet of overshoot
    for _ in 0..5 {
        assert_eq!(dp.up(&pkt), TC_DROP);
        assert_eq!(dp.down(&down4(n, 443, 10)), TC_DROP);
    }
    let c = dp.counters(client_mac(n));
    assert_eq!(
        c.up_bytes + c.down_bytes,
        1500,
        "counted usage stops right after the budget"
    );
    assert_eq!(c.quota_packets, 10);
    // Topping up lets it through again.
    let left =
        dp.h.maps
            .add_budget(slot, 1000 - dp.h.maps.budget(slot).unwrap())
            .unwrap();
    assert_eq!(left, 1000);
    assert_eq!(dp.up(&pkt), TC_PASS);
    dp.h.maps.set_budget(slot, None).unwrap();
    for _ in 0..3 {
        assert_eq!(dp.up(&pkt), TC_PASS);
    }
}

/// `frame` (an IPv4 frame) with total length 0 and a valid header checksum.
fn ipv4_total_len_0(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[16..18].copy_from_slice(&[0, 0]);
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = f[14..34]
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f
}

/// A length field of 0 means "the packet's own length" only where the kernel
/// reads it so: IPv4 and IPv6 GSO aggregates (BIG TCP). A plain IPv6 packet with
/// payload length 0 is taken by the kernel as its 40-byte header alone.
#[test]
fn length_zero_is_the_frame_length_only_for_gso() {
    let mut dp = Datapath::new();
    let n = 12;
    dp.allow(client_mac(n));
    let f = ipv4_total_len_0(&up4(n, 443, 2972));
    assert_eq!(dp.up_gso(&f, 3), TC_PASS);
    assert_eq!(dp.counters(client_mac(n)).up_bytes, (f.len() - 14) as u64);
    assert_eq!(
        dp.up(&f),
        TC_DROP,
        "the same frame outside GSO is malformed"
    );
    let mut v6 = udp6(
        GW_MAC,
        client_mac(n).addr,
        "fd00:99::18".parse().unwrap(),
        SERVER_V6,
        1,
        2,
        100,
    );
    v6[18..20].copy_from_slice(&[0, 0]);
    let before = dp.counters(client_mac(n)).up_bytes;
    assert_eq!(dp.up(&v6), TC_PASS);
    let c = dp.counters(client_mac(n));
    assert_eq!(c.up_bytes - before, 40, "the header the kernel keeps");
    assert_eq!(c.malformed_packets, 1);
}

#[test]
fn gso_aggregates_never_overshoot_the_budget() {
    let mut dp = Datapath::new();
    let n = 11;
    let slot = dp.allow(client_mac(n));
    dp.h.maps.set_budget(slot, Some(4_000)).unwrap();
    // The kernel's test runs take at most a page of data: a 3000-byte aggregate of 3 segments.
    let big = up4(n, 443, 2972);
    let small = up4(n, 443, 1472); // one 1500-byte segment
    assert_eq!(dp.up_gso(&big, 3), TC_PASS); // 4000 -> 1000
    assert_eq!(
        dp.up_gso(&big, 3),
        TC_DROP,
        "an aggregate larger than what is left is refused"
    );
    assert_eq!(
        dp.h.maps.budget(slot).unwrap(),
        1000,
        "and its bytes given back"
    );
    assert_eq!(
        dp.up(&small),
        TC_PASS,
        "one segment may take the last bytes"
    );
    assert_eq!(dp.up(&small), TC_DROP);
    let c = dp.counters(client_mac(n));
    assert_eq!(c.up_bytes, 4_500, "overshoot below one MTU");
    assert_eq!(c.quota_packets, 2);
}

#[test]
fn token_bucket_limits_each_direction() {
    let mut dp = Datapath::new();
    let n = 9;
    let slot = dp.allow(client_mac(n));
    // 1 byte/s: nothing refills during the test; the buckets hold 1500 and 0 tokens... of 1 byte.
    dp.h.maps
        .set_rates(
            slot,
            RateLimit {
                rate_bytes: 1,
                burst_bytes: 1500,
            },
            RateLimit {
                rate_bytes: 1,
                burst_bytes: 1,
            },
        )
        .unwrap();
    let pkt = up4(n, 443, 972); // 1000 bytes
    let verdicts: Vec<u32> = (0..5).map(|_| dp.up(&pkt)).collect();
    // 1500 -> 500 -> -500 (a positive bucket admits a whole packet), then empty.
    assert_eq!(verdicts, [TC_PASS, TC_PASS, TC_DROP, TC_DROP, TC_DROP]);
    assert_eq!(dp.down(&down4(n, 443, 972)), TC_PASS);
    assert_eq!(dp.down(&down4(n, 443, 972)), TC_DROP);
    let c = dp.counters(client_mac(n));
    assert_eq!(
        (
            c.up_packets,
            c.down_packets,
            c.ratelimit_packets,
            c.ratelimit_bytes
        ),
        (2, 1, 4, 4000)
    );
    // Refused packets do not dig the bucket deeper than one packet of debt.
    assert_eq!(dp.h.maps.policy(slot).unwrap().up.tokens, -500);
    // Unlimited again.
    dp.h.maps
        .set_rates(slot, RateLimit::UNLIMITED, RateLimit::UNLIMITED)
        .unwrap();
    assert_eq!(dp.up(&pkt), TC_PASS);
}

#[test]
fn token_bucket_refills_at_its_rate() {
    let mut dp = Datapath::new();
    let n = 10;
    let slot = dp.allow(client_mac(n));
    // 1 MB/s with a 10 kB bucket: over ~300 ms of offered load far above the
    // rate, what passes is the bucket plus the rate times the time.
    dp.h.maps
        .set_rates(
            slot,
            RateLimit {
                rate_bytes: 1_000_000,
                burst_bytes: 10_000,
            },
            RateLimit::UNLIMITED,
        )
        .unwrap();
    let pkt = up4(n, 443, 972);
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(300) {
        dp.up(&pkt);
    }
    let secs = start.elapsed().as_secs_f64();
    let passed = dp.counters(client_mac(n)).up_bytes as f64;
    let expect = 10_000.0 + 1_000_000.0 * secs;
    assert!(
        (passed - expect).abs() < 0.1 * expect + 2000.0,
        "passed {passed} bytes in {secs:.3}s, expected about {expect}"
    );
    assert!(dp.counters(client_mac(n)).ratelimit_packets > 0);
}

#[test]
fn token_bucket_burst_after_idle_is_at_most_the_bucket() {
    let mut dp = Datapath::new();
    let n = 11;
    let slot = dp.allow(client_mac(n));
    let rate = 1_000_000.0;
    let burst = 10_000.0;
    dp.h.maps
        .set_rates(
            slot,
            RateLimit {
                rate_bytes: rate as u64,
                burst_bytes: burst as u64,
            },
            RateLimit::UNLIMITED,
        )
        .unwrap();
    // 1000-byte packets. Part full, then idle far longer than the bucket takes
    // to fill (and than a tick).
    let pkt = up4(n, 443, 972);
    assert_eq!(dp.up(&pkt), TC_PASS);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = dp.counters(client_mac(n)).up_bytes as f64;
    let start = std::time::Instant::now();
    // At least 3 ms, and enough packets to empty the bucket however slow each
    // run is (under emulation a few take a millisecond).
    let mut sent = 0.0;
    while sent <= burst || start.elapsed() < std::time::Duration::from_millis(3) {
        dp.up(&pkt);
        sent += 1000.0;
    }
    let secs = start.elapsed().as_secs_f64();
    let passed = dp.counters(client_mac(n)).up_bytes as f64 - before;
    // The bucket, what the rate adds meanwhile, and one packet of debt.
    let most = burst + rate * secs + 1000.0;
    assert!(
        passed <= most,
        "passed {passed} bytes in {secs:.4}s after idle, at most {most}"
    );
    assert!(
        passed >= burst,
        "passed only {passed} bytes of a full bucket"
    );
}

#[test]
fn slots_are_stable_and_shared_with_userspace() {
    let mut dp = Datapath::new();
    // Userspace names a client before the datapath sees it: both agree on the slot.
    let s = dp.allow(client_mac(20));
    assert_eq!(dp.up(&up4(20, 443, 10)), TC_PASS);
    assert_eq!(dp.h.maps.slot_of(&client_mac(20)), Some(s));
    for n in 21..40 {
        dp.up(&up4(n, 443, 10));
    }
    let rows = dp.h.maps.snapshot().unwrap();
    assert_eq!(rows.len(), 20);
    let macs: std::collections::BTreeSet<String> = rows.iter().map(|r| r.mac.clone()).collect();
    assert_eq!(macs.len(), 20, "every MAC has one slot");
    assert_eq!(rows.iter().filter(|r| r.allowed).count(), 1);
}

/// An upload frame from the `i`-th of many clients (MACs 02:bb:.., each its
/// own address in 10.100.0.0/16), to the server.
fn up4_many(i: u32) -> Vec<u8> {
    let b = i.to_be_bytes();
    udp4(
        GW_MAC,
        [0x02, 0xbb, b[0], b[1], b[2], b[3]],
        Ipv4Addr::new(10, 100, b[2], b[3]),
        SERVER_V4,
        40000,
        443,
        10,
    )
}

/// Every client of a full table, after checking that each slot has its own MAC.
fn full_table(dp: &Datapath) -> Vec<ClientRow> {
    let rows = dp.h.maps.snapshot().unwrap();
    assert_eq!(
        rows.len(),
        MAX_CLIENTS as usize,
        "every slot has its client"
    );
    let macs: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.mac.as_str()).collect();
    assert_eq!(macs.len(), MAX_CLIENTS as usize, "one slot per MAC");
    rows
}

#[test]
fn the_client_table_takes_every_slot_and_then_gives_new_macs_only_dhcp_with_the_gateway() {
    let mut dp = Datapath::new();
    // Userspace takes some slots first, as the agent does for clients it allows early.
    for i in 0..1000 {
        dp.h.maps
            .ensure_slot(&MacAddr::new([0x02, 0xbb, 0, 0, (i >> 8) as u8, i as u8]))
            .unwrap_or_else(|e| panic!("slot for client {i}: {e}"));
    }
    // The datapath indexes the rest; every MAC, old or new, is blocked (not allowed).
    for i in 0..MAX_CLIENTS {
        assert_eq!(dp.up(&up4_many(i)), TC_DROP, "client {i}");
    }
    assert_eq!(dp.h.maps.slots_used(), MAX_CLIENTS);
    let rows = full_table(&dp);
    assert!(
        rows.iter()
            .all(|r| r.blocked_packets == 1 && r.up_bytes == 0),
        "each client's one packet counted once, as blocked"
    );
    for i in [0, 999, 1000, 40_000, MAX_CLIENTS - 1] {
        let b = i.to_be_bytes();
        let mac = MacAddr::new([0x02, 0xbb, b[0], b[1], b[2], b[3]]);
        let slot =
            dp.h.maps
                .slot_of(&mac)
                .unwrap_or_else(|| panic!("{mac} lost"));
        assert_eq!(rows[slot as usize].mac, mac.to_string());
    }
    // One client read alone (its counters mapped for the moment) is the same row,
    // also where its counters straddle a page (80-byte entries: slot 51).
    for slot in [0, 51, 52, 4095, MAX_CLIENTS - 1] {
        let one = dp.h.maps.client(slot).unwrap();
        assert_eq!(one.as_ref(), Some(&rows[slot as usize]), "slot {slot}");
    }
    // Full: a new MAC gets no slot, only DHCP with the gateway (no DNS, no
    // garden, nothing counted to anyone), and userspace says why.
    let extra = MacAddr::new([0x02, 0xcc, 0, 0, 0, 1]);
    let dhcp = udp4(GW_MAC, extra.addr, client_v4(1), GW_V4, 68, 67, 300);
    let dns = udp4(GW_MAC, extra.addr, client_v4(1), GW_V4, 40000, 53, 10);
    let garden = udp4(
        GW_MAC,
        extra.addr,
        client_v4(1),
        Ipv4Addr::new(10, 97, 0, 9),
        1,
        443,
        10,
    );
    let out = udp4(GW_MAC, extra.addr, client_v4(1), SERVER_V4, 40000, 443, 10);
    let slotless = dp.h.maps.stats().unwrap()[STAT_SLOTLESS as usize];
    assert_eq!(
        dp.up(&dhcp),
        TC_PASS,
        "DHCP with the gateway beyond the table"
    );
    for (what, f) in [
        ("DNS", &dns),
        ("the garden", &garden),
        ("the way out", &out),
    ] {
        assert_eq!(dp.up(f), TC_DROP, "{what} for a client beyond the table");
    }
    assert_eq!(
        dp.h.maps.stats().unwrap()[STAT_SLOTLESS as usize] - slotless,
        3,
        "counted as slotless"
    );
    assert_eq!(dp.h.maps.slot_of(&extra), None);
    let err = dp.h.maps.set_allowed(&extra, true).unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    // Clients already in the table keep working.
    let first = MacAddr::new([0x02, 0xbb, 0, 0, 0, 0]);
    dp.h.maps.set_allowed(&first, true).unwrap();
    assert_eq!(dp.up(&up4_many(0)), TC_PASS);
}

#[test]
fn forgotten_idle_clients_give_their_slots_to_new_ones() {
    use std::time::{Duration, Instant};
    let mut dp = Datapath::new();
    let mac_of = |i: u32| {
        let b = i.to_be_bytes();
        MacAddr::new([0x02, 0xbb, b[0], b[1], b[2], b[3]])
    };
    for i in 0..MAX_CLIENTS {
        assert_eq!(dp.up(&up4_many(i)), TC_DROP, "client {i}");
    }
    let (allowed, busy, kept, gone) = (0, 1, 2, 5);
    dp.h.maps.set_allowed(&mac_of(allowed), true).unwrap();
    let busy_slot = dp.h.maps.slot_of(&mac_of(busy)).unwrap();
    let idle = Duration::from_secs(60);
    let t0 = Instant::now();
    let mut t = IdleTracker::default();
    let forget = |t: &mut IdleTracker, at: Duration| {
        dp.h.maps
            .forget_idle(t, t0 + at, idle, Pressure::NONE, |m| *m == mac_of(kept))
            .unwrap()
    };
    // The first run learns every client's traffic: nobody is idle yet.
    assert_eq!(forget(&mut t, Duration::ZERO), Forgotten::default());
    assert_eq!(forget(&mut t, idle / 2), Forgotten::default());
    assert_eq!(dp.up(&up4_many(busy)), TC_DROP);
    // A minute on: all but the allowed, the busy and the kept one are forgotten,
    // and their slots are not handed out before the next run.
    let f = forget(&mut t, idle);
    assert_eq!(
        f,
        Forgotten {
            retired: MAX_CLIENTS - 3,
            ..Default::default()
        }
    );
    assert_eq!(dp.h.maps.snapshot().unwrap().len(), 3);
    assert_eq!(dp.h.maps.slot_of(&mac_of(gone)), None);
    assert_eq!(dp.up(&up4_many(gone)), TC_DROP);
    assert_eq!(
        dp.h.maps.slot_of(&mac_of(gone)),
        None,
        "no slot while none is free"
    );
    let f = forget(&mut t, idle + Duration::from_secs(1));
    assert_eq!(
        f,
        Forgotten {
            freed: MAX_CLIENTS - 3,
            ..Default::default()
        }
    );
    assert_eq!(dp.h.maps.free_slots(), (MAX_CLIENTS - 3) as u64);
    // The survivors keep their slots and state.
    assert_eq!(dp.h.maps.slot_of(&mac_of(busy)), Some(busy_slot));
    assert_eq!(dp.up(&up4_many(allowed)), TC_PASS);
    // A returning client is a new one: a freed slot with fresh counters.
    assert_eq!(dp.up(&up4_many(gone)), TC_DROP);
    let slot = dp.h.maps.slot_of(&mac_of(gone)).expect("a freed slot");
    let row = dp.h.maps.client(slot).unwrap().unwrap();
    assert_eq!(row.mac, mac_of(gone).to_string());
    assert_eq!((row.blocked_packets, row.up_packets), (1, 0), "{row:?}");
    dp.h.maps.set_allowed(&mac_of(gone), true).unwrap();
    assert_eq!(dp.up(&up4_many(gone)), TC_PASS);
    let row = dp.h.maps.client(slot).unwrap().unwrap();
    assert_eq!((row.blocked_packets, row.up_packets), (1, 1), "{row:?}");
    // New MACs fill the freed slots, from the datapath and from userspace, up to full again.
    let extra = |i: u32| MacAddr::new([0x02, 0xcc, 0, 0, (i >> 8) as u8, i as u8]);
    dp.h.maps.set_allowed(&extra(0), true).unwrap();
    for i in 1..MAX_CLIENTS - 4 {
        let frame = udp4(
            GW_MAC,
            extra(i).addr,
            client_v4(1),
            SERVER_V4,
            40000,
            443,
            10,
        );
        assert_eq!(dp.up(&frame), TC_DROP, "new client {i}");
    }
    assert_eq!(dp.h.maps.free_slots(), 0);
    full_table(&dp);
    assert!(
        dp.h.maps
            .set_allowed(&MacAddr::new([0x02, 0xdd, 0, 0, 0, 1]), true)
            .is_err(),
        "the table is full again"
    );
    assert_eq!(dp.up(&up4_many(allowed)), TC_PASS);
}

/// Leaves the state of a packet that took a new slot for `winner`'s MAC on
/// another CPU and lost the entry to it: the slot is taken and leads to the
/// winner's entry, which names the winner's slot. Returns the lost slot.
fn lose_a_race(dp: &mut Datapath, winner: u32) -> u32 {
    use aya::maps::Array;
    let mut alloc: Array<_, SlotAllocator> =
        Array::try_from(dp.h.ebpf.map_mut(MAP_SLOT_ALLOC).unwrap()).unwrap();
    let mut a = alloc.get(&0, 0).unwrap();
    let lost = a.next;
    a.next += 1;
    alloc.set(0, a, 0).unwrap();
    let mut slots: Array<_, u64> = Array::try_from(dp.h.ebpf.map_mut(MAP_SLOTS).unwrap()).unwrap();
    let pos = slots.get(&winner, 0).unwrap();
    slots.set(lost, pos, 0).unwrap();
    lost
}

#[test]
fn slots_lost_in_a_race_for_an_entry_are_taken_back() {
    use session_agent::dataplane::{Forgotten, IdleTracker, LOST_SLOT_GRACE};
    use std::time::{Duration, Instant};
    let mut dp = Datapath::new();
    dp.h.maps.set_allowed(&client_mac(1), true).unwrap();
    assert_eq!(dp.up(&up4(2, 443, 10)), TC_DROP);
    let winner = dp.h.maps.slot_of(&client_mac(2)).unwrap();
    let lost = lose_a_race(&mut dp, winner);
    assert_eq!(dp.h.maps.live_clients(), 2);
    let (idle, t0) = (Duration::from_secs(600), Instant::now());
    let mut t = IdleTracker::default();
    let forget = |t: &mut IdleTracker, at: Duration| {
        dp.h.maps
            .forget_idle(t, t0 + at, idle, Pressure::NONE, |_| false)
            .unwrap()
    };
    assert_eq!(forget(&mut t, Duration::ZERO), Forgotten::default());
    assert_eq!(
        forget(&mut t, LOST_SLOT_GRACE - Duration::from_secs(1)),
        Forgotten::default(),
        "taken back before the grace"
    );
    // Meanwhile new clients get never-used slots.
    assert_eq!(dp.up(&up4(3, 443, 10)), TC_DROP);
    assert_eq!(dp.h.maps.slot_of(&client_mac(3)), Some(lost + 1));
    let f = forget(&mut t, LOST_SLOT_GRACE);
    assert_eq!(
        f,
        Forgotten {
            reclaimed: 1,
            ..Default::default()
        }
    );
    assert_eq!(dp.h.maps.free_slots(), 1);
    // In the ring now: not taken back twice.
    assert_eq!(forget(&mut t, 3 * LOST_SLOT_GRACE), Forgotten::default());
    assert_eq!(dp.h.maps.free_slots(), 1);
    // The next new client gets it, counted from zero; nobody else moved.
    assert_eq!(dp.up(&up4(4, 443, 10)), TC_DROP);
    assert_eq!(dp.h.maps.slot_of(&client_mac(4)), Some(lost));
    let row = dp.h.maps.client(lost).unwrap().unwrap();
    assert_eq!(row.mac, client_mac(4).to_string());
    assert_eq!((row.blocked_packets, row.up_packets), (1, 0), "{row:?}");
    assert_eq!(dp.h.maps.slot_of(&client_mac(2)), Some(winner));
    assert_eq!(dp.up(&up4(1, 443, 10)), TC_PASS);
    assert_eq!(dp.h.maps.live_clients(), 4);
    assert_eq!(forget(&mut t, 5 * LOST_SLOT_GRACE), Forgotten::default());
}

#[test]
fn a_limit_set_while_the_agent_forgets_the_client_goes_to_its_new_entry() {
    use aya::maps::Array;

    use std::time::{Duration, Instant};
    let mut dp = Datapath::new();
    let n = 6;
    assert_eq!(dp.up(&up4(n, 443, 10)), TC_DROP);
    let old = dp.h.maps.slot_of(&client_mac(n)).unwrap();
    // The agent has begun forgetting it (as `forget_idle` does first).
    let pos = {
        let slots: Array<_, u64> = Array::try_from(dp.h.ebpf.map(MAP_SLOTS).unwrap()).unwrap();
        slots.get(&old, 0).unwrap() as u32
    };
    let mut clients: Array<_, ClientEntry> =
        Array::try_from(dp.h.ebpf.map_mut(MAP_CLIENTS).unwrap()).unwrap();
    let mut e = clients.get(&pos, 0).unwrap();
    e.flags |= POLICY_RETIRING;
    clients.set(pos, e, 0).unwrap();
    let tiny = RateLimit {
        rate_bytes: 1,
        burst_bytes: 1,
    };
    let slot = dp.h.maps.limit(&client_mac(n), tiny, tiny).unwrap();
    assert_ne!(slot, old, "the limit went to the entry being forgotten");
    assert_eq!(dp.h.maps.slot_of(&client_mac(n)), Some(slot));
    assert_ne!(dp.h.maps.flags_of(slot) & POLICY_LIMIT_UP, 0);
    dp.h.maps.set_allowed(&client_mac(n), true).unwrap();
    let pkt = up4(n, 443, 972);
    assert_eq!(
        (dp.up(&pkt), dp.up(&pkt)),
        (TC_PASS, TC_DROP),
        "not limited"
    );
    // The agent's next runs free the old entry and slot.
    let mut t = IdleTracker::default();
    let t0 = Instant::now();
    let idle = Duration::from_secs(600);
    let forget = |t: &mut IdleTracker| {
        dp.h.maps
            .forget_idle(t, t0, idle, Pressure::NONE, |_| false)
            .unwrap()
    };
    assert_eq!(forget(&mut t), Forgotten::default());
    assert_eq!(
        forget(&mut t),
        Forgotten {
            freed: 1,
            ..Default::default()
        }
    );
    assert_eq!(dp.h.maps.free_slots(), 1);
    assert_eq!(dp.h.maps.live_clients(), 1);
}

/// Creates a BPF map and pins it at `path` (as an older version would have).
fn pin_map(path: &std::path::Path, map_type: u32, key: u32, value: u32, entries: u32) {
    use std::os::unix::ffi::OsStrExt;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[map_type, key, value, entries]);
    // SAFETY: bpf(2) reads the 128 bytes of the live `attr`.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), 128) };
    assert!(
        fd >= 0,
        "creating a map: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = name.as_ptr() as u64;
    attr[1] = fd as u64;
    // SAFETY: bpf(2) reads the 128 bytes of the live `attr`, whose path is NUL-terminated.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), 128) };
    assert_eq!(
        r,
        0,
        "pinning {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: closes the fd made above, which nothing else holds.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn pins_of_an_older_layout_are_refused_with_the_fix() {
    use session_agent::dataplane::{attach, Maps};
    let _dp = Datapath::new(); // root, bpffs mounted
    let root = std::path::PathBuf::from(format!("/sys/fs/bpf/sa-old-{}", std::process::id()));
    let dir = attach::pin_dir(&root, "t");
    std::fs::create_dir_all(&dir).unwrap();
    // The client map of earlier versions: a hash of MAC -> slot.
    const BPF_MAP_TYPE_HASH: u32 = 1;
    pin_map(&dir.join(MAP_CLIENTS), BPF_MAP_TYPE_HASH, 6, 4, MAX_CLIENTS);
    let load = attach::load(&root, "t")
        .map(|_| ())
        .unwrap_err()
        .to_string();
    let open = Maps::open(&root, "t").map(|_| ()).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&root);
    for msg in [load, open] {
        assert!(
            msg.contains("do not match") && msg.contains("detach --lan t"),
            "{msg}"
        );
    }
}

#[test]
fn a_full_client_table_is_counted_and_reported_once() {
    let mut dp = Datapath::new();
    // Fill all slots but one from userspace, as the agent takes them.
    for i in 0..MAX_CLIENTS - 1 {
        let [_, _, a, b] = i.to_be_bytes();
        dp.h.maps
            .ensure_slot(&MacAddr::new([0x02, 0xcc, 0, a, b, 1]))
            .unwrap_or_else(|e| panic!("slot {i}: {e}"));
    }
    // The next new MAC on the wire takes the last slot; the ones after it
    // find none: dropped, counted, and reported once.
    for n in 10..14 {
        assert_eq!(dp.up(&up4(n, 443, 10)), TC_DROP);
    }
    assert!(dp.h.maps.slot_of(&client_mac(10)).is_some());
    assert!(dp.h.maps.slot_of(&client_mac(11)).is_none());
    let stats = dp.h.maps.stats().unwrap();
    assert_eq!(stats[STAT_TABLE_FULL as usize], 3);
    let err = dp.h.maps.ensure_slot(&client_mac(9)).unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    let kinds: Vec<_> = dp.events().iter().map(|e| e.kind()).collect();
    let full = kinds
        .iter()
        .filter(|k| **k == Ok(EventKind::TableFull))
        .count();
    assert_eq!(full, 1, "the table-full event is sent once: {kinds:?}");
}

#[test]
fn pins_of_another_table_layout_are_refused_at_attach_with_the_fix() {
    use session_agent::dataplane::attach;
    use session_common::{SlotAllocator, TABLE_LAYOUT};
    let dp = Datapath::new();
    let root = dp.h.root().to_path_buf();
    assert_eq!(
        dp.h.maps.layout(),
        TABLE_LAYOUT,
        "a new table has this layout"
    );
    attach::check_pins(&root, "t").expect("this version's own pins");
    // The table as another version would have made it.
    let path = attach::clients_dir(&root).join("SLOT_ALLOC");
    let data = aya::maps::MapData::from_pin(&path).unwrap();
    let mut alloc: aya::maps::Array<_, SlotAllocator> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    let mut v = alloc.get(&0, 0).unwrap();
    v.layout = TABLE_LAYOUT + 1;
    alloc.set(0, v, 0).unwrap();
    let e = attach::check_pins(&root, "t").unwrap_err().to_string();
    assert!(
        e.contains(&format!("layout {}", TABLE_LAYOUT + 1))
            && e.contains("session-agent detach --lan t"),
        "{e}"
    );
    assert!(attach::load(&root, "t").is_err(), "nothing loads over them");
    // Pins made before the layout was stored (0) have layout 1.
    v.layout = 0;
    alloc.set(0, v, 0).unwrap();
    attach::check_pins(&root, "t").expect("layout 0 is layout 1");
}

#[test]
fn a_counted_packet_marks_its_slot_as_moved_until_the_agent_takes_the_marks() {
    let mut dp = Datapath::new();
    dp.allow(client_mac(2));
    dp.allow(client_mac(3));
    let slot = |m| dp.h.maps.slot_of(&client_mac(m)).unwrap();
    let (s2, s3) = (slot(2), slot(3));
    let take = |dp: &Datapath| {
        let mut out = Vec::new();
        assert!(dp.h.maps.take_moved(&mut out), "the pins have the marks");
        out
    };
    assert!(take(&dp).is_empty(), "nothing counted yet");
    assert_eq!(dp.up(&up4(2, 443, 100)), TC_PASS);
    assert_eq!(dp.up(&up4(2, 443, 100)), TC_PASS);
    assert_eq!(dp.down(&down4(3, 443, 10)), TC_PASS);
    assert_eq!(take(&dp), vec![s2.min(s3), s2.max(s3)]);
    assert!(take(&dp).is_empty(), "taking the marks clears them");
    // Traffic that is not usage marks nothing: a blocked client's, and
    // dropped at a spent budget.
    assert_eq!(dp.up(&up4(4, 443, 100)), TC_DROP);
    dp.h.maps.set_budget(s3, Some(0)).unwrap();
    assert_eq!(dp.down(&down4(3, 443, 10)), TC_DROP);
    assert!(take(&dp).is_empty());
    assert_eq!(dp.down(&down4(2, 443, 10)), TC_PASS);
    assert_eq!(take(&dp), vec![s2]);
}
