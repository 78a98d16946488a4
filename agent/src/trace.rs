//! Tracing: log lines on stderr and, when `telemetry.otlp_endpoint` is set,
//! spans exported over OTLP gRPC (`service.name = "upshift-agent"`). The
//! exporter is built only then, so an agent without an endpoint carries no
//! exporter, batch thread or buffer.
//!
//! Also the W3C `traceparent` helpers that make one host update one trace:
//! the update's `traceparent` is persisted across the (simulated) reboot,
//! put in `HostStatus.traceparent`, and every call to the policy, lock and
//! telemetry services carries its client span's context in the gRPC
//! metadata (or, for FleetLock, the HTTP headers).

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::MetadataMap;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `service.name` of the agent's spans.
pub const SERVICE_NAME: &str = "upshift-agent";

/// Errors from [`init`].
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter for {endpoint:?}")]
    Exporter {
        endpoint: String,
        #[source]
        source: upshift_common::telemetry::TelemetryError,
    },
    /// A global subscriber is installed already.
    #[error("cannot install the tracing subscriber")]
    Subscriber(#[source] tracing_subscriber::util::TryInitError),
}

/// Flushes and stops span export when dropped. Drop it inside the runtime
/// but off its threads (`spawn_blocking`): the flush waits for the export.
#[derive(Debug)]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl TracingGuard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// Installs the process's subscriber: log lines on stderr filtered by
/// `RUST_LOG` (default `info`), plus OTLP export to `otlp_endpoint` when
/// given. Call it inside the Tokio runtime that runs the agent.
pub fn init(otlp_endpoint: Option<&str>) -> Result<TracingGuard, TraceError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let provider = match otlp_endpoint {
        Some(endpoint) => Some(
            upshift_common::telemetry::otlp_provider(endpoint, SERVICE_NAME).map_err(|source| {
                TraceError::Exporter {
                    endpoint: endpoint.to_owned(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(SERVICE_NAME)));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(TraceError::Subscriber)?;
    Ok(TracingGuard { provider })
}

/// Writes `span`'s context into outgoing gRPC metadata (`traceparent`).
pub fn inject(span: &Span, metadata: &mut MetadataMap) {
    span.in_scope(|| upshift_common::telemetry::inject_context(metadata));
}

/// `span`'s context as HTTP request headers (FleetLock calls).
pub fn http_headers(span: &Span) -> reqwest::header::HeaderMap {
    let mut md = MetadataMap::new();
    inject(span, &mut md);
    md.into_headers()
}

/// `span`'s W3C `traceparent`; `None` when spans are not exported.
pub fn traceparent(span: &Span) -> Option<String> {
    let mut md = MetadataMap::new();
    inject(span, &mut md);
    md.get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The context a `traceparent` names, if it is a valid one.
fn context(traceparent: &str) -> Option<opentelemetry::Context> {
    let mut md = MetadataMap::new();
    md.insert("traceparent", traceparent.parse().ok()?);
    let cx = upshift_common::telemetry::extract_context(&md);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes the new (not yet entered) `span` a child of the span `traceparent`
/// names, which may have ended or live in an earlier run of the agent.
/// Without a (valid) `traceparent`, `span` stays as it is.
pub fn adopt(span: Span, traceparent: Option<&str>) -> Span {
    if let Some(cx) = traceparent.and_then(context) {
        // Fails only when the span is not recorded (filtered, no OTLP layer).
        let _ = span.set_parent(cx);
    }
    span
}

/// Adds a link from `span` to the span `traceparent` names.
pub fn link(span: &Span, traceparent: &str) {
    if let Some(cx) = context(traceparent) {
        span.add_link(cx.span().span_context().clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_validated() {
        assert!(context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        assert!(context("").is_none());
        assert!(context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(context("not a traceparent").is_none());
    }

    #[test]
    fn without_export_nothing_is_propagated() {
        // No subscriber in this test binary: spans carry no context.
        let span = tracing::info_span!("x");
        assert_eq!(traceparent(&span), None);
        let mut md = MetadataMap::new();
        inject(&span, &mut md);
        assert!(md.is_empty());
    }
}
