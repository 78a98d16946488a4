//! `GET /v1/graph`: the Cincinnati endpoint existing clients (Zincati) poll.
//! The hot path parses the query, computes the wariness and the hidden
//! rollout mask, and returns cached bytes: no JSON is built per request.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use tokio::sync::watch;
use upshift_cincinnati::graph::PayloadScheme;
use upshift_cincinnati::rollout::{parse_wariness, wariness_from_node_uuid};
use upshift_common::clock::SharedClock;
use upshift_common::http_error::ApiError;

use crate::decide::hidden_mask;
use crate::metrics::PolicyMetrics;
use crate::overrides::Overrides;
use crate::state::{PolicyState, ScopeKey, VariantKey};

#[cfg(test)]
mod tests;

/// What the HTTP routes read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Published graphs.
    pub state: watch::Receiver<Arc<PolicyState>>,
    /// Published overrides.
    pub overrides: watch::Receiver<Arc<Overrides>>,
    /// Time source.
    pub clock: SharedClock,
    /// Instruments.
    pub metrics: PolicyMetrics,
}

/// The `/v1/graph` route.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/graph", get(graph).fallback(method_not_allowed))
        .with_state(state)
}

/// Any method but GET (and HEAD) on `/v1/graph`: a JSON error like every other.
async fn method_not_allowed(State(s): State<HttpState>) -> Response {
    s.metrics
        .request("/v1/graph", "method_not_allowed", std::time::Duration::ZERO);
    let mut r = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "only GET is supported",
    )
    .into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

/// The query parameters; others are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct GraphQuery {
    basearch: Option<String>,
    stream: Option<String>,
    node_uuid: Option<String>,
    rollout_wariness: Option<String>,
    oci: Option<String>,
}

async fn graph(
    State(s): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<GraphQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let started = Instant::now();
    let result = serve(&s, &headers, query.map(|q| q.0).unwrap_or_default());
    let kind = match &result {
        Ok(r) if r.status() == StatusCode::NOT_MODIFIED => "not_modified",
        Ok(_) => "ok",
        Err(e) => e.kind,
    };
    s.metrics.request("/v1/graph", kind, started.elapsed());
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn serve(s: &HttpState, headers: &HeaderMap, q: GraphQuery) -> Result<Response, ApiError> {
    let (Some(basearch), Some(stream)) = (
        q.basearch.filter(|v| !v.is_empty()),
        q.stream.filter(|v| !v.is_empty()),
    ) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_params",
            "mandatory client parameters missing: basearch and stream are required",
        ));
    };
    if !accepts_json(headers) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "only application/json is offered",
        ));
    }
    let node_uuid = q.node_uuid.unwrap_or_default();
    let wariness = match q.rollout_wariness.as_deref() {
        Some(w) => parse_wariness(w)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_params", e.to_string()))?,
        None => wariness_from_node_uuid(&node_uuid),
    };
    s.metrics.node_seen(&node_uuid);
    let oci = matches!(q.oci.as_deref(), Some("true" | "1"));
    let scheme = if oci {
        PayloadScheme::Oci
    } else {
        PayloadScheme::Checksum
    };
    let key = ScopeKey {
        stream,
        basearch,
        scheme,
    };
    let state = s.state.borrow().clone();
    let Some(view) = state.scopes.get(&key) else {
        return Err(if state.scopes.is_empty() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "graph_unavailable",
                "no graph has been received from the graph service yet",
            )
        } else if state.knows_stream(&key.stream) {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_basearch",
                format!(
                    "no graph for basearch {:?} ({})",
                    key.basearch,
                    scheme.as_str()
                ),
            )
        } else {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_stream",
                format!("unknown stream {:?}", key.stream),
            )
        });
    };
    let overrides = s.overrides.borrow().clone();
    let variant = if overrides.freezes.contains_key(&key.stream) {
        view.variant(VariantKey::Frozen)
    } else {
        view.variant(VariantKey::Hidden(hidden_mask(
            view,
            wariness,
            &overrides,
            s.clock.now(),
        )))
    };
    if etag_matches(headers, &variant.etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, variant.etag.clone())],
        )
            .into_response());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, variant.etag.clone()),
        ],
        variant.body.clone(),
    )
        .into_response())
}

/// Whether `If-None-Match` names `etag` (or `*`).
fn etag_matches(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let want = etag.as_bytes();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == want
        })
}

/// Accept negotiation for the one type offered, `application/json`: the most
/// specific matching range decides, and q=0 excludes. No header accepts all.
pub fn accepts_json(headers: &HeaderMap) -> bool {
    let mut any = false;
    let mut best: Option<(u8, f32)> = None;
    for v in headers.get_all(header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for range in v.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if media.is_empty() {
                continue;
            }
            any = true;
            let specificity = match media.as_str() {
                "application/json" => 3,
                "application/*" => 2,
                "*/*" => 1,
                _ => continue,
            };
            let q = parts
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if best.is_none_or(|(s, _)| specificity > s) {
                best = Some((specificity, q));
            }
        }
    }
    match best {
        Some((_, q)) => q > 0.0,
        None => !any,
    }
}
