//! Request count and latency instruments for HTTP routes and gRPC methods.

use std::time::Instant;

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
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
            let resp = match http_server_span(&req, &route, &method) {
                Some(span) => {
                    use tracing::Instrument;
                    next.run(req).instrument(span).await
                }
                None => next.run(req).await,
            };
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

/// A server span for a request that carries a W3C trace context (an
/// agent's FleetLock call), child of the caller's span; requests without
/// one (scrapes, probes) make no span.
fn http_server_span(req: &Request, route: &str, method: &str) -> Option<tracing::Span> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    req.headers().get("traceparent")?;
    let span = tracing::info_span!("http.server", otel.kind = "server", route, method);
    let metadata = tonic::metadata::MetadataMap::from_headers(req.headers().clone());
    // Without a tracing subscriber there is nothing to attach to.
    let _ = span.set_parent(crate::telemetry::extract_context(&metadata));
    Some(span)
}

/// Layer recording `upshift_grpc_server_requests_total` and `..._duration_seconds` by method and code.
///
/// The call is recorded when the response body ends, with the code from the trailers
/// (or the headers of a trailers-only response); duration therefore covers whole streams.
pub(super) fn grpc_layer(router: Router, metrics: &Metrics) -> Router {
    let inst = Instruments::new(metrics, "grpc");
    router.layer(middleware::from_fn(move |req: Request, next: Next| {
        let inst = inst.clone();
        Box::pin(async move {
            // Paths no service matched are not labels: a scanner could create unbounded series.
            let rpc = if req.extensions().get::<MatchedPath>().is_some() {
                req.uri().path().to_string()
            } else {
                "unmatched".to_string()
            };
            let started = Instant::now();
            // A server span per call, child of the caller's W3C trace
            // context (`traceparent` metadata), so a host's update is one
            // trace across the agent and the services it calls.
            let span = tracing::info_span!("grpc.server", otel.kind = "server", rpc = %rpc);
            {
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                let metadata = tonic::metadata::MetadataMap::from_headers(req.headers().clone());
                let parent = crate::telemetry::extract_context(&metadata);
                // Without a tracing subscriber there is nothing to attach to.
                let _ = span.set_parent(parent);
            }
            let resp = {
                use tracing::Instrument;
                next.run(req).instrument(span).await
            };
            let header_code = grpc_code(resp.headers());
            let recorder = GrpcRecorder {
                inst,
                rpc,
                started,
                header_code,
            };
            resp.map(|body| {
                Body::new(MeteredBody {
                    inner: body,
                    recorder: Some(recorder),
                })
            })
        })
    }))
}

fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
}

/// Records one gRPC call when its response ends.
struct GrpcRecorder {
    inst: Instruments,
    rpc: String,
    started: Instant,
    header_code: Option<tonic::Code>,
}

impl GrpcRecorder {
    fn finish(self, code: tonic::Code) {
        let attrs = [
            KeyValue::new("rpc", self.rpc),
            KeyValue::new("code", format!("{code:?}")),
        ];
        self.inst.record(self.started, &attrs);
    }
}

/// Response body that reports the call's status code once the body ends.
struct MeteredBody {
    inner: Body,
    recorder: Option<GrpcRecorder>,
}

impl HttpBody for MeteredBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code)
                    && let Some(r) = self.recorder.take()
                {
                    r.finish(code);
                }
            }
            Poll::Ready(None) => {
                if let Some(r) = self.recorder.take() {
                    let code = r.header_code.unwrap_or(tonic::Code::Ok);
                    r.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = self.recorder.take() {
                    r.finish(tonic::Code::Internal);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The client went away before the status was sent.
        if let Some(r) = self.recorder.take() {
            let code = r.header_code.unwrap_or(tonic::Code::Cancelled);
            r.finish(code);
        }
    }
}
