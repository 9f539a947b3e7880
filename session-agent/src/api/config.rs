//! Where the control API listens, and its defaults.

use std::{net::SocketAddr, path::PathBuf};

/// Where the control API listens and what it serves.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Unix socket path.
    pub socket: Option<PathBuf>,
    /// Optional TCP listener (needs `token`).
    pub tcp: Option<SocketAddr>,
    /// Bearer token for the TCP listener.
    pub token: Option<String>,
    /// HTTPS on the TCP listener, with this certificate and key.
    pub tls: Option<crate::web::tls::TlsFiles>,
    /// Clients listed with their own series in `/metrics` (the busiest first).
    pub metrics_top_clients: usize,
}

/// The defaults of `session-agent run` (its options take theirs from here).
impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            socket: Some(PathBuf::from("/run/session-agent/api.sock")),
            tcp: None,
            token: None,
            tls: None,
            metrics_top_clients: crate::gateway::DEFAULT_METRICS_TOP_CLIENTS,
        }
    }
}

/// Listener settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ApiOptionsError {
    #[error("refusing to serve the API on TCP without a token: set --api-token TOKEN or --api-token-file FILE (or api.token in the config file)")]
    TcpWithoutToken,
}

impl ApiOptions {
    /// Refuses settings that cannot work (a TCP listener without a token).
    pub fn validate(&self) -> Result<(), ApiOptionsError> {
        if self.tcp.is_some() && self.token.as_deref().is_none_or(str::is_empty) {
            return Err(ApiOptionsError::TcpWithoutToken);
        }
        Ok(())
    }
}
