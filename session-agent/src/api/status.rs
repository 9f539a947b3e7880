//! `/v1/status`, `/v1/providers` and the OpenAPI document.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    Json,
};
use session_model::ModelError;

use super::{
    input::{ApiResult, St},
    views::{LanView, StatusView},
};

/// The OpenAPI 3 document of the control API (also served at `/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("../../openapi.json");

pub(super) async fn status(State(st): St) -> ApiResult<StatusView> {
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

pub(super) async fn providers(State(st): St) -> ApiResult<Vec<String>> {
    Ok(Json(st.gw.sessions().provider_names()))
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
