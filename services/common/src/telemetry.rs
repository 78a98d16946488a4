//! Tracing setup (fmt + optional OTLP export), W3C trace-context propagation, per-service metrics.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::{Encoder, TextEncoder};
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Options for [`init_tracing`].
#[derive(Debug, Clone)]
pub struct TracingOptions {
    /// Text or JSON log lines.
    pub log_format: LogFormat,
    /// OTLP gRPC endpoint; spans are exported only when set.
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute.
    pub service_name: String,
}

/// Errors from [`init_tracing`].
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Tracing was already initialized in this process.
    #[error("tracing is already initialized in this process")]
    AlreadyInitialized,
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP span exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber was already installed by someone else.
    #[error("cannot install the tracing subscriber")]
    Subscriber(#[source] tracing_subscriber::util::TryInitError),
}

/// Flushes and shuts down span export when dropped.
#[derive(Debug)]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

static TRACING_INIT: AtomicBool = AtomicBool::new(false);

/// Installs the global tracing subscriber; a second call returns [`TelemetryError::AlreadyInitialized`].
pub fn init_tracing(opts: &TracingOptions) -> Result<TracingGuard, TelemetryError> {
    if TRACING_INIT.swap(true, Ordering::SeqCst) {
        return Err(TelemetryError::AlreadyInitialized);
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match opts.log_format {
        // Colours only on a terminal: a log file or the journal gets plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(colour_logs())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    let provider = match &opts.otlp_endpoint {
        Some(endpoint) => Some(otlp_provider(endpoint, &opts.service_name)?),
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(opts.service_name.clone())));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(TelemetryError::Subscriber)?;
    Ok(TracingGuard { provider })
}

/// Whether text log lines (written to stdout) carry ANSI colours: only when
/// stdout is a terminal and `NO_COLOR` is unset or empty.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A tracer provider exporting spans in batches over OTLP gRPC to `endpoint`
/// (for processes that install their own subscriber, such as the agent).
/// Call it inside a Tokio runtime; the runtime must outlive the provider.
pub fn otlp_provider(
    endpoint: &str,
    service_name: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(TelemetryError::Exporter)?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|kv| match kv {
                KeyAndValueRef::Ascii(k, _) => Some(k.as_str()),
                KeyAndValueRef::Binary(..) => None,
            })
            .collect()
    }
}

/// Writes the current span's context into outgoing gRPC metadata (`traceparent`).
pub fn inject_context(metadata: &mut MetadataMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// Reads a W3C trace context from incoming gRPC metadata.
pub fn extract_context(metadata: &MetadataMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// One service's metrics: its own meter provider and Prometheus registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    service_name: String,
}

impl Metrics {
    /// Creates a meter provider whose Prometheus exporter reads into a private registry.
    pub fn new(service_name: &str) -> Self {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .expect("a fresh registry accepts the exporter's collector");
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        Self {
            provider,
            registry,
            service_name: service_name.to_string(),
        }
    }

    /// The service's meter.
    pub fn meter(&self) -> opentelemetry::metrics::Meter {
        use opentelemetry::metrics::MeterProvider as _;
        let scope = opentelemetry::InstrumentationScope::builder(self.service_name.clone()).build();
        self.provider.meter_with_scope(scope)
    }

    /// Prometheus text exposition format of all instruments.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests;
