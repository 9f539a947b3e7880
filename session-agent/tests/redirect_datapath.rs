//! The datapath's half of `--portal-redirect` (BPF_PROG_TEST_RUN): a client
//! that has not paid gets a reset for its TCP outside the garden, built from
//! its own segment, whose headers and checksums are checked here by an
//! independent computation; what cannot be answered is dropped; the
//! responder's marked answers pass down to it; a paying client is untouched.
//! (Steering port 80 to the responder needs a real socket: tests/redirect.rs.)

mod common;

use common::*;
use session_agent::portal::{RedirectOptions, RedirectParams};

const MARK: u32 = 0x5e55;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

fn redirecting() -> Datapath {
    let r = RedirectOptions {
        port: 3990,
        mark: MARK,
        table: 0x5e55,
        portal_url: "http://10.99.0.1:8908/portal".into(),
        params: RedirectParams::default(),
    };
    let lan = lan_config(1, Some(GW_MAC), &gw_addrs(), &[80], &GATE, Some(&r), None);
    let h = ProgramHarness::with_lan("sa-rd", &test_garden(), &lan)
        .unwrap_or_else(|e| panic!("loading the datapath: {e}"));
    Datapath { h }
}

/// Ones' complement sum of big-endian 16-bit words.
fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| (u32::from(w[0]) << 8) | u32::from(*w.get(1).unwrap_or(&0)))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The pseudo-header sum of the IP packet at byte 14 of `f`, and where its TCP header is.
fn pseudo(f: &[u8]) -> (u32, usize) {
    if f[12..14] == [0x86, 0xdd] {
        let len = u16::from_be_bytes([f[18], f[19]]) as u32;
        (sum(&f[22..54]) + len + 6, 54)
    } else {
        let ihl = (f[14] & 0x0f) as usize * 4;
        let tot = u16::from_be_bytes([f[16], f[17]]) as u32;
        (sum(&f[26..34]) + (tot - ihl as u32) + 6, 14 + ihl)
    }
}

fn tcp_csum_ok(f: &[u8]) -> bool {
    let (p, l4) = pseudo(f);
    fold(p + sum(&f[l4..])) == 0xffff
}

fn ipv4_csum_ok(f: &[u8]) -> bool {
    fold(sum(&f[14..34])) == 0xffff
}

/// A TCP segment from client `n` (IPv4 or IPv6) to the server's `dport`, with
/// `flags`, `seq`, `ack`, an MSS option on a SYN, and `payload` bytes; valid checksums.
fn segment(v6: bool, n: u8, dport: u16, flags: u8, seq: u32, ack: u32, payload: usize) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&40000u16.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    let opts: &[u8] = if flags & SYN != 0 {
        &[2, 4, 0x05, 0xb4]
    } else {
        &[]
    };
    t.push((((20 + opts.len()) / 4) as u8) << 4);
    t.push(flags);
    t.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
    t.extend_from_slice(opts);
    t.resize(t.len() + payload, 0x5a);
    let mut f = eth(GW_MAC, client_mac(n).addr, if v6 { 0x86dd } else { 0x0800 });
    if v6 {
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(t.len() as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend_from_slice(&client_v6(n).octets());
        f.extend_from_slice(&SERVER_V6.octets());
    } else {
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((20 + t.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&client_v4(n).octets());
        f.extend_from_slice(&SERVER_V4.octets());
        set_ipv4_csum(&mut f);
    }
    f.extend_from_slice(&t);
    let (p, l4) = pseudo(&f);
    let c = !fold(p + sum(&f[l4..]));
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    assert!(tcp_csum_ok(&f));
    f
}

fn client_v6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x10 + n as u16)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Checks `out` is the reset of `inp`: back to the client from the server, and
/// returns its (seq, ack, flags).
fn reset_of(inp: &[u8], out: &[u8]) -> (u32, u32, u8) {
    let v6 = inp[12..14] == [0x86, 0xdd];
    assert_eq!(out.len(), inp.len());
    assert_eq!(&out[0..6], &inp[6..12], "to the client's MAC");
    assert_eq!(&out[6..12], &inp[0..6], "from the gateway's MAC");
    let (l4, (src, dst)) = if v6 {
        (54, (22..38, 38..54))
    } else {
        assert!(ipv4_csum_ok(out), "IPv4 header checksum");
        (34, (26..30, 30..34))
    };
    assert_eq!(
        &out[src.clone()],
        &inp[dst.clone()],
        "from the server's address"
    );
    assert_eq!(&out[dst], &inp[src], "to the client's address");
    assert_eq!(
        &out[l4..l4 + 2],
        &inp[l4 + 2..l4 + 4],
        "from the server's port"
    );
    assert_eq!(
        &out[l4 + 2..l4 + 4],
        &inp[l4..l4 + 2],
        "to the client's port"
    );
    assert!(tcp_csum_ok(out), "TCP checksum of {out:02x?}");
    (be32(&out[l4 + 4..]), be32(&out[l4 + 8..]), out[l4 + 13])
}

#[test]
fn an_unpaid_clients_syn_outside_the_garden_is_answered_with_a_reset_it_accepts() {
    let dp = redirecting();
    for v6 in [false, true] {
        let syn = segment(v6, 1, 443, SYN, 0x1234_5678, 0, 0);
        let (verdict, out) = dp.h.run_out(PROG_TC_INGRESS, &syn, None).unwrap();
        assert_eq!(verdict, TC_REDIRECT, "v6={v6}");
        // RFC 9293 3.10.7.1: no ACK in, so <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
        assert_eq!(reset_of(&syn, &out), (0, 0x1234_5679, RST | ACK), "v6={v6}");
        // A FIN without ACK counts one more; a wrapping sequence number wraps.
        let fin = segment(v6, 1, 25, SYN | FIN, u32::MAX, 0, 0);
        let (verdict, out) = dp.h.run_out(PROG_TC_INGRESS, &fin, None).unwrap();
        assert_eq!(verdict, TC_REDIRECT);
        assert_eq!(reset_of(&fin, &out), (0, 1, RST | ACK), "v6={v6}");
    }
}

#[test]
fn a_segment_with_ack_is_reset_with_its_ack_number_and_one_with_data_or_a_reset_only_dropped() {
    let dp = redirecting();
    for v6 in [false, true] {
        let ack = segment(v6, 2, 443, ACK, 7, 0xdead_beef, 0);
        let (verdict, out) = dp.h.run_out(PROG_TC_INGRESS, &ack, None).unwrap();
        assert_eq!(verdict, TC_REDIRECT);
        // <SEQ=SEG.ACK><CTL=RST>
        assert_eq!(reset_of(&ack, &out).0, 0xdead_beef);
        assert_eq!(reset_of(&ack, &out).2, RST);
        for (what, f) in [
            ("data", segment(v6, 2, 443, ACK | PSH, 7, 9, 100)),
            ("reset", segment(v6, 2, 443, RST, 7, 0, 0)),
            ("reset+ack", segment(v6, 2, 443, RST | ACK, 7, 9, 0)),
        ] {
            assert_eq!(dp.up(&f), TC_DROP, "{what}, v6={v6}");
        }
    }
    // A GSO aggregate is never turned into a reset (it would leave as many).
    assert_eq!(
        dp.up_gso(&segment(false, 2, 443, ACK, 7, 9, 2896), 2),
        TC_DROP
    );
    // UDP outside the garden: dropped as without the redirect.
    assert_eq!(dp.up(&up4(2, 443, 10)), TC_DROP);
}

#[test]
fn the_responders_marked_answers_pass_down_to_an_unpaid_client_and_others_do_not() {
    let dp = redirecting();
    let syn = segment(false, 3, 443, SYN, 1, 0, 0);
    dp.up(&syn);
    // The server's SYN-ACK as the responder sends it (same bytes either way).
    let (_, answer) = dp.h.run_out(PROG_TC_INGRESS, &syn, None).unwrap();
    // struct __sk_buff: mark at byte 8.
    let mut ctx = [0u8; 192];
    ctx[8..12].copy_from_slice(&MARK.to_ne_bytes());
    let before = dp.counters(client_mac(3));
    let (marked, _) = dp.h.run_out(PROG_TC_EGRESS, &answer, Some(&ctx)).unwrap();
    assert_eq!(marked, TC_PASS);
    ctx[8..12].copy_from_slice(&(MARK + 1).to_ne_bytes());
    let (other, _) = dp.h.run_out(PROG_TC_EGRESS, &answer, Some(&ctx)).unwrap();
    assert_eq!(other, TC_DROP);
    assert_eq!(dp.down(&answer), TC_DROP, "unmarked");
    let after = dp.counters(client_mac(3));
    assert_eq!(after.garden_packets, before.garden_packets + 1);
    assert_eq!((after.up_bytes, after.down_bytes), (0, 0), "not usage");
}

#[test]
fn a_paying_client_is_neither_redirected_nor_reset() {
    let mut dp = redirecting();
    for v6 in [false, true] {
        let syn = segment(v6, 4, 443, SYN, 1, 0, 0);
        dp.up(&syn);
        dp.allow(client_mac(4));
        let (verdict, out) = dp.h.run_out(PROG_TC_INGRESS, &syn, None).unwrap();
        assert_eq!(verdict, TC_PASS, "v6={v6}");
        assert_eq!(out, syn, "v6={v6}: the frame was changed");
        let web = segment(v6, 4, 80, SYN, 1, 0, 0);
        assert_eq!(dp.up(&web), TC_PASS, "v6={v6}");
    }
    assert!(dp.counters(client_mac(4)).up_bytes > 0);
}

#[test]
fn without_the_redirect_the_same_segments_are_dropped() {
    let dp = Datapath::new();
    for v6 in [false, true] {
        assert_eq!(dp.up(&segment(v6, 5, 443, SYN, 1, 0, 0)), TC_DROP);
        assert_eq!(dp.up(&segment(v6, 5, 80, SYN, 1, 0, 0)), TC_DROP);
    }
}
