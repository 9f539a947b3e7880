//! Malformed and truncated frames, sent raw from a client namespace, must
//! neither crash the agent nor be counted as usage; valid traffic sent
//! alongside is counted exactly.

use session_tests::check::assert_usage_matches;
use session_tests::raw::{
    eth, ipv4_udp, ipv6_udp, malformed_frames, RawSender, ETH_P_IPV4, ETH_P_IPV6,
};
use session_tests::topo::parse_mac;
use session_tests::{mixed_traffic, require_root, AgentBuilder, Hotspot, Mix, NftRef, ServerSet};
use std::time::Duration;

#[test]
fn malformed_frames_neither_crash_nor_count() {
    require_root();
    let hs = Hotspot::builder().clients(3).build();
    let nft = NftRef::install(&hs);
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let mut agent = AgentBuilder::new(&hs).start();
    // Clients 0 and 1 are allowed, client 2 stays blocked; 0 and 2 send junk.
    agent.allow(&hs.client(0).mac);
    agent.allow(&hs.client(1).mac);
    let gw_mac = parse_mac(&hs.gw_lan_mac);
    let rounds = 150;

    let mix = Mix {
        tcp_up: 300_000,
        tcp_down: 400_000,
        udp_up: 60,
        udp_up_size: 1000,
        udp_down: 60,
        udp_down_size: 1100,
    };
    let junk_counts: Vec<usize> = std::thread::scope(|s| {
        let sv = &servers;
        let hs_ref = &hs;
        let valid: Vec<_> = [0usize, 1]
            .into_iter()
            .map(|i| {
                s.spawn(move || {
                    let c = hs_ref.client(i);
                    mixed_traffic(&c.ns, sv, mix, &format!("valid traffic of {}", c.mac))
                })
            })
            .collect();
        let junk: Vec<_> = [0usize, 2]
            .into_iter()
            .map(|i| {
                s.spawn(move || {
                    let c = hs_ref.client(i);
                    let frames = malformed_frames(c, gw_mac, hs_ref.server_v4, hs_ref.server_v6);
                    let tx = RawSender::open(&c.ns, &c.ifname).expect("raw socket");
                    let mut sent = 0;
                    for r in 0..rounds {
                        for (what, f) in &frames {
                            tx.send(f)
                                .unwrap_or_else(|e| panic!("send {what} ({} bytes): {e}", f.len()));
                            sent += 1;
                        }
                        if r % 10 == 9 {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                    sent
                })
            })
            .collect();
        for h in valid {
            h.join().unwrap();
        }
        junk.into_iter().map(|h| h.join().unwrap()).collect()
    });

    assert!(
        agent.is_running(),
        "agent died while receiving malformed frames\nagent log:\n{}",
        agent.log_tail()
    );
    // Valid raw frames with trailing padding after the IP packet: the IP
    // length, not the frame length, is what counts.
    let c0 = hs.client(0);
    let tx = RawSender::open(&c0.ns, &c0.ifname).expect("raw socket");
    let before = servers.udp4.datagrams() + servers.udp6.datagrams();
    for i in 0..20u8 {
        let mut f = eth(gw_mac, c0.mac_bytes(), ETH_P_IPV4);
        f.extend_from_slice(&ipv4_udp(c0.ipv4, hs.server_v4, 41000, 5002, &[i; 100]));
        f.extend_from_slice(&[0u8; 30]);
        tx.send(&f).unwrap();
        let mut f = eth(gw_mac, c0.mac_bytes(), ETH_P_IPV6);
        f.extend_from_slice(&ipv6_udp(c0.ipv6, hs.server_v6, 41000, 5002, &[i; 200]));
        f.extend_from_slice(&[0u8; 17]);
        tx.send(&f).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        servers.udp4.datagrams() + servers.udp6.datagrams() - before,
        40,
        "padded raw UDP packets were not all delivered (harness or dataplane problem)"
    );

    let frames = malformed_frames(c0, gw_mac, hs.server_v4, hs.server_v6);
    let kinds: Vec<&str> = frames.iter().map(|(w, _)| w.as_str()).collect();
    let macs: Vec<String> = hs.clients.iter().map(|c| c.mac.clone()).collect();
    assert_usage_matches(
        &agent,
        &nft,
        &macs,
        &format!(
            "clients 0+1: TCP/UDP v4/v6 {mix:?}; client 0 also 20+20 padded raw UDP v4/v6; \
             malformed frames sent by clients 0 (allowed) and 2 (blocked): {junk_counts:?} \
             ({rounds} rounds of {kinds:?})"
        ),
    );
    let c2 = agent.client_or_zero(&hs.client(2).mac);
    assert!(!c2.allowed, "{c2:?}");
    assert!(
        agent.is_running(),
        "agent died\nagent log:\n{}",
        agent.log_tail()
    );
}
