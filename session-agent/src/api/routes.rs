//! `/v1` handlers.
//!
//! Request bodies are JSON objects with unknown keys rejected; numbers are range
//! checked before anything is changed, so a rejected request changes nothing.

use std::{net::IpAddr, sync::Arc};

use axum::{
    body::Bytes,
    extract::{
        rejection::{BytesRejection, PathRejection, QueryRejection},
        FromRequest, FromRequestParts, Path, Query, Request, State,
    },
    http::{header, request::Parts, StatusCode},
    response::{IntoResponse, Response},
    Json, Router,
};
use serde::{de::DeserializeOwned, Deserialize, Deserializer};
use session_model::{ClientSession, DeviceId, MacAddr, ModelError, SessionId};

use crate::{error::AgentError, gateway::Gateway, neigh, web::ApiError};

use super::{
    events, garden, metrics, radius,
    state::ApiState,
    views::{self, ConnectedView, DeviceView, LanView, SessionView, StatusView},
    vouchers,
};

type St = State<Arc<ApiState>>;
type ApiResult<T> = Result<Json<T>, ApiError>;
pub(super) type PathArg = Result<Path<String>, PathRejection>;
type BodyArg = Result<Bytes, BytesRejection>;

/// Longest accepted allocation or consumption of time: 100 years.
pub const MAX_SECS: u64 = 100 * 366 * 86_400;
/// Longest accepted expiry: 100 years.
pub const MAX_EXP_DAYS: u32 = 36_600;
/// Fastest accepted speed: 1 Tbit/s.
pub const MAX_MBITS: i32 = 1_000_000;
/// Largest accepted data amount: 10^12 MB (one exabyte).
pub const MAX_MB: f64 = 1e12;
/// Latest accepted `started_at`: 9999-12-31T23:59:59Z.
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;
/// Longest notification text, in characters.
pub const MAX_NOTIFICATION: usize = 1024;
/// Longest hostname, in characters.
pub const MAX_HOSTNAME: usize = 253;

/// Declares the routes once: [`v1`] serves them and [`ROUTES`] lists them
/// (method, path) for the check against `openapi.json`.
macro_rules! routes {
    ($($path:literal => $m0:ident($h0:expr) $(.$m:ident($h:expr))* ;)*) => {
        /// Every route as (method, path), as [`v1`] serves it.
        pub const ROUTES: &[(&str, &str)] = &[
            $( (stringify!($m0), $path), $( (stringify!($m), $path), )* )*
        ];

        pub fn v1() -> Router<Arc<ApiState>> {
            Router::new() $( .route($path, axum::routing::$m0($h0) $(.$m($h))*) )*
        }
    };
}

routes! {
    "/v1/status" => get(status);
    "/v1/providers" => get(providers);
    "/v1/devices" => get(list_devices).post(create_device);
    "/v1/devices/{id}" => get(show_device).delete(delete_device);
    "/v1/devices/by-mac/{mac}" => get(device_by_mac);
    "/v1/devices/by-ip/{ip}" => get(device_by_ip);
    "/v1/devices/{id}/rekey" => post(rekey);
    "/v1/devices/{id}/sessions" => get(device_sessions).post(create_session);
    "/v1/devices/{id}/current-session" => get(current_session);
    "/v1/devices/{id}/session" => get(get_session);
    "/v1/devices/{id}/connected" => get(is_connected);
    "/v1/devices/{id}/connect" => post(connect);
    "/v1/devices/{id}/disconnect" => post(disconnect);
    "/v1/sessions/{id}" => get(show_session).patch(patch_session).delete(delete_session);
    "/v1/sessions/{id}/inc" => post(inc_session);
    "/v1/sessions/{id}/save" => post(save_session);
    "/v1/sessions/{id}/reload" => post(reload_session);
    "/v1/devices/{id}/redeem" => post(vouchers::redeem);
    "/v1/devices/by-ip/{ip}/redeem" => post(vouchers::redeem_by_ip);
    "/v1/devices/{id}/login" => post(radius::login);
    "/v1/devices/by-ip/{ip}/login" => post(radius::login_by_ip);
    "/v1/vouchers" => get(vouchers::list).post(vouchers::create);
    "/v1/vouchers/export" => get(vouchers::export);
    "/v1/vouchers/{code}" => get(vouchers::show).delete(vouchers::revoke);
    "/v1/garden/domains" => get(garden::list).post(garden::add);
    "/v1/garden/domains/{domain}" => delete(garden::remove);
    "/v1/events" => get(events::stream);
    "/v1/metrics" => get(metrics::handler);
    "/metrics" => get(metrics::handler);
    "/v1/openapi.json" => get(openapi);
}

// ----- running ------------------------------------------------------------------------

/// Runs an operation that writes the store (a redb commit fsyncs) and
/// programs the datapath on a blocking thread, so the runtime's workers go
/// on serving (and polling) meanwhile.
pub(super) async fn off_runtime<T, E, F, Fut>(st: &ApiState, op: F) -> Result<T, ApiError>
where
    F: FnOnce(Arc<Gateway>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Into<ApiError> + Send + 'static,
    T: Send + 'static,
{
    let gw = st.gw.clone();
    crate::runtime::off_runtime(move || op(gw))
        .await?
        .map_err(Into::into)
}

// ----- input -------------------------------------------------------------------------

pub(super) fn path(p: PathArg) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
}

/// A client address in the path (`/v1/devices/by-ip/{ip}/...`).
pub(super) fn ip_path(p: PathArg) -> Result<IpAddr, ApiError> {
    let ip = path(p)?;
    ip.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_ip",
            format!("'{ip}' is not an IPv4 or IPv6 address"),
        )
    })
}

/// A request's JSON object body, parsed with the API's error codes (see
/// [`json`]); a request without one is refused (`missing_body`).
pub struct Body<T>(pub T);

/// [`Body`], or `T::default()` when the request has no body.
pub struct BodyOr<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        json(Bytes::from_request(req, state).await, None).map(Body)
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for BodyOr<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        json(Bytes::from_request(req, state).await, Some(T::default())).map(BodyOr)
    }
}

/// The `{id}` of a device route, parsed (`invalid_id` otherwise).
pub struct DevId(pub DeviceId);

/// The `{id}` of a session route, parsed (`invalid_id` otherwise).
pub struct SessId(pub SessionId);

impl<S: Send + Sync> FromRequestParts<S> for DevId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let p = path(Path::<String>::from_request_parts(parts, state).await)?;
        device_id(&p).map(DevId)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let p = path(Path::<String>::from_request_parts(parts, state).await)?;
        session_id(&p).map(SessId)
    }
}

/// Parses a JSON body; an empty body is `empty` when given, else an error.
fn json<T: DeserializeOwned>(b: BodyArg, empty: Option<T>) -> Result<T, ApiError> {
    let bytes = b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                e.body_text(),
            )
        } else {
            ApiError::bad_request("invalid_body", e.body_text())
        }
    })?;
    // Only a body of no bytes at all is an absent body; whitespace is not JSON.
    if bytes.is_empty() {
        return empty.ok_or_else(|| {
            ApiError::bad_request("missing_body", "this request needs a JSON object body")
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "malformed_json",
            "the body is blank: send a JSON object, or no body at all",
        ));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let v = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let code = if inner.is_data() {
            "invalid_body"
        } else {
            "malformed_json"
        };
        let message = if path.is_empty() || path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        ApiError::bad_request(code, message)
    })?;
    Ok(v)
}

fn device_id(s: &str) -> Result<DeviceId, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("'{s}' is not a device id (a 64-bit integer)"),
        )
    })
}

fn session_id(s: &str) -> Result<SessionId, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("'{s}' is not a session id (an unsigned 64-bit integer)"),
        )
    })
}

pub(super) fn out_of_range(field: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("out_of_range", format!("{field} must be {what}"))
}

pub(super) fn check_secs(field: &str, v: u64) -> Result<u64, ApiError> {
    if v > MAX_SECS {
        return Err(out_of_range(field, format_args!("at most {MAX_SECS}")));
    }
    Ok(v)
}

pub(super) fn check_mb(field: &str, v: f64) -> Result<f64, ApiError> {
    if !v.is_finite() || !(0.0..=MAX_MB).contains(&v) {
        return Err(out_of_range(field, format_args!("between 0 and {MAX_MB}")));
    }
    Ok(v)
}

pub(super) fn check_mbits(field: &str, v: i32) -> Result<i32, ApiError> {
    if !(0..=MAX_MBITS).contains(&v) {
        return Err(out_of_range(
            field,
            format_args!("between 0 and {MAX_MBITS}"),
        ));
    }
    Ok(v)
}

pub(super) fn check_exp_days(v: Option<u32>) -> Result<Option<u32>, ApiError> {
    match v {
        Some(d) if d > MAX_EXP_DAYS => Err(out_of_range(
            "exp_days",
            format_args!("at most {MAX_EXP_DAYS}"),
        )),
        v => Ok(v),
    }
}

pub(super) fn check_timestamp(field: &str, v: Option<i64>) -> Result<Option<i64>, ApiError> {
    match v {
        Some(t) if !(0..=MAX_TIMESTAMP).contains(&t) => Err(out_of_range(
            field,
            format_args!("unix seconds between 0 and {MAX_TIMESTAMP}"),
        )),
        v => Ok(v),
    }
}

fn check_notification(n: &str) -> Result<(), ApiError> {
    if n.chars().count() > MAX_NOTIFICATION {
        return Err(out_of_range(
            "notification",
            format_args!("at most {MAX_NOTIFICATION} characters"),
        ));
    }
    Ok(())
}

/// A key that may be absent but not `null`.
fn present<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(d).map(Some)
}

/// `Some(None)` for an explicit `null`, `None` when the key is absent.
fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

// ----- views -------------------------------------------------------------------------

pub(super) fn now(gw: &Gateway) -> i64 {
    gw.sessions().clock().now_secs()
}

pub(crate) fn device_view(gw: &Gateway, id: DeviceId) -> Result<DeviceView, ApiError> {
    let d = gw.sessions().device(id)?;
    Ok(views::device_view(&d, gw.sessions().is_connected(id)?))
}

pub(super) fn view(gw: &Gateway, s: &ClientSession) -> Result<SessionView, ApiError> {
    let running = gw.sessions().running_session_id(s.device_id())? == Some(s.id());
    Ok(views::session_view(s, running, now(gw)))
}

fn session_view(gw: &Gateway, id: SessionId) -> Result<SessionView, ApiError> {
    view(gw, &gw.sessions().session(id)?)
}

pub(super) fn created<T: serde::Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

// ----- status ------------------------------------------------------------------------

async fn status(State(st): St) -> ApiResult<StatusView> {
    let mgr = st.gw.sessions();
    let devices = mgr.store().device_count().map_err(ModelError::from)?;
    let mut sessions = 0u64;
    mgr.store()
        .for_each_session(&mut |_| sessions += 1)
        .map_err(ModelError::from)?;
    let lans = st
        .gw
        .lans()
        .iter()
        .map(|l| LanView {
            name: l.name.clone(),
            clients: l.maps.lock().map(|m| m.live_clients()).unwrap_or(0),
        })
        .collect();
    let stats = st.gw.stats();
    Ok(Json(StatusView {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: st.started.elapsed().as_secs(),
        lans,
        devices,
        connected: mgr.connected()?.len() as u64,
        sessions,
        providers: mgr.provider_names(),
        poll_interval_ms: st.gw.config().poll_interval.as_millis() as u64,
        auto_advance: mgr.auto_advance(),
        polls: stats.polls.load(std::sync::atomic::Ordering::Relaxed),
        last_poll_us: stats
            .poll_us_last
            .load(std::sync::atomic::Ordering::Relaxed),
    }))
}

async fn providers(State(st): St) -> ApiResult<Vec<String>> {
    Ok(Json(st.gw.sessions().provider_names()))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

// ----- devices -----------------------------------------------------------------------

async fn list_devices(State(st): St) -> ApiResult<Vec<DeviceView>> {
    let connected: std::collections::HashSet<DeviceId> = st
        .gw
        .sessions()
        .connected()?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    let devices = st
        .gw
        .sessions()
        .store()
        .devices()
        .map_err(ModelError::from)?;
    Ok(Json(
        devices
            .iter()
            .map(|d| views::device_view(d, connected.contains(&d.id)))
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    mac: String,
    #[serde(default)]
    ip: Option<IpAddr>,
    #[serde(default)]
    hostname: Option<String>,
}

/// A MAC a device can have: the datapath meters unicast source addresses only.
fn client_mac(s: &str) -> Result<MacAddr, ApiError> {
    let mac = session_model::parse_mac(s)?;
    let key = mac;
    if key.is_zero() || key.is_group() {
        return Err(AgentError::NotAClientMac(key).into());
    }
    Ok(mac)
}

async fn create_device(State(st): St, Body(b): Body<NewDevice>) -> Result<Response, ApiError> {
    let mac = client_mac(&b.mac)?;
    if b.hostname
        .as_ref()
        .is_some_and(|h| h.chars().count() > MAX_HOSTNAME)
    {
        return Err(out_of_range(
            "hostname",
            format_args!("at most {MAX_HOSTNAME} characters"),
        ));
    }
    let d = off_runtime(&st, move |gw| async move {
        gw.sessions().create_device(mac, b.ip, b.hostname)
    })
    .await?;
    Ok(created(views::device_view(&d, false)))
}

async fn show_device(State(st): St, DevId(id): DevId) -> ApiResult<DeviceView> {
    Ok(Json(device_view(&st.gw, id)?))
}

async fn device_by_mac(State(st): St, mac: PathArg) -> ApiResult<DeviceView> {
    let d = st
        .gw
        .sessions()
        .device_by_mac(session_model::parse_mac(&path(mac)?)?)?;
    Ok(Json(device_view(&st.gw, d.id)?))
}

async fn device_by_ip(State(st): St, ip: PathArg) -> ApiResult<DeviceView> {
    let d = neigh::device_for_ip(&st.gw, ip_path(ip)?).await?;
    Ok(Json(device_view(&st.gw, d.id)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rekey {
    mac: String,
}

async fn rekey(State(st): St, DevId(id): DevId, Body(b): Body<Rekey>) -> ApiResult<DeviceView> {
    let mac = client_mac(&b.mac)?;
    off_runtime(&st, move |gw| async move { gw.rekey(id, mac).await }).await?;
    Ok(Json(device_view(&st.gw, id)?))
}

/// `?force=true`: remove what is connected or running too, disconnecting it first.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Force {
    #[serde(default)]
    force: bool,
}

async fn delete_device(
    State(st): St,
    DevId(id): DevId,
    q: Result<Query<Force>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(f) = q?;
    off_runtime(
        &st,
        move |gw| async move { gw.remove_device(id, f.force).await },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_session(
    State(st): St,
    SessId(id): SessId,
    q: Result<Query<Force>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(f) = q?;
    off_runtime(&st, move |gw| async move {
        gw.remove_session(id, f.force).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- sessions of a device ----------------------------------------------------------

async fn device_sessions(State(st): St, DevId(id): DevId) -> ApiResult<Vec<SessionView>> {
    let running = st.gw.sessions().running_session_id(id)?;
    let sessions = st.gw.sessions().device_sessions(id)?;
    let now = now(&st.gw);
    Ok(Json(
        sessions
            .iter()
            .map(|s| views::session_view(s, Some(s.id()) == running, now))
            .collect(),
    ))
}

/// The Flarehotspot SDK's `CreateSession` arguments.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    #[serde(rename = "type")]
    session_type: u8,
    #[serde(default)]
    time_secs: u64,
    #[serde(default)]
    data_mb: f64,
    #[serde(default)]
    exp_days: Option<u32>,
    #[serde(default)]
    down_mbits: i32,
    #[serde(default)]
    up_mbits: i32,
    #[serde(default)]
    use_global_speed: bool,
}

async fn create_session(
    State(st): St,
    DevId(id): DevId,
    Body(b): Body<NewSession>,
) -> Result<Response, ApiError> {
    check_secs("time_secs", b.time_secs)?;
    check_mb("data_mb", b.data_mb)?;
    check_exp_days(b.exp_days)?;
    check_mbits("down_mbits", b.down_mbits)?;
    check_mbits("up_mbits", b.up_mbits)?;
    let s = off_runtime(&st, move |gw| async move {
        gw.sessions()
            .create_session(
                id,
                b.session_type,
                b.time_secs,
                b.data_mb,
                b.exp_days,
                b.down_mbits,
                b.up_mbits,
                b.use_global_speed,
            )
            .await
    })
    .await?;
    Ok(created(view(&st.gw, &s)?))
}

async fn current_session(State(st): St, DevId(id): DevId) -> ApiResult<Option<SessionView>> {
    let now = now(&st.gw);
    Ok(Json(
        st.gw
            .sessions()
            .curr_session(id)?
            .map(|s| views::session_view(&s, true, now)),
    ))
}

async fn get_session(State(st): St, DevId(id): DevId) -> ApiResult<SessionView> {
    match st.gw.sessions().get_session(id).await {
        Ok(s) => Ok(Json(view(&st.gw, &s)?)),
        Err(e) => Err(e.into()),
    }
}

async fn is_connected(State(st): St, DevId(id): DevId) -> ApiResult<ConnectedView> {
    let connected = st.gw.sessions().is_connected(id)?;
    Ok(Json(ConnectedView {
        device_id: id,
        connected,
        session_id: st.gw.sessions().running_session_id(id)?,
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Notification {
    #[serde(default)]
    notification: String,
}

async fn connect(
    State(st): St,
    DevId(id): DevId,
    BodyOr(n): BodyOr<Notification>,
) -> ApiResult<SessionView> {
    check_notification(&n.notification)?;
    let s = off_runtime(&st, move |gw| async move {
        gw.connect(id, &n.notification).await
    })
    .await?;
    Ok(Json(view(&st.gw, &s)?))
}

async fn disconnect(
    State(st): St,
    DevId(id): DevId,
    BodyOr(n): BodyOr<Notification>,
) -> ApiResult<DeviceView> {
    check_notification(&n.notification)?;
    off_runtime(&st, move |gw| async move {
        gw.disconnect(id, &n.notification).await
    })
    .await?;
    Ok(Json(device_view(&st.gw, id)?))
}

// ----- one session -------------------------------------------------------------------

async fn show_session(State(st): St, SessId(id): SessId) -> ApiResult<SessionView> {
    Ok(Json(session_view(&st.gw, id)?))
}

/// The Flarehotspot SDK's `ClientSession` setters; each present key is set, then the session is saved.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionPatch {
    #[serde(default, deserialize_with = "present")]
    time_secs: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    data_mb: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    time_cons: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    data_cons: Option<f64>,
    #[serde(default, deserialize_with = "double_option")]
    started_at: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    exp_days: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    down_mbits: Option<i32>,
    #[serde(default, deserialize_with = "present")]
    up_mbits: Option<i32>,
    #[serde(default, deserialize_with = "present")]
    use_global_speed: Option<bool>,
}

impl SessionPatch {
    fn check(&self) -> Result<(), ApiError> {
        if let Some(v) = self.time_secs {
            check_secs("time_secs", v)?;
        }
        if let Some(v) = self.time_cons {
            check_secs("time_cons", v)?;
        }
        if let Some(v) = self.data_mb {
            check_mb("data_mb", v)?;
        }
        if let Some(v) = self.data_cons {
            check_mb("data_cons", v)?;
        }
        if let Some(v) = self.started_at {
            check_timestamp("started_at", v)?;
        }
        if let Some(v) = self.exp_days {
            check_exp_days(v)?;
        }
        if let Some(v) = self.down_mbits {
            check_mbits("down_mbits", v)?;
        }
        if let Some(v) = self.up_mbits {
            check_mbits("up_mbits", v)?;
        }
        Ok(())
    }

    fn apply(self, s: &mut ClientSession) -> Result<(), ModelError> {
        if let Some(v) = self.time_secs {
            s.set_time_secs(v);
        }
        if let Some(v) = self.data_mb {
            s.set_data_mb(v)?;
        }
        if let Some(v) = self.time_cons {
            s.set_time_cons(v);
        }
        if let Some(v) = self.data_cons {
            s.set_data_cons(v)?;
        }
        if let Some(v) = self.started_at {
            s.set_started_at(v);
        }
        if let Some(v) = self.exp_days {
            s.set_exp_days(v);
        }
        if let Some(v) = self.down_mbits {
            s.set_down_mbits(v)?;
        }
        if let Some(v) = self.up_mbits {
            s.set_up_mbits(v)?;
        }
        if let Some(v) = self.use_global_speed {
            s.set_use_global_speed(v);
        }
        Ok(())
    }
}

async fn patch_session(
    State(st): St,
    SessId(id): SessId,
    Body(p): Body<SessionPatch>,
) -> ApiResult<SessionView> {
    p.check()?;
    st.gw.sessions().session(id)?;
    let s = off_runtime(&st, move |gw| async move {
        gw.update_session(id, move |s| p.apply(s)).await
    })
    .await?;
    Ok(Json(view(&st.gw, &s)?))
}

/// The Flarehotspot SDK's `IncTimeCons` / `IncDataCons`, then save.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionInc {
    #[serde(default)]
    time_cons: u64,
    #[serde(default)]
    data_cons: f64,
}

async fn inc_session(
    State(st): St,
    SessId(id): SessId,
    Body(inc): Body<SessionInc>,
) -> ApiResult<SessionView> {
    check_secs("time_cons", inc.time_cons)?;
    check_mb("data_cons", inc.data_cons)?;
    st.gw.sessions().session(id)?;
    let s = off_runtime(&st, move |gw| async move {
        gw.update_session(id, move |s| {
            s.inc_time_cons(inc.time_cons);
            s.inc_data_cons(inc.data_cons)
        })
        .await
    })
    .await?;
    Ok(Json(view(&st.gw, &s)?))
}

/// The Flarehotspot SDK's `Save`: charges the device's pending usage, writes the session and
/// programs the datapath again when it runs.
async fn save_session(State(st): St, SessId(id): SessId) -> ApiResult<SessionView> {
    st.gw.sessions().session(id)?;
    let s = off_runtime(&st, move |gw| async move {
        gw.update_session(id, |_| Ok(())).await
    })
    .await?;
    Ok(Json(view(&st.gw, &s)?))
}

/// The Flarehotspot SDK's `Reload`: the session as stored.
async fn reload_session(State(st): St, SessId(id): SessId) -> ApiResult<SessionView> {
    let mut s = st.gw.sessions().session(id)?;
    s.reload().await?;
    Ok(Json(view(&st.gw, &s)?))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::ROUTES;

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(super::super::OPENAPI).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete", "head", "options"]
                    .contains(&method.as_str())
                {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn routes_and_openapi_agree() {
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_uppercase(), p.to_string()))
            .collect();
        assert_eq!(served.len(), ROUTES.len(), "duplicate entries in ROUTES");
        let doc = documented();
        let undocumented: Vec<_> = served.difference(&doc).collect();
        let unserved: Vec<_> = doc.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not in openapi.json: {undocumented:?}; documented but not served: {unserved:?}"
        );
    }

    /// The document's schemas of what the API answers have exactly the
    /// fields the server's view types serialise.
    #[test]
    fn the_documented_answers_are_the_view_types() {
        use session_api::views::*;
        let doc: serde_json::Value = serde_json::from_str(super::super::OPENAPI).unwrap();
        let fields = |v: serde_json::Value| -> BTreeSet<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let session = SessionView {
            id: 1,
            device_id: 1,
            provider: "local".into(),
            session_type: 0,
            time_secs: 0,
            data_mb: 0.0,
            data_bytes: 0,
            time_cons: 0,
            data_cons: 0.0,
            data_cons_bytes: 0,
            remaining_time: 0,
            remaining_data: 0.0,
            remaining_data_bytes: 0,
            started_at: None,
            exp_days: None,
            expires_at: None,
            down_mbits: 0,
            up_mbits: 0,
            use_global_speed: false,
            created_at: 0,
            running: false,
            status: "unstarted".into(),
        };
        let device = DeviceView {
            id: 1,
            mac: "02:00:00:00:00:01".into(),
            ip: None,
            hostname: None,
            created_at: 0,
            connected: false,
        };
        let status = StatusView {
            version: "0".into(),
            uptime_secs: 0,
            lans: vec![],
            devices: 0,
            connected: 0,
            sessions: 0,
            providers: vec![],
            poll_interval_ms: 0,
            auto_advance: true,
            polls: 0,
            last_poll_us: 0,
        };
        let connected = ConnectedView {
            device_id: 1,
            connected: false,
            session_id: None,
        };
        let error = ApiErrorBody {
            code: "x".into(),
            message: "y".into(),
        };
        let redemption = RedemptionView {
            device_id: 1,
            mac: "02:00:00:00:00:01".into(),
            session_id: 1,
            at: 0,
            moves: vec![],
        };
        let voucher = VoucherView {
            code: "ABCDEFGHJK".into(),
            display_code: "ABCDE-FGHJK".into(),
            batch: "b".into(),
            price: None,
            state: "unused".into(),
            session_type: 0,
            time_secs: 60,
            data_mb: 0.0,
            exp_days: None,
            down_mbits: 0,
            up_mbits: 0,
            use_global_speed: true,
            created_at: 0,
            valid_until: None,
            max_devices: 1,
            redemptions: vec![redemption.clone()],
            revoked_at: None,
        };
        let redeem = RedeemView {
            session: session.clone(),
            voucher: voucher.clone(),
            queued: false,
            moved_from: None,
        };
        for (name, v) in [
            ("Redemption", serde_json::to_value(redemption).unwrap()),
            ("Voucher", serde_json::to_value(voucher).unwrap()),
            ("Redeem", serde_json::to_value(redeem).unwrap()),
            ("Session", serde_json::to_value(session).unwrap()),
            ("Device", serde_json::to_value(device).unwrap()),
            ("Status", serde_json::to_value(status).unwrap()),
            ("Connected", serde_json::to_value(connected).unwrap()),
            ("Error", serde_json::to_value(error).unwrap()),
        ] {
            let schema = &doc["components"]["schemas"][name]["properties"];
            assert_eq!(fields(schema.clone()), fields(v), "schema {name}");
        }
    }

    #[test]
    fn every_error_response_is_json() {
        let doc: serde_json::Value = serde_json::from_str(super::super::OPENAPI).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let r = op["responses"].as_object().unwrap();
                assert!(
                    r.keys().any(|k| k.starts_with('2')),
                    "{method} {path}: no success response"
                );
                for (code, v) in r {
                    if code.starts_with('4') || code.starts_with('5') {
                        assert_eq!(
                            v["$ref"], "#/components/responses/Error",
                            "{method} {path} {code}"
                        );
                    }
                }
            }
        }
    }
}
