//! The control API for portals and operators: HTTP/JSON under `/v1`, on a unix
//! socket (mode 0660) by default, optionally on TCP behind a bearer token.

mod config;
mod devices;
mod events;
mod garden;
mod input;
mod metrics;
mod radius;
mod routes;
mod sessions;
mod state;
mod status;
pub mod views;
mod vouchers;

pub use session_api::client;

use std::{os::unix::fs::PermissionsExt, sync::Arc};

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::Response,
    Router,
};
use tracing::info;

use crate::{
    error::AgentError,
    web::{bind_tcp, tcp_addr, ApiError, JsonErrors, Watched},
};

pub use config::{ApiOptions, ApiOptionsError};
pub use input::{MAX_EXP_DAYS, MAX_MB, MAX_MBITS, MAX_SECS};
pub use routes::ROUTES;
pub use state::ApiState;
pub use status::OPENAPI;
pub use views::{ConnectedView, DeviceView, LanView, SessionView, StatusView};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The `/v1` routes (without authentication: the unix socket's mode guards it).
pub fn router(state: Arc<ApiState>) -> Router {
    routes::v1()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(json_only))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no_route", "no such route; see /v1/openapi.json")
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} takes no {method}; see /v1/openapi.json for its methods",
            uri.path()
        ),
    )
}

/// Refuses request bodies declared as anything but JSON (a missing type is taken as JSON).
async fn json_only(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_none_or(|l| l.to_str().ok() != Some("0"));
    if let Some(t) = declared {
        let mime = t.split(';').next().unwrap_or("").trim().to_string();
        let json = mime == "application/json"
            || (mime.starts_with("application/") && mime.ends_with("+json"));
        if has_body && !json && req.method() != axum::http::Method::GET {
            return axum::response::IntoResponse::into_response(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("request bodies are JSON (Content-Type: application/json), not {mime}"),
            ));
        }
    }
    next.run(req).await
}

/// Checks `Authorization: Bearer TOKEN` (TCP listener).
async fn bearer(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|g| crate::web::secret::same(g, &token));
    if ok {
        next.run(req).await
    } else {
        let mut r = axum::response::IntoResponse::into_response(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        ));
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    }
}

/// The API's listeners, bound by [`bind`] before the agent says it is ready.
pub struct Listeners {
    socket: Option<tokio::net::UnixListener>,
    tcp: Option<tokio::net::TcpListener>,
    /// HTTPS on the TCP listener.
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// Binds every listener `opts` asks for (the unix socket, TCP); an error
/// names the address and the setting to change.
pub async fn bind(opts: &ApiOptions) -> Result<Listeners, AgentError> {
    opts.validate().map_err(|e| AgentError::Io {
        what: "starting the control API".into(),
        source: std::io::Error::other(e),
    })?;
    let mut out = Listeners {
        socket: None,
        tcp: None,
        tls: None,
    };
    if let Some(path) = &opts.socket {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| AgentError::file(format!("creating {}", dir.display()), e))?;
        }
        // A socket left by a killed agent would make bind fail.
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
            AgentError::listen(
                "the control API",
                path.display(),
                None,
                "--api-socket (api.socket)",
                &[],
                e,
            )
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| AgentError::file(format!("setting the mode of {}", path.display()), e))?;
        info!(socket = %path.display(), "control API listening");
        out.socket = Some(listener);
    }
    if let Some(addr) = opts.tcp {
        if let Some(files) = &opts.tls {
            let mut names = vec!["localhost".to_string()];
            if !addr.ip().is_unspecified() {
                names.push(addr.ip().to_string());
            }
            let (cfg, fingerprint) = crate::web::tls::server_config(files, &names)?;
            info!(cert = %files.cert.display(), sha256 = %fingerprint, "control API on TCP over HTTPS");
            out.tls = Some(cfg);
        }
        let l = bind_tcp(addr, "the control API on TCP", "--api-tcp (api.tcp)").await?;
        info!(%addr, https = out.tls.is_some(), "control API listening on TCP (bearer token)");
        out.tcp = Some(l);
    }
    Ok(out)
}

/// Serves the API on `listeners` (from [`bind`]) until the task is dropped or
/// a listener fails.
pub async fn serve(state: Arc<ApiState>, listeners: Listeners) -> Result<(), AgentError> {
    let token = state.opts.token.clone();
    let app = router(state);
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(listener) = listeners.socket {
        let addr = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_default();
        let (listener, failed) = Watched::new(listener, "the control API", addr);
        let app = app.clone();
        tasks.spawn(async move {
            tokio::select! {
                r = axum::serve(JsonErrors(listener), app) => r.map_err(|e| AgentError::from_io("serving the control API", e)),
                Ok(e) = failed => Err(e),
            }
        });
    }

    if let Some(listener) = listeners.tcp {
        let token: Arc<str> = token.unwrap_or_default().into();
        let app = app
            .clone()
            .layer(middleware::from_fn_with_state(token, bearer));
        let addr = tcp_addr(&listener);
        let (listener, failed) = Watched::new(listener, "the control API on TCP", addr);
        match listeners.tls {
            Some(cfg) => {
                let listener = crate::web::tls::TlsListener::new(listener, cfg)
                    .map_err(|e| AgentError::from_io("serving the control API on TCP", e))?;
                tasks.spawn(async move {
                    tokio::select! {
                        r = axum::serve(JsonErrors(listener), app) => r.map_err(|e| AgentError::from_io("serving the control API on TCP", e)),
                        Ok(e) = failed => Err(e),
                    }
                });
            }
            None => {
                tasks.spawn(async move {
                    tokio::select! {
                        r = axum::serve(JsonErrors(listener), app) => r.map_err(|e| AgentError::from_io("serving the control API on TCP", e)),
                        Ok(e) = failed => Err(e),
                    }
                });
            }
        }
    }

    match tasks.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(AgentError::Io {
            what: "the control API".into(),
            source: std::io::Error::other(e.to_string()),
        }),
        None => std::future::pending().await,
    }
}
