//! The JSON error body every HTTP API uses.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// An HTTP error rendered as `{"kind": ..., "value": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// Short machine-readable error kind.
    pub kind: &'static str,
    /// Human-readable detail.
    pub value: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, kind: &'static str, value: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            value: value.into(),
        }
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    kind: &'a str,
    value: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            kind: self.kind,
            value: &self.value,
        };
        (self.status, Json(body)).into_response()
    }
}
