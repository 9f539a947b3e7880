//! The walled garden by domain name, with real DNS: dnsmasq in the upstream
//! namespace is authoritative for the test zones (A, AAAA, a CNAME chain, a
//! wildcard, 1,000 names, short TTLs), dnsmasq on the gateway forwards to it,
//! and clients ask the gateway's forwarder (UDP and TCP) or, where configured
//! with --garden-dns, the upstream server directly.
//!
//! Before paying, a client reaches a garden name's addresses (IPv4 and IPv6,
//! through a CNAME chain, on the rule's port only) from its first connection
//! after the answer, and no other name's; an idle address goes after its TTL
//! while an open connection to another keeps working; names added and removed
//! through the API take effect at once; the garden's traffic is counted as
//! garden, never as usage.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use session_tests::dns::{query_tcp, query_udp, resolve, Dnsmasq};
use session_tests::netns::ip_n;
use session_tests::traffic::tcp_connect;
use session_tests::{in_netns, require_root, AgentBuilder, Hotspot, TcpServer};
use simple_dns::TYPE;

/// Addresses of the test zones' hosts, local in the upstream namespace.
const HOSTS_V4: &str = "10.203.0.0/16";
const HOSTS_V6: &str = "fd00:203::/64";

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Makes the upstream namespace answer on every address of the test zones
/// and the gateway route them there.
fn host_the_zones(hs: &Hotspot) {
    ip_n(
        &hs.server_ns,
        &["route", "add", "local", HOSTS_V4, "dev", "lo"],
    );
    ip_n(
        &hs.server_ns,
        &["-6", "route", "add", "local", HOSTS_V6, "dev", "lo"],
    );
    ip_n(
        &hs.gw_ns,
        &["route", "add", HOSTS_V4, "via", &hs.server_v4.to_string()],
    );
    ip_n(
        &hs.gw_ns,
        &[
            "-6",
            "route",
            "add",
            HOSTS_V6,
            "via",
            &hs.server_v6.to_string(),
        ],
    );
}

/// The authoritative upstream: a CNAME chain pay.test -> edge.cdn.test ->
/// e1.cdn.test, other.test, tcp.test, a wildcard *.wild.test, and `many`
/// names n<i>.many.test on their own addresses; every TTL `ttl` seconds.
fn upstream(hs: &Hotspot, ttl: u32, many: usize) -> Dnsmasq {
    let mut args = vec![
        format!("--local-ttl={ttl}"),
        format!("--host-record=e1.cdn.test,10.203.0.11,fd00:203::11,{ttl}"),
        format!("--cname=edge.cdn.test,e1.cdn.test,{ttl}"),
        format!("--cname=pay.test,edge.cdn.test,{ttl}"),
        format!("--host-record=other.test,10.203.0.20,fd00:203::20,{ttl}"),
        format!("--host-record=tcp.test,10.203.0.40,{ttl}"),
        "--address=/wild.test/10.203.0.30".into(),
    ];
    if many > 0 {
        let path = std::env::temp_dir().join(format!("sa-many-{}.hosts", hs.id));
        let mut text = String::new();
        for i in 0..many {
            text.push_str(&format!(
                "10.203.{}.{} n{i}.many.test\n",
                100 + i / 250,
                1 + i % 250
            ));
        }
        std::fs::write(&path, text).unwrap();
        args.push(format!("--addn-hosts={}", path.display()));
    }
    Dnsmasq::start(
        &hs.server_ns,
        &[hs.server_v4.into(), hs.server_v6.into()],
        &args,
    )
}

/// The gateway's forwarder on its LAN addresses, without a cache (every
/// answer comes from upstream with its TTL).
fn forwarder(hs: &Hotspot) -> Dnsmasq {
    Dnsmasq::start(
        &hs.gw_ns,
        &[hs.gw_lan_v4.into(), hs.gw_lan_v6.into()],
        &[
            format!("--server={}", hs.server_v4),
            "--cache-size=0".into(),
        ],
    )
}

fn connects(ns: &str, addr: IpAddr, port: u16) -> bool {
    tcp_connect(ns, SocketAddr::new(addr, port), Duration::from_millis(700)).is_ok()
}

fn addrs(ns: &str, server: SocketAddr, name: &str, qtype: TYPE) -> Vec<IpAddr> {
    let a = resolve(ns, server, name, qtype)
        .unwrap_or_else(|e| panic!("resolving {name} at {server}: {e}"));
    assert!(
        !a.addrs.is_empty(),
        "{name} at {server}: no address ({:?})",
        a.rcode
    );
    a.addrs
}

fn learnt(agent: &session_tests::Agent) -> Vec<Value> {
    let v = agent.api().get("/v1/garden/domains").ok("garden domains");
    v["learnt"].as_array().cloned().unwrap_or_default()
}

fn learnt_addr(agent: &session_tests::Agent, a: IpAddr) -> bool {
    learnt(agent).iter().any(|l| l["address"] == a.to_string())
}

#[test]
fn a_garden_name_is_reachable_before_payment_and_others_are_not() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    host_the_zones(&hs);
    let _up = upstream(&hs, 1, 0);
    let _fwd = forwarder(&hs);
    let agent = AgentBuilder::new(&hs)
        .arg("--walled-garden-domain")
        .arg("pay.test")
        .arg("--walled-garden-domain")
        .arg("*.wild.test:80")
        .arg("--walled-garden-domain")
        .arg("tcp.test")
        // Clients may also ask the upstream directly, over IPv6 only.
        .arg("--garden-dns")
        .arg(hs.server_v6.to_string())
        .arg("--garden-ttl-min-secs")
        .arg("2")
        .arg("--garden-ttl-max-secs")
        .arg("3")
        .arg("--poll-ms")
        .arg("100")
        // The garden's own rate limit is not what is tested here.
        .arg("--garden-rate-kbits")
        .arg("0")
        .start();
    let c = hs.client(0).clone();
    let web = TcpServer::start(&hs.server_ns, "[::]:80".parse().unwrap());
    let _tls = TcpServer::start(&hs.server_ns, "[::]:443".parse().unwrap());
    let gw_dns = hs.gw_lan_sock(false, 53);
    let up_dns6 = hs.server_sock(true, 53);

    // Nothing is reachable before its name was looked up.
    let e1 = v4("10.203.0.11");
    assert!(
        !connects(&c.ns, e1, 80),
        "a garden address before any lookup"
    );

    // IPv4 through the gateway's forwarder, via the CNAME chain.
    assert_eq!(addrs(&c.ns, gw_dns, "pay.test", TYPE::A), vec![e1]);
    assert!(
        connects(&c.ns, e1, 80),
        "pay.test over IPv4 after the answer"
    );
    assert!(
        connects(&c.ns, e1, 443),
        "a name without a port: every port"
    );
    // IPv6, asking the upstream directly (a --garden-dns server).
    let e1v6: IpAddr = "fd00:203::11".parse().unwrap();
    assert_eq!(addrs(&c.ns, up_dns6, "pay.test", TYPE::AAAA), vec![e1v6]);
    assert!(
        connects(&c.ns, e1v6, 80),
        "pay.test over IPv6 after the answer"
    );

    // Another name resolves, but its address stays closed.
    let other = addrs(&c.ns, gw_dns, "other.test", TYPE::A)[0];
    assert!(!connects(&c.ns, other, 80), "other.test is no garden name");
    // A server that is not a garden DNS server gets no query through.
    let direct4 = resolve(&c.ns, hs.server_sock(false, 53), "pay.test", TYPE::A);
    assert!(
        direct4.is_err(),
        "DNS to a server that is not configured: {direct4:?}"
    );

    // A wildcard on one port.
    let w = addrs(&c.ns, gw_dns, "a.b.wild.test", TYPE::A)[0];
    assert!(connects(&c.ns, w, 80));
    assert!(!connects(&c.ns, w, 443), "*.wild.test:80 is port 80 only");

    // An answer over TCP.
    let tcp_answer = in_netns(&c.ns, || {
        query_tcp(gw_dns, "tcp.test", TYPE::A, Duration::from_secs(2))
    })
    .expect("a query over TCP");
    assert_eq!(tcp_answer.addrs, vec![v4("10.203.0.40")]);
    assert!(
        connects(&c.ns, v4("10.203.0.40"), 80),
        "learnt from an answer over TCP"
    );

    // After the TTL: an open, busy connection to pay.test keeps working while
    // the idle wildcard address goes.
    // (Asked again: the first answer's address has expired meanwhile.)
    addrs(&c.ns, gw_dns, "pay.test", TYPE::A);
    let mut s = in_netns(&c.ns, || {
        TcpStream::connect_timeout(&SocketAddr::new(e1, 80), Duration::from_secs(2))
    })
    .expect("a long connection to pay.test");
    let (drip, down) = (40u64 * 1000, 200_000u64);
    let mut hdr = drip.to_be_bytes().to_vec();
    hdr.extend_from_slice(&down.to_be_bytes());
    s.write_all(&hdr).unwrap();
    let chunk = [0x33u8; 1000];
    for _ in 0..40 {
        s.write_all(&chunk).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    // 6 s: past the 3 s ceiling and the 2 s of idleness.
    assert!(
        !learnt_addr(&agent, w),
        "the idle wildcard address is still in the garden"
    );
    assert!(
        !connects(&c.ns, w, 80),
        "an expired address is closed again"
    );
    assert!(learnt_addr(&agent, e1), "the address in use was removed");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 65536];
    while got < down {
        let n = s.read(&mut buf).expect("the long connection's download");
        assert!(n > 0, "the long connection ended after {got} bytes");
        got += n as u64;
    }
    drop(s);

    // Run-time changes through the API.
    let api = agent.api();
    let r = api.post("/v1/garden/domains", &json!({"domain": "other.test"}));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        api.post("/v1/garden/domains", &json!({"domain": "OTHER.test."}))
            .status,
        200,
        "the same name again"
    );
    assert_eq!(
        api.post("/v1/garden/domains", &json!({"domain": "bad name"}))
            .status,
        400
    );
    addrs(&c.ns, gw_dns, "other.test", TYPE::A);
    assert!(connects(&c.ns, other, 80), "a name added at run time");
    let r = api.request("DELETE", "/v1/garden/domains/other.test", None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        !connects(&c.ns, other, 80),
        "a removed name's address is closed at once"
    );
    assert_eq!(
        api.request("DELETE", "/v1/garden/domains/other.test", None)
            .status,
        404
    );
    // The CLI lists what the API has.
    let sock = api.socket().display().to_string();
    let out = agent.cli(&["garden", "list", "--api-socket", &sock]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("pay.test")
            && text.contains("*.wild.test:80")
            && !text.contains("other.test"),
        "{text}"
    );

    // All of it was garden traffic, none usage.
    let st = agent.client_or_zero(&c.mac);
    assert_eq!(
        (st.up_bytes, st.down_bytes),
        (0, 0),
        "usage before payment: {st:?}"
    );
    assert!(
        st.garden_bytes > down + drip,
        "garden bytes {} for a {} byte exchange",
        st.garden_bytes,
        down + drip
    );
    assert!(web.received() >= drip);
    let metrics = agent.metrics();
    assert!(
        metrics.contains("session_agent_garden_dns_answers_total{outcome=\"learnt\"}"),
        "{metrics}"
    );
}

#[test]
fn the_first_connection_after_each_of_1000_answers_gets_through() {
    require_root();
    const N: usize = 1000;
    let hs = Hotspot::builder().clients(1).build();
    host_the_zones(&hs);
    let _up = upstream(&hs, 30, N);
    let _fwd = forwarder(&hs);
    let agent = AgentBuilder::new(&hs)
        .arg("--walled-garden-domain")
        .arg("*.many.test:80")
        // Not the garden's rate limit: 2,000 connections and lookups in seconds.
        .arg("--garden-rate-kbits")
        .arg("0")
        .start();
    let c = hs.client(0).clone();
    let _web = TcpServer::start(&hs.server_ns, "[::]:80".parse().unwrap());
    let gw_dns = hs.gw_lan_sock(false, 53);
    let started = Instant::now();
    let (ok, failed) = in_netns(&c.ns, || {
        let (mut ok, mut failed) = (0usize, Vec::new());
        for i in 0..N {
            let name = format!("n{i}.many.test");
            let a = query_udp(gw_dns, &name, TYPE::A, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let want = IpAddr::V4(Ipv4Addr::new(
                10,
                203,
                100 + (i / 250) as u8,
                1 + (i % 250) as u8,
            ));
            assert_eq!(a.addrs, vec![want], "{name}");
            // At once: the SYN follows the answer by microseconds.
            match TcpStream::connect_timeout(&SocketAddr::new(want, 80), Duration::from_millis(500))
            {
                Ok(_) => ok += 1,
                Err(e) => {
                    failed.push(format!("{name}: {e}"));
                    if failed.len() >= 10 {
                        break;
                    }
                }
            }
        }
        (ok, failed)
    });
    eprintln!(
        "first connection right after the answer: {ok}/{N} succeeded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "first connections that failed: {failed:?}\n{}",
        agent.log_tail()
    );
    assert_eq!(ok, N);
    assert_eq!(learnt(&agent).len(), N, "one learnt address per name");
}

#[test]
fn past_the_limit_addresses_are_not_learnt_and_that_is_logged_and_counted() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    host_the_zones(&hs);
    let _up = upstream(&hs, 30, 8);
    let _fwd = forwarder(&hs);
    let agent = AgentBuilder::new(&hs)
        .arg("--walled-garden-domain")
        .arg("*.many.test")
        .arg("--garden-domain-limit")
        .arg("5")
        .start();
    let c = hs.client(0).clone();
    let _web = TcpServer::start(&hs.server_ns, "[::]:80".parse().unwrap());
    let gw_dns = hs.gw_lan_sock(false, 53);
    let mut reached = Vec::new();
    for i in 0..8 {
        // Every answer still reaches the client.
        let a = addrs(&c.ns, gw_dns, &format!("n{i}.many.test"), TYPE::A)[0];
        reached.push(connects(&c.ns, a, 80));
    }
    assert_eq!(reached, [true, true, true, true, true, false, false, false]);
    assert_eq!(learnt(&agent).len(), 5);
    let metrics = agent.metrics();
    assert!(
        metrics.contains("session_agent_garden_learnt_refused_total 3"),
        "{metrics}"
    );
    let log = agent.log();
    assert_eq!(
        log.matches("the garden by name is full").count(),
        1,
        "logged once:\n{log}"
    );
}
