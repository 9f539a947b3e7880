//! The operator's page (`--admin-listen`): who is online, what sold, price
//! plans and vouchers, from a phone's browser.
//!
//! Safe by default: HTTPS (a certificate made at first start unless the
//! operator gives one; plain HTTP only on a loopback address), a login per
//! account (owner or staff, argon2 hashes in a file `session-agent admin
//! passwd` writes), a session cookie (`Secure; HttpOnly; SameSite=Strict`), a
//! CSRF token checked on every change, 5 wrong passwords a minute per
//! address, and a content security policy that allows no inline script or
//! style: every page is escaped HTML, every asset is in the binary.
//!
//! Every route is declared once in [`ROUTES`] with the role it needs; the
//! guard in front of each checks the login, the role and, for a change, the
//! CSRF token and the origin, before any handler runs.

pub mod accounts;
mod charts;
mod frame;
mod login;
mod pages;
pub mod settings;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    serve::ListenerExt,
    Router,
};
use tracing::{info, warn};

pub use accounts::{Accounts, Role};
pub use frame::AdminState;
pub use login::{COOKIE, MAX_WRONG};

use crate::{
    error::AgentError,
    web::{
        bind_tcp, tcp_addr,
        tls::{TlsFiles, TlsListener},
        Watched,
    },
};

/// Largest form accepted.
const FORM_LIMIT: usize = 16 * 1024;

/// The admin listener and what it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminOptions {
    /// Off unless set.
    pub listen: Option<SocketAddr>,
    /// The certificate and key; `None`: plain HTTP (loopback addresses only).
    pub tls: Option<TlsFiles>,
    /// The accounts file.
    pub accounts: PathBuf,
    /// The customers' portal page, which a slip's QR code opens with its code filled in.
    pub portal_url: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminOptionsError {
    #[error("the operator page without HTTPS would send passwords in clear: plain HTTP is only allowed on a loopback address (127.0.0.1, ::1), not {0}; drop admin.admin_plain_http (--admin-plain-http) to serve HTTPS")]
    PlainOffLoopback(SocketAddr),
}

impl AdminOptions {
    /// The page's state over `gw`, its charts drawn from `history`.
    pub fn state(
        &self,
        gw: Arc<crate::gateway::Gateway>,
        history: Option<Arc<crate::history::History>>,
        settings: Option<Arc<dyn settings::SettingsFile>>,
        reload: Option<tokio::sync::mpsc::Sender<()>>,
    ) -> Arc<AdminState> {
        let st = AdminState::new(
            gw,
            Accounts::at(&self.accounts),
            self.tls.is_some(),
            self.portal_url.clone(),
            history,
        );
        st.set_settings(settings, reload);
        st
    }

    pub fn validate(&self) -> Result<(), AdminOptionsError> {
        match self.listen {
            Some(a) if self.tls.is_none() && !a.ip().is_loopback() => {
                Err(AdminOptionsError::PlainOffLoopback(a))
            }
            _ => Ok(()),
        }
    }
}

/// Declares the guarded routes once: [`guarded`] serves them, each behind
/// the guard for its role, and [`ROUTES`] lists them for the tests.
macro_rules! routes {
    ($($method:ident $path:literal $role:ident => $handler:expr;)*) => {
        /// Every route behind the login: (method, path, the role it needs).
        pub const ROUTES: &[(&str, &str, Role)] = &[
            $( (stringify!($method), $path, Role::$role), )*
        ];

        fn guarded(st: &Arc<AdminState>) -> Router<Arc<AdminState>> {
            let mut r = Router::new();
            $(
                r = r.route(
                    $path,
                    axum::routing::on(
                        axum::routing::MethodFilter::$method,
                        $handler,
                    )
                    .route_layer(middleware::from_fn_with_state((st.clone(), Role::$role), guard)),
                );
            )*
            r
        }
    };
}

routes! {
    GET "/admin" Staff => pages::overview;
    GET "/admin/clients" Staff => pages::clients;
    GET "/admin/clients/table" Staff => pages::clients_table;
    GET "/admin/client" Staff => pages::client;
    GET "/admin/client/chart" Staff => pages::client_chart;
    GET "/admin/charts" Staff => pages::charts;
    GET "/admin/events" Staff => pages::events;
    POST "/admin/clients/pause" Owner => pages::pause;
    POST "/admin/clients/resume" Owner => pages::resume;
    POST "/admin/clients/add" Owner => pages::add;
    POST "/admin/clients/block" Owner => pages::block;
    POST "/admin/clients/unblock" Owner => pages::unblock;
    GET "/admin/plans" Staff => pages::plans;
    POST "/admin/plans" Owner => pages::save_plan;
    POST "/admin/plans/delete" Owner => pages::delete_plan;
    GET "/admin/vouchers" Staff => pages::vouchers;
    POST "/admin/vouchers" Staff => pages::make_vouchers;
    GET "/admin/vouchers/print" Staff => pages::print;
    POST "/admin/vouchers/revoke" Owner => pages::revoke;
    GET "/admin/settings" Owner => pages::settings;
    POST "/admin/settings" Owner => pages::save_settings;
    GET "/admin/sales" Owner => pages::sales;
    GET "/admin/sales.csv" Owner => pages::sales_csv;
    POST "/admin/logout" Staff => pages::logout;
}

/// The page's routes: the login, the assets, and [`ROUTES`] behind the guard.
pub fn router(st: Arc<AdminState>) -> Router {
    let https = st.https;
    guarded(&st)
        .route(
            "/admin/login",
            axum::routing::get(pages::login_form).post(pages::login),
        )
        .route("/admin/assets/{file}", axum::routing::get(pages::asset))
        .route("/", axum::routing::get(|| async { Redirect::to("/admin") }))
        .fallback(|| async { frame::error(StatusCode::NOT_FOUND, "No such page.") })
        .layer(middleware::from_fn(move |req, next| {
            headers(https, req, next)
        }))
        .layer(axum::extract::DefaultBodyLimit::max(FORM_LIMIT))
        .with_state(st)
}

/// What every answer carries: no inline script or style, no framing, no
/// caching of pages, no sniffing; HSTS over HTTPS.
async fn headers(https: bool, req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if https {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    r
}

/// In front of every route of [`ROUTES`]: a login of at least `role`; for a
/// change, the same origin and the login's CSRF token in the form.
async fn guard(
    State((st, role)): State<(Arc<AdminState>, Role)>,
    req: Request,
    next: Next,
) -> Response {
    let token = frame::cookie_token(req.headers());
    let mut login = token.as_deref().and_then(|t| st.logins.get(t));
    // The account as it is now: a changed password or a removed account
    // ends its logins.
    if let (Some(l), Some(t)) = (&login, &token) {
        let current = st.accounts.read().unwrap_or_default();
        if !current.iter().any(|a| a.name == l.name && a.hash == l.hash) {
            st.logins.close(t);
            login = None;
        }
    }
    let Some(login) = login else {
        return if req.method() == Method::GET {
            Redirect::to("/admin/login").into_response()
        } else {
            frame::error(
                StatusCode::UNAUTHORIZED,
                "You are not logged in (or your login ended): log in again.",
            )
        };
    };
    if login.role < role {
        return frame::error(
            StatusCode::FORBIDDEN,
            "Your account may not do this: ask the owner.",
        );
    }
    if req.method() == Method::GET {
        let mut req = req;
        req.extensions_mut().insert(login);
        return next.run(req).await;
    }
    if !frame::same_origin(req.headers()) {
        return frame::error(
            StatusCode::FORBIDDEN,
            "This form was sent from another site: open the page again and send it from there.",
        );
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
        return frame::error(StatusCode::PAYLOAD_TOO_LARGE, "This form is too large.");
    };
    let sent: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let token = sent
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    if !token.is_some_and(|t| crate::web::secret::same(t, &login.csrf)) {
        return frame::error(
            StatusCode::FORBIDDEN,
            "This form is out of date or was not sent from the page: open the page again and send it from there.",
        );
    }
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(login);
    next.run(req).await
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The admin listener, bound by [`bind`] before the agent says it is ready.
pub struct Listener(Option<(tokio::net::TcpListener, Option<Arc<rustls::ServerConfig>>)>);

/// Binds the admin listener, if `opts` asks for one, and reads (or makes) its
/// certificate; an error names the setting to change.
pub async fn bind(opts: &AdminOptions) -> Result<Listener, AgentError> {
    let Some(addr) = opts.listen else {
        return Ok(Listener(None));
    };
    opts.validate().map_err(|e| AgentError::Io {
        what: "starting the operator page".into(),
        source: std::io::Error::other(e),
    })?;
    let tls = match &opts.tls {
        Some(files) => {
            let mut names = vec!["localhost".to_string()];
            if !addr.ip().is_unspecified() {
                names.push(addr.ip().to_string());
            }
            if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                let h = h.trim();
                if !h.is_empty() && h != "localhost" {
                    names.push(h.to_string());
                }
            }
            let (cfg, fingerprint) = crate::web::tls::server_config(files, &names)?;
            info!(cert = %files.cert.display(), sha256 = %fingerprint, "operator page certificate (compare the fingerprint with the browser's)");
            Some(cfg)
        }
        None => None,
    };
    let l = bind_tcp(addr, "the operator page", "--admin-listen (admin.listen)").await?;
    let accounts = Accounts::at(&opts.accounts);
    match accounts.read() {
        Ok(a) if a.is_empty() => warn!(
            file = %opts.accounts.display(),
            "the operator page has no accounts yet: set the owner's password with `session-agent admin passwd`"
        ),
        Ok(_) => {}
        Err(e) => {
            return Err(AgentError::Io {
                what: "reading the operator page's accounts".into(),
                source: std::io::Error::other(e),
            })
        }
    }
    info!(%addr, https = tls.is_some(), "operator page listening on /admin");
    Ok(Listener(Some((l, tls))))
}

/// Serves the page on `listener` (from [`bind`]) until the task is dropped
/// or the listener fails; without one, waits forever.
pub async fn serve(st: Arc<AdminState>, listener: Listener) -> Result<(), AgentError> {
    let Some((tcp, tls)) = listener.0 else {
        return std::future::pending().await;
    };
    let events = tokio::spawn(st.clone().follow_events());
    let _stop_events = AbortOnDrop(events);
    let app = router(st).into_make_service_with_connect_info::<SocketAddr>();
    let addr = tcp_addr(&tcp);
    let (watched, failed) = Watched::new(tcp, "the operator page", addr);
    let served = match tls {
        Some(cfg) => {
            let l = TlsListener::new(watched, cfg)
                .map_err(|e| AgentError::from_io("serving the operator page", e))?;
            tokio::select! {
                r = axum::serve(l.tap_io(|_| {}), app) => r,
                Ok(e) = failed => return Err(e),
            }
        }
        None => tokio::select! {
            r = axum::serve(watched.tap_io(|_| {}), app) => r,
            Ok(e) = failed => return Err(e),
        },
    };
    served.map_err(|e| AgentError::from_io("serving the operator page", e))
}
