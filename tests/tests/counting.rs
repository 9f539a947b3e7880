//! Exact per-MAC byte and packet counts, checked against the nftables
//! reference on the same traffic.

use session_tests::check::{assert_usage_matches, settle};
use session_tests::{mixed_traffic, require_root, AgentBuilder, Hotspot, Mix, NftRef, ServerSet};

/// Traffic volumes differ per client so that swapped or merged keys show.
fn mix_for(i: usize) -> Mix {
    let k = i as u64 + 1;
    Mix {
        tcp_up: 150_000 * k + 1_111,
        tcp_down: 400_000 * k + 7_777,
        udp_up: 40 + 15 * i as u32,
        udp_up_size: 900 + 40 * i,
        udp_down: 30 + 10 * i as u32,
        udp_down_size: 1200 - 50 * i,
    }
}

#[test]
fn exact_counts_tcp_udp_ipv4_ipv6_match_reference() {
    require_root();
    // Client 3 stays idle: it must not pick up anyone else's traffic.
    let hs = Hotspot::builder().clients(4).build();
    let nft = NftRef::install(&hs);
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let agent = AgentBuilder::new(&hs).start();
    for c in &hs.clients {
        agent.allow(&c.mac);
    }

    let active = &hs.clients[..3];
    // All active clients at once, so the dataplane sees interleaved keys.
    let results: Vec<_> = std::thread::scope(|s| {
        let sv = &servers;
        let handles: Vec<_> = active
            .iter()
            .map(|c| {
                s.spawn(move || {
                    mixed_traffic(&c.ns, sv, mix_for(c.index), &format!("client {}", c.mac))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let what = format!(
        "clients 0..3 each: TCP v4+v6 up/down, UDP v4+v6 up/down, volumes {:?}; client 3 idle; \
         results {results:?}",
        (0..3).map(mix_for).collect::<Vec<_>>()
    );
    let macs: Vec<String> = hs.clients.iter().map(|c| c.mac.clone()).collect();
    assert_usage_matches(&agent, &nft, &macs, &what);

    // Equality alone could hold with both sides at zero: the reference must
    // have seen at least the payload of what was sent.
    let (a, r) = settle(&agent, &nft);
    for c in active {
        let m = mix_for(c.index);
        let rc = r[&c.mac];
        let min_up = 2 * (m.tcp_up + 16) + 2 * m.udp_up as u64 * (m.udp_up_size as u64 + 28);
        let min_down = 2 * m.tcp_down + 2 * (m.udp_down as u64) * (m.udp_down_size as u64 + 28);
        assert!(
            rc.up_bytes > min_up && rc.down_bytes > min_down,
            "reference for {} too small: {rc:?} (expected > {min_up} up, > {min_down} down)",
            c.mac
        );
        let e = &a[&c.mac];
        assert!(e.allowed, "{} should be allowed: {e:?}", c.mac);
        assert_eq!(e.blocked_packets, 0, "allowed client had drops: {e:?}");
        assert_eq!(
            (e.garden_packets, e.garden_bytes),
            (0, 0),
            "no walled-garden traffic was sent: {e:?}"
        );
    }
    assert_eq!(r[&hs.clients[3].mac], Default::default());
}

#[test]
fn counts_accumulate_over_rounds_and_directions_stay_apart() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let nft = NftRef::install(&hs);
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 6001, 6002);
    let agent = AgentBuilder::new(&hs).start();
    let macs: Vec<String> = hs.clients.iter().map(|c| c.mac.clone()).collect();
    for m in &macs {
        agent.allow(m);
    }
    // Round 1: upload only from client 0, download only to client 1.
    let up_only = Mix {
        tcp_up: 500_000,
        tcp_down: 0,
        udp_up: 100,
        udp_up_size: 1000,
        udp_down: 0,
        udp_down_size: 0,
    };
    let down_only = Mix {
        tcp_up: 0,
        tcp_down: 700_000,
        udp_up: 0,
        udp_up_size: 0,
        udp_down: 100,
        udp_down_size: 1100,
    };
    mixed_traffic(&hs.clients[0].ns, &servers, up_only, "client 0 round 1");
    mixed_traffic(&hs.clients[1].ns, &servers, down_only, "client 1 round 1");
    assert_usage_matches(
        &agent,
        &nft,
        &macs,
        "round 1: c0 upload-heavy, c1 download-heavy",
    );
    let (a, _) = settle(&agent, &nft);
    let (c0, c1) = (&a[&macs[0]], &a[&macs[1]]);
    assert!(
        c0.up_bytes > 500_000 && c0.down_bytes < 100_000,
        "c0: {c0:?}"
    );
    assert!(
        c1.down_bytes > 700_000 && c1.up_bytes < 100_000,
        "c1: {c1:?}"
    );
    // Round 2, swapped: counters keep accumulating and still match.
    mixed_traffic(&hs.clients[0].ns, &servers, down_only, "client 0 round 2");
    mixed_traffic(&hs.clients[1].ns, &servers, up_only, "client 1 round 2");
    assert_usage_matches(&agent, &nft, &macs, "rounds 1+2, roles swapped in round 2");
}

#[test]
fn many_clients_small_flows_match_reference() {
    require_root();
    let n = 12;
    let hs = Hotspot::builder().clients(n).build();
    let nft = NftRef::install(&hs);
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 7001, 7002);
    let agent = AgentBuilder::new(&hs).start();
    let macs: Vec<String> = hs.clients.iter().map(|c| c.mac.clone()).collect();
    // Every other client is allowed; the rest stay blocked and try anyway.
    for c in hs.clients.iter().step_by(2) {
        agent.allow(&c.mac);
    }
    std::thread::scope(|s| {
        for c in &hs.clients {
            let sv = &servers;
            s.spawn(move || {
                let i = c.index;
                let mix = Mix {
                    tcp_up: 10_000 + 997 * i as u64,
                    tcp_down: 20_000 + 1_003 * i as u64,
                    udp_up: 5 + i as u32,
                    udp_up_size: 300 + 10 * i,
                    udp_down: 3 + i as u32,
                    udp_down_size: 500 + 20 * i,
                };
                if i % 2 == 0 {
                    mixed_traffic(&c.ns, sv, mix, &format!("client {i}"));
                } else {
                    // Blocked: attempts only; nothing may be counted as usage.
                    let r = session_tests::TcpTransfer::run_timeout(
                        &c.ns,
                        sv.tcp4.addr,
                        1000,
                        1000,
                        std::time::Duration::from_millis(500),
                    );
                    assert!(r.is_err(), "blocked client {i} got through: {r:?}");
                    session_tests::UdpTransfer::run(&c.ns, sv.udp6.addr, 5, 200, 0, 0).unwrap();
                }
            });
        }
    });
    assert_usage_matches(
        &agent,
        &nft,
        &macs,
        &format!("{n} clients, even ones allowed with small per-client TCP/UDP v4/v6 mixes, odd ones blocked"),
    );
    let (a, r) = settle(&agent, &nft);
    for c in &hs.clients {
        if c.index % 2 == 0 {
            assert!(r[&c.mac].up_packets > 0 && r[&c.mac].down_packets > 0);
        } else {
            let e = a.get(&c.mac);
            assert!(
                e.is_some_and(|e| !e.allowed && e.blocked_packets > 0),
                "blocked client {} not listed with drops: {e:?}",
                c.mac
            );
        }
    }
}

#[test]
fn xdp_ingress_counts_match_reference() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let nft = NftRef::install(&hs);
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let agent = AgentBuilder::new(&hs).arg("--ingress").arg("xdp").start();
    let link = session_tests::netns::ip_n(&hs.gw_ns, &["-j", "link", "show", "dev", &hs.lan_if]);
    let link: serde_json::Value = serde_json::from_slice(&link.stdout).unwrap();
    assert!(
        link[0].get("xdp").is_some(),
        "--ingress xdp but no XDP program on {}: {link}",
        hs.lan_if
    );
    let macs: Vec<String> = hs.clients.iter().map(|c| c.mac.clone()).collect();
    agent.allow(&macs[0]);
    mixed_traffic(
        &hs.clients[0].ns,
        &servers,
        mix_for(0),
        "allowed client, XDP ingress",
    );
    let r = session_tests::TcpTransfer::run_timeout(
        &hs.clients[1].ns,
        servers.tcp6.addr,
        1000,
        1000,
        std::time::Duration::from_millis(500),
    );
    assert!(
        r.is_err(),
        "blocked client got through with XDP ingress: {r:?}"
    );
    assert_usage_matches(
        &agent,
        &nft,
        &macs,
        &format!("XDP ingress: client 0 {:?}, client 1 blocked", mix_for(0)),
    );
}
