//! API errors: JSON `{ "code": ..., "message": ... }` with a stable code.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use session_model::ModelError;

use crate::error::AgentError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(Body {
                code: self.code,
                message: &self.message,
            }),
        )
            .into_response()
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            ModelError::UnknownDevice(_) => (StatusCode::NOT_FOUND, "unknown_device"),
            ModelError::UnknownMac(_) => (StatusCode::NOT_FOUND, "unknown_mac"),
            ModelError::UnknownSession(_) => (StatusCode::NOT_FOUND, "unknown_session"),
            ModelError::UnknownProvider(_) => (StatusCode::NOT_FOUND, "unknown_provider"),
            ModelError::NoAvailableSession(_) => (StatusCode::CONFLICT, "no_available_session"),
            ModelError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
            _ => (StatusCode::BAD_REQUEST, "invalid_argument"),
        };
        Self::new(status, code, message)
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Model(m) => m.into(),
            AgentError::TableFull { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "table_full", e.to_string())
            }
            e => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "dataplane_error",
                e.to_string(),
            ),
        }
    }
}
