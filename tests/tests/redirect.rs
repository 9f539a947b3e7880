//! `--portal-redirect`: a client that has not paid and opens any http://
//! address lands on the portal (302 with its MAC, its IP and the URL it asked
//! for), its HTTPS and other TCP outside the garden is reset at once, and
//! nothing of it reaches the upstream. A paying client is not touched.
//!
//! The Chromium test saves its screenshot under `target/portal-screenshots/`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use session_tests::nft::ServerWatch;
use session_tests::traffic::{http_raw, tcp_connect};
use session_tests::{require_root, AgentBuilder, Browser, Hotspot, TcpServer, TcpTransfer};

const PORTAL_PORT: u16 = 8908;

fn location(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("no Location in {head}"))
        .to_string()
}

fn expected_location(portal: &str, mac: &str, ip: IpAddr, url: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!(
        "{portal}?mac={}&ip={}&userurl={}",
        mac.to_ascii_uppercase().replace(':', "-"),
        enc(&ip.to_string()),
        enc(url)
    )
    .to_ascii_lowercase()
}

#[test]
fn an_unpaid_client_is_sent_to_the_portal_and_its_other_tcp_is_reset_at_once() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let captive = SocketAddr::from((hs.gw_lan_addr(false), PORTAL_PORT));
    let agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .arg("--portal-redirect")
        .arg("--poll-ms")
        .arg("100")
        .start();
    let client = hs.client(0).clone();
    // What reaches the upstream's namespace, counted there by nftables.
    let watch = ServerWatch::install(&hs);
    let portal = format!("http://{captive}/portal");
    for v6 in [false, true] {
        let web = TcpServer::start(&hs.server_ns, hs.server_sock(v6, 80));
        let tls = TcpServer::start(&hs.server_ns, hs.server_sock(v6, 443));
        let ip: IpAddr = if v6 {
            client.ipv6.into()
        } else {
            client.ipv4.into()
        };
        // A phone's captive-portal probe.
        let (status, head, body) = http_raw(
            &client.ns,
            web.addr,
            "GET /generate_204 HTTP/1.1\r\nHost: detect.test\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 302, "v6={v6}: {head}\n{body}");
        assert_eq!(
            location(&head),
            expected_location(&portal, &client.mac, ip, "http://detect.test/generate_204"),
            "v6={v6}"
        );
        assert!(head.contains("cache-control: no-cache, no-store"), "{head}");
        // Without a Host, the address it connected to.
        let (status, head, _) = http_raw(&client.ns, web.addr, "GET /a?b=c HTTP/1.0\r\n\r\n");
        assert_eq!(status, 302, "{head}");
        let host = match web.addr.ip() {
            IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        };
        assert_eq!(
            location(&head),
            expected_location(&portal, &client.mac, ip, &format!("http://{host}/a?b=c")),
        );
        // HTTPS elsewhere: refused at once (a reset), not a timeout.
        let t0 = Instant::now();
        let e = tcp_connect(&client.ns, tls.addr, Duration::from_secs(5))
            .expect_err("an unpaid client reached port 443 upstream");
        let took = t0.elapsed();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "v6={v6}: {e}"
        );
        assert!(
            took < Duration::from_secs(1),
            "v6={v6}: refused after {took:?}"
        );
        // Nothing of it reached the upstream.
        assert_eq!(
            web.connections(),
            0,
            "v6={v6}: the upstream web server was reached"
        );
        assert_eq!(
            tls.connections(),
            0,
            "v6={v6}: the upstream 443 was reached"
        );
    }
    // A request that is not HTTP is refused, and counted apart.
    let web = TcpServer::start(&hs.server_ns, hs.server_sock(false, 80));
    let (status, head, body) = http_raw(&client.ns, web.addr, "\x16\x03\x01 hello\r\n\r\n");
    assert_eq!(status, 400);
    // With the API's error body.
    assert!(head.contains("content-type: application/json"), "{head}");
    let e: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(e["code"], "bad_request", "{e}");
    // A path longer than the head the responder reads.
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: detect.test\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let (status, head, body) = http_raw(&client.ns, web.addr, &long);
    assert_eq!(status, 414, "{head}");
    let e: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(e["code"], "uri_too_long", "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    assert_eq!(web.connections(), 0, "the upstream web server was reached");
    drop(web);
    // Counted once the responder has closed (it reads what the client still sends, 1 s at most).
    let wanted = [
        "session_agent_portal_redirects_total{outcome=\"redirected\"} 4",
        "session_agent_portal_redirects_total{outcome=\"bad_request\"} 2",
    ];
    let t0 = Instant::now();
    let m = loop {
        let m = agent.api().get("/metrics").ok("metrics");
        let m = m.as_str().unwrap().to_string();
        let all = wanted.iter().all(|w| m.lines().any(|l| l == *w));
        if all || t0.elapsed() > Duration::from_secs(3) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for line in wanted {
        assert!(m.lines().any(|l| l == line), "no {line:?} in\n{m}");
    }
    assert_eq!(
        (watch.from_client(0), watch.other()),
        ((0, 0), (0, 0)),
        "a packet of the unpaid client reached the upstream: {:?}",
        watch.all()
    );
    // All of it was walled-garden traffic: no usage.
    let st = agent.client_or_zero(&client.mac);
    assert_eq!((st.up_bytes, st.down_bytes), (0, 0), "{st:?}");
    assert!(st.garden_bytes > 0, "{st:?}");

    // Paid: through to the real servers, untouched.
    agent.allow(&client.mac);
    for v6 in [false, true] {
        let web = TcpServer::start(&hs.server_ns, hs.server_sock(v6, 80));
        let tls = TcpServer::start(&hs.server_ns, hs.server_sock(v6, 443));
        for srv in [&web, &tls] {
            TcpTransfer::run(&client.ns, srv.addr, 10_000, 10_000)
                .unwrap_or_else(|e| panic!("paying client to {}: {e}", srv.addr));
            assert_eq!(srv.connections(), 1, "{}", srv.addr);
        }
    }
    let st = agent.client_or_zero(&client.mac);
    assert!(st.up_bytes >= 40_000 && st.down_bytes >= 40_000, "{st:?}");
    assert!(watch.from_client(0).1 >= 40_000, "{:?}", watch.all());
}

#[test]
fn without_the_redirect_an_unpaid_clients_tcp_is_dropped_as_before() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let _agent = AgentBuilder::new(&hs).start();
    let client = hs.client(0).clone();
    let web = TcpServer::start(&hs.server_ns, hs.server_sock(false, 80));
    let e = tcp_connect(&client.ns, web.addr, Duration::from_millis(800))
        .expect_err("an unpaid client reached port 80 upstream");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert_eq!(web.connections(), 0);
}

#[test]
fn chromium_opening_a_captive_probe_lands_on_the_portal_with_its_mac_ip_and_url() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let captive = SocketAddr::from((hs.gw_lan_addr(false), PORTAL_PORT));
    let _agent = AgentBuilder::new(&hs)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .arg("--portal-redirect")
        .start();
    let client = hs.client(0).clone();
    let web = TcpServer::start(&hs.server_ns, hs.server_sock(false, 80));
    let browser = Browser::start_with_hosts(&client.ns, &[("detect.test", web.addr.ip())]);
    browser.goto("http://detect.test/generate_204");
    let url = browser.current_url();
    assert_eq!(
        url.to_ascii_lowercase(),
        expected_location(
            &format!("http://{captive}/portal"),
            &client.mac,
            client.ipv4.into(),
            "http://detect.test/generate_204"
        ),
    );
    // The portal page itself, ready for a code.
    browser.find("input");
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/portal-screenshots"
    ));
    std::fs::create_dir_all(&dir).unwrap();
    browser.screenshot(&dir.join("redirect-landing.png"));
    assert_eq!(web.connections(), 0, "the upstream web server was reached");
}
