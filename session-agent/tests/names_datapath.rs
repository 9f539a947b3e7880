//! The datapath's half of the walled garden by name (BPF_PROG_TEST_RUN): a
//! client that has not paid reaches DNS only on the garden's DNS servers and
//! never over TLS; answers to it are held whole in the ring for the agent
//! (unless marked as sent on by the agent); an address the agent learnt
//! passes, on its port only when it has one, and is stamped as used.
//! (The agent's half with real DNS traffic: tests/tests/garden_names.rs.)

mod common;

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use common::*;
use session_agent::names::host_key;

const MARK: u32 = 0x5e56;

fn snooping() -> Datapath {
    let lan = lan_config(1, Some(GW_MAC), &gw_addrs(), &[80], &GATE, None, Some(MARK));
    let h = ProgramHarness::with_lan("sa-dns", &test_garden(), &lan)
        .unwrap_or_else(|e| panic!("loading the datapath: {e}"));
    Datapath { h }
}

/// A `__sk_buff` context with `mark` (at byte 8).
fn marked(mark: u32) -> [u8; 192] {
    let mut ctx = [0u8; 192];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx
}

fn up_to(n: u8, dst: Ipv4Addr, dport: u16, tcp: bool) -> Vec<u8> {
    let f = if tcp { tcp4 } else { udp4 };
    f(
        GW_MAC,
        client_mac(n).addr,
        client_v4(n),
        dst,
        40000,
        dport,
        40,
    )
}

fn answer_from(n: u8, src: Ipv4Addr) -> Vec<u8> {
    udp4(client_mac(n).addr, GW_MAC, src, client_v4(n), 53, 40000, 60)
}

#[test]
fn dns_reaches_only_the_gardens_dns_servers_and_dns_over_tls_never() {
    let dp = snooping();
    // 10.97.0.0/16 is in the test garden, on every port, but is no DNS server.
    let garden_host = Ipv4Addr::new(10, 97, 0, 5);
    assert_eq!(
        dp.up(&up_to(1, garden_host, 443, true)),
        TC_PASS,
        "the garden itself passes"
    );
    for tcp in [false, true] {
        assert_eq!(
            dp.up(&up_to(1, GW_V4, 53, tcp)),
            TC_PASS,
            "the gateway's DNS (tcp: {tcp})"
        );
        assert_eq!(
            dp.up(&up_to(1, garden_host, 53, tcp)),
            TC_DROP,
            "DNS to a garden host that is no DNS server (tcp: {tcp})"
        );
        assert_eq!(
            dp.up(&up_to(1, garden_host, 853, tcp)),
            TC_DROP,
            "DNS over TLS (tcp: {tcp})"
        );
        assert_eq!(
            dp.up(&up_to(1, GW_V4, 853, tcp)),
            TC_DROP,
            "DNS over TLS to the gateway (tcp: {tcp})"
        );
    }
    // Nor do answers from such a host reach the client.
    assert_eq!(dp.down(&answer_from(1, garden_host)), TC_DROP);
}

#[test]
fn answers_to_a_client_that_has_not_paid_are_held_whole_and_marked_ones_pass() {
    let mut dp = snooping();
    let mut ring = RingBuf::try_from(dp.h.ebpf.take_map(MAP_DNS_HELD).expect("ring")).unwrap();
    let answer = answer_from(1, GW_V4);
    assert_eq!(dp.down(&answer), TC_DROP, "held, not passed");
    let item = ring.next().expect("the held answer is in the ring");
    let len = u32::from_ne_bytes(item[0..4].try_into().unwrap()) as usize;
    let off = std::mem::offset_of!(HeldFrame, frame);
    assert_eq!(
        &item[off..off + len],
        &answer[..],
        "the whole frame, unchanged"
    );
    drop(item);
    // The agent's copy, marked, passes and is counted as garden.
    let (verdict, _) =
        dp.h.run(PROG_TC_EGRESS, &answer, Some(&marked(MARK)), 1)
            .unwrap();
    assert_eq!(verdict, TC_PASS);
    assert!(ring.next().is_none(), "a marked answer is not held again");
    assert_eq!(dp.counters(client_mac(1)).garden_packets, 1);
    // Not an answer: from another port, or empty TCP.
    assert_eq!(
        dp.down(&udp4(
            client_mac(1).addr,
            GW_MAC,
            GW_V4,
            client_v4(1),
            67,
            68,
            60
        )),
        TC_PASS
    );
    assert_eq!(
        dp.down(&tcp4(
            client_mac(1).addr,
            GW_MAC,
            GW_V4,
            client_v4(1),
            53,
            40000,
            0
        )),
        TC_PASS
    );
    assert!(ring.next().is_none());
    // A TCP answer with data is held.
    assert_eq!(
        dp.down(&tcp4(
            client_mac(1).addr,
            GW_MAC,
            GW_V4,
            client_v4(1),
            53,
            40000,
            50
        )),
        TC_DROP
    );
    assert!(ring.next().is_some());
    // A paying client's answers are never held.
    dp.allow(client_mac(2));
    assert_eq!(dp.down(&answer_from(2, GW_V4)), TC_PASS);
    assert!(ring.next().is_none());
}

#[test]
fn without_garden_names_nothing_is_held() {
    let dp = Datapath::new();
    let mut dp = dp;
    let mut ring = RingBuf::try_from(dp.h.ebpf.take_map(MAP_DNS_HELD).expect("ring")).unwrap();
    assert_eq!(dp.down(&answer_from(1, GW_V4)), TC_PASS);
    assert!(ring.next().is_none());
}

#[test]
fn a_learnt_address_passes_on_its_port_and_is_stamped_as_used() {
    let mut dp = snooping();
    let mut hosts: BpfHashMap<MapData, GardenHostKey, GardenHostValue> =
        BpfHashMap::try_from(dp.h.ebpf.take_map(MAP_GARDEN_HOSTS).expect("hosts")).unwrap();
    let any = Ipv4Addr::new(198, 51, 100, 7);
    let https_only = Ipv4Addr::new(198, 51, 100, 8);
    assert_eq!(dp.up(&up_to(1, any, 80, true)), TC_DROP, "not learnt yet");
    hosts
        .insert(host_key(any.into(), 0), GardenHostValue::default(), 0)
        .unwrap();
    hosts
        .insert(
            host_key(https_only.into(), 443),
            GardenHostValue::default(),
            0,
        )
        .unwrap();
    assert_eq!(dp.up(&up_to(1, any, 80, true)), TC_PASS);
    assert_eq!(dp.up(&up_to(1, any, 5000, false)), TC_PASS);
    assert_eq!(dp.up(&up_to(1, https_only, 443, true)), TC_PASS);
    assert_eq!(
        dp.up(&up_to(1, https_only, 80, true)),
        TC_DROP,
        "another port"
    );
    assert_eq!(
        dp.up(&up_to(1, any, 53, false)),
        TC_DROP,
        "a learnt address is no DNS server"
    );
    let stamp = hosts.get(&host_key(any.into(), 0), 0).unwrap().last_used_ns;
    let now = session_agent::dataplane::coarse_ns();
    assert!(
        stamp > 0 && stamp <= now + 10_000_000,
        "stamped: {stamp}, now {now}"
    );
    assert_eq!(hosts.get(&host_key(https_only.into(), 80), 0).ok(), None);
    assert_eq!(dp.counters(client_mac(1)).garden_packets, 3);
}
