use super::*;
use opentelemetry::KeyValue;

#[test]
fn render_passes_promtool() {
    let m = Metrics::new("test-svc");
    let meter = m.meter();
    let c = meter
        .u64_counter("upshift.test.requests")
        .with_description("Requests seen.")
        .build();
    c.add(3, &[KeyValue::new("route", "/x")]);
    let h = meter
        .f64_histogram("upshift.test.duration")
        .with_unit("s")
        .with_description("Request latency.")
        .build();
    h.record(0.25, &[KeyValue::new("route", "/x")]);
    let text = m.render();
    assert!(
        text.contains("upshift_test_requests_total{route=\"/x\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("upshift_test_duration_seconds_bucket"),
        "{text}"
    );
    assert!(!text.contains("otel_scope"), "{text}");
    assert!(!text.contains("target_info"), "{text}");

    crate::testing::promtool_check_metrics(&text);
}

#[test]
fn metrics_are_per_service() {
    let a = Metrics::new("a");
    let b = Metrics::new("b");
    a.meter().u64_counter("only.in.a").build().add(1, &[]);
    assert!(a.render().contains("only_in_a_total"));
    assert!(!b.render().contains("only_in_a"));
}

#[test]
fn context_round_trips_through_metadata() {
    let mut md = MetadataMap::new();
    md.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    use opentelemetry::trace::TraceContextExt;
    let cx = extract_context(&md);
    assert_eq!(
        cx.span().span_context().trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let mut out = MetadataMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(&mut out));
    assert!(out.get("traceparent").is_some());
}

#[test]
fn tracing_initializes_once_per_process() {
    let opts = TracingOptions {
        log_format: LogFormat::Json,
        otlp_endpoint: None,
        service_name: "test".into(),
    };
    let guard = init_tracing(&opts).unwrap();
    assert!(matches!(
        init_tracing(&opts),
        Err(TelemetryError::AlreadyInitialized)
    ));
    drop(guard);
}
