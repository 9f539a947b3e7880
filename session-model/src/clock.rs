//! Injectable clocks. Timestamps are unix time; the model stores whole seconds.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time, injectable so tests can drive time by hand.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> i64;

    /// Whole seconds since the unix epoch (floored).
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicI64,
}

impl ManualClock {
    /// A clock reading `unix_secs` seconds.
    pub fn new(unix_secs: i64) -> Self {
        ManualClock {
            ms: AtomicI64::new(unix_secs.saturating_mul(1000)),
        }
    }

    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn advance_secs(&self, secs: i64) {
        self.ms
            .fetch_add(secs.saturating_mul(1000), Ordering::SeqCst);
    }

    pub fn set_ms(&self, ms: i64) {
        self.ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
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
    fn system_clock_is_recent() {
        assert!(SystemClock.now_secs() > 1_600_000_000);
        assert_eq!(to_system_time(0), UNIX_EPOCH);
        assert_eq!(to_system_time(-5), UNIX_EPOCH - Duration::from_secs(5));
    }
}
