//! Request count and latency instruments for HTTP routes and gRPC methods.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

use crate::telemetry::Metrics;

/// Instruments shared by all requests of one kind.
#[derive(Debug, Clone)]
struct Instruments {
    requests: Counter<u64>,
    duration: Histogram<f64>,
}

impl Instruments {
    fn new(metrics: &Metrics, prefix: &str) -> Self {
        let meter = metrics.meter();
        Self {
            requests: meter
                .u64_counter(format!("upshift.{prefix}.server.requests"))
                .with_description("Requests handled, by route and outcome.")
                .build(),
            duration: meter
                .f64_histogram(format!("upshift.{prefix}.server.duration"))
                .with_unit("s")
                .with_description("Time to the response headers, by route and outcome.")
                .with_boundaries(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .build(),
        }
    }

    fn record(&self, started: Instant, attrs: &[KeyValue]) {
        self.requests.add(1, attrs);
        self.duration.record(started.elapsed().as_secs_f64(), attrs);
    }
}

/// Layer recording `upshift_http_server_requests_total` and `..._duration_seconds` by route and status class.
pub(super) fn http_layer(router: Router, metrics: &Metrics) -> Router {
    let inst = Instruments::new(metrics, "http");
    router.layer(middleware::from_fn(move |req: Request, next: Next| {
        let inst = inst.clone();
        Box::pin(async move {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
            let method = req.method().as_str().to_string();
            let started = Instant::now();
            let resp = next.run(req).await;
            let class = format!("{}xx", resp.status().as_u16() / 100);
            inst.record(
                started,
                &[
                    KeyValue::new("route", route),
                    KeyValue::new("method", method),
                    KeyValue::new("status_class", class),
                ],
            );
            resp
        })
    }))
}

/// Layer recording `upshift_grpc_server_requests_total` and `..._duration_seconds` by method and code.
///
/// The code is read from the response headers (trailers-only responses, i.e. errors
/// before any message); streamed responses whose status comes in trailers count as `OK`
/// at header time.
pub(super) fn grpc_layer(router: Router, metrics: &Metrics) -> Router {
    let inst = Instruments::new(metrics, "grpc");
    router.layer(middleware::from_fn(move |req: Request, next: Next| {
        let inst = inst.clone();
        Box::pin(async move {
            // Paths no service matched are not labels: a scanner could create unbounded series.
            let method = if req.extensions().get::<MatchedPath>().is_some() {
                req.uri().path().to_string()
            } else {
                "unmatched".to_string()
            };
            let started = Instant::now();
            let resp = next.run(req).await;
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from);
            inst.record(
                started,
                &[
                    KeyValue::new("rpc", method),
                    KeyValue::new("code", format!("{code:?}")),
                ],
            );
            resp
        })
    }))
}
