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
    /// Where a slip's QR code sends the customer.
    pub portal_url: Option<String>,
    /// The traffic history the charts draw (none: no charts).
    pub history: Option<Arc<crate::history::History>>,
    /// The configuration the settings page edits (none: no file to edit).
    pub settings: std::sync::RwLock<Option<Editable>>,
    /// Counts the events, for the pages' live parts (`/admin/events`).
    pub changes: tokio::sync::watch::Sender<u64>,
    /// The latest events, newest last.
    pub recent: std::sync::Mutex<std::collections::VecDeque<Recent>>,
}

/// The file the settings page edits, and where a reload is asked for.
pub type Editable = (
    Arc<dyn super::settings::SettingsFile>,
    Option<tokio::sync::mpsc::Sender<()>>,
);

/// Events the overview shows at most.
pub const RECENT: usize = 50;

/// One event as the overview shows it.
#[derive(Debug, Clone)]
pub struct Recent {
    /// Unix seconds.
    pub at: i64,
    pub kind: String,
    /// The rest of its fields, `key=value`.
    pub detail: String,
}

impl AdminState {
    /// The file the settings page edits, and where it asks for a reload
    /// once it wrote it.
    pub fn set_settings(
        &self,
        s: Option<Arc<dyn super::settings::SettingsFile>>,
        reload: Option<tokio::sync::mpsc::Sender<()>>,
    ) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = s.map(|f| (f, reload));
    }

    /// Keeps `event` (anything serialised with an `event` tag) among the latest.
    pub fn note_event(&self, event: &impl serde::Serialize) {
        let Ok(serde_json::Value::Object(mut v)) = serde_json::to_value(event) else {
            return;
        };
        let kind = match v.remove("event") {
            Some(serde_json::Value::String(k)) => k,
            _ => return,
        };
        let detail = v
            .iter()
            .map(|(k, x)| match x {
                serde_json::Value::String(s) => format!("{k}={s}"),
                x => format!("{k}={x}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back(Recent {
            at: chrono::Utc::now().timestamp(),
            kind,
            detail,
        });
        drop(r);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Follows the gateway's and the sessions' events until the page stops.
    pub async fn follow_events(self: Arc<Self>) {
        let mut gw = self.gw.subscribe();
        let mut sessions = self.gw.session_events();
        loop {
            tokio::select! {
                e = gw.recv() => match e {
                    Ok(e) => self.note_event(&e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
                e = sessions.recv() => match e {
                    Ok(e) => self.note_event(&e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
            }
        }
    }
}

impl AdminState {
    /// The page over `gw`, its accounts in `accounts`, served over HTTPS or not.
    pub fn new(
        gw: Arc<Gateway>,
        accounts: Accounts,
        https: bool,
        portal_url: Option<String>,
        history: Option<Arc<crate::history::History>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            gw,
            accounts,
            portal_url,
            recent: std::sync::Mutex::default(),
            changes: tokio::sync::watch::Sender::new(0),
            settings: std::sync::RwLock::default(),
            history,
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
