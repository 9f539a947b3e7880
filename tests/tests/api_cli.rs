//! The CLI subcommands that talk to the running agent over its API socket.

use std::process::{Command, Stdio};

use serde_json::Value;
use session_tests::{agent::agent_bin, require_root, AgentBuilder, Hotspot};

use session_tests::agent::cli_over_socket as cli;

#[track_caller]
fn ok_json(sock: &std::path::Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = cli(sock, &a);
    assert!(
        out.status.success(),
        "session-agent {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn cli_drives_the_daemon_over_the_socket() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let agent = AgentBuilder::new(&hs).start();
    let sock = agent.builder().api_socket.clone();
    let mac = "02:00:00:00:bb:01";

    let d = ok_json(
        &sock,
        &["devices", "create", "--mac", mac, "--hostname", "phone"],
    );
    let id = d["id"].as_i64().unwrap().to_string();
    assert_eq!(ok_json(&sock, &["devices", "by-mac", mac])["id"], d["id"]);
    assert_eq!(
        ok_json(&sock, &["devices", "show", &id])["hostname"],
        "phone"
    );
    let list = ok_json(&sock, &["devices", "list"]);
    assert!(list.as_array().unwrap().iter().any(|x| x["id"] == d["id"]));
    // The neighbour table knows the client; the store gets its device now.
    let cm = hs.client(0).mac.clone();
    ok_json(&sock, &["devices", "create", "--mac", &cm]);
    let ip = hs.client(0).addr(false).to_string();
    let by_ip = ok_json(&sock, &["devices", "by-ip", &ip]);
    assert_eq!(by_ip["mac"], hs.client(0).mac.as_str(), "neighbour lookup");

    let s = ok_json(
        &sock,
        &[
            "sessions",
            "create",
            &id,
            "--type",
            "time_or_data",
            "--time-secs",
            "600",
            "--data-mb",
            "20",
            "--exp-days",
            "3",
        ],
    );
    let sid = s["id"].as_i64().unwrap().to_string();
    assert_eq!(
        (s["type"].as_u64(), s["time_secs"].as_u64()),
        (Some(2), Some(600))
    );
    let s = ok_json(
        &sock,
        &[
            "sessions",
            "set",
            &sid,
            "--time-secs",
            "900",
            "--down-mbits",
            "7",
            "--exp-days",
            "none",
        ],
    );
    assert_eq!(
        (s["time_secs"].as_u64(), s["down_mbits"].as_i64()),
        (Some(900), Some(7))
    );
    assert_eq!(s["exp_days"], Value::Null);
    let s = ok_json(
        &sock,
        &[
            "sessions",
            "inc",
            &sid,
            "--time-cons",
            "60",
            "--data-cons",
            "1.5",
        ],
    );
    assert_eq!(
        (s["time_cons"].as_u64(), s["data_cons_bytes"].as_u64()),
        (Some(60), Some(1_500_000))
    );
    assert_eq!(ok_json(&sock, &["sessions", "save", &sid])["time_cons"], 60);
    assert_eq!(
        ok_json(&sock, &["sessions", "reload", &sid])["remaining_time"],
        840
    );
    assert_eq!(
        ok_json(&sock, &["sessions", "list", &id])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ok_json(&sock, &["sessions", "get", &id])["id"].to_string(),
        sid
    );
    assert_eq!(ok_json(&sock, &["sessions", "current", &id]), Value::Null);

    let c = ok_json(&sock, &["connect", &id, "--notification", "hello"]);
    assert_eq!(c["id"].to_string(), sid);
    assert_eq!(
        ok_json(&sock, &["devices", "connected", &id])["connected"],
        true
    );
    assert_eq!(
        ok_json(&sock, &["sessions", "current", &id])["status"],
        "running"
    );
    let st = ok_json(&sock, &["status"]);
    assert_eq!(st["connected"], 1);
    assert_eq!(
        ok_json(&sock, &["providers"]),
        serde_json::json!(["local", "radius"])
    );

    // events: follow the stream while a disconnect happens.
    let follower = Command::new(agent_bin())
        .args([
            "events",
            "--device",
            &id,
            "--count",
            "2",
            "--json",
            "--api-socket",
        ])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    ok_json(&sock, &["disconnect", &id, "--notification", "bye"]);
    let out = follower.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|e| e["event"] == "disconnected" && e["notification"] == "bye"),
        "{lines:?}"
    );

    // Human tables.
    let out = cli(&sock, &["devices", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(
        header.starts_with(&["ID", "MAC", "IP"]) && text.contains(mac),
        "{text}"
    );
    let out = cli(&sock, &["sessions", "list", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("time_or_data"));

    // Rekey.
    let r = ok_json(
        &sock,
        &["devices", "rekey", &id, "--mac", "02:00:00:00:bb:02"],
    );
    assert_eq!(r["mac"], "02:00:00:00:bb:02");

    // Errors: one line, non-zero exit.
    for args in [
        vec!["devices", "show", "424242"],
        vec!["sessions", "show", "abc"],
        vec!["devices", "create", "--mac", "02:00:00:00:bb:02"],
        vec!["sessions", "set", &sid, "--data-mb=-1"],
    ] {
        let out = cli(&sock, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("session-agent: "), "{err}");
    }
    let out = cli(std::path::Path::new("/nonexistent/api.sock"), &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent"));
}
