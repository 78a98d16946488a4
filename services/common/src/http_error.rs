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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_json_body() {
        let resp = ApiError::new(StatusCode::CONFLICT, "lock_held", "group default is full")
            .into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(
            &body[..],
            br#"{"kind":"lock_held","value":"group default is full"}"#
        );
    }
}
