//! `POST /v1/devices/{id}/login` (and by IP): a portal login against the
//! RADIUS servers.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use session_api::LoginView;

use session_api::requests::Credentials;

use super::{
    input::{ip_path, view, Body, DevId, PathArg},
    state::Logins,
};
use crate::{neigh, radius::RadiusError, runtime::off_runtime, web::ApiError};

type St = State<Logins>;

impl From<RadiusError> for ApiError {
    fn from(e: RadiusError) -> Self {
        let msg = e.to_string();
        match e {
            RadiusError::Rejected(reply) => ApiError::new(
                StatusCode::FORBIDDEN,
                "login_rejected",
                reply.unwrap_or(msg),
            ),
            RadiusError::Challenge | RadiusError::TerminatePassed => {
                ApiError::new(StatusCode::FORBIDDEN, "login_rejected", msg)
            }
            RadiusError::HasSession(_) => ApiError::new(StatusCode::CONFLICT, "has_session", msg),
            // The server answered, but with an Accept that cannot be
            // applied: the operator fixes the server, the user waits.
            RadiusError::InvalidAccept(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "radius_invalid_accept",
                msg,
            ),
            RadiusError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "radius_unavailable", msg)
            }
            RadiusError::Agent(a) => a.into(),
            RadiusError::Book(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "accounting_error", msg)
            }
        }
    }
}

async fn login_for(st: &Logins, device_id: i64, c: Credentials) -> Result<Response, ApiError> {
    let Some(radius) = st.radius.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "radius_not_configured",
            "RADIUS logins are off: start the agent with --radius-server ADDR:PORT and --radius-secret-file FILE",
        ));
    };
    if c.username.is_empty() || c.username.len() > 253 || c.password.len() > 128 {
        return Err(ApiError::bad_request(
            "invalid_credentials",
            "username must be 1 to 253 bytes and password at most 128 (RADIUS limits)",
        ));
    }
    let gw = st.gw.clone();
    let login =
        off_runtime(
            move || async move { radius.login(&gw, device_id, &c.username, &c.password).await },
        )
        .await??;
    let v = LoginView {
        session: view(&st.gw, &login.session)?,
        reply_message: login.reply_message,
    };
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub(super) async fn login(
    State(st): St,
    DevId(id): DevId,
    Body(c): Body<Credentials>,
) -> Result<Response, ApiError> {
    login_for(&st, id, c).await
}

/// For portals that only know the client's address.
pub(super) async fn login_by_ip(
    State(st): St,
    ip: PathArg,
    Body(c): Body<Credentials>,
) -> Result<Response, ApiError> {
    let device = neigh::device_or_new_for_ip(&st.gw, ip_path(ip)?).await?;
    login_for(&st, device.id, c).await
}
