//! One client table serves every LAN: a device has one meter and one data
//! budget whichever LAN port it uses, and adding or removing a LAN charges
//! no history again.

use session_tests::sessions::*;
use session_tests::topo::Hotspot;
use std::time::Duration;

/// A device moved 2 MB on lan0; the agent restarts serving lan0 and a new
/// lan1, then lan0 alone again: its session still shows the 2 MB.
#[test]
fn adding_or_removing_a_lan_at_a_restart_charges_nothing_again() {
    let mut s = Setup::new(&[]);
    let id = new_session(&s.api, s.device, DATA, 0, 100.0, 0, 0);
    connect(&s.api, s.device);
    let o = tcp_download(&s.client.ns, s.tcp4(), 2 * MB, Duration::from_secs(3));
    let before = s.settled(id);
    let moved = before.refs.delivered();
    assert!(
        moved >= 2 * MB,
        "the download did not complete: {o:?}\n{}",
        s.context()
    );
    let mut steps = vec![format!(
        "on lan0: {o:?}; session {} B, reference {moved} B",
        before.cons()
    )];
    s.agent.stop();
    let twin = s.hs.add_lan("02:00:00:00:00:99");
    let mut b = s.agent.builder().clone();
    b.lans.push(s.hs.extra_lans[0].clone());
    s.agent = b.start();
    s.api = s.agent.api();
    let with_lan1 = s.settled(id);
    steps.push(format!(
        "restarted with lan0 and lan1: session {} B",
        with_lan1.cons()
    ));
    s.agent.stop();
    b.lans.truncate(1);
    s.agent = b.start();
    s.api = s.agent.api();
    let without = s.settled(id);
    steps.push(format!(
        "restarted with lan0 alone: session {} B",
        without.cons()
    ));
    let warned = s.agent.log().contains("still attached from an earlier run");
    let report = format!(
        "{}\nstation on lan1: {twin:?}\n{}",
        steps.join("\n"),
        s.context()
    );
    eprintln!("{report}");
    assert_eq!(before.cons(), moved, "charged other than moved\n{report}");
    assert_eq!(
        with_lan1.cons(),
        moved,
        "adding a LAN charged again\n{report}"
    );
    assert_eq!(
        without.cons(),
        moved,
        "removing a LAN charged again\n{report}"
    );
    assert!(is_connected(&s.api, s.device), "{report}");
    assert!(warned, "no warning that lan1 is still attached\n{report}");
}

/// One MAC on two LAN ports downloads on both at once: the session's data
/// budget is spent once, ending within one packet of it, and the two
/// stations together receive no more.
#[test]
fn one_data_budget_whatever_lan_a_device_uses() {
    const N_MB: u64 = 3;
    let mut hs = Hotspot::builder().clients(1).build();
    let mac = hs.client(0).mac.clone();
    let twin = hs.add_lan(&mac);
    let s = Setup::on(hs, &[]);
    // At 16 Mbit/s the budget lasts about 1.5 s: unlimited, one LAN could
    // spend it all (in about 15 ms) before the other's first segment, and
    // the test would prove nothing of the two at once.
    let id = new_session(&s.api, s.device, DATA, 0, N_MB as f64, 16, 0);
    connect(&s.api, s.device);
    let budget = N_MB * MB;
    let hi = budget + MTU;
    // A download ends once nothing came for this long: past the gaps of
    // TCP backing off under the speed limit (up to about 0.7 s seen).
    let stall = Duration::from_millis(3000);
    let (tcp, twin_ns) = (s.tcp4(), twin.ns.clone());
    let other = std::thread::spawn(move || tcp_download(&twin_ns, tcp, 2 * budget, stall));
    let here = tcp_download(&s.client.ns, tcp, 2 * budget, stall);
    let there = other.join().unwrap();
    let snap = s.settled(id);
    let cons = snap.cons();
    let received = here.bytes + there.bytes;
    let report = format!(
        "budget {budget} B, allowed up to {hi} B; lan0: {here:?}; lan1: {there:?}\n\
         session data_cons_bytes {cons}; kernel counters (up, down) {:?}\nsession {}\n{}",
        snap.kernel,
        snap.session,
        s.context()
    );
    eprintln!("{report}");
    assert!(
        here.bytes > 0 && there.bytes > 0,
        "a LAN moved nothing\n{report}"
    );
    assert!(
        (budget..=hi).contains(&cons),
        "consumption outside [budget, budget + MTU]\n{report}"
    );
    assert_eq!(
        snap.kernel.0 + snap.kernel.1,
        cons,
        "consumption differs from the kernel\n{report}"
    );
    assert!(
        received <= hi,
        "the stations received more than the budget\n{report}"
    );
    assert!(!is_connected(&s.api, s.device), "{report}");
}

/// Every LAN shares one client table, and the agent maps it once: a mapping
/// counts fully towards resident memory each time it is made, and the table
/// and its slot index are about 10 MiB. A second and a third LAN cost the
/// agent their own small maps and programs, not the table again.
#[test]
fn more_lans_do_not_map_the_shared_client_table_again() {
    let mut hs = Hotspot::builder().clients(1).build();
    let mut b = session_tests::AgentBuilder::new(&hs);
    let rss = |b: &session_tests::AgentBuilder| {
        let mut agent = b.start();
        // Settled after start: the first polls and checks have run.
        std::thread::sleep(Duration::from_secs(2));
        let kib = agent.rss_kib().expect("the agent's resident memory");
        agent.stop();
        kib
    };
    let one = rss(&b);
    hs.add_lan("02:00:00:00:01:01");
    hs.add_lan("02:00:00:00:01:02");
    b.lans.extend(hs.extra_lans.iter().cloned());
    let three = rss(&b);
    eprintln!("resident memory: {one} KiB with one LAN, {three} KiB with three");
    assert!(
        three < one + 8 * 1024,
        "two more LANs took {} KiB more ({one} KiB with one LAN, {three} with three)",
        three.saturating_sub(one)
    );
}
