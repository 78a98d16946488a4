//! `GET /v1/graph`: the unthrottled graph of a scope as Cincinnati JSON,
//! served from the bytes pre-serialized at load time.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use upshift_cincinnati::graph::PayloadScheme;
use upshift_common::http_error::ApiError;

use crate::catalog::{LoadState, ScopeKey, Snapshot};

/// The HTTP routes of the graph service.
pub fn router(snapshots: watch::Receiver<Arc<Snapshot>>) -> axum::Router {
    axum::Router::new()
        .route("/v1/graph", get(graph))
        .with_state(snapshots)
}

async fn graph(
    State(snapshots): State<watch::Receiver<Arc<Snapshot>>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = scope_from_params(&params)?;
    let snapshot = snapshots.borrow().clone();
    let Some(graph) = snapshot.scopes.get(&key) else {
        return Err(missing_graph(&snapshot, &key));
    };
    let etag = graph.etag();
    if if_none_match(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::ETAG, etag),
        ],
        graph.json.clone(),
    )
        .into_response())
}

/// Reads `stream`, `basearch` and `oci` from the query.
fn scope_from_params(params: &HashMap<String, String>) -> Result<ScopeKey, ApiError> {
    let mut missing = Vec::new();
    for name in ["basearch", "stream"] {
        if params.get(name).is_none_or(|v| v.is_empty()) {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_params",
            format!(
                "mandatory client parameters missing: {}",
                missing.join(", ")
            ),
        ));
    }
    let scheme = match params.get("oci").map(String::as_str) {
        None | Some("false") => PayloadScheme::Checksum,
        Some("true") => PayloadScheme::Oci,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_params",
                format!("oci must be true or false, not {other:?}"),
            ));
        }
    };
    Ok(ScopeKey {
        stream: params["stream"].clone(),
        basearch: params["basearch"].clone(),
        scheme,
    })
}

fn missing_graph(snapshot: &Snapshot, key: &ScopeKey) -> ApiError {
    match snapshot.sources.get(&key.stream) {
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_stream",
            format!("unknown stream {:?}", key.stream),
        ),
        Some(source) if source.state == LoadState::NeverLoaded => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "graph_unavailable",
            match &source.failure {
                Some(f) => format!(
                    "stream {:?} has not loaded: {}: {}",
                    key.stream, f.file, f.message
                ),
                None => format!("stream {:?} has not loaded yet", key.stream),
            },
        ),
        Some(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_basearch",
            format!("stream {:?} has no graph for {key}", key.stream),
        ),
    }
}

/// Whether `If-None-Match` lists `etag` (or `*`).
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag == etag || tag.strip_prefix("W/") == Some(etag))
        })
}
