//! How the gateway meters and enforces, and the defaults of `session-agent run`.

use std::time::Duration;

/// How the gateway meters and enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Counter poll and time enforcement interval.
    pub poll_interval: Duration,
    /// Pause a session after this long without traffic.
    pub idle_timeout: Option<Duration>,
    /// Forget a client that is not allowed after this long without traffic,
    /// freeing its slot (see [`Maps::forget_idle`]).
    pub forget_idle: Option<Duration>,
    /// Per-client speed for sessions with `use_global_speed`, Mbit/s (0 = unlimited).
    pub global_down_mbits: u64,
    pub global_up_mbits: u64,
    /// Token-bucket depth in milliseconds at the limit.
    pub burst_ms: u64,
    /// Start the next available session when one ends (else disconnect).
    pub auto_advance: bool,
    /// How often the store is checkpointed (hybrid: log folded into redb).
    pub checkpoint_interval: Duration,
    /// How often usage charged by polls is written like any other store write
    /// (see [`SessionsMgr::flush`]).
    pub commit_interval: Duration,
    /// An address binding unused this long is free (the datapath is told it;
    /// see [`Maps::sweep_bindings`] for their removal).
    pub bind_ttl: Duration,
    /// A voucher's session follows its customer to a new MAC (a phone that
    /// changed its Wi-Fi address types the code again) once the MAC it is on
    /// has been silent this long (see [`Gateway::silent_for`]).
    pub voucher_move_after: Duration,
    /// Remove sessions that ended this long ago, and devices forgotten since
    /// (checked every minute; see [`Gateway::gc`](super::Gateway::gc)).
    pub retention: Option<Duration>,
}

/// Busiest clients listed in a metrics scrape, by default.
pub const DEFAULT_METRICS_TOP_CLIENTS: usize = 100;

/// The defaults of `session-agent run` (its options take theirs from here).
impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            idle_timeout: None,
            forget_idle: Some(Duration::from_secs(86_400)),
            global_down_mbits: 0,
            global_up_mbits: 0,
            burst_ms: crate::dataplane::DEFAULT_BURST_MS,
            auto_advance: true,
            checkpoint_interval: Duration::from_secs(60),
            commit_interval: Duration::from_millis(1000),
            bind_ttl: Duration::from_secs(300),
            voucher_move_after: Duration::from_secs(120),
            retention: None,
        }
    }
}
