//! The agent's log: lines on stderr, filtered by the `log_level` option (which a
//! reload changes) unless `RUST_LOG` is set, which then wins.

use std::sync::OnceLock;

use tracing_subscriber::{
    layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Registry,
};

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn from_env() -> bool {
    std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty())
}

/// Installs the log: `RUST_LOG` if set, else `info` until [`set_filter`].
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = HANDLE.set(handle);
    }
}

/// Filters the log by `filter` (checked by the options already), unless
/// `RUST_LOG` is set.
pub fn set_filter(filter: &str) {
    if from_env() {
        tracing::debug!(
            log_level = filter,
            "RUST_LOG is set and wins over log_level"
        );
        return;
    }
    let Some(h) = HANDLE.get() else { return };
    match EnvFilter::try_new(filter) {
        Ok(f) => {
            if let Err(e) = h.reload(f) {
                tracing::warn!("cannot change the log filter: {e}");
            }
        }
        Err(e) => tracing::warn!("log filter {filter:?} refused: {e}"),
    }
}
