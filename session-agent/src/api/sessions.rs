//! `/v1/sessions/{id}`: one session, changed the way a portal does.

use axum::{extract::State, Json};
use serde::Deserialize;
use session_model::{ClientSession, ModelError};

use crate::web::ApiError;

use super::{input::*, views::SessionView};

pub(super) async fn show_session(State(st): St, SessId(id): SessId) -> ApiResult<SessionView> {
    Ok(Json(session_view(&st.gw, id)?))
}

/// The Flarehotspot SDK's `ClientSession` setters; each present key is set, then the session is saved.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionPatch {
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

pub(super) async fn patch_session(
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
pub(super) struct SessionInc {
    #[serde(default)]
    time_cons: u64,
    #[serde(default)]
    data_cons: f64,
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
