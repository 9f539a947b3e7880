//! The front ends' errors: JSON `{ "code": ..., "message": ... }` with a stable code.
//!
//! Everything a client can send maps to a 4xx; a 5xx means a fault on the gateway
//! (store I/O, datapath).

use axum::{
    extract::rejection::{JsonRejection, QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use session_model::{ModelError, StoreError};

use crate::error::AgentError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
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

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, "control API: {}", self.message);
        }
        (
            self.status,
            Json(session_api::ApiErrorBody {
                code: self.code.to_string(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let message = e.body_text();
        match e {
            JsonRejection::JsonSyntaxError(_) => Self::bad_request("malformed_json", message),
            JsonRejection::JsonDataError(_) => Self::bad_request("invalid_body", message),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with Content-Type: application/json",
            ),
            e if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
            }
            _ => Self::bad_request("invalid_body", message),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::bad_request("invalid_query", e.body_text())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            StoreError::UnknownDevice(_) => (StatusCode::NOT_FOUND, "unknown_device"),
            StoreError::UnknownSession(_) => (StatusCode::NOT_FOUND, "unknown_session"),
            StoreError::DuplicateMac { .. } => (StatusCode::CONFLICT, "duplicate_mac"),
            StoreError::DeviceMismatch { .. } => (StatusCode::CONFLICT, "device_mismatch"),
            StoreError::UnknownProvider(_) => (StatusCode::NOT_FOUND, "unknown_provider"),
            StoreError::UnknownVoucher(_) => (StatusCode::NOT_FOUND, "unknown_voucher"),
            StoreError::DuplicateVoucher(_) => (StatusCode::CONFLICT, "duplicate_voucher"),
            StoreError::MissingPath { .. }
            | StoreError::Redb { .. }
            | StoreError::Checkpoint { .. }
            | StoreError::Io { .. }
            | StoreError::Codec { .. }
            | StoreError::UnsupportedSchema { .. }
            | StoreError::Corrupt(_)
            | StoreError::Poisoned => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        Self::new(status, code, message)
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            ModelError::Store(s) => return s.into(),
            ModelError::InvalidSessionType(_) => (StatusCode::BAD_REQUEST, "invalid_session_type"),
            ModelError::InvalidMegabytes { .. } => (StatusCode::BAD_REQUEST, "invalid_megabytes"),
            ModelError::MegabytesOverflow { .. } => (StatusCode::BAD_REQUEST, "number_too_large"),
            ModelError::ZeroAllocation { .. } => (StatusCode::BAD_REQUEST, "zero_allocation"),
            ModelError::OutOfRange { .. } => (StatusCode::BAD_REQUEST, "out_of_range"),
            ModelError::NegativeSpeed { .. } => (StatusCode::BAD_REQUEST, "invalid_speed"),
            ModelError::MalformedMac(_) => (StatusCode::BAD_REQUEST, "malformed_mac"),
            ModelError::UnknownDevice(_) => (StatusCode::NOT_FOUND, "unknown_device"),
            ModelError::UnknownMac(_) => (StatusCode::NOT_FOUND, "unknown_mac"),
            ModelError::UnknownSession(_) => (StatusCode::NOT_FOUND, "unknown_session"),
            ModelError::UnknownProvider(_) => (StatusCode::NOT_FOUND, "unknown_provider"),
            ModelError::NoAvailableSession(_) => (StatusCode::CONFLICT, "no_available_session"),
            ModelError::DeviceConnected(_) => (StatusCode::CONFLICT, "device_connected"),
            ModelError::SessionRunning(_) => (StatusCode::CONFLICT, "session_running"),
            ModelError::DuplicateProvider(_) => (StatusCode::CONFLICT, "duplicate_provider"),
            ModelError::Provider { .. } => (StatusCode::BAD_GATEWAY, "provider_error"),
            ModelError::Redeem(r) => return r.into(),
            ModelError::VoucherNotRevocable { .. } => {
                (StatusCode::CONFLICT, "voucher_not_revocable")
            }
            ModelError::InvalidBatch(_) => (StatusCode::BAD_REQUEST, "invalid_batch"),
            ModelError::InvalidPlan(_) => (StatusCode::BAD_REQUEST, "invalid_plan"),
            ModelError::Blocked(_) => (StatusCode::FORBIDDEN, "device_blocked"),
            ModelError::UnknownPlan(_) => (StatusCode::NOT_FOUND, "unknown_plan"),
            ModelError::Random(_) | ModelError::Poisoned => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            }
        };
        Self::new(status, code, message)
    }
}

impl From<session_model::RedeemRefusal> for ApiError {
    fn from(r: session_model::RedeemRefusal) -> Self {
        use session_model::RedeemRefusal as R;
        let status = match r {
            R::Unknown => StatusCode::NOT_FOUND,
            R::LockedToOtherDevice => StatusCode::FORBIDDEN,
            R::Revoked | R::Expired | R::UsedUp | R::AlreadyRedeemed { .. } => StatusCode::CONFLICT,
        };
        Self::new(status, r.code(), r.to_string())
    }
}

impl From<crate::vouchers::RedeemError> for ApiError {
    fn from(e: crate::vouchers::RedeemError) -> Self {
        use crate::vouchers::RedeemError as E;
        match e {
            E::TooManyTries { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tries",
                e.to_string(),
            ),
            E::Refused(r) => r.into(),
            E::Agent(a) => a.into(),
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Model(m) => m.into(),
            AgentError::Store { source, .. } => source.into(),
            AgentError::BadMac { .. } | AgentError::NotAClientMac(_) => {
                Self::bad_request("malformed_mac", e.to_string())
            }
            AgentError::MacHasSessions { .. } => {
                Self::new(StatusCode::CONFLICT, "mac_has_sessions", e.to_string())
            }
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

impl From<crate::neigh::NeighError> for ApiError {
    fn from(e: crate::neigh::NeighError) -> Self {
        use crate::neigh::NeighError as E;
        match e {
            E::UnknownIp(_) => Self::not_found("unknown_ip", e.to_string()),
            E::UnknownMac { .. } => Self::not_found("unknown_mac", e.to_string()),
            E::Lookup { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "neighbour_table_error",
                e.to_string(),
            ),
            E::Model(m) => m.into(),
        }
    }
}

impl From<crate::runtime::Unfinished> for ApiError {
    fn from(e: crate::runtime::Unfinished) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )
    }
}
