//! Wall-clock steps (NTP on a board without a real-time clock, `date -s`)
//! with a real agent: connected time is measured on CLOCK_BOOTTIME, so a step
//! either way neither charges nor refunds any, the client is not cut off, and
//! only the dates (`started_at`, `expires_at`, `created_at`) are wall-clock
//! readings (README, "Sessions" and "Wall-clock steps").
//!
//! The test steps the machine's clock, so it runs only in the throwaway QEMU
//! guest of `cargo xtask test-kernel` (CI runs it on Debian's 6.12); anywhere
//! else it says so and returns without touching the clock.

use serde_json::Value;
use session_tests::sessions::*;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DAY: i64 = 86_400;
/// The session's time: long enough that no step ends it, short enough that a
/// day charged by mistake consumes it.
const T: u64 = 600;
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Failed probes in a row that make a cut-off (as `Probe::wait_failing` counts).
const CUT: usize = 5;

/// The marks of `cargo xtask test-kernel`'s guest (xtask/src/kernel.rs): its
/// pid 1 exports `SESSION_TEST_GUEST=1` and its kernel command line carries
/// `session_test_guest=1`. Both must be there: a variable exported by hand on
/// another machine is not enough.
fn in_throwaway_guest() -> bool {
    let env = std::env::var("SESSION_TEST_GUEST").is_ok_and(|v| v == "1");
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    env && cmdline
        .split_whitespace()
        .any(|w| w == "session_test_guest=1")
}

/// Steps the wall clock (CLOCK_REALTIME) by `secs`, as `date -s` does.
fn step_wall_clock(secs: i64) -> std::io::Result<()> {
    assert!(
        in_throwaway_guest(),
        "refusing to step the clock outside the test guest"
    );
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // time_t is 32 bits on armhf.
    #[allow(clippy::useless_conversion)]
    let sec = i64::from(ts.tv_sec) + secs;
    ts.tv_sec = sec as libc::time_t;
    // SAFETY: `ts` is a valid timespec with tv_nsec in range (as read).
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The wall clock as the test steps it; put back by the net step when
/// dropped (a failed assertion included).
struct WallClock {
    stepped: i64,
}

impl WallClock {
    fn step(&mut self, secs: i64) -> Instant {
        step_wall_clock(secs)
            .unwrap_or_else(|e| panic!("stepping the wall clock by {secs} s: {e}"));
        self.stepped += secs;
        Instant::now()
    }
}

impl Drop for WallClock {
    fn drop(&mut self) {
        if self.stepped != 0 {
            let _ = step_wall_clock(-self.stepped);
        }
    }
}

fn wall_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("wall clock after 1970")
        .as_secs() as i64
}

fn date(v: &Value, name: &str) -> i64 {
    v[name]
        .as_i64()
        .unwrap_or_else(|| panic!("session view has no date `{name}`: {v}"))
}

/// Creates a time session of `secs` for the device; returns its id.
fn time_session(s: &Setup, secs: u64, exp_days: Option<u32>) -> i64 {
    let api = &s.api;
    sid(&api.create_session(s.device, TIME, secs, 0.0, exp_days, 0, 0, false))
}

/// One look at the session through the API.
struct Reading {
    what: &'static str,
    /// Monotonic seconds since connect: at least `lo` (from connect's return to
    /// the request), at most `hi` (from connect's request to the response).
    lo: f64,
    hi: f64,
    /// The wall clock (unix seconds) when the request was sent.
    wall: i64,
    view: Value,
    /// `/v1/status`'s uptime_secs, read just before, and when its answer came
    /// (monotonic seconds since connect).
    uptime: u64,
    uptime_at: f64,
    connected: bool,
}

impl Reading {
    fn take(
        s: &Setup,
        id: i64,
        what: &'static str,
        connecting: Instant,
        connected: Instant,
    ) -> Reading {
        let uptime = field(&s.api.get("/v1/status").ok("status"), "uptime_secs");
        let uptime_at = connected.elapsed().as_secs_f64();
        let a = Instant::now();
        let wall = wall_now();
        let view = s.api.session(id);
        let b = Instant::now();
        Reading {
            what,
            lo: a.duration_since(connected).as_secs_f64(),
            hi: b.duration_since(connecting).as_secs_f64(),
            wall,
            view,
            uptime,
            uptime_at,
            connected: is_connected(&s.api, s.device),
        }
    }

    fn line(&self) -> String {
        format!(
            "  {:<28} {:>6.2}..{:<6.2} s  wall {}  time_cons {:>3}  remaining {:>3}  {:<8} \
             started_at {}  expires_at {}  (expires in {} s of wall clock)  uptime {} s  connected {}",
            self.what,
            self.lo,
            self.hi,
            self.wall,
            self.view["time_cons"],
            self.view["remaining_time"],
            self.view["status"].as_str().unwrap_or("?"),
            self.view["started_at"],
            self.view["expires_at"],
            self.view["expires_at"].as_i64().map_or(0, |e| e - self.wall),
            self.uptime,
            self.connected,
        )
    }
}

/// The longest run of failed probes sent after `t`.
fn longest_failing(probe: &Probe, t: Instant) -> usize {
    let (mut run, mut longest) = (0, 0);
    for r in probe.results().iter().filter(|r| r.at >= t) {
        run = if r.ok { 0 } else { run + 1 };
        longest = longest.max(run);
    }
    longest
}

#[test]
fn a_wall_clock_step_either_way_neither_charges_nor_refunds_connected_time() {
    if !in_throwaway_guest() {
        // Past libtest's capture, so that the skip is seen.
        let _ = writeln!(
            std::io::stderr(),
            "clock_step: this test steps the wall clock and runs only in the QEMU guest \
             (`cargo xtask test-kernel --kernel 6.12 --test clock_step`): skipped"
        );
        return;
    }
    let s = Setup::new(&[]);
    // One day of validity after the session's time: a day's step forward
    // brings the expiry within the session's time, but not past it.
    let id = time_session(&s, T, Some(1));
    let probe = Probe::start(&s.client.ns, s.udp4(), PROBE_EVERY);
    let wall_connecting = wall_now();
    let connecting = Instant::now();
    connect(&s.api, s.device);
    let connected = Instant::now();
    let wall_connected = wall_now();
    let mut clock = WallClock { stepped: 0 };
    let take = |what| Reading::take(&s, id, what, connecting, connected);

    std::thread::sleep(Duration::from_secs(2));
    let before = take("before the steps");
    // 4 s after each step: twice the tolerance, so time that stopped (or
    // ran a day) at a step shows.
    let forward = clock.step(DAY);
    std::thread::sleep(Duration::from_secs(4));
    let ahead = take("a day ahead");
    // A session made now is dated by the stepped clock.
    let wall_new = wall_now();
    let new_id = time_session(&s, 60, None);
    let new_created = date(&s.api.session(new_id), "created_at");
    let back = clock.step(-2 * DAY);
    std::thread::sleep(Duration::from_secs(4));
    let behind = take("a day behind");
    let restored = clock.step(DAY);
    std::thread::sleep(Duration::from_secs(2));
    let after = take("restored");
    drop(clock);
    let readings = [&before, &ahead, &behind, &after];

    let report = format!(
        "time session of {T} s (exp_days 1) connected at wall {wall_connecting}..{wall_connected}; \
         wall clock stepped +1 day {:.2} s after connect, -2 days at {:.2} s, +1 day at {:.2} s\n\
         readings (monotonic seconds since connect):\n{}\n\
         a session created a day ahead (wall {wall_new}): created_at {new_created}\n\
         longest run of failed probes since connect: {} (a cut-off is {CUT})\nprobes:{}\n{}",
        forward.duration_since(connected).as_secs_f64(),
        back.duration_since(connected).as_secs_f64(),
        restored.duration_since(connected).as_secs_f64(),
        readings.map(Reading::line).join("\n"),
        longest_failing(&probe, connected),
        probe.timeline(connected),
        s.context()
    );
    eprintln!("wall-clock steps: {report}");

    // Connected time: what passed on the monotonic clock, in whole seconds
    // (one poll and a rounding either way), never a day, never backwards.
    let mut last_tc = 0;
    for r in readings {
        let tc = field(&r.view, "time_cons");
        let (lo, hi) = (r.lo.floor() - 2.0, r.hi.ceil() + 1.0);
        assert!(
            (lo..=hi).contains(&(tc as f64)),
            "{}: time_cons {tc}, but {:.2}..{:.2} s of monotonic time passed since connect \
             (expected {lo}..={hi})\n{report}",
            r.what,
            r.lo,
            r.hi
        );
        assert!(
            tc >= last_tc,
            "{}: time_cons went back from {last_tc} to {tc}\n{report}",
            r.what
        );
        assert_eq!(
            field(&r.view, "remaining_time"),
            T.saturating_sub(tc),
            "{}: remaining time\n{report}",
            r.what
        );
        last_tc = tc;
        // The session runs on and the device stays connected.
        assert_eq!(r.view["status"], "running", "{}\n{report}", r.what);
        assert_eq!(r.view["running"], true, "{}\n{report}", r.what);
        assert!(r.connected, "{}: device disconnected\n{report}", r.what);
    }
    // The agent answered its API throughout; its uptime is monotonic too.
    for w in readings.windows(2) {
        let up = w[1].uptime as f64 - w[0].uptime as f64;
        let passed = w[1].uptime_at - w[0].uptime_at;
        assert!(
            (passed.floor() - 2.0..=passed.ceil() + 1.0).contains(&up),
            "the agent's uptime moved by {up} s from `{}` to `{}`, in {passed:.2} s of \
             monotonic time\n{report}",
            w[0].what,
            w[1].what
        );
    }
    // The client was never cut off and is still served after the last step.
    assert!(
        longest_failing(&probe, connected) < CUT,
        "the client was cut off around a step\n{report}"
    );
    assert!(
        probe.ok_after(back) && probe.ok_after(restored + Duration::from_millis(500)),
        "no echo came back after a step\n{report}"
    );

    // Dates are wall-clock readings: taken when the session started or was
    // made, and not moved by a step; the expiry is the date
    // started_at + time + exp_days, so a step moves it by as much against the
    // clock.
    let started = date(&before.view, "started_at");
    let created = date(&before.view, "created_at");
    let expires = date(&before.view, "expires_at");
    assert!(
        (wall_connecting..=wall_connected).contains(&started),
        "started_at {started} is not the wall clock at connect\n{report}"
    );
    assert_eq!(expires, started + T as i64 + DAY, "expires_at\n{report}");
    for r in &readings[1..] {
        for (name, was) in [
            ("started_at", started),
            ("created_at", created),
            ("expires_at", expires),
        ] {
            assert_eq!(
                date(&r.view, name),
                was,
                "{}: {name} changed with the wall clock's step\n{report}",
                r.what
            );
        }
    }
    assert!(
        (wall_new..=wall_new + 2).contains(&new_created),
        "a session made a day ahead has created_at {new_created}, not the stepped clock's \
         {wall_new}\n{report}"
    );
    assert!(
        new_created - created >= DAY,
        "a session made a day ahead is dated less than a day after the first\n{report}"
    );
    let ahead_left = expires - ahead.wall;
    assert!(
        ahead_left > 0 && ahead_left <= T as i64,
        "a day ahead the expiry is {ahead_left} s of wall clock away, not within the \
         session's {T} s\n{report}"
    );
    let behind_left = expires - behind.wall;
    assert!(
        behind_left > 2 * DAY && behind_left <= 2 * DAY + T as i64,
        "a day behind the expiry is {behind_left} s of wall clock away, not two days and \
         up to {T} s\n{report}"
    );
}
