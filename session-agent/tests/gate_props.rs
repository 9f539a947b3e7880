//! Property tests of the gate over random frames run by the kernel
//! (BPF_PROG_TEST_RUN): from a client that has not paid only walled-garden
//! verdicts come out, judged by an independent model of the garden below; for
//! a paying client every passed byte is counted to exactly one client, once;
//! a MAC without a slot in a full table gets only ARP, ND and DHCP, and is
//! counted to nobody. IPv4 frames include fragments: a later fragment reaches
//! a client that has not paid only if the first fragment of its datagram did.
//! `PROPTEST_CASES=N` runs more cases (256 by default). Needs root and bpffs.

mod common;

use common::*;
use proptest::prelude::*;
use session_tests::raw::{
    arp, eth, ipv4_header, ipv6_header, ipv6_icmp, nd_message, tagged, ETH_P_ARP, ETH_P_IPV4,
    ETH_P_IPV6,
};

const UNPAID: u8 = 40;
const PAID: u8 = 41;
const BYSTANDER: u8 = 42;
const SLOTLESS: u8 = 43;

#[derive(Debug, Clone)]
enum L3 {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        sport: u16,
        dport: u16,
        payload: usize,
        /// The IP ID and the flags and fragment offset word (0x2000: more
        /// fragments; the low 13 bits: the offset in 8-byte units).
        id: u16,
        frag: u16,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: u8,
        sport: u16,
        dport: u16,
        icmp_type: u8,
        hop: u8,
        lla: Option<[u8; 6]>,
        payload: usize,
    },
    Arp {
        sha: [u8; 6],
        spa: Ipv4Addr,
    },
    Eapol,
    Other(u16),
}

#[derive(Debug, Clone)]
struct Spec {
    /// The other end's MAC (destination going up, source coming down).
    peer_mac: [u8; 6],
    tags: Vec<(u16, u16)>,
    l3: L3,
}

fn v4_addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        Just(GW_V4),
        Just(SERVER_V4),
        Just(Ipv4Addr::BROADCAST),
        Just(Ipv4Addr::new(224, 0, 0, 251)),
        Just(Ipv4Addr::new(10, 99, 0, 255)),
        (0u8..=255, 0u8..=255).prop_map(|(a, b)| Ipv4Addr::new(10, 97, a, b)),
        Just(Ipv4Addr::new(240, 0, 0, 1)),
        Just(Ipv4Addr::new(0, 0, 0, 1)),
        Just(Ipv4Addr::LOCALHOST),
        any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn v6_addr() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        Just(GW_V6),
        Just(GW_LL),
        Just(SERVER_V6),
        Just("ff02::1:2".parse().unwrap()),
        Just("ff02::1".parse().unwrap()),
        Just("ff02::1:ff00:1".parse().unwrap()),
        Just("ff05::1:3".parse().unwrap()),
        Just("::ffff:10.97.0.5".parse().unwrap()),
        Just(Ipv6Addr::LOCALHOST),
        Just("fe80::99".parse().unwrap()),
        any::<u128>().prop_map(Ipv6Addr::from),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(53u16),
        Just(67),
        Just(68),
        Just(80),
        Just(443),
        Just(546),
        Just(547),
        Just(853),
        any::<u16>()
    ]
}

fn proto() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(6u8),
        Just(17),
        Just(1),
        Just(47),
        Just(58),
        Just(0),
        Just(44),
        any::<u8>()
    ]
}

/// Frames a client might send (`up`) or receive: `own` is its MAC and
/// addresses, so most frames carry them and some do not.
fn spec(n: u8, up: bool) -> impl Strategy<Value = Spec> {
    let own = client_mac(n).addr;
    let own4 = client_v4(n);
    let own6 = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x10 + n as u16);
    let own_ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10 + n as u16);
    let peer_mac = if up {
        prop_oneof![
            4 => Just(GW_MAC),
            1 => Just([0xff; 6]),
            1 => Just([0x33, 0x33, 0, 1, 0, 2]),
            1 => Just([0x01, 0, 0x5e, 0, 0, 0xfb]),
            1 => Just([0x02, 0x55, 0, 0, 0, 1]),
        ]
        .boxed()
    } else {
        Just(GW_MAC).boxed()
    };
    let tag = (
        prop_oneof![Just(0x8100u16), Just(0x88a8), Just(0x9100)],
        prop_oneof![Just(0u16), 0u16..4096],
    );
    let tags = prop_oneof![
        6 => Just(vec![]),
        2 => prop::collection::vec(tag.clone(), 1..=2),
        1 => prop::collection::vec(tag, 3..=3),
    ];
    let v4 = (
        prop_oneof![Just(own4), Just(Ipv4Addr::UNSPECIFIED), v4_addr()],
        v4_addr(),
        proto(),
        port(),
        port(),
        0usize..300,
        (
            prop_oneof![Just(0x1234u16), any::<u16>()],
            prop_oneof![
                6 => Just(0x4000u16),
                2 => Just(0x2000u16),
                2 => (1u16..0x1fff).prop_map(|o| 0x2000 | o),
                2 => 1u16..0x1fff,
            ],
        ),
    )
        .prop_map(move |(a, b, proto, p1, p2, payload, (id, frag))| {
            // Going up the client's address is the source, coming down the destination.
            let (src, dst) = if up { (a, b) } else { (b, a) };
            L3::V4 {
                src,
                dst,
                proto,
                sport: p1,
                dport: p2,
                payload,
                id,
                frag,
            }
        });
    let v6 = (
        prop_oneof![
            Just(own6),
            Just(own_ll),
            Just(Ipv6Addr::UNSPECIFIED),
            v6_addr()
        ],
        v6_addr(),
        proto(),
        (port(), port()),
        prop_oneof![Just(128u8), 133u8..=137, any::<u8>()],
        prop_oneof![Just(255u8), Just(64), any::<u8>()],
        prop_oneof![
            Just(None),
            Just(Some(own)),
            Just(Some([0xff; 6])),
            Just(Some(GW_MAC))
        ],
        0usize..300,
    )
        .prop_map(
            move |(a, b, proto, (sport, dport), icmp_type, hop, lla, payload)| {
                let (src, dst) = if up { (a, b) } else { (b, a) };
                L3::V6 {
                    src,
                    dst,
                    proto,
                    sport,
                    dport,
                    icmp_type,
                    hop,
                    lla,
                    payload,
                }
            },
        );
    let arp = (
        prop_oneof![Just(own), Just(GW_MAC), Just([0xff; 6])],
        prop_oneof![Just(own4), Just(GW_V4), v4_addr()],
    )
        .prop_map(|(sha, spa)| L3::Arp { sha, spa });
    // Fragments of DNS over UDP with the gateway, as a large answer comes.
    let dns_frag = (
        port(),
        0usize..300,
        prop_oneof![Just(0x1234u16), Just(0x1235)],
        prop_oneof![Just(0x2000u16), Just(0x2003), Just(0x0006)],
    )
        .prop_map(move |(p, payload, id, frag)| {
            let (src, dst, sport, dport) = if up {
                (own4, GW_V4, p, 53)
            } else {
                (GW_V4, own4, 53, p)
            };
            L3::V4 {
                src,
                dst,
                proto: 17,
                sport,
                dport,
                payload,
                id,
                frag,
            }
        });
    let l3 = prop_oneof![
        1 => dns_frag,
        4 => v4,
        4 => v6,
        1 => arp,
        1 => Just(L3::Eapol),
        1 => any::<u16>().prop_map(L3::Other),
    ];
    (peer_mac, tags, l3).prop_map(|(peer_mac, tags, l3)| Spec { peer_mac, tags, l3 })
}

/// A transport header: ports for TCP and UDP, the type for ICMPv6.
fn l4(proto: u8, sport: u16, dport: u16, icmp_type: u8, payload: usize) -> Vec<u8> {
    let mut b = match proto {
        6 => {
            let mut t = vec![0u8; 20];
            t[12] = 0x50;
            t[13] = 0x10;
            t
        }
        17 => {
            let mut u = vec![0u8; 8];
            u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
            u
        }
        _ => vec![icmp_type, 0, 0, 0],
    };
    if proto == 6 || proto == 17 {
        b[0..2].copy_from_slice(&sport.to_be_bytes());
        b[2..4].copy_from_slice(&dport.to_be_bytes());
    }
    b.resize(b.len() + payload, 0x5a);
    b
}

/// The frame, and the IP length the datapath must count for it (0: not IP).
fn build(s: &Spec, client: [u8; 6], up: bool) -> (Vec<u8>, u64) {
    let (dst_mac, src_mac) = if up {
        (s.peer_mac, client)
    } else {
        (client, s.peer_mac)
    };
    let (ethertype, body) = match &s.l3 {
        L3::V4 {
            src,
            dst,
            proto,
            sport,
            dport,
            payload,
            id,
            frag,
        } => {
            // A later fragment carries data, not a transport header.
            let t = if later_fragment(*frag) {
                vec![0x5a; 8 + *payload]
            } else {
                l4(*proto, *sport, *dport, 0, *payload)
            };
            let mut p = ipv4_header(*src, *dst, *proto, (20 + t.len()) as u16, 5);
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p[6..8].copy_from_slice(&frag.to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let c = session_tests::raw::checksum(&p);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&t);
            (ETH_P_IPV4, p)
        }
        L3::V6 {
            src,
            dst,
            proto,
            sport,
            dport,
            icmp_type,
            hop,
            lla,
            payload,
        } => {
            if *proto == 58 && (133..=137).contains(icmp_type) {
                let mut m = nd_message(*icmp_type, *dst, *lla);
                m.resize(m.len() + payload % 3 * 8, 0);
                (ETH_P_IPV6, ipv6_icmp(*src, *dst, *hop, &m))
            } else {
                let t = l4(*proto, *sport, *dport, *icmp_type, *payload);
                let mut p = ipv6_header(*src, *dst, *proto, t.len() as u16);
                p[7] = *hop;
                p.extend_from_slice(&t);
                (ETH_P_IPV6, p)
            }
        }
        L3::Arp { sha, spa } => (ETH_P_ARP, arp(2, *sha, *spa, GW_MAC, GW_V4)),
        L3::Eapol => (0x888e, vec![1, 0, 0, 4, 1, 2, 3, 4]),
        L3::Other(et) => (*et, vec![0xa5; 46]),
    };
    let ip_len = if matches!(s.l3, L3::V4 { .. } | L3::V6 { .. }) {
        body.len() as u64
    } else {
        0
    };
    let mut f = eth(dst_mac, src_mac, ethertype);
    f.extend_from_slice(&body);
    (tagged(&f, &s.tags), ip_len)
}

fn later_fragment(frag: u16) -> bool {
    frag & 0x1fff != 0
}

/// A datagram's fragments: source, destination, protocol, IP ID.
type FragKey = (Ipv4Addr, Ipv4Addr, u8, u16);

/// The first fragments (more fragments, offset 0) the garden passed to the
/// client, whose later fragments may follow.
#[derive(Default)]
struct Firsts(std::collections::HashSet<FragKey>);

impl Firsts {
    fn key(s: &Spec) -> Option<(FragKey, u16)> {
        match &s.l3 {
            L3::V4 {
                src,
                dst,
                proto,
                id,
                frag,
                ..
            } => Some(((*src, *dst, *proto, *id), *frag)),
            _ => None,
        }
    }

    /// Notes a first fragment that passed going down.
    fn passed(&mut self, s: &Spec, up: bool) {
        if let Some((k, frag)) = Self::key(s) {
            if !up && frag & 0x2000 != 0 && !later_fragment(frag) {
                self.0.insert(k);
            }
        }
    }
}

fn gw_v6(a: &Ipv6Addr) -> bool {
    *a == GW_V6 || *a == GW_LL
}

fn link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The walled garden of a client that has not paid, as the README states
/// it: may this frame pass? (Addresses bound to other MACs and link-layer
/// address options are not modelled: the model may only be more generous.)
fn garden_model(s: &Spec, own: [u8; 6], up: bool, firsts: &Firsts) -> bool {
    if s.tags.len() > 2 {
        return false;
    }
    let group_frame = s.peer_mac[0] & 1 == 1 && up;
    if up && !group_frame && s.peer_mac != GW_MAC {
        return false;
    }
    let tcp_udp = |p: u8| p == 6 || p == 17;
    match &s.l3 {
        L3::Arp { sha, .. } => !up || *sha == own,
        L3::Eapol => true,
        // From clients only 802.1X besides IP and ARP; the gateway's own pass.
        L3::Other(et) => !up || *et == 0x888e,
        L3::V4 {
            src,
            dst,
            proto,
            sport,
            dport,
            frag,
            ..
        } => {
            let group = dst.is_multicast() || dst.is_broadcast();
            if group_frame && !group {
                return false;
            }
            if later_fragment(*frag) {
                // With the garden's whole networks (no port to judge), or to
                // the client, of a datagram whose first fragment passed.
                return if up {
                    !group && dst.octets()[..2] == [10, 97]
                } else {
                    src.octets()[..2] == [10, 97]
                        || Firsts::key(s).is_some_and(|(k, _)| firsts.0.contains(&k))
                };
            }
            if up {
                (*proto == 17 && *dport == 67 && (*dst == GW_V4 || *dst == Ipv4Addr::BROADCAST))
                    || (!group
                        && *dst == GW_V4
                        && ((*dport == 53 && tcp_udp(*proto)) || (*dport == 80 && *proto == 6)))
                    || (!group && dst.octets()[..2] == [10, 97])
            } else {
                (*proto == 17 && *sport == 67 && *src == GW_V4)
                    || (*src == GW_V4
                        && ((*sport == 53 && tcp_udp(*proto)) || (*sport == 80 && *proto == 6)))
                    || src.octets()[..2] == [10, 97]
            }
        }
        L3::V6 {
            src,
            dst,
            proto,
            sport,
            dport,
            icmp_type,
            hop,
            ..
        } => {
            let group = dst.is_multicast();
            if group_frame && !group {
                return false;
            }
            if *proto == 58 && (133..=137).contains(icmp_type) {
                return *hop == 255
                    && if up {
                        link_local(dst) || dst.segments()[0] == 0xff02 || gw_v6(dst)
                    } else {
                        link_local(src) || gw_v6(src)
                    };
            }
            if up {
                (*proto == 17
                    && *dport == 547
                    && (*dst == "ff02::1:2".parse::<Ipv6Addr>().unwrap() || *dst == GW_LL))
                    || (!group
                        && gw_v6(dst)
                        && ((*dport == 53 && tcp_udp(*proto)) || (*dport == 80 && *proto == 6)))
            } else {
                (*proto == 17 && *sport == 547 && *src == GW_LL)
                    || (gw_v6(src)
                        && ((*sport == 53 && tcp_udp(*proto)) || (*sport == 80 && *proto == 6)))
            }
        }
    }
}

/// What a MAC without a slot may exchange: the garden's ARP, ND and DHCP
/// only (and, going down, the gateway's own non-IP frames and group frames).
fn slotless_model(s: &Spec, own: [u8; 6], up: bool) -> bool {
    // DHCPv6 to any of the gateway's addresses (the garden lets unpaid
    // clients reach its link-local one only).
    if let L3::V6 {
        src,
        dst,
        proto: 17,
        sport,
        dport,
        ..
    } = &s.l3
    {
        let dhcp = if up {
            *dport == 547 && gw_v6(dst)
        } else {
            *sport == 547 && gw_v6(src)
        };
        if dhcp && s.peer_mac == GW_MAC && s.tags.len() <= 2 {
            return true;
        }
    }
    if !garden_model(s, own, up, &Firsts::default()) {
        return false;
    }
    let group_down = !up && s.peer_mac[0] & 1 == 1;
    match &s.l3 {
        L3::V4 {
            proto,
            sport,
            dport,
            frag,
            ..
        } => {
            group_down
                || (*proto == 17
                    && !later_fragment(*frag)
                    && (if up { *dport } else { *sport }) == 67)
        }
        L3::V6 {
            proto,
            sport,
            dport,
            icmp_type,
            ..
        } => {
            group_down
                || (*proto == 58 && (133..=137).contains(icmp_type))
                || (*proto == 17 && (if up { *dport } else { *sport }) == 547)
        }
        _ => true,
    }
}

fn run(dp: &Datapath, up: bool, f: &[u8]) -> u32 {
    if up {
        dp.up(f)
    } else {
        dp.down(f)
    }
}

fn usage(dp: &Datapath, n: u8) -> (u64, u64, u64) {
    match dp.h.maps.slot_of(&client_mac(n)) {
        Some(_) => {
            let c = dp.counters(client_mac(n));
            (c.up_bytes, c.down_bytes, c.garden_bytes)
        }
        None => (0, 0, 0),
    }
}

fn config() -> ProptestConfig {
    // PROPTEST_CASES overrides the default of 256; a failure prints its
    // minimal case rather than writing files into the tree.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn a_client_that_has_not_paid_gets_only_garden_verdicts() {
    big_stack(unpaid_only_garden);
}

fn unpaid_only_garden() {
    let dp = Datapath::new();
    let own = client_mac(UNPAID).addr;
    let firsts = std::cell::RefCell::new(Firsts::default());
    proptest!(config(), |(s in spec(UNPAID, true), down in spec(UNPAID, false))| {
        for (s, up) in [(s, true), (down, false)] {
            let (f, _) = build(&s, own, up);
            let v = run(&dp, up, &f);
            if v == TC_PASS {
                firsts.borrow_mut().passed(&s, up);
                prop_assert!(
                    garden_model(&s, own, up, &firsts.borrow()),
                    "{} passed outside the garden: {s:?}\n{f:02x?}",
                    if up { "upload" } else { "download" }
                );
                // The rest of a datagram whose first fragment passed passes
                // too (unless the garden's rate limit holds it); a later
                // fragment of another datagram does not.
                if let L3::V4 { frag, src, .. } = &s.l3 {
                    if !up && *frag & 0x2000 != 0 && !later_fragment(*frag) {
                        let with = |frag: u16, id_add: u16| {
                            let mut l = s.clone();
                            if let L3::V4 { frag: f, id, .. } = &mut l.l3 {
                                *f = frag;
                                *id = id.wrapping_add(id_add);
                            }
                            l
                        };
                        let limited = || dp.h.maps.stats().unwrap()[STAT_GARDEN_RATELIMIT as usize]
                            + dp.h.maps.stats().unwrap()[STAT_GARDEN_TOTAL as usize];
                        let rest = with(0x0003, 0);
                        let before = limited();
                        let v = dp.down(&build(&rest, own, false).0);
                        prop_assert!(
                            v == TC_PASS || limited() > before,
                            "the rest of a datagram whose first fragment passed was dropped: {rest:?}"
                        );
                        let stray = with(0x0003, 1);
                        let key = Firsts::key(&stray).unwrap().0;
                        if src.octets()[..2] != [10, 97] && !firsts.borrow().0.contains(&key) {
                            prop_assert_ne!(
                                dp.down(&build(&stray, own, false).0),
                                TC_PASS,
                                "a later fragment of a datagram the garden never saw passed: {:?}",
                                stray
                            );
                        }
                    }
                }
            }
            let (u, d, _) = usage(&dp, UNPAID);
            prop_assert_eq!((u, d), (0, 0), "usage of a client that has not paid");
        }
    });
}

#[test]
fn a_paying_client_is_charged_each_passed_byte_exactly_once() {
    big_stack(paid_charged_once);
}

fn paid_charged_once() {
    let mut dp = Datapath::new();
    dp.allow(client_mac(PAID));
    dp.allow(client_mac(BYSTANDER));
    // The bystander's own traffic, so that it is in the table and bound.
    assert_eq!(dp.up(&up4(BYSTANDER, 443, 10)), TC_PASS);
    let bystander = usage(&dp, BYSTANDER);
    let own = client_mac(PAID).addr;
    proptest!(config(), |(s in spec(PAID, true), down in spec(PAID, false))| {
        for (s, up) in [(s, true), (down, false)] {
            let (f, ip_len) = build(&s, own, up);
            let before = usage(&dp, PAID);
            let v = run(&dp, up, &f);
            let after = usage(&dp, PAID);
            let (du, dd, dg) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
            let charged = if up { du } else { dd };
            prop_assert_eq!(if up { dd } else { du }, 0, "charged the wrong direction: {:?}", s);
            if v == TC_PASS && ip_len > 0 {
                prop_assert!(
                    (charged, dg) == (ip_len, 0) || (charged, dg) == (0, ip_len),
                    "{ip_len} IP bytes passed, {charged} charged, {dg} garden: {s:?}"
                );
            } else {
                prop_assert_eq!(charged, 0, "charged for a frame that did not pass: {:?}", s);
            }
            prop_assert_eq!(usage(&dp, BYSTANDER), bystander, "another client was charged: {:?}", s);
        }
    });
}

#[test]
fn a_mac_without_a_slot_gets_only_arp_nd_and_dhcp_and_is_counted_to_nobody() {
    big_stack(slotless_only_bootstrap);
}

fn slotless_only_bootstrap() {
    let mut dp = Datapath::new();
    // A full table: the MAC under test finds no slot.
    for i in 0..MAX_CLIENTS {
        let b = i.to_be_bytes();
        dp.h.maps
            .ensure_slot(&MacAddr::new([0x02, 0xdd, b[0], b[1], b[2], b[3]]))
            .unwrap_or_else(|e| panic!("slot {i}: {e}"));
    }
    let own = client_mac(SLOTLESS).addr;
    proptest!(config(), |(s in spec(SLOTLESS, true), down in spec(SLOTLESS, false))| {
        for (s, up) in [(s, true), (down, false)] {
            let (f, _) = build(&s, own, up);
            if run(&dp, up, &f) == TC_PASS {
                prop_assert!(
                    slotless_model(&s, own, up),
                    "{} of a MAC without a slot passed: {s:?}\n{f:02x?}",
                    if up { "upload" } else { "download" }
                );
            }
            prop_assert_eq!(dp.h.maps.slot_of(&client_mac(SLOTLESS)), None);
        }
    });
}
