//! The policy service's instruments as Prometheus renders them: every
//! metric of the README's list, with the labels and buckets a dashboard
//! needs, after a `/v1/graph` request, a stream with a time-triggered push
//! and a pause. Checked with `promtool check metrics` when it is installed.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Body;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use upshift_common::auth::AdminAuth;
use upshift_common::clock::ScaledClock;
use upshift_common::telemetry::Metrics;
use upshift_policy::PolicyService;
use upshift_policy::store::MemoryStore;
use upshift_proto::policy::v1 as pb;

use support::*;

/// The value of the one sample named `name` whose labels include `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    let found: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let metric = series.split('{').next().unwrap_or_default();
            metric == name && labels.iter().all(|want| series.contains(want))
        })
        .map(|(_, v)| v.parse().unwrap())
        .collect();
    assert_eq!(found.len(), 1, "one {name} {labels:?} in:\n{text}");
    found[0]
}

#[tokio::test(start_paused = true)]
async fn every_documented_metric_is_exported() {
    // At 3000 the throttle of 2.0 is 1/3; wariness 0.5 is reached at 4000.
    let clock = ScaledClock::shared(at(3000.0), 1.0);
    let metrics = Metrics::new("policy");
    let svc = PolicyService::start(
        &config(Duration::from_secs(3600), Duration::from_secs(36_000)),
        MemoryStore::shared(),
        clock.clone(),
        &metrics,
        AdminAuth::new(Some(TOKEN.into()), Vec::new()),
        CancellationToken::new(),
    );
    svc.publish(key(), 1, rollout_graph());

    for uuid in ["a", "b", "a"] {
        let resp = svc
            .router()
            .oneshot(
                http::Request::get(format!(
                    "/v1/graph?basearch=x86_64&stream=stable&node_uuid={uuid}"
                ))
                .body(Body::empty())
                .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let missing = svc
        .router()
        .oneshot(
            http::Request::get("/v1/graph?stream=stable")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);

    let mut s = svc
        .hub
        .subscribe(identity("p1.0", Some(0.5), "c"), String::new());
    let first = hint(next_event(&mut s).await.unwrap().0);
    assert_eq!(no_update(&first), pb::NoUpdateReason::Throttled);
    // The push when the throttle opens at 4000 (paused time runs to it).
    let opened = hint(next_event(&mut s).await.unwrap().0);
    assert_eq!(target_of(&opened), Some("2.0"));
    svc.control
        .pause("stable", "2.0", false, "canary", "ops")
        .await
        .unwrap();

    let text = metrics.render();
    let route = "route=\"/v1/graph\"";
    assert_eq!(
        sample(
            &text,
            "upshift_policy_requests_total",
            &[route, "result=\"ok\""]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "upshift_policy_requests_total",
            &[route, "result=\"missing_params\""]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "upshift_policy_request_duration_seconds_count",
            &[route]
        ),
        4.0
    );
    // Buckets fine enough for sub-millisecond answers and the 5 ms target.
    let bounds: HashSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("upshift_policy_request_duration_seconds_bucket{"))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
    for le in ["0.0005", "0.001", "0.005"] {
        assert!(
            bounds.contains(le),
            "latency bucket le={le} missing: {bounds:?}"
        );
    }
    assert_eq!(sample(&text, "upshift_policy_open_streams", &[]), 1.0);
    assert_eq!(sample(&text, "upshift_policy_pushes_total", &[]), 2.0);
    assert_eq!(
        sample(&text, "upshift_policy_push_lag_seconds_count", &[]),
        1.0,
        "the time-triggered push is measured, the first hint is not"
    );
    assert_eq!(
        sample(
            &text,
            "upshift_policy_push_lag_seconds_bucket",
            &["le=\"0.001\""]
        ),
        1.0,
        "pushed within a millisecond of the opening instant (paused time)"
    );
    let throttle = sample(
        &text,
        "upshift_policy_rollout_throttle",
        &["stream=\"stable\"", "version=\"2.0\""],
    );
    assert!((throttle - 0.5).abs() < 1e-3, "held at 4000: {throttle}");
    assert_eq!(sample(&text, "upshift_policy_paused_rollouts", &[]), 1.0);
    // a and b asked over HTTP, "a" twice (the stream above was opened on the
    // hub directly; the gRPC layer is what counts its id).
    let unique = sample(&text, "upshift_policy_unique_nodes", &[]);
    assert!((unique - 2.0).abs() < 0.5, "{unique}");
    assert!(!text.contains("node_uuid"), "no node id labels");
    upshift_common::testing::promtool_check_metrics(&text);

    drop(s);
    assert_eq!(
        sample(&metrics.render(), "upshift_policy_open_streams", &[]),
        0.0
    );
}
