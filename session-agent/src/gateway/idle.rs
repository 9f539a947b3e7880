//! The idle timeout: when each connected device's counters last moved, and
//! which devices have been quiet for the timeout, found without looking at
//! the devices that moved.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use session_model::DeviceId;

/// A watched device: its last counter reading, when it last moved, and the
/// moment its entry in [`IdleWatch::due`] stands for.
#[derive(Debug, Clone, Copy)]
struct Watched {
    bytes: u64,
    moved: Instant,
    due: Instant,
}

/// When each connected device's counters last moved. A reading that moved
/// costs one hash update; each device stands once in a queue ordered by the
/// moment it is next looked at, which moves on to its last move when that
/// moment comes and it moved since. A check of who is idle therefore looks
/// only at the devices whose moment came, each at most once per timeout.
#[derive(Debug, Default)]
pub(super) struct IdleWatch {
    watched: HashMap<DeviceId, Watched>,
    due: BTreeSet<(Instant, DeviceId)>,
}

impl IdleWatch {
    /// A reading of `device`'s counters at `now`: its quiet time starts again
    /// when they moved, or when it was not watched yet.
    pub(super) fn heard(&mut self, device: DeviceId, bytes: u64, now: Instant) {
        match self.watched.get_mut(&device) {
            Some(w) if w.bytes == bytes => {}
            Some(w) => (w.bytes, w.moved) = (bytes, now),
            None => {
                self.watched.insert(
                    device,
                    Watched {
                        bytes,
                        moved: now,
                        due: now,
                    },
                );
                self.due.insert((now, device));
            }
        }
    }

    /// Stops watching `device` (disconnected); its next reading starts afresh.
    pub(super) fn forget(&mut self, device: DeviceId) {
        // Its queue entry goes when it comes up (it no longer matches).
        self.watched.remove(&device);
    }

    /// Stops watching every device.
    pub(super) fn clear(&mut self) {
        self.watched.clear();
        self.due.clear();
    }

    /// The devices whose counters have not moved for `idle` at `now`. They stay watched until [`IdleWatch::forget`]: one that is not
    /// taken off is named again by the next check.
    pub(super) fn idle(&mut self, now: Instant, idle: Duration) -> Vec<DeviceId> {
        let mut out = Vec::new();
        while let Some(&(at, device)) = self.due.first() {
            if now.saturating_duration_since(at) < idle {
                break;
            }
            self.due.pop_first();
            let Some(w) = self.watched.get_mut(&device) else {
                continue;
            };
            if w.due != at {
                // A stale entry: the device was forgotten and watched again.
                continue;
            }
            if now.saturating_duration_since(w.moved) >= idle {
                out.push(device);
            } else {
                w.due = w.moved;
                self.due.insert((w.moved, device));
            }
        }
        for d in &out {
            if let Some(w) = self.watched.get(d) {
                self.due.insert((w.due, *d));
            }
        }
        out
    }

    /// Devices watched.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.watched.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(10);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_device_whose_counters_do_not_move_for_the_timeout_is_idle_and_one_that_moves_is_not() {
        let t0 = Instant::now();
        let mut w = IdleWatch::default();
        w.heard(1, 100, t0);
        w.heard(2, 100, t0);
        for s in 1..=9 {
            w.heard(1, 100, at(t0, s));
            w.heard(2, 100 + s, at(t0, s));
            assert!(w.idle(at(t0, s), IDLE).is_empty(), "{s} s: nobody idle yet");
        }
        assert_eq!(w.idle(at(t0, 10), IDLE), vec![1], "1 quiet for 10 s");
        assert!(
            w.idle(at(t0, 18), IDLE).contains(&1),
            "named again until it is taken off"
        );
        assert_eq!(w.idle(at(t0, 19), IDLE), vec![1, 2], "2 last moved at 9 s");
    }

    #[test]
    fn a_forgotten_device_is_not_named_and_starts_afresh_when_watched_again() {
        let t0 = Instant::now();
        let mut w = IdleWatch::default();
        w.heard(1, 5, t0);
        w.forget(1);
        w.heard(1, 5, at(t0, 5));
        assert!(w.idle(at(t0, 12), IDLE).is_empty(), "watched again at 5 s");
        assert_eq!(w.idle(at(t0, 15), IDLE), vec![1]);
        w.forget(1);
        assert!(w.idle(at(t0, 30), IDLE).is_empty());
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_check_looks_at_each_busy_device_at_most_once_per_timeout() {
        let t0 = Instant::now();
        let mut w = IdleWatch::default();
        for d in 0..1000 {
            w.heard(d, 0, t0);
        }
        // Every device moves every second: each stays queued once, and its
        // entry moves on only when its moment comes.
        for s in 1..=30 {
            for d in 0..1000 {
                w.heard(d, s, at(t0, s));
            }
            assert!(w.idle(at(t0, s), IDLE).is_empty());
            assert_eq!(w.due.len(), 1000, "one entry per device at {s} s");
        }
        w.clear();
        assert!(w.idle(at(t0, 100), IDLE).is_empty());
    }
}
