//! The built-in portal page, on the captive listener (`--captive-listen`) next to
//! the RFC 8908 API: a customer types a voucher code, gets online, sees what is
//! left, and can pause and resume.
//!
//! Every request is about the asking client only: its source address is looked up
//! in the gateway's neighbour table (as the RFC 8908 API does), the MAC gives the
//! device. No page or form names a device, so no client can see or act on another's
//! session. Forms work without JavaScript; a few lines of script refresh what is
//! left every two seconds from `/portal/status`. No external assets: the client is
//! not online yet.
//!
//! Texts, the hotspot's name and colours come from one TOML file
//! ([`PortalTexts`], `portal/texts.toml` holds the defaults).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, DefaultBodyLimit, Form, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use session_model::{ClientSession, Device, ModelError};

use super::texts::PortalTexts;
use crate::{
    error::AgentError,
    gateway::Gateway,
    neigh,
    radius::{Radius, RadiusError},
    vouchers::{RedeemError, VoucherDesk},
    web::{
        html::{bytes, escape, speed, time_left, utc_minute, what_it_buys},
        ApiError,
    },
};

struct Ctx {
    gw: Arc<Gateway>,
    desk: Arc<VoucherDesk>,
    /// Codes are checked here, not by the desk (`[vouchers] backend = "radius"`).
    radius: Option<Arc<Radius>>,
    texts: Arc<PortalTexts>,
}

/// Largest form body the portal reads.
const FORM_LIMIT: usize = 4 * 1024;

/// The portal's routes: `/portal`, `/portal/status`, and the forms' targets.
/// With `radius`, codes are Access-Requests to its servers; the desk still
/// limits a client's wrong tries.
pub fn router(
    desk: Arc<VoucherDesk>,
    radius: Option<Arc<Radius>>,
    texts: Arc<PortalTexts>,
) -> Router {
    let gw = desk.gateway().clone();
    Router::new()
        .route("/portal", get(show))
        .route("/portal/status", get(status))
        .route("/portal/redeem", post(redeem))
        .route("/portal/pause", post(pause))
        .route("/portal/resume", post(resume))
        .route("/portal/logo", get(logo))
        // A code form is a few dozen bytes.
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .with_state(Arc::new(Ctx {
            gw,
            desk,
            radius,
            texts,
        }))
}

async fn logo(State(ctx): State<Arc<Ctx>>) -> Response {
    match &ctx.texts.logo_image {
        // An SVG is shown as an image only: no script of it runs.
        Some(l) => (
            [
                (header::CONTENT_TYPE, l.mime),
                (header::CACHE_CONTROL, "max-age=86400"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'",
                ),
            ],
            l.bytes.as_ref().clone(),
        )
            .into_response(),
        None => ApiError::not_found(
            "no_logo",
            "this hotspot has no logo (logo in the portal texts file)",
        )
        .into_response(),
    }
}

/// What the asking client has now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClientStatus {
    /// Its session runs: it is online.
    pub online: bool,
    /// It has a session to resume (paused or not started) while not online.
    pub paused: bool,
    pub seconds_remaining: Option<u64>,
    pub bytes_remaining: Option<u64>,
    /// Data used by the shown session.
    pub bytes_used: Option<u64>,
    /// The same, as the page shows them.
    pub time_text: Option<String>,
    pub data_text: Option<String>,
    pub used_text: Option<String>,
    pub speed_text: Option<String>,
    pub valid_until_text: Option<String>,
    /// Sessions waiting after the current one.
    pub waiting: usize,
}

async fn status_of(
    gw: &Gateway,
    texts: &PortalTexts,
    device: Option<&Device>,
) -> Result<ClientStatus, AgentError> {
    let Some(device) = device else {
        return Ok(ClientStatus::default());
    };
    let mgr = gw.sessions();
    let now = mgr.clock().now_secs();
    let running = mgr.curr_session(device.id)?;
    let shown: Option<ClientSession> = match &running {
        Some(s) => Some(s.clone()),
        None => mgr.get_session(device.id).await.ok(),
    };
    let Some(s) = shown else {
        return Ok(ClientStatus::default());
    };
    let available = mgr
        .device_sessions(device.id)?
        .iter()
        .filter(|o| o.data().is_available(now))
        .count();
    let kind = s.session_type();
    let mut secs = kind.uses_time().then(|| s.remaining_time());
    let expires = s.expires_at();
    if let Some(exp) = expires {
        let left = exp.saturating_sub(now).max(0) as u64;
        secs = Some(secs.map_or(left, |v| v.min(left)));
    }
    let data = kind.uses_data().then(|| s.remaining_data_bytes());
    let used = s.data_consumption_bytes();
    let (down, up) = if s.use_global_speed() {
        let c = gw.config();
        (c.global_down_mbits as i32, c.global_up_mbits as i32)
    } else {
        (s.down_mbits(), s.up_mbits())
    };
    Ok(ClientStatus {
        online: running.is_some(),
        paused: running.is_none(),
        seconds_remaining: secs,
        bytes_remaining: data,
        bytes_used: Some(used),
        time_text: Some(secs.map_or_else(|| texts.unlimited.clone(), time_left)),
        data_text: Some(data.map_or_else(|| texts.unlimited.clone(), bytes)),
        used_text: Some(bytes(used)),
        speed_text: Some(speed(down, up, &texts.unlimited)),
        valid_until_text: expires.map(utc_minute),
        waiting: available.saturating_sub(1),
    })
}

/// The asking client's device, if the gateway knows one for its address.
/// `Err` when the address is not a client on a LAN.
async fn client(gw: &Gateway, peer: SocketAddr) -> Result<Option<Device>, ()> {
    let mac = neigh::mac_for_ip(gw, peer.ip()).await.map_err(|_| ())?;
    Ok(gw.sessions().device_by_mac(mac).ok())
}

/// A note shown above the page.
enum Note<'a> {
    Good(&'a str),
    Bad(&'a str),
}

/// What the page shows besides the client's own state.
#[derive(Debug, Default)]
struct Extra {
    /// The operator's price plans: name, price, what it buys.
    plans: Vec<(String, String, String)>,
    /// A code to fill in (a slip's QR code opens the page with it).
    code: Option<String>,
}

impl Extra {
    fn of(gw: &Gateway, code: Option<String>) -> Extra {
        let plans = gw
            .sessions()
            .plans()
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name.clone(), p.price(), what_it_buys(&p.template)))
            .collect();
        Extra {
            plans,
            code: Self::of_code(code),
        }
    }

    /// Only what a code holds: letters, digits, dashes; at most a code's length.
    fn of_code(code: Option<String>) -> Option<String> {
        code.map(|c| {
            c.chars()
                .filter(|ch| ch.is_ascii_alphanumeric() || *ch == '-')
                .take(64)
                .collect::<String>()
        })
        .filter(|c| !c.is_empty())
    }
}

fn page(
    t: &PortalTexts,
    st: &ClientStatus,
    note: Option<Note<'_>>,
    is_client: bool,
    extra: &Extra,
) -> String {
    let mut body = String::new();
    match note {
        Some(Note::Good(m)) => body.push_str(&format!(
            "<p class=\"note good\" role=\"status\">{}</p>",
            escape(m)
        )),
        Some(Note::Bad(m)) => body.push_str(&format!(
            "<p class=\"note bad\" role=\"alert\" id=\"error\">{}</p>",
            escape(m)
        )),
        None => {}
    }
    if !is_client {
        body.push_str(&format!(
            "<p class=\"note bad\" id=\"error\">{}</p>",
            escape(&t.error_not_a_client)
        ));
    } else if st.online || st.paused && st.time_text.is_some() {
        let (title, state) = if st.online {
            (&t.connected, "online")
        } else {
            (&t.paused, "paused")
        };
        body.push_str(&format!(
            "<section class=\"card\" id=\"session\" data-state=\"{state}\"><h2 id=\"state\">{}</h2>",
            escape(title)
        ));
        if !st.online {
            body.push_str(&format!("<p class=\"hint\">{}</p>", escape(&t.paused_hint)));
        }
        body.push_str("<dl>");
        let row = |label: &str, id: &str, v: &Option<String>| {
            v.as_ref().map_or(String::new(), |v| {
                format!(
                    "<dt>{}</dt><dd id=\"{id}\">{}</dd>",
                    escape(label),
                    escape(v)
                )
            })
        };
        body.push_str(&row(&t.remaining_time, "time", &st.time_text));
        body.push_str(&row(&t.remaining_data, "data", &st.data_text));
        body.push_str(&row(&t.used_data, "used", &st.used_text));
        body.push_str(&row(&t.speed, "speed", &st.speed_text));
        body.push_str(&row(&t.valid_until, "valid", &st.valid_until_text));
        if st.waiting > 0 {
            body.push_str(&row(
                &t.waiting_sessions,
                "waiting",
                &Some(st.waiting.to_string()),
            ));
        }
        body.push_str("</dl>");
        let (action, label, id) = if st.online {
            ("/portal/pause", &t.pause_button, "pause")
        } else {
            ("/portal/resume", &t.resume_button, "resume")
        };
        body.push_str(&format!(
            "<form method=\"post\" action=\"{action}\"><button id=\"{id}\" type=\"submit\">{}</button></form></section>",
            escape(label)
        ));
    } else {
        body.push_str(&format!("<p class=\"hint\">{}</p>", escape(&t.welcome)));
    }
    if is_client {
        let heading = if st.online || st.paused && st.time_text.is_some() {
            format!("<h2>{}</h2>", escape(&t.add_code))
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<section class=\"card\">{heading}<form method=\"post\" action=\"/portal/redeem\">\
             <label for=\"code\">{}</label>\
             <input id=\"code\" name=\"code\" type=\"text\" required maxlength=\"64\" autocomplete=\"off\" \
             autocapitalize=\"characters\" spellcheck=\"false\" placeholder=\"{}\"{}>\
             <button id=\"redeem\" type=\"submit\">{}</button></form></section>",
            escape(&t.code_label),
            escape(&t.code_placeholder),
            extra
                .code
                .as_ref()
                .map(|c| format!(" value=\"{}\"", escape(c)))
                .unwrap_or_default(),
            escape(&t.redeem_button),
        ));
    }
    if !extra.plans.is_empty() {
        body.push_str(&format!(
            "<section class=\"card\" id=\"prices\"><h2>{}</h2><dl>",
            escape(&t.prices)
        ));
        for (name, price, buys) in &extra.plans {
            body.push_str(&format!(
                "<dt>{} <small>{}</small></dt><dd>{}</dd>",
                escape(name),
                escape(buys),
                escape(price)
            ));
        }
        body.push_str("</dl></section>");
    }
    let script = if st.online {
        // Refreshes what is left; reloads when the state changes (ran out, paused elsewhere).
        "<script>setInterval(function(){fetch('/portal/status',{cache:'no-store'}).then(function(r){return r.json()}).then(function(s){\
         if(!s.online){location.reload();return}\
         ['time','data','used','speed'].forEach(function(k){var e=document.getElementById(k),v=s[k+'_text'];if(e&&v)e.textContent=v})\
         }).catch(function(){})},2000)</script>"
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{name}</title><style>\
         *{{box-sizing:border-box}}body{{margin:0;font:16px/1.4 system-ui,sans-serif;background:{bg};color:{fg}}}\
         header{{background:{accent};color:#fff;padding:14px 16px}}h1{{margin:0;font-size:20px}}\
         main{{max-width:480px;margin:0 auto;padding:12px}}.card{{background:#fff;border-radius:10px;padding:14px;margin:12px 0;box-shadow:0 1px 3px #0002}}\
         h2{{margin:0 0 8px;font-size:18px}}dl{{display:grid;grid-template-columns:auto 1fr;gap:6px 12px;margin:8px 0 14px}}\
         dt{{color:#556}}dd{{margin:0;font-weight:600;text-align:right}}label{{display:block;margin-bottom:6px}}\
         input{{width:100%;font:20px monospace;padding:10px;border:1px solid #99a;border-radius:8px;text-transform:uppercase;letter-spacing:1px}}\
         button{{width:100%;margin-top:10px;padding:12px;font-size:17px;border:0;border-radius:8px;background:{accent};color:#fff}}\
         .note{{padding:10px 12px;border-radius:8px}}.good{{background:#e2f4ea}}.bad{{background:#fbe4e4}}.hint{{color:#556}}\
         header img{{height:32px;vertical-align:middle;margin-right:10px}}\
         </style></head><body><header><h1>{logo}{name}</h1></header><main>{body}</main>{script}</body></html>\n",
        logo = if t.logo_image.is_some() {
            "<img src=\"/portal/logo\" alt=\"\">"
        } else {
            ""
        },
        lang = escape(&t.lang),
        name = escape(&t.name),
        bg = t.color_background,
        fg = t.color_text,
        accent = t.color_accent,
    )
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `?done=redeemed|queued|moved`: what the last form did.
#[derive(Deserialize, Default)]
struct Done {
    done: Option<String>,
    /// A code to fill in (from a slip's QR code).
    code: Option<String>,
}

async fn render(
    ctx: &Ctx,
    peer: SocketAddr,
    status: StatusCode,
    note: Option<Note<'_>>,
    code: Option<String>,
) -> Response {
    let t = &ctx.texts;
    match client(&ctx.gw, peer).await {
        Ok(device) => match status_of(&ctx.gw, t, device.as_ref()).await {
            Ok(st) => html(status, page(t, &st, note, true, &Extra::of(&ctx.gw, code))),
            Err(e) => {
                tracing::warn!(%peer, "portal page: {e}");
                html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    page(
                        t,
                        &ClientStatus::default(),
                        Some(Note::Bad(&t.error_other)),
                        true,
                        &Extra::default(),
                    ),
                )
            }
        },
        Err(()) => html(
            StatusCode::FORBIDDEN,
            page(t, &ClientStatus::default(), None, false, &Extra::default()),
        ),
    }
}

async fn show(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    q: Result<Query<Done>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (done, code) = q.ok().map_or((None, None), |Query(d)| (d.done, d.code));
    let note = match done.as_deref() {
        Some("redeemed") => Some(Note::Good(ctx.texts.redeemed.as_str())),
        Some("queued") => Some(Note::Good(ctx.texts.queued.as_str())),
        Some("moved") => Some(Note::Good(ctx.texts.moved.as_str())),
        _ => None,
    };
    render(&ctx, peer, StatusCode::OK, note, code).await
}

async fn status(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    match client(&ctx.gw, peer).await {
        Ok(device) => match status_of(&ctx.gw, &ctx.texts, device.as_ref()).await {
            Ok(st) => (no_store, Json(st)).into_response(),
            Err(e) => (no_store, ApiError::from(e)).into_response(),
        },
        Err(()) => (
            no_store,
            ApiError::new(
                StatusCode::FORBIDDEN,
                "not_a_client",
                "this address is not a client on the hotspot's LAN: ask from a device on its Wi-Fi",
            ),
        )
            .into_response(),
    }
}

/// Refuses forms posted from another site (a page elsewhere cannot pause or spend
/// a client's session through its browser).
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s == "cross-site")
    {
        return false;
    }
    match (get(header::ORIGIN), get(header::HOST)) {
        // `null` (a sandboxed or opaque origin) has no host and never matches.
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, h)| h.eq_ignore_ascii_case(host)),
        _ => true,
    }
}

/// Runs a gateway operation (store writes, datapath) on a blocking thread.
async fn off_runtime<T, F, Fut>(op: F) -> Result<T, RedeemError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, RedeemError>>,
    T: Send + 'static,
{
    crate::runtime::off_runtime(op).await.unwrap_or_else(|e| {
        Err(RedeemError::Agent(AgentError::from_io(
            "portal operation",
            e.into(),
        )))
    })
}

#[derive(Deserialize)]
struct CodeForm {
    code: Option<String>,
}

/// What was wrong with a posted code form, before any code is looked up.
#[derive(Debug, PartialEq, Eq)]
enum FormProblem {
    /// No code field, or nothing in it.
    Missing,
    /// More than a code holds.
    TooLong,
    /// Characters no code has.
    Characters,
    /// Not a form (JSON, no content type, a body that does not parse).
    NotAForm,
}

impl FormProblem {
    fn status(&self) -> StatusCode {
        match self {
            FormProblem::NotAForm => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn text<'a>(&self, t: &'a PortalTexts) -> &'a str {
        match self {
            FormProblem::Missing => &t.error_code_missing,
            FormProblem::TooLong => &t.error_code_too_long,
            FormProblem::Characters => &t.error_code_characters,
            FormProblem::NotAForm => &t.error_form,
        }
    }
}

/// The code of a posted form, or what was wrong with it. Look-alike letters
/// and digits no code uses (`O`, `0`, `I`, `1`, `L`) pass: such a code is
/// simply unknown.
fn code_of(
    form: Result<Form<CodeForm>, axum::extract::rejection::FormRejection>,
) -> Result<String, FormProblem> {
    use axum::extract::rejection::FormRejection as R;
    let code = match form {
        Ok(Form(f)) => f.code.ok_or(FormProblem::Missing)?,
        Err(R::BytesRejection(_)) => return Err(FormProblem::TooLong),
        // Bytes that are not UTF-8 after percent-decoding.
        Err(R::FailedToDeserializeForm(_) | R::FailedToDeserializeFormBody(_)) => {
            return Err(FormProblem::Characters)
        }
        Err(_) => return Err(FormProblem::NotAForm),
    };
    let kept: Vec<char> = code
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .collect();
    if kept.is_empty() {
        Err(FormProblem::Missing)
    } else if !kept.iter().all(char::is_ascii_alphanumeric) {
        Err(FormProblem::Characters)
    } else if kept.len() > session_model::voucher::MAX_CODE_LEN {
        Err(FormProblem::TooLong)
    } else {
        Ok(code)
    }
}

fn cross_site(ctx: &Ctx) -> Response {
    html(
        StatusCode::FORBIDDEN,
        page(
            &ctx.texts,
            &ClientStatus::default(),
            Some(Note::Bad(&ctx.texts.error_other)),
            true,
            &Extra::default(),
        ),
    )
}

async fn redeem(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<CodeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site(&ctx);
    }
    let t = ctx.texts.clone();
    let code = match code_of(form) {
        Ok(code) => code,
        Err(problem) => {
            return render(
                &ctx,
                peer,
                problem.status(),
                Some(Note::Bad(problem.text(&t))),
                None,
            )
            .await
        }
    };
    let device = match neigh::device_or_new_for_ip(&ctx.gw, peer.ip()).await {
        Ok(d) => d,
        Err(_) => {
            return html(
                StatusCode::FORBIDDEN,
                page(&t, &ClientStatus::default(), None, false, &Extra::default()),
            )
        }
    };
    if let Some(radius) = ctx.radius.clone() {
        return redeem_at_radius(&ctx, radius, peer, device.id, &code).await;
    }
    let desk = ctx.desk.clone();
    let r = off_runtime(move || async move { desk.redeem(device.id, &code).await }).await;
    match r {
        Ok(r) => {
            let done = match (r.moved_from, r.queued) {
                (Some(_), _) => "moved",
                (None, true) => "queued",
                (None, false) => "redeemed",
            };
            Redirect::to(&format!("/portal?done={done}")).into_response()
        }
        Err(e) => {
            let (status, msg) = match &e {
                RedeemError::TooManyTries { .. } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    t.error_too_many_tries.as_str(),
                ),
                RedeemError::Refused(r) => (ApiError::from(r.clone()).status, t.refusal(r)),
                RedeemError::Agent(AgentError::Model(session_model::ModelError::Blocked(_))) => {
                    (StatusCode::FORBIDDEN, t.error_blocked.as_str())
                }
                RedeemError::Agent(a) => {
                    tracing::warn!(%peer, "portal redemption: {a}");
                    (StatusCode::INTERNAL_SERVER_ERROR, t.error_other.as_str())
                }
            };
            render(&ctx, peer, status, Some(Note::Bad(msg)), None).await
        }
    }
}

/// A code checked by the RADIUS server: an Access-Request with the code (in
/// canonical form, as `vouchers create --sql` writes it) as User-Name and
/// password. An Accept becomes the device's session, connected; a Reject
/// shows the server's Reply-Message, or "unknown code" and counts as a wrong
/// try without one; no answer asks the customer to try again.
async fn redeem_at_radius(
    ctx: &Arc<Ctx>,
    radius: Arc<Radius>,
    peer: SocketAddr,
    device_id: session_model::DeviceId,
    typed: &str,
) -> Response {
    let t = ctx.texts.clone();
    if let Err(e) = ctx.desk.admit(device_id) {
        tracing::info!(%peer, device_id, "portal code not sent to RADIUS: {e}");
        return render(
            ctx,
            peer,
            StatusCode::TOO_MANY_REQUESTS,
            Some(Note::Bad(&t.error_too_many_tries)),
            None,
        )
        .await;
    }
    // Letters outside the code alphabet: sent as typed (capitals, no dashes),
    // the server has the last word on codes it did not get from us.
    let code = session_model::voucher::normalize_code(typed).unwrap_or_else(|| {
        typed
            .chars()
            .filter(|c| *c != '-' && !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase()
    });
    let gw = ctx.gw.clone();
    let r = crate::runtime::off_runtime(move || async move {
        radius.login(&gw, device_id, &code, &code).await
    })
    .await
    .unwrap_or_else(|e| {
        Err(RadiusError::Agent(AgentError::from_io(
            "portal operation",
            e.into(),
        )))
    });
    let (status, msg): (StatusCode, String) = match r {
        Ok(_) => {
            ctx.desk.redeemed_elsewhere();
            return Redirect::to("/portal?done=redeemed").into_response();
        }
        // Without a word from the server, the code is unknown: a wrong try.
        // A Reply-Message says why a code that exists is refused (online
        // elsewhere, used up): the customer is not held back for it.
        Err(RadiusError::Rejected(None)) => {
            ctx.desk.refused_elsewhere(device_id);
            (StatusCode::FORBIDDEN, t.error_unknown_voucher.clone())
        }
        Err(RadiusError::Rejected(Some(message))) => (StatusCode::FORBIDDEN, message),
        Err(RadiusError::HasSession(_)) => (StatusCode::CONFLICT, t.error_already_online.clone()),
        Err(RadiusError::Unavailable(e)) => {
            tracing::warn!(%peer, device_id, "portal code: no RADIUS server answered: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, t.error_try_again.clone())
        }
        Err(e) => {
            tracing::warn!(%peer, device_id, "portal code at RADIUS: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, t.error_other.clone())
        }
    };
    render(ctx, peer, status, Some(Note::Bad(&msg)), None).await
}

async fn pause(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    switch(ctx, peer, headers, false).await
}

async fn resume(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    switch(ctx, peer, headers, true).await
}

/// Pauses (the seed's Disconnect) or resumes the asking client's session.
async fn switch(ctx: Arc<Ctx>, peer: SocketAddr, headers: HeaderMap, on: bool) -> Response {
    if !same_origin(&headers) {
        return cross_site(&ctx);
    }
    let t = ctx.texts.clone();
    let device = match client(&ctx.gw, peer).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return render(
                &ctx,
                peer,
                StatusCode::CONFLICT,
                Some(Note::Bad(&t.error_no_session)),
                None,
            )
            .await
        }
        Err(()) => {
            return html(
                StatusCode::FORBIDDEN,
                page(&t, &ClientStatus::default(), None, false, &Extra::default()),
            )
        }
    };
    let gw = ctx.gw.clone();
    let r = off_runtime(move || async move {
        if on {
            gw.connect(device.id, "resumed on the portal")
                .await
                .map(|_| ())
        } else {
            gw.disconnect(device.id, "paused on the portal").await
        }
        .map_err(RedeemError::Agent)
    })
    .await;
    match r {
        Ok(()) => Redirect::to("/portal").into_response(),
        Err(RedeemError::Agent(AgentError::Model(ModelError::NoAvailableSession(_)))) => {
            render(
                &ctx,
                peer,
                StatusCode::CONFLICT,
                Some(Note::Bad(&t.error_no_session)),
                None,
            )
            .await
        }
        Err(e) => {
            tracing::warn!(%peer, "portal {}: {e}", if on { "resume" } else { "pause" });
            render(
                &ctx,
                peer,
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(Note::Bad(&t.error_other)),
                None,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::texts::MAX_LOGO;

    #[test]
    fn a_logo_is_read_beside_the_texts_file_and_bounded() {
        let dir = std::env::temp_dir().join(format!("portal-logo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let texts = dir.join("texts.toml");
        std::fs::write(
            dir.join("logo.svg"),
            "<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
        )
        .unwrap();
        std::fs::write(&texts, "logo = \"logo.svg\"\n").unwrap();
        let t = PortalTexts::load(&texts).unwrap();
        let l = t.logo_image.as_ref().unwrap();
        assert_eq!((l.mime, l.bytes.len()), ("image/svg+xml", 41));
        assert!(
            page(&t, &ClientStatus::default(), None, true, &Extra::default())
                .contains("<img src=\"/portal/logo\"")
        );
        assert!(!page(
            &PortalTexts::default(),
            &ClientStatus::default(),
            None,
            true,
            &Extra::default()
        )
        .contains("<img"));

        std::fs::write(&texts, "logo = \"logo.gif\"\n").unwrap();
        let e = PortalTexts::load(&texts).unwrap_err().to_string();
        assert!(e.contains(".png, .jpg or .svg"), "{e}");
        std::fs::write(dir.join("big.png"), vec![0u8; MAX_LOGO + 1]).unwrap();
        std::fs::write(&texts, "logo = \"big.png\"\n").unwrap();
        let e = PortalTexts::load(&texts).unwrap_err().to_string();
        assert!(e.contains("more than 262144"), "{e}");
        std::fs::write(&texts, "logo = \"missing.png\"\n").unwrap();
        let e = PortalTexts::load(&texts).unwrap_err().to_string();
        assert!(e.contains("missing.png"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_page_lists_the_plans_and_fills_in_a_code_as_text() {
        let extra = Extra {
            plans: vec![("<i>1 h</i>".into(), "20.00 PHP".into(), "1 h 00 min".into())],
            code: Some("ABCDE-FGHJK\"><script>".into()),
        };
        let p = page(
            &PortalTexts::default(),
            &ClientStatus::default(),
            None,
            true,
            &extra,
        );
        assert!(p.contains("id=\"prices\""), "{p}");
        assert!(
            p.contains("&lt;i&gt;1 h&lt;/i&gt;") && p.contains("20.00 PHP"),
            "{p}"
        );
        // A code from a link is filled in; what no code holds is not.
        let e = Extra {
            code: Extra::of_code(Some("ABCDE-FGHJK\"><script>".into())),
            ..Extra::default()
        };
        let p = page(
            &PortalTexts::default(),
            &ClientStatus::default(),
            None,
            true,
            &e,
        );
        assert!(p.contains("value=\"ABCDE-FGHJKscript\""), "{p}");
        assert!(!p.contains("<script>"), "{p}");
    }

    #[test]
    fn the_page_escapes_what_an_operator_wrote() {
        let t = PortalTexts {
            name: "<b>Shop</b>".into(),
            ..Default::default()
        };
        let p = page(&t, &ClientStatus::default(), None, true, &Extra::default());
        assert!(p.contains("&lt;b&gt;Shop&lt;/b&gt;") && !p.contains("<b>Shop"));
        assert!(p.contains("action=\"/portal/redeem\""));
        // Without a client address, no form.
        let p = page(&t, &ClientStatus::default(), None, false, &Extra::default());
        assert!(!p.contains("/portal/redeem"));
    }

    #[test]
    fn forms_from_another_site_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "10.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://10.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&h));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
