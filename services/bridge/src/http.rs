//! `GET /bridge?selector=NAME`: the source's exposition, whole and unchanged,
//! or a short text error.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::time::Instant;

use crate::config::{BridgeSettings, Selector};
use crate::error::SourceError;
use crate::metrics::{BridgeMetrics, Rejection};
use crate::source::{self, Exposition, ScrapeRequest};

/// `Content-Type` of a text exposition when nothing else is known.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Header Prometheus sends with its scrape timeout in seconds.
const SCRAPE_TIMEOUT_HEADER: &str = "x-prometheus-scrape-timeout-seconds";

/// Time kept back from the scraper's timeout.
const SCRAPER_MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
struct Bridge {
    settings: Arc<BridgeSettings>,
    metrics: BridgeMetrics,
}

/// The bridge's routes (`/bridge`); the host adds `/metrics` and `/healthz`.
pub fn router(settings: Arc<BridgeSettings>, metrics: BridgeMetrics) -> Router {
    Router::new()
        .route("/bridge", get(scrape).fallback(method_not_allowed))
        .with_state(Bridge { settings, metrics })
}

async fn scrape(
    State(bridge): State<Bridge>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let mut names = params
        .iter()
        .filter(|(k, v)| k == "selector" && !v.is_empty())
        .map(|(_, v)| v.as_str());
    let Some(name) = names.next() else {
        bridge.metrics.rejected(Rejection::MissingSelector);
        return text(StatusCode::BAD_REQUEST, "missing selector parameter\n");
    };
    if names.any(|other| other != name) {
        bridge.metrics.rejected(Rejection::MissingSelector);
        return text(StatusCode::BAD_REQUEST, "give exactly one selector\n");
    }
    let Some(selector) = bridge.settings.selectors.get(name) else {
        bridge.metrics.rejected(Rejection::UnknownSelector);
        return text(StatusCode::NOT_FOUND, "unknown selector\n");
    };
    let mut limits = selector.limits;
    if let Some(scraper) = scraper_timeout(&headers) {
        limits.total_timeout = limits.total_timeout.min(scraper);
    }
    let request = ScrapeRequest {
        // `*/*` (curl, most clients) says nothing: the source then gets the
        // bridge's preference for the text format.
        accept: headers
            .get(header::ACCEPT)
            .filter(|v| v.as_bytes() != b"*/*")
            .cloned(),
    };
    let started = Instant::now();
    let result = source::fetch(&selector.source, &limits, &request).await;
    answer(&bridge.metrics, selector, result, started.elapsed())
}

/// Records the scrape and renders its answer: the exposition, or a short text error.
fn answer(
    metrics: &BridgeMetrics,
    selector: &Selector,
    result: Result<Exposition, SourceError>,
    elapsed: Duration,
) -> Response {
    let name = selector.name.as_str();
    match result {
        Ok(exposition) => {
            metrics.served(name, exposition.body.len(), elapsed);
            let content_type = selector
                .content_type
                .clone()
                .or(exposition.openmetrics_type)
                .unwrap_or(HeaderValue::from_static(TEXT_FORMAT));
            ([(header::CONTENT_TYPE, content_type)], exposition.body).into_response()
        }
        Err(error) => {
            let reason = error.reason();
            metrics.failed(name, reason, elapsed);
            let detail = error.chain();
            tracing::warn!(selector = name, kind = selector.source.kind(), reason = reason.as_str(), error = %detail, "scrape failed");
            let what = if reason.is_timeout() {
                "source timed out"
            } else {
                "source failed"
            };
            text(error.status(), format!("{what}: {detail}\n"))
        }
    }
}

async fn method_not_allowed(State(bridge): State<Bridge>) -> Response {
    bridge.metrics.rejected(Rejection::Method);
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// The scraper's own timeout, when it sent a usable one.
///
/// Like blackbox_exporter's `timeout_offset`, 0.5 s (at most half of it) is
/// kept back, so the scraper receives the bridge's 504 rather than giving up
/// at the same moment.
fn scraper_timeout(headers: &HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers
        .get(SCRAPE_TIMEOUT_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let timeout = Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())?;
    Some(timeout - SCRAPER_MARGIN.min(timeout / 2))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(SCRAPE_TIMEOUT_HEADER, HeaderValue::from_str(value).unwrap());
        scraper_timeout(&headers)
    }

    #[test]
    fn the_scrapers_timeout_keeps_a_margin() {
        assert_eq!(with_header("10"), Some(Duration::from_millis(9500)));
        assert_eq!(with_header("0.6"), Some(Duration::from_millis(300)));
        assert_eq!(with_header("0"), None);
        assert_eq!(with_header("-1"), None);
        assert_eq!(with_header("soon"), None);
        assert_eq!(scraper_timeout(&HeaderMap::new()), None);
    }
}
