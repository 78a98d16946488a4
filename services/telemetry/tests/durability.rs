//! A report is acknowledged only once its record is stored: while the store
//! fails nothing is acknowledged, and the write-behind catches up when it
//! recovers (tokio's paused clock; the service is called directly).

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mem.rs"]
mod mem;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use harness::status;
use tokio_util::sync::CancellationToken;
use upshift_common::clock::ScaledClock;
use upshift_common::telemetry::Metrics;
use upshift_proto::telemetry::v1::AgentState;
use upshift_telemetry::{TelemetryMetrics, TelemetryService, TelemetrySettings};

#[tokio::test(start_paused = true)]
async fn nothing_is_acknowledged_before_it_is_stored() {
    let mem = Arc::new(mem::MemStore::new());
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(1_795_593_600), 1.0);
    let metrics = Metrics::new("upshift-telemetry");
    let tm = TelemetryMetrics::new(metrics.meter(), 50);
    let shutdown = CancellationToken::new();
    let svc = TelemetryService::start(
        TelemetrySettings::default(),
        mem.clone(),
        clock,
        tm,
        shutdown.clone(),
    )
    .await
    .unwrap();

    mem.set_failing(true);
    let mut generations = Vec::new();
    for i in 0..250 {
        let st = status(
            &format!("d{i:03}"),
            "default",
            "1.0",
            "",
            AgentState::Idle,
            "",
        );
        generations.push(svc.ingest(&st).unwrap());
    }
    let last = *generations.last().unwrap();
    // The view has them at once; the store and the acknowledgement wait.
    assert_eq!(svc.summary(&Default::default()).total_hosts, 250);
    let waited = tokio::time::timeout(Duration::from_secs(60), svc.wait_stored(last)).await;
    assert!(waited.is_err(), "acknowledged while the store fails");
    let text = metrics.render();
    assert!(
        text.contains("upshift_telemetry_pending_writes 250"),
        "{text}"
    );
    assert!(
        text.contains("upshift_telemetry_store_errors_total{op=\"write\"}"),
        "{text}"
    );

    mem.set_failing(false);
    tokio::time::timeout(Duration::from_secs(60), svc.wait_stored(last))
        .await
        .expect("stored once the store is back")
        .unwrap();
    let (kvs, _) = upshift_store::Store::list(&*mem, "telemetry/hosts/")
        .await
        .unwrap();
    assert_eq!(kvs.len(), 250);
    assert!(
        metrics
            .render()
            .contains("upshift_telemetry_pending_writes 0")
    );
    shutdown.cancel();
}
