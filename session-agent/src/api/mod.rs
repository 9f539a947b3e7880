//! The control API for portals and operators: HTTP/JSON under `/v1`, on a unix
//! socket (mode 0660) by default, optionally on TCP behind a bearer token; the
//! RFC 8908 captive-portal API for clients on its own TCP listener.

mod captive;
mod error;
mod events;
mod garden;
mod listener;
mod metrics;
pub mod neigh;
mod radius;
mod routes;
pub mod views;
mod vouchers;

pub use session_api::client;

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::Response,
    serve::ListenerExt,
    Router,
};
use listener::JsonErrors;
use tracing::{info, warn};

use crate::{error::AgentError, gateway::Gateway};

pub use error::ApiError;
pub use routes::{MAX_EXP_DAYS, MAX_MB, MAX_MBITS, MAX_SECS, ROUTES};
pub use views::{ConnectedView, DeviceView, LanView, SessionView, StatusView};

/// The OpenAPI 3 document of the control API (also served at `/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Where the control API listens and what it serves.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Unix socket path.
    pub socket: Option<PathBuf>,
    /// Optional TCP listener (needs `token`).
    pub tcp: Option<SocketAddr>,
    /// Bearer token for the TCP listener.
    pub token: Option<String>,
    /// RFC 8908 captive-portal API listener, normally on a LAN address.
    pub captive: Option<SocketAddr>,
    /// `user-portal-url` of the captive-portal API.
    pub portal_url: Option<String>,
    /// Texts and colours of the built-in portal page (served on the captive listener).
    pub portal_texts: Arc<crate::portal::PortalTexts>,
    /// Clients listed with their own series in `/metrics` (the busiest first).
    pub metrics_top_clients: usize,
    /// Remove sessions that ended this long ago (checked every minute).
    pub retention: Option<Duration>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            socket: None,
            tcp: None,
            token: None,
            captive: None,
            portal_url: None,
            portal_texts: Arc::default(),
            metrics_top_clients: crate::options::Options::default().api.metrics_top_clients,
            retention: None,
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

/// What every handler sees.
pub struct ApiState {
    pub gw: Arc<Gateway>,
    pub opts: ApiOptions,
    pub started: Instant,
}

/// The `/v1` routes over a gateway (without authentication: the unix socket's mode guards it).
pub fn router(gateway: Arc<Gateway>) -> Router {
    router_with(gateway, ApiOptions::default())
}

fn router_with(gateway: Arc<Gateway>, opts: ApiOptions) -> Router {
    let state = Arc::new(ApiState {
        gw: gateway,
        opts,
        started: Instant::now(),
    });
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

/// An unknown path on the captive listener.
async fn captive_not_found() -> ApiError {
    ApiError::not_found(
        "no_route",
        "no such page here: the portal page is /portal, the RFC 8908 API /captive-portal/api",
    )
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

/// A known path of the captive listener with another method.
async fn captive_method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} takes no {method}: pages and the RFC 8908 API are read with GET, forms sent with POST",
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
    let ok = given.is_some_and(|g| {
        // Constant time in the token's length.
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
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
    captive: Option<tokio::net::TcpListener>,
}

/// Binds every listener `opts` asks for (the unix socket, TCP, the captive
/// portal's); an error names the address and the setting to change.
pub async fn bind(opts: &ApiOptions) -> Result<Listeners, AgentError> {
    opts.validate().map_err(|e| AgentError::Io {
        what: "starting the control API".into(),
        source: std::io::Error::other(e),
    })?;
    let mut out = Listeners {
        socket: None,
        tcp: None,
        captive: None,
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
        let l = bind_tcp(addr, "the control API on TCP", "--api-tcp (api.tcp)").await?;
        info!(%addr, "control API listening on TCP (bearer token)");
        out.tcp = Some(l);
    }
    if let Some(addr) = opts.captive {
        let l = bind_tcp(
            addr,
            "the captive-portal API and portal page",
            "--captive-listen (captive.listen)",
        )
        .await?;
        info!(%addr, "captive-portal API (RFC 8908) and portal page (/portal) listening");
        out.captive = Some(l);
    }
    Ok(out)
}

fn tcp_addr(l: &tokio::net::TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// A listener as axum serves it, whose socket failing for good
/// ([`crate::sys::listener_gone`]) is handed to its owner instead of retried
/// forever (axum's own listeners retry every accept error).
struct Watched<L> {
    inner: L,
    what: &'static str,
    addr: String,
    failed: Option<tokio::sync::oneshot::Sender<AgentError>>,
}

impl<L> Watched<L> {
    fn new(
        inner: L,
        what: &'static str,
        addr: String,
    ) -> (Self, tokio::sync::oneshot::Receiver<AgentError>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let w = Watched {
            inner,
            what,
            addr,
            failed: Some(tx),
        };
        (w, rx)
    }
}

/// The accept of tokio's listeners, errors and all.
trait Accept: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    type Addr: Send;
    fn accept_one(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Io, Self::Addr)>> + Send;
    fn addr(&self) -> std::io::Result<Self::Addr>;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;
    async fn accept_one(&mut self) -> std::io::Result<(Self::Io, Self::Addr)> {
        self.accept().await
    }
    fn addr(&self) -> std::io::Result<Self::Addr> {
        self.local_addr()
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    async fn accept_one(&mut self) -> std::io::Result<(Self::Io, Self::Addr)> {
        self.accept().await
    }
    fn addr(&self) -> std::io::Result<Self::Addr> {
        self.local_addr()
    }
}

impl<L: Accept> axum::serve::Listener for Watched<L> {
    type Io = L::Io;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept_one().await {
                Ok(c) => return c,
                Err(e) if crate::sys::listener_gone(&e) => {
                    if let Some(tx) = self.failed.take() {
                        let _ = tx.send(AgentError::ListenerFailed {
                            what: self.what.into(),
                            addr: self.addr.clone(),
                            cause: e,
                        });
                    }
                    std::future::pending::<()>().await;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    // Out of descriptors and the like: try again soon.
                    warn!(addr = %self.addr, "{}: accept failed: {e}", self.what);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.addr()
    }
}

async fn bind_tcp(
    addr: SocketAddr,
    what: &str,
    setting: &str,
) -> Result<tokio::net::TcpListener, AgentError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::listen(what, addr, Some(addr.port()), setting, &[], e))
}

/// Serves the API on `listeners` (from [`bind`]) until the task is dropped or
/// a listener fails.
pub async fn serve(
    gateway: Arc<Gateway>,
    opts: ApiOptions,
    listeners: Listeners,
) -> Result<(), AgentError> {
    let app = router_with(gateway.clone(), opts.clone());
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
        let token: Arc<str> = opts.token.clone().unwrap_or_default().into();
        let app = app
            .clone()
            .layer(middleware::from_fn_with_state(token, bearer));
        let addr = tcp_addr(&listener);
        let (listener, failed) = Watched::new(listener, "the control API on TCP", addr);
        tasks.spawn(async move {
            tokio::select! {
                r = axum::serve(JsonErrors(listener), app) => r.map_err(|e| AgentError::from_io("serving the control API on TCP", e)),
                Ok(e) = failed => Err(e),
            }
        });
    }

    if let Some(listener) = listeners.captive {
        let app = captive::router(gateway.clone(), opts.portal_url.clone())
            .merge(crate::portal::router(
                gateway.clone(),
                opts.portal_texts.clone(),
            ))
            .fallback(captive_not_found)
            .method_not_allowed_fallback(captive_method_not_allowed);
        let addr = tcp_addr(&listener);
        let (listener, failed) =
            Watched::new(listener, "the captive-portal API and portal page", addr);
        // `tap_io` for axum's ConnectInfo, which knows its own listener types only.
        let listener = JsonErrors(listener).tap_io(|_| {});
        tasks.spawn(async move {
            tokio::select! {
                r = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                ) => r.map_err(|e| AgentError::from_io("serving the captive-portal API", e)),
                Ok(e) = failed => Err(e),
            }
        });
    }

    if let Some(retention) = opts.retention {
        let gw = gateway.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let secs = retention.as_secs().min(i64::MAX as u64) as i64;
                match gw.gc(secs).await {
                    Ok((sessions, devices)) if !sessions.is_empty() || !devices.is_empty() => {
                        info!(
                            sessions = sessions.len(),
                            devices = devices.len(),
                            "removed ended sessions, and forgotten devices without sessions, past retention"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => warn!("session garbage collection failed: {e}"),
                }
            }
        });
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
