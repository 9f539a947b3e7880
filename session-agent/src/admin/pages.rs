//! The operator page's pages and forms. Every text that came from outside
//! (names, codes, host names) goes through [`escape`]; a change answers with
//! a redirect to its page (so a reload sends nothing twice), or with the
//! error in words.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Path, Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
    Extension, Form,
};
use chrono::{Datelike, Local, TimeZone};
use serde::Deserialize;
use session_api::csv_field;
use session_model::{
    format_price, mb_to_bytes, parse_price, NewBatch, Plan, Sale, SessionType, VoucherState,
    VoucherTemplate, BYTES_PER_MB,
};

use super::{
    accounts::Role,
    charts,
    frame::{self, error, peer, AdminState},
    login::{Login, COOKIE, IDLE},
};
use crate::web::html::{bytes, escape, time_left, utc_minute, what_it_buys};

type St = State<Arc<AdminState>>;

const CSS: &str = include_str!("assets/admin.css");
const JS: &str = include_str!("assets/admin.js");

/// Rows the clients table shows at most.
const MAX_ROWS: usize = 500;
/// Vouchers the list shows at most.
const MAX_VOUCHERS: usize = 300;
/// Codes one form makes at most.
const MAX_MAKE: u32 = 200;

// ----- frame -------------------------------------------------------------------------

fn page(login: &Login, title: &str, body: &str) -> Response {
    let mut nav = String::new();
    for (href, name, role) in [
        ("/admin", "Overview", Role::Staff),
        ("/admin/clients", "Clients", Role::Staff),
        ("/admin/vouchers", "Vouchers", Role::Staff),
        ("/admin/plans", "Plans", Role::Staff),
        ("/admin/sales", "Sales", Role::Owner),
        ("/admin/settings", "Settings", Role::Owner),
    ] {
        if login.role >= role {
            let current = if name == title {
                " aria-current=\"page\""
            } else {
                ""
            };
            nav.push_str(&format!("<a href=\"{href}\"{current}>{name}</a>"));
        }
    }
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title} · Hotspot admin</title><link rel=\"stylesheet\" href=\"/admin/assets/admin.css\">\
         <script src=\"/admin/assets/admin.js\" defer></script></head><body>\
         <header><nav>{nav}</nav><form method=\"post\" action=\"/admin/logout\" class=\"logout\">{csrf}\
         <span class=\"who\">{who} ({role})</span><button>Log out</button></form></header>\
         <main><h1>{title}</h1>{body}</main></body></html>",
        csrf = csrf(login),
        who = escape(&login.name),
        role = login.role.name(),
    );
    Html(html).into_response()
}

fn csrf(login: &Login) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(&login.csrf)
    )
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

fn model_error(e: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, &e.to_string())
}

pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "admin.css" => (CSS, "text/css; charset=utf-8"),
        "admin.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return error(StatusCode::NOT_FOUND, "No such file."),
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    r
}

// ----- login -------------------------------------------------------------------------

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let msg = message
        .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m)))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Log in · Hotspot admin</title><link rel=\"stylesheet\" href=\"/admin/assets/admin.css\"></head>\
         <body><main class=\"login\"><h1>Hotspot admin</h1>{msg}\
         <form method=\"post\" action=\"/admin/login\">\
         <label>Name <input name=\"name\" autocomplete=\"username\" required value=\"owner\"></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button>Log in</button></form></main></body></html>"
    );
    (status, Html(html)).into_response()
}

pub(crate) async fn login_form(State(st): St, headers: axum::http::HeaderMap) -> Response {
    if frame::cookie_token(&headers).is_some_and(|t| st.logins.get(&t).is_some()) {
        return see_other("/admin");
    }
    login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    name: String,
    password: String,
}

pub(crate) async fn login(
    State(st): St,
    ci: ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let from = peer(&ci);
    if !frame::same_origin(&headers) {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("This login was sent from another site."),
        );
    }
    if let Err(wait) = st.logins.admit(from, frame::now()) {
        let mut r = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many wrong passwords from this address: try again in {} s.",
                wait.as_secs().max(1)
            )),
        );
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
        return r;
    }
    let Ok(_slot) = st.verifying.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "The agent is stopping.");
    };
    let accounts = st.accounts.clone();
    let (name, password) = (f.name.clone(), f.password);
    let checked = tokio::task::spawn_blocking(move || accounts.check(&name, &password)).await;
    let account = match checked {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            // The reason (a path, a line) is the operator's to read in the log.
            tracing::error!("operator page login: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The accounts cannot be read: the agent's log says why.",
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let Some(account) = account else {
        st.logins.wrong(from, frame::now());
        tracing::warn!(%from, name = ?f.name, "operator page: wrong name or password");
        return login_page(StatusCode::UNAUTHORIZED, Some("Wrong name or password."));
    };
    let token = st.logins.open(&account.name, account.role, &account.hash);
    tracing::info!(%from, name = %account.name, role = account.role.name(), "operator page: logged in");
    let mut r = see_other("/admin");
    let cookie = format!(
        "{COOKIE}={token}; Path=/admin; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        IDLE.as_secs()
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a cookie of hex and ASCII"),
    );
    r
}

pub(crate) async fn logout(State(st): St, headers: axum::http::HeaderMap) -> Response {
    if let Some(t) = frame::cookie_token(&headers) {
        st.logins.close(&t);
    }
    let mut r = see_other("/admin/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "sa_admin=; Path=/admin; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
        ),
    );
    r
}

// ----- overview ----------------------------------------------------------------------

/// Unix seconds of the local midnight starting today, this week (Monday) and this month.
fn day_starts(now: chrono::DateTime<Local>) -> (i64, i64, i64) {
    let at = |d: chrono::NaiveDate| {
        Local
            .from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
            .earliest()
            .map_or(now.timestamp(), |t| t.timestamp())
    };
    let today = now.date_naive();
    let monday = today - chrono::Days::new(u64::from(today.weekday().num_days_from_monday()));
    let first = today.with_day(1).unwrap_or(today);
    (at(today), at(monday), at(first))
}

/// Sums per currency: `20.00 PHP · 5.00 USD`, or `0`.
fn sums<'a>(sales: impl Iterator<Item = &'a Sale>) -> String {
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for s in sales {
        *by.entry(&s.currency).or_default() += s.price_minor;
    }
    if by.is_empty() {
        return "0".into();
    }
    by.iter()
        .map(|(c, m)| format_price(*m, c))
        .collect::<Vec<_>>()
        .join(" · ")
}

pub(crate) async fn overview(State(st): St, Extension(login): Extension<Login>) -> Response {
    let mgr = st.gw.sessions();
    let connected = match mgr.connected() {
        Ok(c) => c.len(),
        Err(e) => return model_error(e),
    };
    let known = mgr.store().device_count().unwrap_or(0);
    let (today, week, month) = day_starts(Local::now());
    let sales = match mgr.sales(month.min(week)) {
        Ok(s) => s,
        Err(e) => return model_error(e),
    };
    let in_from = |from: i64| sales.iter().filter(move |s| s.at >= from);
    let moved_today = st.history.as_ref().map_or_else(
        || "-".to_string(),
        |h| {
            let day = crate::history::local_day(chrono::Utc::now().timestamp());
            let m = h.days(day).first().map(|(_, m)| *m).unwrap_or_default();
            format!("↓ {} · ↑ {}", bytes(m.down), bytes(m.up))
        },
    );
    let mut body = String::from("<section class=\"cards\">");
    let owner = login.role == Role::Owner;
    for (label, value, id, money) in [
        (
            "Connected (paying)",
            connected.to_string(),
            "connected",
            false,
        ),
        ("Devices known", known.to_string(), "known", false),
        ("Sold today", sums(in_from(today)), "today", true),
        ("Sold this week", sums(in_from(week)), "week", true),
        ("Sold this month", sums(in_from(month)), "month", true),
        (
            "Codes sold today",
            in_from(today).count().to_string(),
            "count-today",
            false,
        ),
        ("Data moved today", moved_today, "moved-today", false),
    ] {
        // The money is the owner's business.
        if money && !owner {
            continue;
        }
        body.push_str(&format!(
            "<div class=\"card\"><div class=\"label\">{label}</div><div class=\"value\" id=\"{id}\">{}</div></div>",
            escape(&value)
        ));
    }
    body.push_str("</section>");
    if login.role == Role::Owner {
        body.push_str("<p><a href=\"/admin/sales\">Sales by day and plan</a></p>");
    }
    body.push_str(&format!(
        "<div class=\"charts\" data-src=\"/admin/charts\" data-every=\"20\">{}</div>",
        charts_html(&st, owner)
    ));
    body.push_str("<h2>Recent events</h2><div class=\"scroll\"><table class=\"events\"><thead><tr><th>When (UTC)</th><th>Event</th><th>Details</th></tr></thead><tbody>");
    let recent: Vec<_> = st
        .recent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .rev()
        .cloned()
        .collect();
    for e in &recent {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            escape(&utc_minute(e.at)),
            escape(&e.kind),
            escape(&e.detail)
        ));
    }
    if recent.is_empty() {
        body.push_str("<tr><td colspan=\"3\">Nothing since the agent started.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    page(&login, "Overview", &body)
}

/// The overview's charts: the rates of the last hour and the last 24 hours,
/// and the revenue per day of the last 30 days (in the currency most sold).
fn charts_html(st: &AdminState, with_money: bool) -> String {
    let mut out = String::new();
    let now = chrono::Utc::now().timestamp();
    let minute = now as u64 / 60;
    let hm = |m: u64| {
        Local
            .timestamp_opt((m * 60) as i64, 0)
            .earliest()
            .map_or_else(String::new, |t| t.format("%H:%M").to_string())
    };
    match &st.history {
        Some(h) => {
            let points = h.minutes(minute.saturating_sub(crate::history::MINUTES_KEPT));
            let (hour_ago, day_ago, now) = (hm(minute - 60), hm(minute - 1_440), hm(minute));
            out.push_str(&charts::rates(
                "rate-hour",
                "Last hour",
                &points,
                &charts::Span {
                    from: minute - 60,
                    count: 60,
                    bucket: 1,
                    labels: (&hour_ago, &now),
                },
            ));
            out.push_str(&charts::rates(
                "rate-day",
                "Last 24 hours",
                &points,
                &charts::Span {
                    from: minute - 1_440,
                    count: 144,
                    bucket: 10,
                    labels: (&day_ago, &now),
                },
            ));
        }
        None => out.push_str("<p class=\"hint\">No traffic history here.</p>"),
    }
    if !with_money {
        return out;
    }
    let first_day = day_starts(Local::now() - chrono::Days::new(REPORT_DAYS - 1)).0;
    let sales = st.gw.sessions().sales(first_day).unwrap_or_default();
    let mut currencies: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &sales {
        *currencies.entry(&s.currency).or_default() += 1;
    }
    let currency = currencies
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or("", |(c, _)| *c)
        .to_string();
    let mut days: Vec<(String, u64)> = Vec::new();
    for i in (0..REPORT_DAYS).rev() {
        let d = (Local::now() - chrono::Days::new(i)).date_naive();
        days.push((d.format("%m-%d").to_string(), 0));
    }
    for s in sales.iter().filter(|s| s.currency == currency) {
        if let Some(t) = Local.timestamp_opt(s.at, 0).earliest() {
            let label = t.format("%m-%d").to_string();
            if let Some(d) = days.iter_mut().find(|(l, _)| *l == label) {
                d.1 += s.price_minor / 100;
            }
        }
    }
    out.push_str(&charts::bars(
        "revenue",
        "Revenue per day, last 30 days",
        &days,
        if currency.is_empty() { "" } else { &currency },
    ));
    out
}

pub(crate) async fn charts(State(st): St, Extension(login): Extension<Login>) -> Response {
    Html(charts_html(&st, login.role == Role::Owner)).into_response()
}

/// A server-sent event `changed` whenever the gateway or the sessions
/// announce something: the pages' live parts fetch themselves again.
pub(crate) async fn events(
    State(st): St,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let rx = st.changes.subscribe();
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let n = *rx.borrow_and_update();
        Some((
            Ok(Event::default().event("changed").data(n.to_string())),
            rx,
        ))
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}

// ----- clients -----------------------------------------------------------------------

/// The session a device runs, else the one it would resume (paused or
/// unstarted); none when nothing is left.
async fn session_of(
    mgr: &session_model::SessionsMgr,
    device: session_model::DeviceId,
) -> Result<Option<session_model::ClientSession>, session_model::ModelError> {
    match mgr.get_session(device).await {
        Ok(s) => Ok(Some(s)),
        Err(session_model::ModelError::NoAvailableSession(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn client_rows(st: &AdminState, login: &Login) -> Result<String, session_model::ModelError> {
    let mgr = st.gw.sessions();
    let mut rows: Vec<(bool, String)> = Vec::new();
    // Rates of the last recorded minute (none without a history).
    let now_minute = chrono::Utc::now().timestamp() as u64 / 60;
    let rates = match &st.history {
        Some(h) => match h.last_minute() {
            // A minute that is not the last one is old news: nothing moved since.
            Ok((m, r)) if m + 2 >= now_minute => r,
            _ => Default::default(),
        },
        None => Default::default(),
    };
    let blocked: std::collections::HashSet<session_model::DeviceId> =
        mgr.blocked_devices()?.into_iter().collect();
    for d in mgr.store().devices()? {
        let is_blocked = blocked.contains(&d.id);
        let session = session_of(mgr, d.id).await?;
        if session.is_none() && !is_blocked {
            continue;
        }
        let on = mgr.is_connected(d.id)?;
        let left = match &session {
            None => "-".to_string(),
            Some(s) => match s.session_type() {
                SessionType::Time => time_left(s.remaining_time()),
                SessionType::Data => bytes(s.remaining_data_bytes()),
                SessionType::TimeOrData => format!(
                    "{} or {}",
                    time_left(s.remaining_time()),
                    bytes(s.remaining_data_bytes())
                ),
            },
        };
        let used = session.as_ref().map_or(0, |s| s.data_consumption_bytes());
        let actions = if login.role == Role::Owner {
            let form = |action: &str, label: &str, class: &str| {
                format!(
                    "<form method=\"post\" action=\"/admin/clients/{action}\">{}<input type=\"hidden\" name=\"device\" value=\"{}\"><button{class}>{label}</button></form>",
                    csrf(login),
                    d.id
                )
            };
            let mut a = String::new();
            if is_blocked {
                a.push_str(&form("unblock", "Unblock", ""));
            } else {
                if session.is_some() {
                    a.push_str(&if on {
                        form("pause", "Pause", "")
                    } else {
                        form("resume", "Resume", "")
                    });
                    a.push_str(&format!(
                        "<form method=\"post\" action=\"/admin/clients/add\" class=\"add\">{}<input type=\"hidden\" name=\"device\" value=\"{}\">\
                         <input name=\"minutes\" inputmode=\"numeric\" placeholder=\"+min\" aria-label=\"minutes to add\">\
                         <input name=\"mb\" inputmode=\"numeric\" placeholder=\"+MB\" aria-label=\"MB to add\"><button>Add</button></form>",
                        csrf(login),
                        d.id
                    ));
                }
                a.push_str(&form("block", "Block", " class=\"danger\""));
            }
            a
        } else {
            String::new()
        };
        rows.push((
            on,
            format!(
                "<tr data-device=\"{}\"><td class=\"mono\"><a href=\"/admin/client?device={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                d.id,
                d.id,
                escape(&d.mac.to_string()),
                escape(&d.ip.map(|i| i.to_string()).unwrap_or_default()),
                escape(d.hostname.as_deref().unwrap_or("")),
                match (is_blocked, on) {
                    (true, _) => "blocked",
                    (false, true) => "connected",
                    (false, false) => "paused",
                },
                escape(&left),
                escape(&bytes(used)),
                escape(&rates.get(&d.id).map_or_else(
                    || "-".to_string(),
                    |m| format!(
                        "↓ {} ↑ {}",
                        charts::rate(m.down as f64 * 8.0 / 60.0),
                        charts::rate(m.up as f64 * 8.0 / 60.0)
                    )
                )),
                actions
            ),
        ));
    }
    rows.sort_by_key(|(on, _)| !*on);
    let total = rows.len();
    let mut out: String = rows.into_iter().take(MAX_ROWS).map(|(_, r)| r).collect();
    if total > MAX_ROWS {
        out.push_str(&format!(
            "<tr><td colspan=\"8\">and {} more</td></tr>",
            total - MAX_ROWS
        ));
    }
    if total == 0 {
        out.push_str("<tr><td colspan=\"8\">No client has a session.</td></tr>");
    }
    Ok(out)
}

pub(crate) async fn clients(State(st): St, Extension(login): Extension<Login>) -> Response {
    let rows = match client_rows(&st, &login).await {
        Ok(r) => r,
        Err(e) => return model_error(e),
    };
    let body = format!(
        "<p class=\"hint\">Live: updated as clients connect, pause and run out, and every 15 s.</p><div class=\"scroll\"><table class=\"clients\">\
         <thead><tr><th>MAC</th><th>Address</th><th>Name</th><th>State</th><th>Left</th><th>Used</th><th>Rate (last minute)</th><th></th></tr></thead>\
         <tbody id=\"clients\" data-src=\"/admin/clients/table\" data-every=\"15\" data-live>{rows}</tbody></table></div>"
    );
    page(&login, "Clients", &body)
}

pub(crate) async fn clients_table(State(st): St, Extension(login): Extension<Login>) -> Response {
    match client_rows(&st, &login).await {
        Ok(r) => Html(r).into_response(),
        Err(e) => model_error(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct DeviceQuery {
    device: i64,
}

fn client_chart_html(st: &AdminState, device: i64) -> String {
    let Some(h) = &st.history else {
        return "<p class=\"hint\">No traffic history here.</p>".into();
    };
    let minute = chrono::Utc::now().timestamp() as u64 / 60;
    let from = minute - crate::history::CLIENT_MINUTES_KEPT;
    match h.client_minutes(device, from) {
        Ok(points) => charts::rates(
            "client-rate",
            "Its rate, last hour",
            &points,
            &charts::Span {
                from,
                count: crate::history::CLIENT_MINUTES_KEPT,
                bucket: 1,
                labels: ("-60 min", "now"),
            },
        ),
        Err(e) => format!("<p class=\"error\">{}</p>", escape(&e.to_string())),
    }
}

/// One client: who it is, its session, and its rate over the last hour.
pub(crate) async fn client(
    State(st): St,
    Extension(login): Extension<Login>,
    Query(q): Query<DeviceQuery>,
) -> Response {
    let mgr = st.gw.sessions();
    let d = match mgr.device(q.device) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let session = match session_of(mgr, d.id).await {
        Ok(s) => s,
        Err(e) => return model_error(e),
    };
    let on = mgr.is_connected(d.id).unwrap_or(false);
    let mut body = format!(
        "<dl class=\"facts\"><dt>MAC</dt><dd class=\"mono\">{}</dd><dt>Address</dt><dd>{}</dd><dt>Name</dt><dd>{}</dd><dt>State</dt><dd id=\"state\">{}</dd>",
        escape(&d.mac.to_string()),
        escape(&d.ip.map(|i| i.to_string()).unwrap_or_default()),
        escape(d.hostname.as_deref().unwrap_or("")),
        match (&session, on) {
            (_, true) => "connected",
            (Some(_), false) => "paused",
            (None, false) => "no session",
        }
    );
    if let Some(s) = &session {
        body.push_str(&format!(
            "<dt>Time left</dt><dd>{}</dd><dt>Data used</dt><dd>{}</dd>",
            escape(&time_left(s.remaining_time())),
            escape(&bytes(s.data_consumption_bytes()))
        ));
    }
    body.push_str(&format!(
        "</dl><div data-src=\"/admin/client/chart?device={0}\" data-every=\"10\">{1}</div>",
        d.id,
        client_chart_html(&st, d.id)
    ));
    page(&login, "Client", &body)
}

pub(crate) async fn client_chart(State(st): St, Query(q): Query<DeviceQuery>) -> Response {
    Html(client_chart_html(&st, q.device)).into_response()
}

#[derive(Deserialize)]
pub(crate) struct DeviceForm {
    device: i64,
    #[serde(default)]
    minutes: String,
    #[serde(default)]
    mb: String,
}

/// Connects (`true`) or disconnects a device off the runtime, as the
/// operator asked; back to the clients.
async fn switch(st: &AdminState, device: i64, on: bool, why: &'static str) -> Response {
    let gw = st.gw.clone();
    let done = crate::runtime::off_runtime(move || async move {
        if on {
            gw.connect(device, why).await.map(|_| ())
        } else {
            gw.disconnect(device, why).await
        }
    })
    .await;
    match done {
        Ok(Ok(())) => see_other("/admin/clients"),
        Ok(Err(e)) => model_error(e),
        Err(e) => model_error(e),
    }
}

pub(crate) async fn pause(State(st): St, Form(f): Form<DeviceForm>) -> Response {
    switch(&st, f.device, false, "paused by the operator").await
}

pub(crate) async fn resume(State(st): St, Form(f): Form<DeviceForm>) -> Response {
    switch(&st, f.device, true, "resumed by the operator").await
}

/// Blocks a device: it is disconnected, and no session of its connects and
/// no code is redeemed for it until it is unblocked.
pub(crate) async fn block(State(st): St, Form(f): Form<DeviceForm>) -> Response {
    if let Err(e) = st.gw.sessions().set_blocked(f.device, true) {
        return model_error(e);
    }
    switch(&st, f.device, false, "blocked by the operator").await
}

pub(crate) async fn unblock(State(st): St, Form(f): Form<DeviceForm>) -> Response {
    match st.gw.sessions().set_blocked(f.device, false) {
        Ok(()) => see_other("/admin/clients"),
        Err(e) => model_error(e),
    }
}

fn number(field: &str, v: &str, max: u64) -> Result<u64, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(0);
    }
    match v.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!(
            "{field} must be a whole number from 0 to {max}, not {v:?}"
        )),
    }
}

/// Adds time or data to a device's current session, running or paused: it
/// stays connected and its counters keep counting.
pub(crate) async fn add(State(st): St, Form(f): Form<DeviceForm>) -> Response {
    let (minutes, mb) = match (
        number("Minutes", &f.minutes, 525_600),
        number("MB", &f.mb, 10_000_000),
    ) {
        (Ok(m), Ok(b)) => (m, b),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if minutes == 0 && mb == 0 {
        return error(StatusCode::BAD_REQUEST, "Give minutes or MB to add.");
    }
    let mgr = st.gw.sessions();
    let session = match session_of(mgr, f.device).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "This client has no session to add to.",
            )
        }
        Err(e) => return model_error(e),
    };
    let id = session.id();
    let gw = st.gw.clone();
    let done = crate::runtime::off_runtime(move || async move {
        gw.update_session(id, move |s| {
            s.set_time_secs(s.time_secs().saturating_add(minutes * 60));
            let data = s.data_bytes().saturating_add(mb * BYTES_PER_MB);
            s.set_data_mb(data as f64 / BYTES_PER_MB as f64)
        })
        .await
    })
    .await;
    match done {
        Ok(Ok(_)) => {
            tracing::info!(
                device = f.device,
                minutes,
                mb,
                "operator page: added to a session"
            );
            see_other("/admin/clients")
        }
        Ok(Err(e)) => model_error(e),
        Err(e) => model_error(e),
    }
}

// ----- plans -------------------------------------------------------------------------

pub(crate) async fn plans(State(st): St, Extension(login): Extension<Login>) -> Response {
    let plans = match st.gw.sessions().plans() {
        Ok(p) => p,
        Err(e) => return model_error(e),
    };
    let mut body = String::from(
        "<div class=\"scroll\"><table><thead><tr><th>Plan</th><th>Price</th><th>Buys</th><th>Speed ↓/↑</th><th></th></tr></thead><tbody>",
    );
    for p in &plans {
        let del = if login.role == Role::Owner {
            format!(
                "<form method=\"post\" action=\"/admin/plans/delete\">{}<input type=\"hidden\" name=\"name\" value=\"{}\"><button class=\"danger\">Remove</button></form>",
                csrf(&login),
                escape(&p.name)
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{del}</td></tr>",
            escape(&p.name),
            escape(&p.price()),
            escape(&what_it_buys(&p.template)),
            if p.template.use_global_speed {
                "shared".to_string()
            } else {
                format!("{} / {} Mbit/s", p.template.down_mbits, p.template.up_mbits)
            },
        ));
    }
    if plans.is_empty() {
        body.push_str("<tr><td colspan=\"5\">No plans yet.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    if login.role == Role::Owner {
        body.push_str(&format!(
            "<h2>New plan, or change one (same name)</h2>\
             <form method=\"post\" action=\"/admin/plans\" class=\"grid\">{}\
             <label>Name <input name=\"name\" required maxlength=\"40\"></label>\
             <label>Price <input name=\"price\" required inputmode=\"decimal\" placeholder=\"20.00\"></label>\
             <label>Currency <input name=\"currency\" required value=\"PHP\" maxlength=\"3\"></label>\
             <label>Sells <select name=\"kind\"><option value=\"time\">time</option><option value=\"data\">data</option><option value=\"time_or_data\">time or data, whichever ends first</option></select></label>\
             <label>Minutes <input name=\"minutes\" inputmode=\"numeric\" value=\"60\"></label>\
             <label>MB <input name=\"mb\" inputmode=\"numeric\" value=\"0\"></label>\
             <label>Down Mbit/s (0: no limit) <input name=\"down\" inputmode=\"numeric\" value=\"0\"></label>\
             <label>Up Mbit/s (0: no limit) <input name=\"up\" inputmode=\"numeric\" value=\"0\"></label>\
             <label>Valid days after first use (empty: no limit) <input name=\"exp_days\" inputmode=\"numeric\"></label>\
             <button>Save plan</button></form>",
            csrf(&login)
        ));
    }
    page(&login, "Plans", &body)
}

#[derive(Deserialize)]
pub(crate) struct PlanForm {
    name: String,
    price: String,
    currency: String,
    kind: String,
    #[serde(default)]
    minutes: String,
    #[serde(default)]
    mb: String,
    #[serde(default)]
    down: String,
    #[serde(default)]
    up: String,
    #[serde(default)]
    exp_days: String,
}

fn plan_of(f: &PlanForm) -> Result<Plan, String> {
    let session_type = match f.kind.as_str() {
        "time" => SessionType::Time,
        "data" => SessionType::Data,
        "time_or_data" => SessionType::TimeOrData,
        k => return Err(format!("Sells is time, data or time_or_data, not {k:?}")),
    };
    let minutes = number("Minutes", &f.minutes, 525_600)?;
    let mb = number("MB", &f.mb, 10_000_000)?;
    let down = number("Down Mbit/s", &f.down, 100_000)?;
    let up = number("Up Mbit/s", &f.up, 100_000)?;
    let exp_days = if f.exp_days.trim().is_empty() {
        None
    } else {
        Some(number("Valid days", &f.exp_days, 3650)? as u32)
    };
    Ok(Plan {
        name: f.name.trim().to_string(),
        price_minor: parse_price(&f.price).map_err(|e| e.to_string())?,
        currency: f.currency.trim().to_ascii_uppercase(),
        template: VoucherTemplate {
            session_type,
            time_secs: minutes * 60,
            data_bytes: mb_to_bytes("data_mb", mb as f64).map_err(|e| e.to_string())?,
            exp_days,
            down_mbits: down as i32,
            up_mbits: up as i32,
            use_global_speed: down == 0 && up == 0,
        },
        created_at: 0,
    })
}

pub(crate) async fn save_plan(State(st): St, Form(f): Form<PlanForm>) -> Response {
    let plan = match plan_of(&f) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match st.gw.sessions().save_plan(plan) {
        Ok(_) => see_other("/admin/plans"),
        Err(e) => model_error(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct NameForm {
    name: String,
}

pub(crate) async fn delete_plan(State(st): St, Form(f): Form<NameForm>) -> Response {
    match st.gw.sessions().remove_plan(&f.name) {
        Ok(()) => see_other("/admin/plans"),
        Err(e) => model_error(e),
    }
}

// ----- vouchers ----------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub(crate) struct VoucherFilter {
    #[serde(default)]
    state: String,
}

pub(crate) async fn vouchers(
    State(st): St,
    Extension(login): Extension<Login>,
    Query(q): Query<VoucherFilter>,
) -> Response {
    let mgr = st.gw.sessions();
    let (plans, mut all) = match (mgr.plans(), mgr.store().vouchers()) {
        (Ok(p), Ok(v)) => (p, v),
        (Err(e), _) => return model_error(e),
        (_, Err(e)) => return model_error(e),
    };
    let want: Option<VoucherState> = q.state.parse().ok();
    all.sort_by(|a, b| (b.created_at, &b.code).cmp(&(a.created_at, &a.code)));
    let mut body = String::new();
    if plans.is_empty() {
        body.push_str("<p>Make a price plan first: codes are made from a plan.</p>");
    } else {
        let options: String = plans
            .iter()
            .map(|p| {
                format!(
                    "<option value=\"{}\">{} · {}</option>",
                    escape(&p.name),
                    escape(&p.name),
                    escape(&p.price())
                )
            })
            .collect();
        body.push_str(&format!(
            "<form method=\"post\" action=\"/admin/vouchers\" class=\"grid\">{}\
             <label>Plan <select name=\"plan\">{options}</select></label>\
             <label>How many <input name=\"count\" inputmode=\"numeric\" value=\"10\"></label>\
             <button>Make and print</button></form>",
            csrf(&login)
        ));
    }
    body.push_str("<p class=\"filters\">Show: <a href=\"/admin/vouchers\">all</a>");
    for s in VoucherState::ALL {
        body.push_str(&format!(
            " · <a href=\"/admin/vouchers?state={0}\">{0}</a>",
            s.name()
        ));
    }
    body.push_str("</p><div class=\"scroll\"><table><thead><tr><th>Code</th><th>Batch</th><th>Plan</th><th>Price</th><th>State</th><th>Made</th><th></th></tr></thead><tbody>");
    let mut shown = 0;
    for v in &all {
        let state = mgr.voucher_state(v);
        if want.is_some_and(|w| w != state) {
            continue;
        }
        if shown == MAX_VOUCHERS {
            body.push_str("<tr><td colspan=\"7\">Older codes are not shown.</td></tr>");
            break;
        }
        shown += 1;
        let revoke = if login.role == Role::Owner && state == VoucherState::Unused {
            format!(
                "<form method=\"post\" action=\"/admin/vouchers/revoke\">{}<input type=\"hidden\" name=\"code\" value=\"{}\"><button class=\"danger\">Revoke</button></form>",
                csrf(&login),
                escape(&v.code)
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td class=\"mono\">{}</td><td><a href=\"/admin/vouchers/print?batch={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{revoke}</td></tr>",
            escape(&v.display_code()),
            escape(&percent_encoding::utf8_percent_encode(&v.batch, percent_encoding::NON_ALPHANUMERIC).to_string()),
            escape(&v.batch),
            escape(v.sale.as_ref().map_or("", |s| s.plan.as_str())),
            escape(v.price.as_deref().unwrap_or("")),
            state.name(),
            escape(&utc_minute(v.created_at)),
        ));
    }
    if shown == 0 {
        body.push_str("<tr><td colspan=\"7\">No codes.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    page(&login, "Vouchers", &body)
}

#[derive(Deserialize)]
pub(crate) struct MakeForm {
    plan: String,
    count: String,
}

pub(crate) async fn make_vouchers(
    State(st): St,
    Extension(login): Extension<Login>,
    Form(f): Form<MakeForm>,
) -> Response {
    let count = match number("How many", &f.count, u64::from(MAX_MAKE)) {
        Ok(n) if n >= 1 => n as u32,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "Make at least one code."),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let mgr = st.gw.sessions().clone();
    let plan = match mgr.plan(&f.plan) {
        Ok(p) => p,
        Err(e) => return model_error(e),
    };
    let batch = format!("{} {}", plan.name, Local::now().format("%Y-%m-%d %H:%M:%S"));
    let b = NewBatch {
        batch: batch
            .chars()
            .take(session_model::voucher::MAX_LABEL)
            .collect(),
        price: Some(plan.price()),
        count,
        template: plan.template.clone(),
        valid_until: None,
        max_devices: 1,
        code_len: session_model::DEFAULT_CODE_LEN,
        group: session_model::DEFAULT_GROUP,
        sale: Some(plan.terms()),
    };
    let made = crate::runtime::off_runtime(move || async move { mgr.create_vouchers(&b) }).await;
    match made {
        Ok(Ok(v)) => {
            let batch = v.first().map(|v| v.batch.clone()).unwrap_or_default();
            tracing::info!(by = %login.name, plan = %plan.name, count, "operator page: codes made");
            see_other(&format!(
                "/admin/vouchers/print?batch={}",
                percent_encoding::utf8_percent_encode(&batch, percent_encoding::NON_ALPHANUMERIC)
            ))
        }
        Ok(Err(e)) => model_error(e),
        Err(e) => model_error(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct PrintQuery {
    batch: String,
    #[serde(default)]
    layout: String,
}

/// A batch's slips to print: a sheet of A4, or a strip for 58/80 mm receipt printers.
pub(crate) async fn print(
    State(st): St,
    Extension(login): Extension<Login>,
    Query(q): Query<PrintQuery>,
) -> Response {
    let mgr = st.gw.sessions();
    let mut codes: Vec<_> = match mgr.store().vouchers() {
        Ok(v) => v.into_iter().filter(|v| v.batch == q.batch).collect(),
        Err(e) => return model_error(e),
    };
    codes.sort_by(|a, b| a.code.cmp(&b.code));
    let layout = if q.layout == "receipt" {
        "receipt"
    } else {
        "sheet"
    };
    let link = |l: &str| {
        format!(
            "/admin/vouchers/print?batch={}&amp;layout={l}",
            percent_encoding::utf8_percent_encode(&q.batch, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    let mut body = format!(
        "<p class=\"noprint\">{} codes of {}. Layout: <a href=\"{}\">A4 sheet</a> · <a href=\"{}\">receipt (58/80 mm)</a>. Print with the browser's print.</p><div class=\"slips {layout}\">",
        codes.len(),
        escape(&q.batch),
        link("sheet"),
        link("receipt"),
    );
    for v in &codes {
        let qr = st
            .portal_url
            .as_deref()
            .and_then(|u| qr_svg(&code_link(u, &v.display_code())))
            .unwrap_or_default();
        body.push_str(&format!(
            "<div class=\"slip\"><div class=\"plan\">{}</div><div class=\"code mono\">{}</div><div class=\"buys\">{}</div><div class=\"price\">{}</div>{qr}</div>",
            escape(v.sale.as_ref().map_or("", |s| s.plan.as_str())),
            escape(&v.display_code()),
            escape(&what_it_buys(&v.template)),
            escape(v.price.as_deref().unwrap_or("")),
        ));
    }
    body.push_str("</div>");
    page(&login, "Print codes", &body)
}

/// The portal page at `url` with `code` filled in.
pub(crate) fn code_link(url: &str, code: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}code={}",
        percent_encoding::utf8_percent_encode(code, percent_encoding::NON_ALPHANUMERIC)
    )
}

/// `text` as a QR code, an inline SVG element (no script, no style).
fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(116, 116)
        .build();
    // Inline in HTML: without the XML declaration, with a class and a title.
    let start = svg.find("<svg")?;
    Some(svg[start..].replacen(
        "<svg ",
        &format!(
            "<svg class=\"qr\" role=\"img\" aria-label=\"{}\" ",
            escape(text)
        ),
        1,
    ))
}

#[derive(Deserialize)]
pub(crate) struct CodeForm {
    code: String,
}

pub(crate) async fn revoke(State(st): St, Form(f): Form<CodeForm>) -> Response {
    match st.gw.sessions().revoke_voucher(&f.code) {
        Ok(_) => see_other("/admin/vouchers"),
        Err(e) => model_error(e),
    }
}

// ----- settings ----------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub(crate) struct Saved {
    #[serde(default)]
    saved: String,
}

fn settings_file(st: &AdminState) -> Option<super::frame::Editable> {
    st.settings
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// The walled garden and the settings a reload applies, as the
/// configuration file has them.
pub(crate) async fn settings(
    State(st): St,
    Extension(login): Extension<Login>,
    Query(q): Query<Saved>,
) -> Response {
    let Some((file, _)) = settings_file(&st) else {
        return page(
            &login,
            "Settings",
            "<p>This agent was started without a configuration file (<code>--config</code>): there is no file to change. Start it with one (the package does) to edit the walled garden here.</p>",
        );
    };
    let f = file.clone();
    let current = match tokio::task::spawn_blocking(move || f.read()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut body = String::new();
    if q.saved == "1" {
        body.push_str("<p class=\"good\" role=\"status\">Saved; the agent applied it.</p>");
    }
    body.push_str(&format!(
        "<p class=\"hint\">Kept in {} and applied at once, as a reload (SIGHUP) applies it; the file's other settings and comments stay.</p>\
         <form method=\"post\" action=\"/admin/settings\" class=\"grid settings\">{}\
         <label>Walled garden: addresses clients reach before paying, one per line (CIDR or CIDR:PORT)\
         <textarea name=\"walled_garden\" rows=\"5\">{}</textarea></label>\
         <label>Walled garden by name, one per line (example.com or *.example.com)\
         <textarea name=\"walled_garden_domains\" rows=\"5\">{}</textarea></label>\
         <label>Idle timeout, seconds (0: off) <input name=\"idle_timeout_secs\" inputmode=\"numeric\" value=\"{}\"></label>\
         <label>Shared speed down, Mbit/s (0: none) <input name=\"global_down_mbits\" inputmode=\"numeric\" value=\"{}\"></label>\
         <label>Shared speed up, Mbit/s (0: none) <input name=\"global_up_mbits\" inputmode=\"numeric\" value=\"{}\"></label>\
         <button>Save and apply</button></form>",
        escape(&file.path()),
        csrf(&login),
        escape(&current.walled_garden.join("\n")),
        escape(&current.walled_garden_domains.join("\n")),
        current.idle_timeout_secs,
        current.global_down_mbits,
        current.global_up_mbits,
    ));
    page(&login, "Settings", &body)
}

#[derive(Deserialize)]
pub(crate) struct SettingsForm {
    #[serde(default)]
    walled_garden: String,
    #[serde(default)]
    walled_garden_domains: String,
    idle_timeout_secs: String,
    global_down_mbits: String,
    global_up_mbits: String,
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

pub(crate) async fn save_settings(
    State(st): St,
    Extension(login): Extension<Login>,
    Form(f): Form<SettingsForm>,
) -> Response {
    let Some((file, reload)) = settings_file(&st) else {
        return error(
            StatusCode::CONFLICT,
            "This agent has no configuration file to change.",
        );
    };
    let numbers = (
        number("Idle timeout", &f.idle_timeout_secs, u64::from(u32::MAX)),
        number("Shared speed down", &f.global_down_mbits, 100_000),
        number("Shared speed up", &f.global_up_mbits, 100_000),
    );
    let (idle, down, up) = match numbers {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return error(StatusCode::BAD_REQUEST, &e)
        }
    };
    let s = super::settings::Settings {
        walled_garden: lines(&f.walled_garden),
        walled_garden_domains: lines(&f.walled_garden_domains),
        idle_timeout_secs: idle,
        global_down_mbits: down,
        global_up_mbits: up,
    };
    match tokio::task::spawn_blocking(move || file.write(&s)).await {
        Ok(Ok(())) => {
            tracing::info!(by = %login.name, "operator page: settings saved; reloading");
            // A reload asked for already will read the file as now written.
            let asked = reload.is_some_and(|r| {
                !matches!(
                    r.try_send(()),
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(()))
                )
            });
            if asked {
                see_other("/admin/settings?saved=1")
            } else {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Saved, but this agent cannot reload it now: reload it (systemctl reload session-agent).",
                )
            }
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &format!("Not saved: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

// ----- sales -------------------------------------------------------------------------

/// Codes sold and money per currency (minor units).
type Tally<'a> = (u64, BTreeMap<&'a str, u64>);

/// Days shown in the sales report.
const REPORT_DAYS: u64 = 30;

pub(crate) async fn sales(State(st): St, Extension(login): Extension<Login>) -> Response {
    let now = Local::now();
    let start = day_starts(now - chrono::Days::new(REPORT_DAYS - 1)).0;
    let sales = match st.gw.sessions().sales(start) {
        Ok(s) => s,
        Err(e) => return model_error(e),
    };
    let mut by_day: BTreeMap<String, BTreeMap<&str, Tally>> = BTreeMap::new();
    for s in &sales {
        let day = Local
            .timestamp_opt(s.at, 0)
            .earliest()
            .map_or_else(|| "?".into(), |t| t.format("%Y-%m-%d").to_string());
        let e = by_day.entry(day).or_default().entry(&s.plan).or_default();
        e.0 += 1;
        *e.1.entry(&s.currency).or_default() += s.price_minor;
    }
    let mut body = format!(
        "<p>The last {REPORT_DAYS} days, gateway's local time: {} in {} sales. <a href=\"/admin/sales.csv\" download>CSV of every sale</a></p>\
         <div class=\"scroll\"><table><thead><tr><th>Day</th><th>Plan</th><th>Sold</th><th>Revenue</th></tr></thead><tbody>",
        escape(&sums(sales.iter())),
        sales.len()
    );
    for (day, plans) in by_day.iter().rev() {
        for (plan, (n, money)) in plans {
            let money = money
                .iter()
                .map(|(c, m)| format_price(*m, c))
                .collect::<Vec<_>>()
                .join(" · ");
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{n}</td><td>{}</td></tr>",
                escape(day),
                escape(plan),
                escape(&money)
            ));
        }
    }
    if sales.is_empty() {
        body.push_str("<tr><td colspan=\"4\">Nothing sold yet.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    page(&login, "Sales", &body)
}

/// Every sale, oldest first: the figures of the sales page and the overview sum to it.
pub(crate) async fn sales_csv(State(st): St) -> Response {
    let sales = match st.gw.sessions().sales(i64::MIN) {
        Ok(s) => s,
        Err(e) => return model_error(e),
    };
    let mut out = String::from("time_utc,unix,plan,price,currency,code,mac,session_id\n");
    for s in &sales {
        out.push_str(&format!(
            "{},{},{},{}.{:02},{},{},{},{}\n",
            csv_field(
                &chrono::DateTime::from_timestamp(s.at, 0)
                    .map_or_else(String::new, |t| t.to_rfc3339())
            ),
            s.at,
            csv_field(&s.plan),
            s.price_minor / 100,
            s.price_minor % 100,
            csv_field(&s.currency),
            csv_field(&s.code),
            s.mac,
            s.session_id
        ));
    }
    let mut r = out.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"sales.csv\""),
    );
    r
}
