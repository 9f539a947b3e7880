//! `session-agent run --shaper htb`: speed limits as HTB classes. TCP gets its
//! limit by queueing instead of drops, so the sender retransmits nothing, while
//! the counters still equal the nftables reference; restarts keep the classes,
//! going back to policing and `detach` remove the IFB device and the qdiscs.

use session_tests::check::assert_usage_matches;
use session_tests::sessions::{iperf, iperf_until, IperfResult, IperfServer};
use session_tests::{
    agent::{agent_bin, htb_class_1},
    ns_command, require_root, AgentBuilder, Hotspot, NftRef,
};
use std::process::Stdio;

const LIMIT_MBITS: u64 = 20;
const IFB: &str = "ifb-lan0";

fn tc_json(ns: &str, args: &[&str]) -> serde_json::Value {
    let out = ns_command(ns, "tc")
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn tc");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The root qdisc of `dev` is the agent's HTB (`5a:`).
fn has_agent_htb(ns: &str, dev: &str) -> bool {
    let v = tc_json(ns, &["qdisc", "show", "dev", dev, "root"]);
    v.as_array()
        .into_iter()
        .flatten()
        .any(|q| q["kind"] == "htb" && q["handle"] == "5a:")
}

fn link_exists(ns: &str, name: &str) -> bool {
    ns_command(ns, "ip")
        .args(["link", "show", "dev", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn show(dir: &str, r: &IperfResult) -> String {
    format!(
        "{dir}: goodput {:.3} Mbit/s ({:.3} of {LIMIT_MBITS}), retransmits {} [{}]",
        r.recv_mbits,
        r.recv_mbits / LIMIT_MBITS as f64,
        r.retransmits,
        r.command
    )
}

#[test]
fn htb_shaper_limits_tcp_without_retransmits_and_counts_exactly() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let nft = NftRef::install(&hs);
    let srv = IperfServer::start(&hs.server_ns, hs.server_sock(false, 5201));
    let mut agent = AgentBuilder::new(&hs).arg("--shaper").arg("htb").start();
    let c = hs.client(0).clone();
    agent.allow(&c.mac);
    assert!(
        has_agent_htb(&hs.gw_ns, &hs.lan_if) && has_agent_htb(&hs.gw_ns, IFB),
        "no HTB root on {} and {IFB}\n{}",
        hs.lan_if,
        agent.log_tail()
    );
    agent.limit(&c.mac, LIMIT_MBITS);
    for dev in [hs.lan_if.as_str(), IFB] {
        assert!(
            htb_class_1(&hs.gw_ns, dev).is_some(),
            "no class 5a:1 on {dev}"
        );
    }

    // The limit is goodput: the class carries the headers of full-size segments on top.
    let mut report = String::new();
    let mut bad = Vec::new();
    for (dir, reverse) in [("down", true), ("up", false)] {
        let r = iperf(&c.ns, srv.addr, 5, 2, reverse);
        report += &show(dir, &r);
        report += "\n";
        let ratio = r.recv_mbits / LIMIT_MBITS as f64;
        if !(0.94..=1.03).contains(&ratio) || r.retransmits != 0 {
            bad.push(dir);
        }
    }
    eprint!("{report}");
    assert!(
        bad.is_empty(),
        "shaped TCP off the limit or retransmitting in {bad:?}:\n{report}{}",
        agent.log_tail()
    );
    // Counted before the queues, delivered after them: equal once drained.
    assert_usage_matches(
        &agent,
        &nft,
        std::slice::from_ref(&c.mac),
        "iperf3 down and up through HTB classes at 20 Mbit/s",
    );

    // A restart keeps the classes (and the limit).
    agent.stop();
    let agent = agent.restart();
    for dev in [hs.lan_if.as_str(), IFB] {
        let cl = htb_class_1(&hs.gw_ns, dev);
        assert!(cl.is_some(), "class 5a:1 on {dev} lost over a restart");
    }
    let held = |r: &IperfResult| {
        (0.9..=1.05).contains(&(r.recv_mbits / LIMIT_MBITS as f64)) && r.retransmits == 0
    };
    let r = iperf_until(&c.ns, srv.addr, 3, 1, true, held);
    assert!(
        held(&r),
        "after a restart: {}\n{}",
        show("down", &r),
        agent.log_tail()
    );
    drop(agent);

    // Policing again: the IFB device and the qdisc go, the limit stays (as a bucket).
    let mut agent = AgentBuilder::new(&hs).start();
    assert!(!link_exists(&hs.gw_ns, IFB), "{IFB} left in police mode");
    assert!(
        !has_agent_htb(&hs.gw_ns, &hs.lan_if),
        "HTB left on {} in police mode",
        hs.lan_if
    );
    let policed = |r: &IperfResult| (0.85..=1.1).contains(&(r.recv_mbits / LIMIT_MBITS as f64));
    let r = iperf_until(&c.ns, srv.addr, 3, 1, true, policed);
    assert!(
        policed(&r),
        "policed after leaving HTB: {}\n{}",
        show("down", &r),
        agent.log_tail()
    );
    agent.stop();
}

#[test]
fn detach_removes_ifb_and_qdiscs() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let mut agent = AgentBuilder::new(&hs).arg("--shaper").arg("htb").start();
    let c = hs.client(0).clone();
    agent.allow(&c.mac);
    agent.limit(&c.mac, 10);
    assert!(
        link_exists(&hs.gw_ns, IFB),
        "no {IFB}\n{}",
        agent.log_tail()
    );
    agent.stop();
    agent.detach(&hs.lan_if);
    assert!(!link_exists(&hs.gw_ns, IFB), "{IFB} left after detach");
    assert!(
        !has_agent_htb(&hs.gw_ns, &hs.lan_if),
        "HTB left on {} after detach",
        hs.lan_if
    );
}

#[test]
fn htb_shaper_with_xdp_is_refused() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let bin = agent_bin();
    let pin = hs.pin_root.display().to_string();
    let db = hs.state_dir.join("s.redb").display().to_string();
    let sock = hs.state_dir.join("api.sock").display().to_string();
    // `timeout`: should it not be refused, the agent would run until stopped.
    let out = ns_command(&hs.gw_ns, "timeout")
        .args(["10", bin.to_str().unwrap(), "run", "--lan", &hs.lan_if])
        .args(["--shaper", "htb", "--ingress", "xdp", "--pin-root", &pin])
        .args(["--db", &db, "--api-socket", &sock])
        .stdin(Stdio::null())
        .output()
        .expect("spawn session-agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--ingress tc"),
        "not refused clearly ({}): {err}",
        out.status
    );
    assert!(!link_exists(&hs.gw_ns, IFB), "{IFB} made although refused");
}
