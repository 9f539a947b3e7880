//! Injectable clocks. Timestamps are unix time; the model stores whole seconds.
//!
//! Connected time is measured on a second clock that the wall clock's steps
//! (NTP on a board without a real-time clock jumps hours) do not move:
//! [`Clock::mono_ms`], CLOCK_BOOTTIME on Linux, which runs from boot (through
//! suspend) and is comparable between processes of one boot. Its readings are
//! kept with [`Clock::boot_id`]: a reading of another boot says nothing.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time, injectable so tests can drive time by hand.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> i64;

    /// Whole seconds since the unix epoch (floored).
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Milliseconds since boot on a clock that only moves forward, at the
    /// rate time passes, whatever the wall clock does.
    fn mono_ms(&self) -> i64;

    /// This boot's identity (never 0): [`Clock::mono_ms`] readings compare
    /// only within one boot.
    fn boot_id(&self) -> u64;
}

/// The wall clock, CLOCK_BOOTTIME and the kernel's boot id.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn mono_ms(&self) -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on
        // every Linux this runs on (2.6.39+), so the call cannot fail.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        // time_t and long are 32 bits on armhf.
        #[allow(clippy::useless_conversion)]
        let (sec, nsec) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
        sec.saturating_mul(1000) + nsec / 1_000_000
    }

    fn boot_id(&self) -> u64 {
        static BOOT: OnceLock<u64> = OnceLock::new();
        *BOOT.get_or_init(|| {
            let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .unwrap_or_else(|e| {
                    tracing::warn!("cannot read the boot id ({e}): time connected before this process started will not be charged");
                    format!("process {} at {}", std::process::id(), SystemClock.now_ms())
                });
            boot_hash(text.trim())
        })
    }
}

/// A 64-bit digest of a boot id (FNV-1a), never 0.
fn boot_hash(s: &str) -> u64 {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    h.max(1)
}

/// A clock that only moves when told to. Its monotonic clock starts at the
/// wall clock's reading and moves with it, except on [`ManualClock::step_wall`];
/// [`ManualClock::reboot`] starts a new boot.
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicI64,
    mono: AtomicI64,
    boot: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new(0)
    }
}

impl ManualClock {
    /// A clock reading `unix_secs` seconds.
    pub fn new(unix_secs: i64) -> Self {
        let ms = unix_secs.saturating_mul(1000);
        ManualClock {
            ms: AtomicI64::new(ms),
            mono: AtomicI64::new(ms),
            boot: AtomicU64::new(1),
        }
    }

    /// Time passes: both clocks move.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
        self.mono.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn advance_secs(&self, secs: i64) {
        self.advance(Duration::from_secs(secs.max(0) as u64));
    }

    /// The wall clock is set `secs` ahead (or back, when negative), as NTP
    /// does; no time passes.
    pub fn step_wall(&self, secs: i64) {
        self.ms
            .fetch_add(secs.saturating_mul(1000), Ordering::SeqCst);
    }

    /// The machine was off for `down`: the wall clock moves on, the
    /// monotonic clock starts again near zero in a new boot.
    pub fn reboot(&self, down: Duration) {
        let ms = i64::try_from(down.as_millis()).unwrap_or(i64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
        self.mono.store(5_000, Ordering::SeqCst);
        self.boot.fetch_add(1, Ordering::SeqCst);
    }

    /// Sets the wall clock; the monotonic clock moves by as much, unless
    /// that would take it backwards (then it stays).
    pub fn set_ms(&self, ms: i64) {
        let old = self.ms.swap(ms, Ordering::SeqCst);
        if ms > old {
            self.mono.fetch_add(ms - old, Ordering::SeqCst);
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }

    fn mono_ms(&self) -> i64 {
        self.mono.load(Ordering::SeqCst)
    }

    fn boot_id(&self) -> u64 {
        self.boot.load(Ordering::SeqCst)
    }
}

/// Converts unix seconds to a [`SystemTime`].
pub fn to_system_time(unix_secs: i64) -> SystemTime {
    if unix_secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_secs.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_secs(), 1_000);
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.now_ms(), 1_001_500);
        assert_eq!(c.now_secs(), 1_001);
        c.advance_secs(9);
        assert_eq!(c.now_secs(), 1_010);
    }

    #[test]
    fn a_wall_clock_step_does_not_move_the_monotonic_clock() {
        let c = ManualClock::new(1_000);
        c.advance_secs(2);
        c.step_wall(3 * 3600);
        c.step_wall(-7200);
        assert_eq!(c.now_secs(), 1_002 + 3600);
        assert_eq!(c.mono_ms(), 1_002_000);
        let boot = c.boot_id();
        c.reboot(Duration::from_secs(60));
        assert_ne!(c.boot_id(), boot);
        assert!(c.mono_ms() < 1_002_000);
    }

    #[test]
    fn system_boot_time_moves_forward_and_the_boot_is_known() {
        let a = SystemClock.mono_ms();
        std::thread::sleep(Duration::from_millis(20));
        let b = SystemClock.mono_ms();
        assert!(b >= a + 20 && b < a + 2_000, "{a} -> {b}");
        assert_ne!(SystemClock.boot_id(), 0);
        assert_eq!(SystemClock.boot_id(), SystemClock.boot_id());
    }

    #[test]
    fn system_clock_is_recent() {
        assert!(SystemClock.now_secs() > 1_600_000_000);
        assert_eq!(to_system_time(0), UNIX_EPOCH);
        assert_eq!(to_system_time(-5), UNIX_EPOCH - Duration::from_secs(5));
    }
}
