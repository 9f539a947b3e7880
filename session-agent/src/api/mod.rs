//! The control API for portals and operators: HTTP/JSON under `/v1`, on a unix
//! socket (mode 0660) by default.

mod error;
mod routes;
mod views;

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, path::PathBuf, sync::Arc};

use axum::Router;
use tracing::info;

use crate::{error::AgentError, gateway::Gateway};

pub use error::ApiError;
pub use views::{DeviceView, SessionView};

/// Where the control API listens.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// Unix socket path.
    pub socket: Option<PathBuf>,
    /// Optional TCP listener (needs `token`).
    pub tcp: Option<SocketAddr>,
    /// Bearer token for the TCP listener.
    pub token: Option<String>,
}

/// The `/v1` routes over a gateway.
pub fn router(gateway: Arc<Gateway>) -> Router {
    routes::v1().with_state(gateway)
}

/// Serves the API until the task is dropped.
pub async fn serve(gateway: Arc<Gateway>, opts: ApiOptions) -> Result<(), AgentError> {
    let Some(path) = opts.socket else {
        return std::future::pending().await;
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::from_io(format!("creating {}", dir.display()), e))?;
    }
    // A socket left by a killed agent would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| {
        AgentError::from_io(format!("binding the API socket {}", path.display()), e)
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| AgentError::from_io(format!("setting the mode of {}", path.display()), e))?;
    info!(socket = %path.display(), "control API listening");
    axum::serve(listener, router(gateway))
        .await
        .map_err(|e| AgentError::from_io("serving the control API", e))
}
