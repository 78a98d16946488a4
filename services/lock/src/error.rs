//! Lock service errors and the one place they map to HTTP and gRPC.

use http::StatusCode;
use upshift_common::http_error::ApiError;
use upshift_store::StoreError;

use crate::semaphore::{Denied, KeepaliveError};

/// Errors of lock operations.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The group is neither configured nor allowed by a `[default]` template.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// Bad id or group.
    #[error("invalid client params: {0}")]
    InvalidParams(String),
    /// The semaphore refused a new grant.
    #[error("lock refused: {0}")]
    Denied(#[from] Denied),
    /// Keepalive of an id without a (leased) slot.
    #[error("keepalive refused: {0}")]
    Keepalive(#[from] KeepaliveError),
    /// The store failed or the deadline passed while retrying.
    #[error("store unavailable")]
    Unavailable(#[source] Option<StoreError>),
    /// A stored record could not be decoded.
    #[error("corrupt group record of {0:?}")]
    Corrupt(String, #[source] crate::layout::DecodeError),
}

impl LockError {
    /// The closed set of result kinds (HTTP `kind`, metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            LockError::UnknownGroup(_) => "unknown_group",
            LockError::InvalidParams(_) => "invalid_client_params",
            LockError::Denied(Denied::Full) => "failed_lock_semaphore_full",
            LockError::Denied(Denied::Paused) => "failed_lock_group_paused",
            LockError::Denied(Denied::OutsideWindow) => "failed_lock_outside_window",
            LockError::Keepalive(KeepaliveError::NotHeld) => "not_held",
            LockError::Keepalive(KeepaliveError::NotLeased) => "not_leased",
            LockError::Unavailable(_) => "store_unavailable",
            LockError::Corrupt(..) => "store_corrupt",
        }
    }

    /// The FleetLock HTTP error.
    pub fn to_api(&self) -> ApiError {
        let status = match self {
            LockError::UnknownGroup(_) => StatusCode::NOT_FOUND,
            LockError::InvalidParams(_) => StatusCode::BAD_REQUEST,
            LockError::Denied(_) | LockError::Keepalive(_) => StatusCode::CONFLICT,
            LockError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            LockError::Corrupt(..) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, self.kind(), self.to_string())
    }
}

impl From<LockError> for tonic::Status {
    fn from(e: LockError) -> Self {
        let msg = format!("{}: {e}", e.kind());
        match e {
            LockError::UnknownGroup(_) => tonic::Status::not_found(msg),
            LockError::InvalidParams(_) => tonic::Status::invalid_argument(msg),
            LockError::Denied(_) | LockError::Keepalive(_) => {
                tonic::Status::failed_precondition(msg)
            }
            LockError::Unavailable(_) => tonic::Status::unavailable(msg),
            LockError::Corrupt(..) => tonic::Status::internal(msg),
        }
    }
}
