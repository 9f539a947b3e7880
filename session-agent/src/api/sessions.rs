//! `/v1/sessions/{id}`: one session, changed the way a portal does.

use axum::{extract::State, Json};
use session_model::{ClientSession, ModelError};

use crate::web::ApiError;

use session_api::requests::{SessionInc, SessionPatch};

use super::{input::*, views::SessionView};

pub(super) async fn show_session(State(st): St, SessId(id): SessId) -> ApiResult<SessionView> {
    Ok(Json(session_view(&st.gw, id)?))
}

fn check(p: &SessionPatch) -> Result<(), ApiError> {
    if let Some(v) = p.time_secs {
        check_secs("time_secs", v)?;
    }
    if let Some(v) = p.time_cons {
        check_secs("time_cons", v)?;
    }
    if let Some(v) = p.data_mb {
        check_mb("data_mb", v)?;
    }
    if let Some(v) = p.data_cons {
        check_mb("data_cons", v)?;
    }
    if let Some(v) = p.started_at {
        check_timestamp("started_at", v)?;
    }
    if let Some(v) = p.exp_days {
        check_exp_days(v)?;
    }
    if let Some(v) = p.down_mbits {
        check_mbits("down_mbits", v)?;
    }
    if let Some(v) = p.up_mbits {
        check_mbits("up_mbits", v)?;
    }
    Ok(())
}

fn apply(p: SessionPatch, s: &mut ClientSession) -> Result<(), ModelError> {
    if let Some(v) = p.time_secs {
        s.set_time_secs(v);
    }
    if let Some(v) = p.data_mb {
        s.set_data_mb(v)?;
    }
    if let Some(v) = p.time_cons {
        s.set_time_cons(v);
    }
    if let Some(v) = p.data_cons {
        s.set_data_cons(v)?;
    }
    if let Some(v) = p.started_at {
        s.set_started_at(v);
    }
    if let Some(v) = p.exp_days {
        s.set_exp_days(v);
    }
    if let Some(v) = p.down_mbits {
        s.set_down_mbits(v)?;
    }
    if let Some(v) = p.up_mbits {
        s.set_up_mbits(v)?;
    }
    if let Some(v) = p.use_global_speed {
        s.set_use_global_speed(v);
    }
    Ok(())
}

pub(super) async fn patch_session(
    State(st): St,
    SessId(id): SessId,
    Body(p): Body<SessionPatch>,
) -> ApiResult<SessionView> {
    check(&p)?;
    st.gw.sessions().session(id)?;
    let s = off_runtime(&st, move |gw| async move {
        gw.update_session(id, move |s| apply(p, s)).await
    })
    .await?;
    Ok(Json(view(&st.gw, &s)?))
}

pub(super) async fn inc_session(
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
pub(super) async fn save_session(State(st): St, SessId(id): SessId) -> ApiResult<SessionView> {
    st.gw.sessions().session(id)?;
    let s = off_runtime(&st, move |gw| async move {
        gw.update_session(id, |_| Ok(())).await
    })
    .await?;
    Ok(Json(view(&st.gw, &s)?))
}

/// The Flarehotspot SDK's `Reload`: the session as stored.
pub(super) async fn reload_session(State(st): St, SessId(id): SessId) -> ApiResult<SessionView> {
    let mut s = st.gw.sessions().session(id)?;
    s.reload().await?;
    Ok(Json(view(&st.gw, &s)?))
}
