//! Legacy TC attach (`--tc-attach netlink`, what kernels before 6.6 get):
//! one filter per direction with our fixed priority and handle, replaced in
//! place on restart, enforcing while no agent runs, switched to and from TCX,
//! and removed by `detach` without touching the operator's own filters.

use session_tests::netns::run_ok;
use session_tests::{ns_command, require_root, AgentBuilder, Hotspot, ServerSet, TcpTransfer};
use std::time::Duration;

/// Our filters' priority and handle (session-agent's NL_PRIORITY, NL_HANDLE).
const PRIORITY: u64 = 0x5e55;
const HANDLE: &str = "0x5e55";

/// (priority, kind, handle, program id) of every filter on one hook.
fn filters(ns: &str, dev: &str, hook: &str) -> Vec<(u64, String, String, u64)> {
    let out = ns_command(ns, "tc")
        .args(["-j", "filter", "show", "dev", dev, hook])
        .output()
        .expect("spawn tc");
    if !out.status.success() || out.stdout.is_empty() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("tc -j output");
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|f| f.get("options").is_some())
        .map(|f| {
            let o = &f["options"];
            let handle = o["handle"]
                .as_str()
                .or(o["fh"].as_str())
                .unwrap_or("")
                .to_string();
            (
                f["pref"].as_u64().unwrap_or(0),
                f["kind"].as_str().unwrap_or("").to_string(),
                handle,
                o["prog"]["id"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Program id of our filter on a hook; panics unless there is exactly one.
fn our_filter(ns: &str, dev: &str, hook: &str) -> u64 {
    let all = filters(ns, dev, hook);
    let ours: Vec<_> = all
        .iter()
        .filter(|f| f.0 == PRIORITY && f.1 == "bpf")
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "want exactly one bpf filter on {hook}: {all:?}"
    );
    assert_eq!(ours[0].2, HANDLE, "{all:?}");
    ours[0].3
}

fn no_filter_of_ours(ns: &str, dev: &str) {
    for hook in ["ingress", "egress"] {
        let all = filters(ns, dev, hook);
        assert!(
            !all.iter().any(|f| f.0 == PRIORITY),
            "our filter left on {hook}: {all:?}"
        );
    }
}

fn tcp_blocked(ns: &str, servers: &ServerSet) -> bool {
    TcpTransfer::run_timeout(ns, servers.tcp4.addr, 100, 100, Duration::from_millis(700)).is_err()
}

/// Whether this kernel has TCX (Linux >= 6.6).
fn kernel_has_tcx() -> bool {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = r
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 6)
}

#[test]
fn netlink_filters_are_replaced_in_place_and_detach_keeps_the_operators() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let (ns, dev) = (hs.gw_ns.as_str(), hs.lan_if.as_str());
    // The operator's own clsact qdisc and filters (never matching) must survive us.
    run_ok(ns_command(ns, "tc").args(["qdisc", "add", "dev", dev, "clsact"]));
    for hook in ["ingress", "egress"] {
        run_ok(ns_command(ns, "tc").args([
            "filter",
            "add",
            "dev",
            dev,
            hook,
            "prio",
            "7",
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0xdeadbeef",
            "0xffffffff",
            "at",
            "0",
        ]));
    }
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let netlink = AgentBuilder::new(&hs).arg("--tc-attach").arg("netlink");
    let mut agent = netlink.start();
    let (allowed, blocked) = (hs.client(0), hs.client(1));
    agent.allow(&allowed.mac);
    let (in1, eg1) = (
        our_filter(ns, dev, "ingress"),
        our_filter(ns, dev, "egress"),
    );
    TcpTransfer::run(&allowed.ns, servers.tcp4.addr, 20_000, 30_000).expect("allowed client");
    assert!(
        tcp_blocked(&blocked.ns, &servers),
        "blocked client got through"
    );
    let c = agent.client_or_zero(&allowed.mac);
    assert!(
        c.up_bytes >= 20_000 && c.down_bytes >= 30_000,
        "not counted: {c:?}"
    );

    // The filters outlive the agent and keep enforcing.
    agent.stop();
    assert!(
        tcp_blocked(&blocked.ns, &servers),
        "blocked client got through with no agent"
    );
    assert_eq!(our_filter(ns, dev, "ingress"), in1);

    // A restart puts its programs into the same filters: no second filter.
    let mut agent = agent.restart();
    let (in2, eg2) = (
        our_filter(ns, dev, "ingress"),
        our_filter(ns, dev, "egress"),
    );
    assert!(
        in2 != in1 && eg2 != eg1,
        "programs not replaced: {in1}/{eg1} -> {in2}/{eg2}"
    );
    assert!(
        tcp_blocked(&blocked.ns, &servers),
        "blocked client got through after restart"
    );
    TcpTransfer::run(&allowed.ns, servers.tcp6.addr, 10_000, 10_000).expect("after restart");
    let pins = hs.pin_root.join(dev);

    if kernel_has_tcx() {
        // To TCX (what auto picks here): our filters go, TCX links are pinned; and back again.
        agent.terminate();
        let mut tcx = AgentBuilder::new(&hs)
            .arg("--tc-attach")
            .arg("auto")
            .start();
        no_filter_of_ours(ns, dev);
        assert!(pins.join("link_tc_egress").exists(), "no TCX link pinned");
        assert!(
            tcp_blocked(&blocked.ns, &servers),
            "blocked client got through on TCX"
        );
        tcx.terminate();
        agent = netlink.start();
        our_filter(ns, dev, "ingress");
        our_filter(ns, dev, "egress");
        assert!(
            !pins.join("link_tc_egress").exists(),
            "TCX link left pinned"
        );
        assert!(
            tcp_blocked(&blocked.ns, &servers),
            "blocked client got through"
        );
    } else {
        // Without TCX, asking for it is refused with a clear error.
        agent.terminate();
        let out = ns_command(ns, session_tests::agent_bin().to_str().unwrap())
            .args(["run", "--lan", dev, "--tc-attach", "tcx", "--pin-root"])
            .arg(&hs.pin_root)
            .arg("--db")
            .arg(hs.state_dir.join("tcx.redb"))
            .arg("--api-socket")
            .arg(hs.state_dir.join("tcx.sock"))
            .output()
            .expect("spawn session-agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("no TCX"), "{err}");
        // Auto picks netlink filters here, and puts its programs into ours.
        let mut auto = AgentBuilder::new(&hs)
            .arg("--tc-attach")
            .arg("auto")
            .start();
        let in3 = our_filter(ns, dev, "ingress");
        assert!(
            in3 != in2,
            "auto did not replace the netlink filter's program"
        );
        assert!(
            tcp_blocked(&blocked.ns, &servers),
            "blocked client got through"
        );
        auto.terminate();
        agent = netlink.start();
    }

    agent.stop();
    agent.detach(dev);
    no_filter_of_ours(ns, dev);
    for hook in ["ingress", "egress"] {
        let all = filters(ns, dev, hook);
        assert!(
            all.iter().any(|f| f.0 == 7 && f.1 == "u32"),
            "the operator's filter on {hook} is gone: {all:?}"
        );
    }
    let t = TcpTransfer::run(&blocked.ns, servers.tcp4.addr, 1000, 2000);
    assert!(
        matches!(t, Ok(x) if x.received == 2000),
        "traffic still filtered after detach: {t:?}"
    );
}
