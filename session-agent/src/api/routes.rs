//! `/v1` handlers.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{rejection::JsonRejection, Path, State},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use session_model::{DeviceId, MacAddr, SessionId};

use super::{ApiError, DeviceView, SessionView};
use crate::gateway::Gateway;

type Gw = State<Arc<Gateway>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn v1() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/v1/devices", get(list_devices).post(create_device))
        .route("/v1/devices/{id}", get(show_device))
        .route("/v1/devices/by-mac/{mac}", get(device_by_mac))
        .route(
            "/v1/devices/{id}/sessions",
            get(device_sessions).post(create_session),
        )
        .route("/v1/devices/{id}/current-session", get(current_session))
        .route("/v1/devices/{id}/connect", post(connect))
        .route("/v1/devices/{id}/disconnect", post(disconnect))
        .route("/v1/sessions/{id}", get(show_session))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))
}

fn device_id(s: &str) -> Result<DeviceId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request("invalid_id", format!("'{s}' is not a device id")))
}

fn session_id(s: &str) -> Result<SessionId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request("invalid_id", format!("'{s}' is not a session id")))
}

fn device_view(gw: &Gateway, id: DeviceId) -> Result<DeviceView, ApiError> {
    let d = gw.sessions().device(id)?;
    Ok(DeviceView::new(&d, gw.sessions().is_connected(id)?))
}

fn session_view(gw: &Gateway, id: SessionId) -> Result<SessionView, ApiError> {
    let s = gw.sessions().session(id)?;
    let running = gw.sessions().running_session_id(s.device_id())? == Some(id);
    Ok(SessionView::new(&s, running))
}

async fn list_devices(State(gw): Gw) -> ApiResult<Vec<DeviceView>> {
    let connected: std::collections::HashSet<DeviceId> = gw
        .sessions()
        .connected()?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    let devices = gw
        .sessions()
        .store()
        .devices()
        .map_err(session_model::ModelError::from)?;
    Ok(Json(
        devices
            .iter()
            .map(|d| DeviceView::new(d, connected.contains(&d.id)))
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    mac: String,
    ip: Option<IpAddr>,
    hostname: Option<String>,
}

async fn create_device(
    State(gw): Gw,
    b: Result<Json<NewDevice>, JsonRejection>,
) -> ApiResult<DeviceView> {
    let b = body(b)?;
    let mac = MacAddr::parse(&b.mac)?;
    let d = gw.sessions().create_device(mac, b.ip, b.hostname)?;
    Ok(Json(DeviceView::new(&d, false)))
}

async fn show_device(State(gw): Gw, Path(id): Path<String>) -> ApiResult<DeviceView> {
    Ok(Json(device_view(&gw, device_id(&id)?)?))
}

async fn device_by_mac(State(gw): Gw, Path(mac): Path<String>) -> ApiResult<DeviceView> {
    let d = gw.sessions().device_by_mac(MacAddr::parse(&mac)?)?;
    Ok(Json(device_view(&gw, d.id)?))
}

async fn device_sessions(State(gw): Gw, Path(id): Path<String>) -> ApiResult<Vec<SessionView>> {
    let id = device_id(&id)?;
    let running = gw.sessions().running_session_id(id)?;
    let sessions = gw.sessions().device_sessions(id)?;
    Ok(Json(
        sessions
            .iter()
            .map(|s| SessionView::new(s, Some(s.id()) == running))
            .collect(),
    ))
}

/// The seed-003 CreateSession arguments.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    #[serde(rename = "type")]
    session_type: u8,
    #[serde(default)]
    time_secs: u64,
    #[serde(default)]
    data_mb: f64,
    exp_days: Option<u32>,
    #[serde(default)]
    down_mbits: i32,
    #[serde(default)]
    up_mbits: i32,
    #[serde(default)]
    use_global_speed: bool,
}

async fn create_session(
    State(gw): Gw,
    Path(id): Path<String>,
    b: Result<Json<NewSession>, JsonRejection>,
) -> ApiResult<SessionView> {
    let id = device_id(&id)?;
    let b = body(b)?;
    let s = gw
        .sessions()
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
        .await?;
    Ok(Json(SessionView::new(&s, false)))
}

async fn current_session(State(gw): Gw, Path(id): Path<String>) -> ApiResult<Option<SessionView>> {
    let id = device_id(&id)?;
    Ok(Json(
        gw.sessions()
            .curr_session(id)?
            .map(|s| SessionView::new(&s, true)),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Notification {
    #[serde(default)]
    notification: String,
}

async fn connect(
    State(gw): Gw,
    Path(id): Path<String>,
    b: Result<Json<Notification>, JsonRejection>,
) -> ApiResult<SessionView> {
    let id = device_id(&id)?;
    let n = body(b)?;
    let s = gw.connect(id, &n.notification).await?;
    Ok(Json(SessionView::new(&s, true)))
}

async fn disconnect(
    State(gw): Gw,
    Path(id): Path<String>,
    b: Result<Json<Notification>, JsonRejection>,
) -> ApiResult<DeviceView> {
    let id = device_id(&id)?;
    let n = body(b)?;
    gw.disconnect(id, &n.notification).await?;
    Ok(Json(device_view(&gw, id)?))
}

async fn show_session(State(gw): Gw, Path(id): Path<String>) -> ApiResult<SessionView> {
    Ok(Json(session_view(&gw, session_id(&id)?)?))
}
