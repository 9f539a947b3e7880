//! Restart safety of sessions: kill -9 of the agent mid-traffic loses and
//! doubles no byte of consumption (compared with the nftables reference), time
//! keeps running across a restart, and a simulated reboot (pins removed) loses
//! at most about one commit interval of traffic and re-programs the device.

use session_tests::sessions::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default `--poll-ms` of the agent.
const POLL: Duration = Duration::from_millis(250);
/// Default `--commit-ms`: how often charged usage reaches the store's log.
const COMMIT: Duration = Duration::from_millis(1000);

fn exact_after_kills(kills: &[Duration]) {
    let mut s = Setup::new(&[]);
    let id = new_session(&s.api, s.device, DATA, 0, 500.0, 0, 0);
    connect(&s.api, s.device);
    let mut bg = Background::start(&s.client.ns, &s.servers);
    bg.wait_rounds(3);
    for (i, pause) in kills.iter().enumerate() {
        s.agent.kill9();
        std::thread::sleep(*pause);
        s.agent = s.agent.restart();
        s.api = s.agent.api();
        if i + 1 == kills.len() {
            bg.wait_rounds(3);
        }
    }
    let (rounds, errors) = bg.finish();
    let snap = s.settled(id);
    let cons = snap.cons();
    let report = format!(
        "{rounds} rounds of TCP+UDP v4/v6, kill -9 then restart {} time(s) (down {kills:?}); \
         errors: {errors:?}\nsession data_cons_bytes {cons}\nrefs {:?} (forwarded {}, delivered {})\n\
         kernel (up, down) {:?}\n{}",
        kills.len(),
        snap.refs,
        snap.refs.forwarded(),
        snap.refs.delivered(),
        snap.kernel,
        s.context()
    );
    eprintln!("kill -9: {report}");
    assert!(errors.is_empty(), "traffic failed\n{report}");
    assert_eq!(
        cons,
        snap.refs.forwarded(),
        "consumption differs from the nft reference (up+down)\n{report}"
    );
    assert_eq!(cons, snap.refs.delivered(), "{report}");
    assert_eq!(cons, snap.kernel.0 + snap.kernel.1, "{report}");
    assert!(is_connected(&s.api, s.device), "{report}");
}

#[test]
fn kill9_mid_traffic_consumption_matches_reference_exactly() {
    exact_after_kills(&[Duration::from_millis(700)]);
}

#[test]
fn kill9_twice_in_a_row_consumption_matches_reference_exactly() {
    // The second kill comes right after the restart, before the first regular poll.
    exact_after_kills(&[Duration::from_millis(300), Duration::ZERO]);
}

/// A time session keeps running while the agent is down: the cut-off still
/// comes T ± 1 s after connect.
#[test]
fn time_session_keeps_time_across_kill9() {
    const T: u64 = 6;
    let mut s = Setup::new(&[]);
    let id = new_session(&s.api, s.device, TIME, T, 0.0, 0, 0);
    let probe = Probe::start(&s.client.ns, s.udp4(), Duration::from_millis(50));
    connect(&s.api, s.device);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    s.agent.kill9();
    std::thread::sleep(Duration::from_millis(2000));
    s.agent = s.agent.restart();
    s.api = s.agent.api();
    let t_restart = Instant::now();
    let after = s.api.session(id);
    let expect_tc = t_restart.duration_since(t0).as_secs_f64();
    let stopped = probe.wait_failing(t0, 5, Duration::from_secs(T + 4));
    let cut = probe.cutoff(t0);
    let snap = s.settled(id);
    let report = format!(
        "time session of {T} s: kill -9 2 s after connect, restart 2 s later ({:.3} s after \
         connect); time_cons right after the restart {} (wall {expect_tc:.3} s)\n\
         cut-off at {:?} s after connect\nprobes:{}\nsession at the end {}\n{}",
        expect_tc,
        after["time_cons"],
        cut.map(|c| c.duration_since(t0).as_secs_f64()),
        probe.timeline(t0),
        snap.session,
        s.context()
    );
    eprintln!("time across kill -9: {report}");
    assert!(stopped && cut.is_some(), "traffic did not stop\n{report}");
    let elapsed = cut.unwrap().duration_since(t0).as_secs_f64();
    assert!(
        (T as f64 - 1.0..=T as f64 + 1.0).contains(&elapsed),
        "cut-off {elapsed:.3} s after connect, not {T} ± 1 s\n{report}"
    );
    // time_cons counts whole seconds of the session's clock: within a second
    // of the wall time, rounded either way.
    let tc = field(&after, "time_cons") as f64;
    assert!(
        (expect_tc.floor() - 1.0..=expect_tc.ceil() + 1.0).contains(&tc),
        "time_cons {tc} right after the restart, wall time connected {expect_tc:.3} s\n{report}"
    );
    assert_eq!(field(&snap.session, "time_cons"), T, "{report}");
}

/// Samples the delivered reference (up + client rx) of one client.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(s: &Setup) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (st, sm) = (stop.clone(), samples.clone());
        let (nft, rx, mac) = (s.nft.clone(), s.rx.clone(), s.client.mac.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let r = Refs::read(&nft, &rx, &mac).delivered();
                sm.lock().unwrap().push((Instant::now(), r));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(Instant, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples.lock().unwrap().clone()
    }
}

/// Simulated reboot: kill -9 mid-traffic, pins removed, restart. The loss is
/// what the kernel counted after the last commit before the kill (and until
/// the traffic stopped); the device is programmed again and then charged exactly.
#[test]
fn simulated_reboot_loses_at_most_a_commit_interval() {
    let mut s = Setup::new(&[]);
    // 8 Mbit/s each way keeps the traffic rate, and so the loss, bounded.
    let id = new_session(&s.api, s.device, DATA, 0, 500.0, 8, 8);
    connect(&s.api, s.device);
    let mut bg = Background::start(&s.client.ns, &s.servers);
    bg.wait_rounds(3);
    let sampler = Sampler::start(&s);
    std::thread::sleep(Duration::from_millis(2_000));
    s.agent.kill9();
    let killed = Instant::now();
    bg.finish();
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let samples = sampler.finish();
    let total_before = s.refs();
    let detach = s.agent.cli(&[
        "detach",
        "--lan",
        &s.hs.lan_if,
        "--pin-root",
        &s.hs.pin_root.display().to_string(),
    ]);
    assert!(
        detach.status.success(),
        "detach failed: {}",
        String::from_utf8_lossy(&detach.stderr)
    );
    s.agent = s.agent.restart();
    s.api = s.agent.api();
    let after_restart = s.settled(id);
    // Download beyond the speed limit is dropped after the forward chain:
    // compare with what the client really moved.
    let lost = total_before.delivered() as i64 - after_restart.cons() as i64;
    // Traffic from one commit interval and one poll (the last commit holds
    // what the poll before it charged) plus 50 ms before the kill to the stop.
    let from = killed - COMMIT - POLL - Duration::from_millis(50);
    let at_from = samples
        .iter()
        .rev()
        .find(|(t, _)| *t <= from)
        .map(|x| x.1)
        .unwrap_or(0);
    let window = total_before.delivered() - at_from;
    let rate = {
        let first = samples.first().copied().unwrap();
        let last = samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= killed)
            .copied()
            .unwrap();
        (last.1 - first.1) as f64 / last.0.duration_since(first.0).as_secs_f64()
    };
    // Traffic flows again, and is charged exactly from the new counters.
    let o = tcp_download(&s.client.ns, s.tcp4(), 500_000, Duration::from_secs(3));
    let end = s.settled(id);
    let charged_after = end.cons() - after_restart.cons();
    let moved_after = end.refs.delivered() - after_restart.refs.delivered();
    let report = format!(
        "traffic at {:.0} B/s; kill -9, traffic stopped {:?} later, pins removed, restart\n\
         reference before the reboot {} B, session after it {} B: lost {lost} B \
         (= {:.0} ms of traffic at that rate); reference counted {window} B from a commit \
         interval, a poll and 50 ms before the kill to the stop\n\
         settled after the restart: refs {:?}, kernel {:?}\n\
         after the restart: 500 kB download {o:?}; charged {charged_after} B, reference {moved_after} B\n\
         session {}\n{}",
        rate,
        stopped - killed,
        total_before.delivered(),
        after_restart.cons(),
        lost as f64 / rate * 1000.0,
        after_restart.refs,
        after_restart.kernel,
        end.session,
        s.context()
    );
    eprintln!("simulated reboot: {report}");
    assert!(
        lost >= 0,
        "the reboot charged more than was moved\n{report}"
    );
    assert!(
        lost as u64 <= window,
        "lost more than the traffic since the last commit before the kill\n{report}"
    );
    assert!(
        o.completed,
        "traffic did not flow after the reboot\n{report}"
    );
    assert!(is_connected(&s.api, s.device), "{report}");
    assert_eq!(
        charged_after, moved_after,
        "charging after the reboot is not exact\n{report}"
    );
}

/// Simulated reboot of a time session: 3 s connected, kill -9, pins removed,
/// 8 s down, restart. The client was not served while the datapath was gone:
/// the session resumes from its last checkpointed time (every second here),
/// the downtime is not charged, and the client gets through again at once.
#[test]
fn a_simulated_reboot_does_not_charge_the_downtime() {
    const T: u64 = 60;
    let mut s = Setup::new(&["--checkpoint-secs", "1"]);
    let id = new_session(&s.api, s.device, TIME, T, 0.0, 0, 0);
    connect(&s.api, s.device);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    s.agent.kill9();
    let connected = t0.elapsed();
    s.agent.detach(&s.hs.lan_if);
    std::thread::sleep(Duration::from_secs(8));
    s.agent = s.agent.restart();
    s.api = s.agent.api();
    let after = s.api.session(id);
    let tc = field(&after, "time_cons");
    let blocked = s.tcp_blocked();
    let report = format!(
        "time session of {T} s: connected {connected:?}, kill -9, pins removed, 8 s down, \
         restart: time_cons {tc}\nsession {after}\n{}",
        s.context()
    );
    eprintln!("reboot and time: {report}");
    assert!(
        tc + 2 >= connected.as_secs() && tc <= connected.as_secs() + 1,
        "time_cons {tc} after {connected:?} connected and 8 s down\n{report}"
    );
    assert!(is_connected(&s.api, s.device), "{report}");
    assert!(
        !blocked,
        "the client is blocked after the restart\n{report}"
    );
}
