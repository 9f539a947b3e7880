//! `session-agent detach` removes the programs and the pins; the interface is
//! then an ordinary one again.

use session_tests::{require_root, AgentBuilder, Hotspot, ServerSet, TcpTransfer};
use std::time::Duration;

#[test]
fn detach_removes_programs_and_pins() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    let mut agent = AgentBuilder::new(&hs).start();
    let c = hs.client(0);
    let blocked =
        TcpTransfer::run_timeout(&c.ns, servers.tcp4.addr, 10, 10, Duration::from_millis(700));
    assert!(blocked.is_err(), "not blocked while attached: {blocked:?}");
    let iface_dir = hs.pin_root.join(&hs.lan_if);
    assert!(
        iface_dir.is_dir(),
        "no pin directory {} while running",
        iface_dir.display()
    );
    agent.stop();
    agent.detach(&hs.lan_if);
    assert!(
        !iface_dir.exists(),
        "pins left after detach: {:?}",
        std::fs::read_dir(&iface_dir).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    // No program left: the not-allowed client is no longer held back.
    let t = TcpTransfer::run(&c.ns, servers.tcp6.addr, 1000, 2000);
    assert!(
        matches!(t, Ok(x) if x.received == 2000),
        "traffic still filtered after detach: {t:?}"
    );
    let link = session_tests::netns::ip_n(&hs.gw_ns, &["-j", "link", "show", "dev", &hs.lan_if]);
    let link: serde_json::Value = serde_json::from_slice(&link.stdout).unwrap();
    assert!(link[0].get("xdp").is_none(), "XDP program left: {link}");

    // Attaching again from scratch works and enforces again.
    let _agent2 = agent.restart();
    let again =
        TcpTransfer::run_timeout(&c.ns, servers.tcp4.addr, 10, 10, Duration::from_millis(700));
    assert!(again.is_err(), "not blocked after re-attach: {again:?}");
}
