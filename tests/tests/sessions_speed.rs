//! Speed limits from sessions: TCP goodput (iperf3, slow start omitted) within
//! ±10% of the session's down_mbits/up_mbits, in each direction, and of the
//! global per-client speed for sessions with use_global_speed; with
//! `--shaper htb` also without a single TCP retransmit.
//!
//! The bound is a sanity net; the exact figures are printed (run with
//! `--nocapture`) and recorded in BENCHMARKS.md, "Speed limits".

use session_tests::sessions::*;
use std::net::SocketAddr;

const SECS: u32 = 4;
const OMIT: u32 = 1;

struct Row {
    limit: u64,
    dir: &'static str,
    r: IperfResult,
}

fn measure(s: &Setup, server: SocketAddr, limit_down: u64, limit_up: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    for (dir, reverse, limit) in [("down", true, limit_down), ("up", false, limit_up)] {
        let r = iperf(&s.client.ns, server, SECS, OMIT, reverse);
        rows.push(Row { limit, dir, r });
    }
    rows
}

fn check(s: &Setup, what: &str, rows: &[Row]) {
    let mut table = String::new();
    let mut bad = Vec::new();
    for row in rows {
        let ratio = row.r.recv_mbits / row.limit as f64;
        table += &format!(
            "SPEED {what} limit {:>3} Mbit/s {:<4} goodput {:>7.3} Mbit/s ({:>+6.2}%) sender {:>7.3} Mbit/s retransmits {:>5} over {:.1} s  [{}]\n",
            row.limit,
            row.dir,
            row.r.recv_mbits,
            (ratio - 1.0) * 100.0,
            row.r.sent_mbits,
            row.r.retransmits,
            row.r.seconds,
            row.r.command
        );
        if !(0.9..=1.1).contains(&ratio) {
            bad.push(format!("{} {}", row.limit, row.dir));
        }
    }
    eprint!("{table}");
    assert!(
        bad.is_empty(),
        "TCP goodput outside ±10% of the limit for {bad:?}\n{table}{}",
        s.context()
    );
}

fn session_limit(limit: u64) {
    session_limit_with(limit, &[]);
}

fn session_limit_with(limit: u64, args: &[&str]) -> Vec<Row> {
    let s = Setup::new(args);
    let iperf_srv = IperfServer::start(&s.hs.server_ns, s.hs.server_sock(false, 5201));
    let id = new_session(&s.api, s.device, TIME, 600, 0.0, limit as i32, limit as i32);
    let v = connect(&s.api, s.device);
    assert_eq!(sid(&v), id);
    assert_eq!(field(&v, "down_mbits"), limit);
    let rows = measure(&s, iperf_srv.addr, limit, limit);
    check(&s, "session", &rows);
    rows
}

#[test]
fn session_speed_limit_5_mbits() {
    session_limit(5);
}

#[test]
fn session_speed_limit_20_mbits() {
    session_limit(20);
}

#[test]
fn session_speed_limit_50_mbits() {
    session_limit(50);
}

/// `--shaper htb`: the session's speed as HTB classes, which queue instead of
/// dropping: the sender retransmits nothing.
#[test]
fn session_speed_limit_shaped_by_htb() {
    let rows = session_limit_with(10, &["--shaper", "htb"]);
    for r in &rows {
        assert_eq!(
            r.r.retransmits, 0,
            "{} Mbit/s {}: retransmits through HTB: {:?}",
            r.limit, r.dir, r.r
        );
    }
}

/// use_global_speed: the interface's --global-down-mbits/--global-up-mbits
/// apply, not the session's own figures.
#[test]
fn global_speed_limit() {
    let s = Setup::new(&["--global-down-mbits", "20", "--global-up-mbits", "10"]);
    let iperf_srv = IperfServer::start(&s.hs.server_ns, s.hs.server_sock(false, 5201));
    let v = s
        .api
        .create_session(s.device, TIME, 600, 0.0, None, 5, 5, true);
    assert_eq!(v["use_global_speed"], true, "{v}");
    connect(&s.api, s.device);
    let rows = measure(&s, iperf_srv.addr, 20, 10);
    check(&s, "global", &rows);
}

/// The figures of BENCHMARKS.md, "Speed limits": one limit at a time (no
/// other test running), at the default burst and at 100 ms, as a markdown
/// table. Run with
/// `cargo test -p session-tests --test sessions_speed -- --ignored --nocapture --test-threads=1`.
#[test]
#[ignore = "measurement for BENCHMARKS.md; run alone"]
fn speed_table() {
    let mut out = String::from(
        "| --burst-ms | limit Mbit/s | direction | goodput Mbit/s | vs limit | retransmits |\n|---|---:|---|---:|---:|---:|\n",
    );
    for burst in [None, Some("100")] {
        for limit in [5u64, 20, 50] {
            let args: Vec<&str> = match burst {
                Some(b) => vec!["--burst-ms", b],
                None => vec![],
            };
            let s = Setup::new(&args);
            let srv = IperfServer::start(&s.hs.server_ns, s.hs.server_sock(false, 5201));
            new_session(&s.api, s.device, TIME, 600, 0.0, limit as i32, limit as i32);
            connect(&s.api, s.device);
            for row in measure(&s, srv.addr, limit, limit) {
                out += &format!(
                    "| {} | {} | {} | {:.2} | {:+.1}% | {} |\n",
                    burst.unwrap_or("default"),
                    row.limit,
                    row.dir,
                    row.r.recv_mbits,
                    (row.r.recv_mbits / row.limit as f64 - 1.0) * 100.0,
                    row.r.retransmits
                );
            }
        }
    }
    println!("{out}");
}
