//! Cheap counters of the gateway's own work, for metrics.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Cheap counters of the gateway's own work, for metrics.
#[derive(Debug, Default)]
pub struct GatewayStats {
    /// Polls done, and the sum and last of their durations in microseconds.
    pub polls: AtomicU64,
    pub poll_us_sum: AtomicU64,
    pub poll_us_last: AtomicU64,
    /// Polls that failed.
    pub poll_errors: AtomicU64,
    /// Datapath ring-buffer events handled, by kind.
    pub ring_new_client: AtomicU64,
    pub ring_quota_exhausted: AtomicU64,
    /// Store checkpoints done, and the sum and last of their durations in microseconds.
    pub checkpoints: AtomicU64,
    pub checkpoint_us_sum: AtomicU64,
    pub checkpoint_us_last: AtomicU64,
    pub checkpoint_errors: AtomicU64,
    /// Usage commits (see [`GatewayConfig::commit_interval`]), as for checkpoints.
    pub commits: AtomicU64,
    pub commit_us_sum: AtomicU64,
    pub commit_us_last: AtomicU64,
    pub commit_errors: AtomicU64,
    /// Idle clients forgotten (see [`GatewayConfig::forget_idle`]), and runs that failed.
    pub clients_forgotten: AtomicU64,
    pub forget_errors: AtomicU64,
    /// Slots taken back from lost races for an entry (see [`Maps::forget_idle`]).
    pub slots_reclaimed: AtomicU64,
    /// Clients forgotten because the table was under pressure, and the runs that did.
    pub clients_pressed: AtomicU64,
    pub pressure_runs: AtomicU64,
    /// Address bindings made by the datapath, removed unused, and in the tables now.
    pub addrs_bound: AtomicU64,
    pub bindings_expired: AtomicU64,
    pub bindings_live: AtomicU64,
    pub binding_sweep_errors: AtomicU64,
    /// MACs that claimed a second IPv4 address while using another.
    pub mac_conflicts: AtomicU64,
    /// The portal redirect's answers: 302s sent, requests that were not HTTP
    /// (400), and connections closed unanswered (too many at once, or no
    /// request head in time).
    pub redirects: AtomicU64,
    pub redirect_bad_requests: AtomicU64,
    pub redirect_dropped: AtomicU64,
    /// Kernel state found to differ from the sessions and corrected, by what
    /// (see [`Gateway::enforce_sessions`]).
    pub reconciled: [AtomicU64; Mismatch::ALL.len()],
}

/// How the datapath's view of a client can differ from its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Let through with no running session (and not by the operator).
    AllowedWithoutSession,
    /// Blocked while its session runs.
    BlockedWhileConnected,
    /// Speed limits other than its session's.
    Speed,
    /// A data budget where its session has none, or none where it has one.
    Budget,
}

impl Mismatch {
    pub const ALL: [Mismatch; 4] = [
        Mismatch::AllowedWithoutSession,
        Mismatch::BlockedWhileConnected,
        Mismatch::Speed,
        Mismatch::Budget,
    ];

    /// The `what` label of `session_agent_reconciled_total`.
    pub fn name(self) -> &'static str {
        match self {
            Mismatch::AllowedWithoutSession => "allowed_without_session",
            Mismatch::BlockedWhileConnected => "blocked_while_connected",
            Mismatch::Speed => "speed",
            Mismatch::Budget => "budget",
        }
    }
}

impl GatewayStats {
    pub(super) fn record(count: &AtomicU64, sum: &AtomicU64, last: &AtomicU64, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        count.fetch_add(1, Relaxed);
        sum.fetch_add(us, Relaxed);
        last.store(us, Relaxed);
    }
}
