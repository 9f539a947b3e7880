//! Load for the benchmarks: the same operation from many threads at once.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// What a run of [`concurrent`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Operations per second over the whole run.
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs `op(thread, i)` for `i` in `0..per` on each of `threads` threads,
/// started together; each call is one operation, timed.
pub fn concurrent<F>(threads: usize, per: usize, op: F) -> Load
where
    F: Fn(usize, usize) + Send + Sync + 'static,
{
    let (op, barrier) = (Arc::new(op), Arc::new(Barrier::new(threads)));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..per)
                    .map(|i| {
                        let at = Instant::now();
                        op(t, i);
                        at.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a load thread panicked"))
        .collect();
    let wall = start.elapsed();
    all.sort();
    Load {
        rate: all.len() as f64 / wall.as_secs_f64(),
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
    }
}
