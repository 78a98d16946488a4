//! Telemetry service errors and the one place they map to gRPC.

use upshift_store::StoreError;

/// Errors of telemetry operations.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A report or request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store failed.
    #[error("store unavailable")]
    Unavailable(#[source] StoreError),
    /// The service is shutting down.
    #[error("the service is shutting down")]
    ShuttingDown,
}

impl From<TelemetryError> for tonic::Status {
    fn from(e: TelemetryError) -> Self {
        match &e {
            TelemetryError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
            TelemetryError::Unavailable(_) | TelemetryError::ShuttingDown => {
                tonic::Status::unavailable(e.to_string())
            }
        }
    }
}
