//! RFC 8908 captive-portal API, answering each client about itself: the
//! request's source address is looked up in the gateway's neighbour table, the
//! MAC gives the device, the device its running session.
//!
//! Served at `/` and `/captive-portal/api` with `application/captive+json`.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, State},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};

use crate::gateway::Gateway;
use crate::neigh;

/// The RFC 8908 API state of one client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaptiveState {
    pub captive: bool,
    #[serde(rename = "user-portal-url", skip_serializing_if = "Option::is_none")]
    pub user_portal_url: Option<String>,
    #[serde(rename = "seconds-remaining", skip_serializing_if = "Option::is_none")]
    pub seconds_remaining: Option<u64>,
    #[serde(rename = "bytes-remaining", skip_serializing_if = "Option::is_none")]
    pub bytes_remaining: Option<u64>,
    #[serde(rename = "can-extend-session")]
    pub can_extend_session: bool,
}

struct CaptiveCtx {
    gw: Arc<Gateway>,
    portal_url: Option<String>,
}

pub fn router(gw: Arc<Gateway>, portal_url: Option<String>) -> Router {
    let ctx = Arc::new(CaptiveCtx { gw, portal_url });
    Router::new()
        .route("/", get(handler))
        .route("/captive-portal/api", get(handler))
        .with_state(ctx)
}

/// What the API says about the client at `peer`.
pub async fn state_for(gw: &Gateway, portal_url: Option<String>, peer: SocketAddr) -> CaptiveState {
    let mut st = CaptiveState {
        captive: true,
        user_portal_url: portal_url,
        seconds_remaining: None,
        bytes_remaining: None,
        can_extend_session: true,
    };
    let Ok(device) = neigh::device_for_ip(gw, peer.ip()).await else {
        return st;
    };
    let Ok(Some(session)) = gw.sessions().curr_session(device.id) else {
        return st;
    };
    st.captive = false;
    let now = gw.sessions().clock().now_secs();
    let kind = session.session_type();
    let mut secs = kind.uses_time().then(|| session.remaining_time());
    if let Some(exp) = session.expires_at() {
        let left = exp.saturating_sub(now).max(0) as u64;
        secs = Some(secs.map_or(left, |s| s.min(left)));
    }
    st.seconds_remaining = secs;
    st.bytes_remaining = kind.uses_data().then(|| session.remaining_data_bytes());
    st
}

async fn handler(
    State(ctx): State<Arc<CaptiveCtx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let st = state_for(&ctx.gw, ctx.portal_url.clone(), peer).await;
    (
        [
            (header::CONTENT_TYPE, "application/captive+json"),
            (header::CACHE_CONTROL, "private, no-store"),
        ],
        Json(st),
    )
        .into_response()
}
