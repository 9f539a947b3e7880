//! The dataplane outlives the daemon: after kill -9 counting and blocking go
//! on from the pins, and a restarted agent continues the same counters.

use session_tests::check::assert_usage_matches;
use session_tests::{
    require_root, AgentBuilder, Hotspot, NftRef, ServerSet, TcpTransfer, UdpTransfer,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Continuous TCP+UDP, v4+v6 traffic from one client until stopped.
struct Background {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(ns: &str, servers: &ServerSet) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, rd, er) = (stop.clone(), rounds.clone(), errors.clone());
        let ns = ns.to_string();
        let addrs = [
            (servers.tcp4.addr, servers.udp4.addr),
            (servers.tcp6.addr, servers.udp6.addr),
        ];
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                for (tcp, udp) in addrs {
                    match TcpTransfer::run(&ns, tcp, 40_000, 60_000) {
                        Ok(t) if t.received == 60_000 => {}
                        other => er.lock().unwrap().push(format!("TCP {tcp}: {other:?}")),
                    }
                    if let Err(e) = UdpTransfer::run(&ns, udp, 8, 600, 4, 800) {
                        er.lock().unwrap().push(format!("UDP {udp}: {e}"));
                    }
                }
                rd.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Background {
            stop,
            rounds,
            errors,
            thread: Some(thread),
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    fn wait_rounds(&self, n: u64) {
        let target = self.rounds() + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.rounds() < target {
            assert!(
                std::time::Instant::now() < deadline,
                "background traffic stalled; errors: {:?}",
                self.errors.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("background traffic thread panicked");
        }
        (self.rounds(), self.errors.lock().unwrap().clone())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tcp_blocked(ns: &str, servers: &ServerSet) -> bool {
    TcpTransfer::run_timeout(ns, servers.tcp4.addr, 100, 100, Duration::from_millis(700)).is_err()
}

#[test]
fn kill9_keeps_dataplane_and_restart_continues_counters() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let nft = NftRef::install(&hs);
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let mut agent = AgentBuilder::new(&hs).start();
    let (allowed, blocked) = (hs.client(0), hs.client(1));
    let macs = vec![allowed.mac.clone(), blocked.mac.clone()];
    agent.allow(&allowed.mac);

    let bg = Background::start(&allowed.ns, &servers);
    bg.wait_rounds(3);
    assert!(
        tcp_blocked(&blocked.ns, &servers),
        "blocked client reached the server"
    );

    agent.kill9();
    assert!(!agent.is_running());
    // The pinned maps still answer, and counting goes on without the daemon.
    let a1 = agent.client_or_zero(&allowed.mac);
    bg.wait_rounds(3);
    let a2 = agent.client_or_zero(&allowed.mac);
    assert!(
        a2.up_bytes > a1.up_bytes && a2.down_bytes > a1.down_bytes,
        "no counting after kill -9: before {a1:?} after {a2:?}\nagent log:\n{}",
        agent.log_tail()
    );
    let b1 = agent.client_or_zero(&blocked.mac);
    assert!(
        tcp_blocked(&blocked.ns, &servers),
        "blocked client reached the server after kill -9"
    );
    let b2 = agent.client_or_zero(&blocked.mac);
    assert!(
        b2.blocked_packets > b1.blocked_packets,
        "drops not counted after kill -9: before {b1:?} after {b2:?}"
    );
    assert!(!b2.allowed && a2.allowed, "allow state lost: {a2:?} {b2:?}");

    // Restart on the same pins while the traffic goes on.
    let agent2 = agent.restart();
    let a3 = agent2.client_or_zero(&allowed.mac);
    assert!(
        a3.up_bytes >= a2.up_bytes && a3.up_packets >= a2.up_packets,
        "counters went back after restart: before {a2:?} after {a3:?}\nagent log:\n{}",
        agent2.log_tail()
    );
    bg.wait_rounds(3);
    assert!(
        tcp_blocked(&blocked.ns, &servers),
        "blocked client reached the server after restart"
    );
    let (rounds, errors) = bg.finish();
    assert!(
        errors.is_empty(),
        "allowed client's traffic failed across kill -9/restart: {errors:?}"
    );
    let a4 = agent2.client_or_zero(&allowed.mac);
    assert!(a4.allowed && a4.up_bytes > a3.up_bytes, "{a3:?} -> {a4:?}");
    assert_usage_matches(
        &agent2,
        &nft,
        &macs,
        &format!(
            "{rounds} rounds of TCP 40k/60k + UDP 8x600/4x800 on v4 and v6 from the allowed client \
             across kill -9 and restart; blocked client only attempted connections"
        ),
    );
    drop(agent);
}

#[test]
fn sigterm_exits_cleanly_and_leaves_enforcement_in_place() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let nft = NftRef::install(&hs);
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let mut agent = AgentBuilder::new(&hs).start();
    let (allowed, blocked) = (hs.client(0), hs.client(1));
    let macs = vec![allowed.mac.clone(), blocked.mac.clone()];
    agent.allow(&allowed.mac);
    TcpTransfer::run(&allowed.ns, servers.tcp6.addr, 100_000, 100_000).expect("tcp before");

    let st = agent.terminate();
    assert!(
        st.success(),
        "agent exit status after SIGTERM: {st}\nagent log:\n{}",
        agent.log_tail()
    );
    TcpTransfer::run(&allowed.ns, servers.tcp4.addr, 120_000, 80_000)
        .expect("allowed client after SIGTERM");
    assert!(
        tcp_blocked(&blocked.ns, &servers),
        "blocked client reached the server after SIGTERM"
    );
    let agent2 = agent.restart();
    TcpTransfer::run(&allowed.ns, servers.tcp4.addr, 50_000, 50_000).expect("tcp after");
    assert_usage_matches(
        &agent2,
        &nft,
        &macs,
        "TCP v6 100k/100k, SIGTERM, TCP v4 120k/80k, restart, TCP v4 50k/50k",
    );
}
