//! What the guard and the pages share: the page's state, the login cookie,
//! the origin check and the error page.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use axum::{
    extract::ConnectInfo,
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
};

use super::{accounts::Accounts, login, login::COOKIE};
use crate::{gateway::Gateway, web::html::escape};

/// What the page's handlers see.
pub struct AdminState {
    pub gw: Arc<Gateway>,
    pub accounts: Accounts,
    pub logins: login::Logins,
    /// Password checks at once (each costs tens of milliseconds of CPU).
    pub verifying: tokio::sync::Semaphore,
    /// Whether the page is served over HTTPS (HSTS).
    pub https: bool,
}

impl AdminState {
    /// The page over `gw`, its accounts in `accounts`, served over HTTPS or not.
    pub fn new(gw: Arc<Gateway>, accounts: Accounts, https: bool) -> Arc<Self> {
        Arc::new(Self {
            gw,
            accounts,
            logins: login::Logins::default(),
            verifying: tokio::sync::Semaphore::new(2),
            https,
        })
    }
}

/// The cookie's token in `req`, if any.
pub fn cookie_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Whether a change comes from the page itself: an `Origin` (or, without
/// one, a `Referer`) naming this host, or neither (a browser that sends
/// neither still has to send the CSRF token).
pub fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|h| h.to_str().ok());
    match (from, host) {
        (None, _) => true,
        (Some(f), Some(host)) => {
            let rest = f
                .strip_prefix("https://")
                .or_else(|| f.strip_prefix("http://"))
                .unwrap_or("");
            rest.split('/').next() == Some(host)
        }
        (Some(_), None) => false,
    }
}

/// An error in words, as a page of its own.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>Hotspot admin</title><link rel=\"stylesheet\" href=\"/admin/assets/admin.css\"></head><body><main><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/admin\">Back to the overview</a></p></main></body></html>",
        escape(message)
    );
    (status, Html(body)).into_response()
}

/// The address a request came from.
pub(crate) fn peer(ci: &ConnectInfo<SocketAddr>) -> IpAddr {
    ci.0.ip()
}

/// Now, for the wrong-password window.
pub(crate) fn now() -> Instant {
    Instant::now()
}
