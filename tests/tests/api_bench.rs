//! Control API benchmark: create device + create session + connect, end to end
//! over the unix socket (one connection per request, as a portal's HTTP client
//! without keep-alive), at 1 and 64 concurrent clients. Ignored by default; run
//! with `cargo xtask bench-api` (release agent) or
//! `cargo test -p session-tests --test api_bench -- --ignored --nocapture`.

use std::time::Duration;

use serde_json::json;
use session_tests::load::concurrent;
use session_tests::{require_root, AgentBuilder, Hotspot};

fn run(
    api: &session_tests::api::ApiClient,
    clients: usize,
    ops_per_client: usize,
    base: usize,
) -> (f64, Duration, Duration) {
    let api = api.clone();
    let l = concurrent(clients, ops_per_client, move |c, i| {
        let n = base + c * ops_per_client + i;
        let mac = format!(
            "06:{:02x}:{:02x}:{:02x}:{:02x}:01",
            (n >> 24) & 0xff,
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            n & 0xff
        );
        let d = api
            .post("/v1/devices", &json!({ "mac": mac }))
            .ok("create device");
        let id = d["id"].as_i64().unwrap();
        api.create_session(id, 2, 3600, 100.0, None, 0, 0, false);
        api.connect(id, "bench").ok("connect");
    });
    (l.rate, l.p50, l.p99)
}

#[test]
#[ignore = "benchmark: cargo xtask bench-api"]
fn bench_create_connect() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let store = std::env::var("API_BENCH_STORE").unwrap_or_else(|_| "hybrid".into());
    let agent = AgentBuilder::new(&hs).arg("--store").arg(&store).start();
    let api = agent.api();
    // Warm up.
    run(&api, 4, 10, 0);
    let ops: usize = std::env::var("API_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    println!("control API benchmark: create device + create session + connect, store {store}");
    println!("| concurrent clients | operations | ops/s | p50 | p99 |");
    println!("|---:|---:|---:|---:|---:|");
    let mut base = 1 << 20;
    for clients in [1usize, 64] {
        let per = (ops / clients).max(1);
        let (rate, p50, p99) = run(&api, clients, per, base);
        base += clients * per;
        println!(
            "| {clients} | {} | {rate:.0} | {:.2} ms | {:.2} ms |",
            clients * per,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        assert!(rate > 0.0);
    }
    let st = api.get("/v1/status").ok("status");
    assert!(st["connected"].as_u64().unwrap() >= ops as u64, "{st}");
}
