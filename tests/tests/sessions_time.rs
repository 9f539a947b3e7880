//! Time enforced by the agent: a time session of T s stops traffic within
//! T ± 1 s of connected time, pauses keep the remaining time, time_or_data
//! ends on its time, idle devices are paused.
//!
//! Expiry days are covered by the session-model unit tests with a manual clock.

use session_tests::sessions::*;
use std::time::{Duration, Instant};

const PROBE_EVERY: Duration = Duration::from_millis(50);

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Waits until the probe has failed 5 times in a row (after `t`), returns the cut-off time.
fn wait_cutoff(s: &Setup, probe: &Probe, t0: Instant, after: Instant, max: Duration) -> Instant {
    let stopped = probe.wait_failing(after, 5, max);
    let cut = probe.cutoff(after);
    assert!(
        stopped && cut.is_some(),
        "traffic did not stop within {max:?}; probes since connect:{}\n{}",
        probe.timeline(t0),
        s.context()
    );
    cut.unwrap()
}

#[test]
fn time_session_stops_traffic_after_t_seconds() {
    const T: u64 = 3;
    let s = Setup::new(&[]);
    let id = new_session(&s.api, s.device, TIME, T, 0.0, 0, 0);
    let probe = Probe::start(&s.client.ns, s.udp4(), PROBE_EVERY);
    let before = Instant::now();
    connect(&s.api, s.device);
    let t0 = Instant::now();
    let cut = wait_cutoff(&s, &probe, t0, t0, Duration::from_secs(T + 4));
    let last_ok = probe.last_ok().map(|l| secs(l.duration_since(t0)));
    let elapsed = secs(cut.duration_since(t0));
    let snap = s.settled(id);
    let report = format!(
        "time session of {T} s; connect took {:?}; last successful probe at {last_ok:?} s, \
         first of the failing ones at {elapsed:.3} s after connect returned\nprobes:{}\n\
         session {}\n{}",
        t0 - before,
        probe.timeline(t0),
        snap.session,
        s.context()
    );
    eprintln!("time session: {report}");
    assert!(
        (T as f64 - 1.0..=T as f64 + 1.0).contains(&elapsed),
        "traffic stopped {elapsed:.3} s after connect, not within {T} ± 1 s\n{report}"
    );
    assert_eq!(field(&snap.session, "time_cons"), T, "{report}");
    assert_eq!(field(&snap.session, "remaining_time"), 0, "{report}");
    assert!(!is_connected(&s.api, s.device), "{report}");
    assert!(s.tcp_blocked(), "TCP got through after the end\n{report}");
}

#[test]
fn time_session_pause_and_resume_keep_remaining_time() {
    const T: u64 = 4;
    let s = Setup::new(&[]);
    let id = new_session(&s.api, s.device, TIME, T, 0.0, 0, 0);
    let probe = Probe::start(&s.client.ns, s.udp4(), PROBE_EVERY);
    connect(&s.api, s.device);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    disconnect(&s.api, s.device);
    let t1 = Instant::now();
    let at_pause = s.api.session(id);
    let tc1 = field(&at_pause, "time_cons");
    std::thread::sleep(Duration::from_millis(2500));
    let after_pause = s.api.session(id);
    let tc2 = field(&after_pause, "time_cons");
    let paused_ok = probe.ok_after(t1 + Duration::from_millis(50));
    let v = connect(&s.api, s.device);
    let t2 = Instant::now();
    assert_eq!(sid(&v), id, "reconnect started another session: {v}");
    let cut = wait_cutoff(&s, &probe, t0, t2, Duration::from_secs(T + 4));
    let connected = secs(t1 - t0) + secs(cut.duration_since(t2));
    let snap = s.settled(id);
    let report = format!(
        "time session of {T} s: connected {:.3} s, paused {:.3} s, then connected until the \
         cut-off {:.3} s after the reconnect: {connected:.3} s connected in all\n\
         time_cons at the pause {tc1}, 2.5 s later {tc2}; a probe got through while paused: \
         {paused_ok}\nprobes:{}\nsession at pause {at_pause}\nsession at the end {}\n{}",
        secs(t1 - t0),
        secs(t2 - t1),
        secs(cut.duration_since(t2)),
        probe.timeline(t0),
        snap.session,
        s.context()
    );
    eprintln!("pause/resume: {report}");
    assert!(tc1 <= 2, "time_cons {tc1} after ~1 s connected\n{report}");
    assert_eq!(tc1, tc2, "time ran while disconnected\n{report}");
    assert_eq!(
        field(&at_pause, "remaining_time"),
        T - tc1,
        "remaining time\n{report}"
    );
    assert!(!paused_ok, "traffic passed while disconnected\n{report}");
    assert!(
        (T as f64 - 1.0..=T as f64 + 1.0).contains(&connected),
        "connected time until the cut-off {connected:.3} s, not {T} ± 1 s\n{report}"
    );
    assert_eq!(field(&snap.session, "time_cons"), T, "{report}");
    assert!(!is_connected(&s.api, s.device), "{report}");
}

/// time_or_data with 100 MB and 3 s: the time runs out first.
#[test]
fn time_or_data_ends_on_time() {
    const T: u64 = 3;
    let s = Setup::new(&[]);
    let id = new_session(&s.api, s.device, TIME_OR_DATA, T, 100.0, 0, 0);
    let probe = Probe::start(&s.client.ns, s.udp4(), PROBE_EVERY);
    connect(&s.api, s.device);
    let t0 = Instant::now();
    let mut bg = Background::start(&s.client.ns, &s.servers);
    let cut = wait_cutoff(&s, &probe, t0, t0, Duration::from_secs(T + 4));
    let (rounds, _) = bg.finish();
    let elapsed = secs(cut.duration_since(t0));
    let snap = s.settled(id);
    let report = format!(
        "time_or_data {T} s / 100 MB with {rounds} rounds of background traffic: stopped \
         {elapsed:.3} s after connect\nprobes:{}\nsession {}\nrefs {:?} (delivered {})\n\
         kernel counters (up, down) {:?} (sum {})\n{}",
        probe.timeline(t0),
        snap.session,
        snap.refs,
        snap.refs.delivered(),
        snap.kernel,
        snap.kernel.0 + snap.kernel.1,
        s.context()
    );
    eprintln!("time_or_data (time first): {report}");
    assert!(
        (T as f64 - 1.0..=T as f64 + 1.0).contains(&elapsed),
        "stopped after {elapsed:.3} s, not {T} ± 1 s\n{report}"
    );
    let cons = snap.cons();
    assert!(cons > 0 && cons < 100 * MB, "{report}");
    assert_eq!(field(&snap.session, "time_cons"), T, "{report}");
    assert!(!is_connected(&s.api, s.device), "{report}");
    // Every byte the client moved while connected is charged (as on disconnect,
    // which blocks first and then charges the last bytes).
    assert_eq!(
        cons,
        snap.refs.delivered(),
        "{} bytes the client moved before the time cut-off were not charged to the session\n{report}",
        snap.refs.delivered() as i64 - cons as i64
    );
}

/// With --idle-timeout-secs 2 a silent device is paused after about 2 s and
/// keeps its remaining time.
#[test]
fn idle_device_is_paused_and_keeps_time() {
    let s = Setup::new(&["--idle-timeout-secs", "2"]);
    let id = new_session(&s.api, s.device, TIME, 60, 0.0, 0, 0);
    connect(&s.api, s.device);
    let t0 = Instant::now();
    let o = tcp_download(&s.client.ns, s.tcp4(), 200_000, Duration::from_secs(2));
    let quiet = Instant::now();
    assert!(o.completed, "traffic before going idle failed: {o:?}");
    let paused = wait_for(Duration::from_secs(6), Duration::from_millis(50), || {
        (!is_connected(&s.api, s.device)).then(Instant::now)
    });
    let Some(paused) = paused else {
        panic!(
            "device still connected 6 s after its last traffic\n{}",
            s.context()
        );
    };
    let idle = secs(paused - quiet);
    let v1 = s.api.session(id);
    std::thread::sleep(Duration::from_millis(2000));
    let v2 = s.api.session(id);
    let blocked = s.tcp_blocked();
    let report = format!(
        "last traffic {:.3} s after connect; paused {idle:.3} s after it\n\
         session at the pause {v1}\n2 s later {v2}\nTCP blocked while paused: {blocked}\n{}",
        secs(quiet - t0),
        s.context()
    );
    eprintln!("idle timeout: {report}");
    assert!(
        (1.5..=3.5).contains(&idle),
        "paused {idle:.3} s after the last traffic, expected ~2 s\n{report}"
    );
    let tc = field(&v1, "time_cons");
    assert!(
        tc as f64 <= secs(paused - t0) + 1.0,
        "time_cons {tc}\n{report}"
    );
    assert_eq!(
        v1["time_cons"], v2["time_cons"],
        "time ran while paused\n{report}"
    );
    assert_eq!(field(&v2, "remaining_time"), 60 - tc, "{report}");
    assert_eq!(v2["running"], false, "{report}");
    assert!(blocked, "traffic passed while paused\n{report}");
    assert!(
        s.agent.log().to_lowercase().contains("idle"),
        "no idle message in the log\n{report}"
    );
    // Resuming continues the same session.
    let v = connect(&s.api, s.device);
    assert_eq!(sid(&v), id, "{report}");
    assert_eq!(v["time_cons"], v2["time_cons"], "{report}");
}

#[test]
fn a_connect_after_the_session_expired_between_polls_leaves_the_device_blocked() {
    // Polls far apart: the session expires between two of them, and the
    // portal's connect is what finds it.
    let s = Setup::new(&["--poll-ms", "10000"]);
    let id = new_session(&s.api, s.device, TIME, 3_600, 0.0, 0, 0);
    s.api
        .patch(
            &format!("/v1/sessions/{id}"),
            &serde_json::json!({ "exp_days": 0 }),
        )
        .ok("set expiry");
    let started = field(&connect(&s.api, s.device), "started_at") as i64;
    // Expires (started + time + 0 days) two seconds from its start.
    s.api
        .patch(
            &format!("/v1/sessions/{id}"),
            &serde_json::json!({ "started_at": started - 3_598 }),
        )
        .ok("move the start back");
    assert!(s.agent.client_or_zero(&s.client.mac).allowed);
    std::thread::sleep(Duration::from_millis(3_200));
    let r = s.api.connect(s.device, "retry");
    assert_eq!(r.status, 409, "connect with no session left: {}", r.body);
    assert_eq!(r.body["code"], "no_available_session", "{}", r.body);
    let c = s.agent.client_or_zero(&s.client.mac);
    assert!(
        !c.allowed,
        "let through with no running session: {c:?}\n{}",
        s.context()
    );
    assert!(!is_connected(&s.api, s.device));
    assert!(
        s.tcp_blocked(),
        "TCP got through with no session\n{}",
        s.context()
    );
}
