//! `/v1/devices`: devices, their sessions, connecting and disconnecting.

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    response::Response,
    Json,
};
use serde::Deserialize;
use session_model::{DeviceId, MacAddr, ModelError};

use crate::{error::AgentError, neigh, web::ApiError};

use session_api::requests::{NewDevice, NewSession, Notification, Rekey};

use super::{
    input::*,
    views::{self, ConnectedView, DeviceView, SessionView},
};

pub(super) async fn list_devices(State(st): St) -> ApiResult<Vec<DeviceView>> {
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

/// A MAC a device can have: the datapath meters unicast source addresses only.
fn client_mac(s: &str) -> Result<MacAddr, ApiError> {
    let mac = session_model::parse_mac(s)?;
    let key = mac;
    if key.is_zero() || key.is_group() {
        return Err(AgentError::NotAClientMac(key).into());
    }
    Ok(mac)
}

pub(super) async fn create_device(
    State(st): St,
    Body(b): Body<NewDevice>,
) -> Result<Response, ApiError> {
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

pub(super) async fn show_device(State(st): St, DevId(id): DevId) -> ApiResult<DeviceView> {
    Ok(Json(device_view(&st.gw, id)?))
}

pub(super) async fn device_by_mac(State(st): St, mac: PathArg) -> ApiResult<DeviceView> {
    let d = st
        .gw
        .sessions()
        .device_by_mac(session_model::parse_mac(&path(mac)?)?)?;
    Ok(Json(device_view(&st.gw, d.id)?))
}

pub(super) async fn device_by_ip(State(st): St, ip: PathArg) -> ApiResult<DeviceView> {
    let d = neigh::device_for_ip(&st.gw, ip_path(ip)?).await?;
    Ok(Json(device_view(&st.gw, d.id)?))
}

pub(super) async fn rekey(
    State(st): St,
    DevId(id): DevId,
    Body(b): Body<Rekey>,
) -> ApiResult<DeviceView> {
    let mac = client_mac(&b.mac)?;
    off_runtime(&st, move |gw| async move { gw.rekey(id, mac).await }).await?;
    Ok(Json(device_view(&st.gw, id)?))
}

/// `?force=true`: remove what is connected or running too, disconnecting it first.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Force {
    #[serde(default)]
    force: bool,
}

pub(super) async fn delete_device(
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

pub(super) async fn delete_session(
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

pub(super) async fn device_sessions(
    State(st): St,
    DevId(id): DevId,
) -> ApiResult<Vec<SessionView>> {
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

pub(super) async fn create_session(
    State(st): St,
    DevId(id): DevId,
    Body(b): Body<NewSession>,
) -> Result<Response, ApiError> {
    check_secs("time_secs", b.time_secs)?;
    check_mb("data_mb", b.data_mb)?;
    check_exp_days(b.exp_days)?;
    check_mbits("down_mbits", b.down_mbits)?;
    check_mbits("up_mbits", b.up_mbits)?;
    // A price is checked before anything is made.
    let terms = match &b.sale {
        Some(sale) => Some(session_model::SaleTerms::new(
            sale.plan.as_deref().unwrap_or("API"),
            &sale.price,
            &sale.currency,
        )?),
        None => None,
    };
    let s = off_runtime(&st, move |gw| async move {
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
        if let Some(terms) = terms {
            let mac = gw.sessions().device(id)?.mac;
            gw.sessions().record_sale(s.id(), mac, &terms)?;
        }
        Ok::<_, session_model::ModelError>(s)
    })
    .await?;
    Ok(created(view(&st.gw, &s)?))
}

pub(super) async fn current_session(
    State(st): St,
    DevId(id): DevId,
) -> ApiResult<Option<SessionView>> {
    let now = now(&st.gw);
    Ok(Json(
        st.gw
            .sessions()
            .curr_session(id)?
            .map(|s| views::session_view(&s, true, now)),
    ))
}

pub(super) async fn get_session(State(st): St, DevId(id): DevId) -> ApiResult<SessionView> {
    match st.gw.sessions().get_session(id).await {
        Ok(s) => Ok(Json(view(&st.gw, &s)?)),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn is_connected(State(st): St, DevId(id): DevId) -> ApiResult<ConnectedView> {
    let connected = st.gw.sessions().is_connected(id)?;
    Ok(Json(ConnectedView {
        device_id: id,
        connected,
        session_id: st.gw.sessions().running_session_id(id)?,
    }))
}

pub(super) async fn connect(
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

pub(super) async fn disconnect(
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
