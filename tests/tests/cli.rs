//! Bad input gives a one-line error naming the problem and a non-zero exit.

use session_tests::agent::cli;
use session_tests::{require_root, Hotspot};
use std::process::Output;

/// The error lines of stderr (clap's "For more information" hint aside).
fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .map(String::from)
        .collect()
}

/// Asserts a non-zero exit and a single stderr line containing every one of
/// `needles` (case-insensitive).
fn assert_one_line_error(args: &[&str], out: &Output, needles: &[&str]) {
    let lines = error_lines(out);
    let dump = format!(
        "session-agent {args:?}\nstatus: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "bad input accepted: {dump}");
    assert_eq!(lines.len(), 1, "expected a one-line error: {dump}");
    let l = lines[0].to_lowercase();
    for n in needles {
        assert!(
            l.contains(&n.to_lowercase()),
            "error line does not name `{n}`: {dump}"
        );
    }
}

#[test]
fn malformed_mac_is_rejected() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let pin = hs.pin_root.display().to_string();
    for verb in ["allow", "block"] {
        for bad in [
            "zz:zz:zz:zz:zz:zz",
            "02:5a:00:00:01",
            "02:5a:00:00:00:01:02",
            "025a00000001x",
            "",
        ] {
            let args = [verb, "--mac", bad, "--lan", "lan0", "--pin-root", &pin];
            let out = cli(&hs.gw_ns, &args);
            let needle = if bad.is_empty() { "mac" } else { bad };
            assert_one_line_error(&args, &out, &[needle]);
        }
    }
}

#[test]
fn unknown_interface_is_rejected() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let pin = hs.pin_root.display().to_string();
    let bogus = "sanosuch0";
    let runs: Vec<Vec<&str>> = vec![
        vec!["run", "--lan", bogus, "--pin-root", &pin],
        vec!["run", "--lan", "lan0", "--lan", bogus, "--pin-root", &pin],
        vec!["clients", "--lan", bogus, "--pin-root", &pin, "--json"],
        vec![
            "allow",
            "--mac",
            "02:5a:00:00:00:01",
            "--lan",
            bogus,
            "--pin-root",
            &pin,
        ],
        vec!["detach", "--lan", bogus, "--pin-root", &pin],
    ];
    for args in runs {
        let out = run_bounded(&hs.gw_ns, &args);
        assert_one_line_error(&args, &out, &[bogus]);
    }
}

#[test]
fn bad_walled_garden_and_portal_port_are_rejected() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let pin = hs.pin_root.display().to_string();
    for (flag, bad) in [
        ("--walled-garden", "not-a-cidr"),
        ("--walled-garden", "10.0.0.0/33"),
        ("--walled-garden", "10.0.0.0/8:99999"),
        ("--portal-port", "99999"),
        ("--portal-port", "http"),
    ] {
        let args = ["run", "--lan", "lan0", "--pin-root", &pin, flag, bad];
        let out = run_bounded(&hs.gw_ns, &args);
        assert_one_line_error(&args, &out, &[bad]);
    }
}

/// Runs the CLI but never lets a wrongly accepted `run` hang the test: kills
/// it after 20 s (it then reports as a failure through its exit status).
fn run_bounded(ns: &str, args: &[&str]) -> Output {
    let bin = session_tests::agent_bin();
    let child = session_tests::ns_command(ns, bin.to_str().unwrap())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn session-agent");
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let guard = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if d2.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // SAFETY: signalling our own child process by pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let out = child.wait_with_output().expect("wait session-agent");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = guard.join();
    out
}
