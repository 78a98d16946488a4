//! Hosts that stop reporting turn stale after `stale_after` and are dropped
//! after `drop_after`, on tokio's paused clock (the service and its gRPC
//! handlers are called directly, no network).

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mem.rs"]
mod mem;

use std::time::{Duration, UNIX_EPOCH};

use futures::StreamExt;
use harness::{parse, status, sum};
use tokio_util::sync::CancellationToken;
use upshift_common::clock::ScaledClock;
use upshift_common::config::parse_toml;
use upshift_common::telemetry::Metrics;
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::AgentState;
use upshift_proto::telemetry::v1::telemetry_service_server::TelemetryService as _;
use upshift_telemetry::{TelemetryConfig, TelemetryGrpc, TelemetryMetrics, TelemetryService};

const T0: u64 = 1_795_593_600;

#[tokio::test(start_paused = true)]
async fn stale_then_dropped_on_the_injected_clock() {
    let store = harness::mem_store();
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(T0), 1.0);
    let settings = parse_toml::<TelemetryConfig>(
        "stale_after = \"15m\"\ndrop_after = \"24h\"\nwatch_coalesce = \"1s\"",
    )
    .unwrap()
    .validate()
    .unwrap();
    let metrics = Metrics::new("upshift-telemetry");
    let tm = TelemetryMetrics::new(metrics.meter(), 50);
    let shutdown = CancellationToken::new();
    let svc = TelemetryService::start(settings, store.clone(), clock, tm, shutdown.clone())
        .await
        .unwrap();
    let report = |id: &str| {
        let generation = svc
            .ingest(&status(id, "default", "1.0", "", AgentState::Idle, ""))
            .unwrap();
        svc.wait_stored(generation)
    };
    for id in ["h0", "h1", "h2"] {
        report(id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
    report("h0").await.unwrap();
    report("h3").await.unwrap();

    let grpc = TelemetryGrpc::new(svc.clone());
    let mut watch = grpc
        .watch_fleet(tonic::Request::new(pb::WatchFleetRequest { filter: None }))
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap().summary.unwrap();
    assert_eq!((first.total_hosts, first.stale_hosts), (4, 0));

    // h1 and h2 turn stale 15 minutes after their last report (5 minutes from now).
    let next = watch.next().await.unwrap().unwrap().summary.unwrap();
    assert_eq!((next.total_hosts, next.stale_hosts), (2, 2));
    let at = upshift_common::grpc::from_timestamp(next.at.as_ref().unwrap());
    let since_t0 = at.duration_since(UNIX_EPOCH).unwrap().as_secs() - T0;
    assert!((900..902).contains(&since_t0), "stale at T0+{since_t0}s");
    let m = parse(&metrics.render());
    assert_eq!(
        sum(&m, "upshift_telemetry_stale_hosts", &[("stream", "stable")]),
        2.0
    );
    assert_eq!(sum(&m, "upshift_telemetry_hosts", &[]), 2.0);
    let page = grpc
        .get_fleet(tonic::Request::new(pb::GetFleetRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.hosts.len(), 2, "stale hosts are left out by default");

    // Then h0 and h3 (at T0+25m).
    let next = watch.next().await.unwrap().unwrap().summary.unwrap();
    assert_eq!((next.total_hosts, next.stale_hosts), (0, 4));

    // h1 and h2 are dropped 24 hours after their last report: view and store.
    let next = watch.next().await.unwrap().unwrap().summary.unwrap();
    assert_eq!((next.total_hosts, next.stale_hosts), (0, 2));
    let at = upshift_common::grpc::from_timestamp(next.at.as_ref().unwrap());
    let since_t0 = at.duration_since(UNIX_EPOCH).unwrap().as_secs() - T0;
    assert!(
        (86_400..86_402).contains(&since_t0),
        "dropped at T0+{since_t0}s"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (kvs, _) = store.list("telemetry/hosts/").await.unwrap();
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["telemetry/hosts/h0", "telemetry/hosts/h3"]);

    // A dropped host that reports again is back, fresh.
    report("h1").await.unwrap();
    let next = watch.next().await.unwrap().unwrap().summary.unwrap();
    assert_eq!((next.total_hosts, next.stale_hosts), (1, 2));
    shutdown.cancel();
}

/// Attempts that never reach steady halt the release once `steady_within`
/// passes, with no further report (the policy is unreachable here: the halt
/// is recorded and its pause retried).
#[tokio::test(start_paused = true)]
async fn attempts_not_steady_in_time_halt_without_reports() {
    let store = harness::mem_store();
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(T0), 1.0);
    let toml = r#"
        [policy]
        url = "http://127.0.0.1:9"
        admin_token = "0123456789abcdef"
        [halt.default]
        min_attempts = 10
        max_failure_ratio = 0.25
        steady_within = "1h"
    "#;
    let settings = parse_toml::<TelemetryConfig>(toml)
        .unwrap()
        .validate()
        .unwrap();
    let metrics = Metrics::new("upshift-telemetry");
    let tm = TelemetryMetrics::new(metrics.meter(), 50);
    let shutdown = CancellationToken::new();
    let svc = TelemetryService::start(settings, store.clone(), clock, tm, shutdown.clone())
        .await
        .unwrap();
    for i in 0..10 {
        let st = status(
            &format!("s{i}"),
            "default",
            "1.0",
            "2.0",
            AgentState::Staged,
            "",
        );
        let generation = svc.ingest(&st).unwrap();
        svc.wait_stored(generation).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    for i in 0..7 {
        let st = status(&format!("s{i}"), "default", "2.0", "", AgentState::Idle, "");
        let generation = svc.ingest(&st).unwrap();
        svc.wait_stored(generation).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3530)).await;
    assert!(svc.halts().is_empty(), "not before the hour is up");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let halts = svc.halts();
    assert_eq!(halts.len(), 1);
    assert!(
        halts[0].reason.contains("3 not steady within 1h"),
        "{}",
        halts[0].reason
    );
    let (kvs, _) = store.list("telemetry/halts/").await.unwrap();
    assert_eq!(kvs.len(), 1);
    shutdown.cancel();
}
