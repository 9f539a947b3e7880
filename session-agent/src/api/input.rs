//! What the handlers share: the API's limits, reading a request (path,
//! JSON body, ids) with the API's error codes, the views of what they
//! answer, and running blocking work off the runtime.

use std::{net::IpAddr, sync::Arc};

use axum::{
    body::Bytes,
    extract::{
        rejection::{BytesRejection, PathRejection},
        FromRequest, FromRequestParts, Path, Request, State,
    },
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::de::DeserializeOwned;
use session_model::{ClientSession, DeviceId, SessionId};

use crate::{gateway::Gateway, web::ApiError};

use super::{
    state::ApiState,
    views::{self, DeviceView, SessionView},
};

pub(super) type St = State<Arc<ApiState>>;
pub(super) type ApiResult<T> = Result<Json<T>, ApiError>;
pub(super) type PathArg = Result<Path<String>, PathRejection>;
type BodyArg = Result<Bytes, BytesRejection>;

pub use session_model::limits::{MAX_EXP_DAYS, MAX_MB, MAX_MBITS, MAX_SECS};
/// Longest notification text, in characters.
pub const MAX_NOTIFICATION: usize = 1024;
/// Longest hostname, in characters.
pub const MAX_HOSTNAME: usize = 253;

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
pub(super) fn json<T: DeserializeOwned>(b: BodyArg, empty: Option<T>) -> Result<T, ApiError> {
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

pub(super) fn device_id(s: &str) -> Result<DeviceId, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("'{s}' is not a device id (a 64-bit integer)"),
        )
    })
}

pub(super) fn session_id(s: &str) -> Result<SessionId, ApiError> {
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

pub(super) use session_model::limits::{
    check_exp_days, check_mb, check_mbits, check_secs, check_timestamp,
};

pub(super) fn check_notification(n: &str) -> Result<(), ApiError> {
    if n.chars().count() > MAX_NOTIFICATION {
        return Err(out_of_range(
            "notification",
            format_args!("at most {MAX_NOTIFICATION} characters"),
        ));
    }
    Ok(())
}

// ----- views -------------------------------------------------------------------------

pub(super) fn now(gw: &Gateway) -> i64 {
    gw.sessions().clock().now_secs()
}

pub(super) fn device_view(gw: &Gateway, id: DeviceId) -> Result<DeviceView, ApiError> {
    let d = gw.sessions().device(id)?;
    Ok(views::device_view(&d, gw.sessions().is_connected(id)?))
}

pub(super) fn view(gw: &Gateway, s: &ClientSession) -> Result<SessionView, ApiError> {
    let running = gw.sessions().running_session_id(s.device_id())? == Some(s.id());
    Ok(views::session_view(s, running, now(gw)))
}

pub(super) fn session_view(gw: &Gateway, id: SessionId) -> Result<SessionView, ApiError> {
    view(gw, &gw.sessions().session(id)?)
}

pub(super) fn created<T: serde::Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}
