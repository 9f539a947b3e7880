//! Fleet benchmark: code logins through the agent against FreeRADIUS with
//! PostgreSQL (the README's fleet configuration), at 1, 10 and 100 concurrent
//! logins, each against radclient sending the same Access-Requests straight to
//! the server in the same run; then accounting at 10,000 open sessions with a
//! 60 s interim interval. Ignored by default; run with `cargo xtask
//! bench-fleet` (release agent).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::json;
use session_tests::load::{concurrent, Load};
use session_tests::postgres::Postgres;
use session_tests::radius::{fleet_gateway, link_to_aaa, FreeRadius, RadiusConfig};
use session_tests::{ns_command, require_root, Hotspot, Netns};

const SECRET: &str = "b3nch-s3cret";

/// `codes` logged in through the agent's API by `clients` threads, each a new
/// device (`POST /v1/devices`, then `POST /v1/devices/{id}/login` with the
/// code as username and password).
fn through_agent(
    api: &session_tests::api::ApiClient,
    codes: &[String],
    clients: usize,
    first_mac: usize,
) -> Load {
    let per = codes.len() / clients;
    let (api, codes) = (api.clone(), codes.to_vec());
    concurrent(clients, per, move |c, i| {
        let n = first_mac + c * per + i;
        let mac = format!(
            "06:00:{:02x}:{:02x}:{:02x}:02",
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            n & 0xff
        );
        let code = &codes[c * per + i];
        let d = api.post("/v1/devices", &json!({ "mac": mac })).ok("device");
        let r = api.post(
            &format!("/v1/devices/{}/login", d["id"]),
            &json!({ "username": code, "password": code }),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    })
}

/// The same Access-Requests sent by radclient from the gateway's namespace,
/// `parallel` at a time: requests/s.
fn straight(ns: &str, server: Ipv4Addr, codes: &[String], parallel: usize) -> f64 {
    let mut reqs = String::new();
    for c in codes {
        reqs.push_str(&format!(
            "User-Name = \"{c}\", User-Password = \"{c}\", NAS-IP-Address = 10.250.1.1, Message-Authenticator = 0x00\n\n"
        ));
    }
    let t = Instant::now();
    let out = session_tests::agent::run_with_input(
        ns_command(ns, "/usr/bin/radclient")
            .args(["-q", "-r", "1", "-t", "5", "-p"])
            .arg(parallel.to_string())
            .arg(format!("{server}:1812"))
            .args(["auth", SECRET]),
        reqs.as_bytes(),
    );
    let rate = codes.len() as f64 / t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "radclient: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    rate
}

/// A metric's value in the agent's Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "benchmark: cargo xtask bench-fleet"]
fn bench_fleet_logins_and_accounting() {
    require_root();
    let pg = Postgres::start();
    let hs = Hotspot::builder().clients(1).build();
    let aaa = Netns::new(&format!("{}-aaa", hs.id));
    let (nas, server) = link_to_aaa(&hs.gw_ns, aaa.name(), 1);
    let mut cfg = RadiusConfig::new(SECRET, "");
    cfg.postgres = Some(pg.dir.clone());
    let _radius = FreeRadius::start(aaa.name(), Ipv4Addr::UNSPECIFIED.into(), &cfg);
    let per_row = env_usize("FLEET_BENCH_LOGINS", 300);
    let sessions = env_usize("FLEET_BENCH_SESSIONS", 10_000);
    let mut codes = Vec::new();
    while codes.len() < 3 * per_row + sessions + 20 {
        codes.extend(pg.create_codes(&[
            "--count",
            "1000",
            "--type",
            "time",
            "--time-secs",
            "86400",
        ]));
    }
    let agent = fleet_gateway(&hs, server, "gw-bench", nas, SECRET)
        .arg("--radius-interim-secs")
        .arg("60")
        .start();
    let api = agent.api();
    let mut next = codes.into_iter();
    let mut take = |n: usize| next.by_ref().take(n).collect::<Vec<String>>();
    through_agent(&api, &take(20), 4, 1 << 16);
    println!(
        "fleet benchmark: code logins through the agent's API against FreeRADIUS 3.2 + PostgreSQL (the README's configuration), {per_row} per row"
    );
    println!("| concurrent logins | through the agent, logins/s | p50 | p99 | radclient straight to the server, requests/s | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut mac = 1 << 17;
    for clients in [1usize, 10, 100] {
        let mine = take(per_row);
        let baseline = straight(&hs.gw_ns, server, &mine, clients);
        let Load { rate, p50, p99 } = through_agent(&api, &mine, clients, mac);
        mac += per_row;
        println!(
            "| {clients} | {rate:.0} | {:.1} ms | {:.1} ms | {baseline:.0} | {:.2} |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            rate / baseline
        );
        assert!(rate > 0.0);
    }

    // Accounting: `sessions` more open sessions, then two interim rounds.
    let t = Instant::now();
    through_agent(&api, &take(sessions), 50, 1 << 20);
    println!(
        "{sessions} more logins in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let m0 = agent.metrics();
    let (answered0, t0) = (
        metric(&m0, "session_agent_radius_acct_answered_total"),
        Instant::now(),
    );
    let mut max_queued = 0f64;
    while t0.elapsed() < Duration::from_secs(130) {
        std::thread::sleep(Duration::from_secs(2));
        max_queued = max_queued.max(metric(&agent.metrics(), "session_agent_radius_acct_queued"));
    }
    let m1 = agent.metrics();
    let answered = metric(&m1, "session_agent_radius_acct_answered_total") - answered0;
    let open = metric(&m1, "session_agent_radius_sessions_open");
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "| open sessions | interim interval | accounting answered/s | needed/s | most waiting |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {open:.0} | 60 s | {:.0} | {:.0} | {max_queued:.0} |",
        answered / secs,
        open / 60.0
    );
    let rows = pg.rows("SELECT count(*) FROM radacct WHERE acctstoptime IS NULL");
    println!("open in radacct: {}", rows[0][0]);
}
