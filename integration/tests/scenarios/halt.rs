//! Scenario 2: a release failing on the first hosts is halted by telemetry;
//! the other hosts never stage it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use upshift_integration::agent::AgentProcess;
use upshift_proto::telemetry::v1 as telemetry_pb;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;

use crate::mesh::{Mesh, MeshOptions};
use crate::metadata::{now_epoch, rollout_started, set_last_rollout};
use crate::wait::{check_alive, describe};
use crate::{NEW, OLD, SERIAL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_release_is_halted_and_the_rest_never_stage_it() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Started 30 s ago over one minute: the throttle is at 50%; the failing
    // hosts (wariness <= 0.2) are eligible at once, the healthy ones
    // (wariness >= 0.8) would open over the next 18-30 s without a halt.
    let rollout = rollout_started(30, 1);
    let end = rollout["start_epoch"].as_i64().context("start")? + 60;
    let mesh = Mesh::start(
        &MeshOptions {
            halt: Some((0.3, 2)),
            ..MeshOptions::embedded()
        },
        |updates| set_last_rollout(updates, rollout),
    )
    .await?;
    let old = mesh.release(OLD)?;
    let mut failing = Vec::new();
    for (index, w) in [0.0, 0.1, 0.2].into_iter().enumerate() {
        let mut spec = mesh.spec(index, Some(w), &old);
        spec.fail_versions = vec![NEW.into()];
        failing.push(mesh.start_agent(&spec)?);
    }
    let mut healthy = Vec::new();
    for (index, w) in [0.8, 0.85, 0.9, 0.95, 1.0].into_iter().enumerate() {
        healthy.push(mesh.start_agent(&mesh.spec(10 + index, Some(w), &old))?);
    }

    let (halted_reason, staged_seen) = watch_until_after(&mesh, end, &failing, &healthy).await?;
    assert!(
        staged_seen.is_empty(),
        "healthy hosts staged {NEW}: {staged_seen:?}"
    );
    let reason = halted_reason.with_context(|| {
        format!(
            "{NEW} was never halted; hosts:\n{}\n{}",
            describe(&failing),
            describe(&healthy)
        )
    })?;
    assert!(reason.contains("telemetry"), "{reason}");
    eprintln!("halt reason: {reason}");

    assert_failing_hosts_failed(&failing)?;
    assert_healthy_hosts_stay_and_the_halt_stands(&mesh, &healthy).await
}

/// Watches the healthy hosts' simulated OS until well after the rollout's
/// `end` (when, without the halt, all of them would have staged NEW).
/// Returns the pause reason of NEW (if it was paused) and what the healthy
/// hosts staged or booted other than OLD.
async fn watch_until_after(
    mesh: &Mesh,
    end: i64,
    failing: &[AgentProcess],
    healthy: &[AgentProcess],
) -> Result<(Option<String>, Vec<String>)> {
    let mut halted_reason = None;
    let mut staged_seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while now_epoch() <= end + 5 {
        ensure!(Instant::now() < deadline, "the rollout's end never came");
        check_alive(failing)?;
        check_alive(healthy)?;
        for host in healthy {
            let state = host.os_state()?;
            if state["staged"]["version"] == NEW || state["booted"]["version"] != OLD {
                staged_seen.push(format!("{}: {state}", host.name()));
            }
        }
        if halted_reason.is_none()
            && let Some(r) = mesh
                .rollouts()
                .await?
                .into_iter()
                .find(|r| r.version == NEW)
            && r.paused
        {
            halted_reason = Some(r.pause_reason);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((halted_reason, staged_seen))
}

/// The failing hosts tried and failed (nothing staged, still on OLD).
fn assert_failing_hosts_failed(failing: &[AgentProcess]) -> Result<()> {
    for host in failing {
        assert_eq!(host.booted()?, OLD);
        assert_eq!(host.staged()?, None);
        assert_eq!(host.boot_versions(), [OLD]);
    }
    let errors: Vec<String> = failing
        .iter()
        .map(|h| h.status().map(|s| s.get("last error").to_string()))
        .collect::<Result<_>>()?;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("staging-failed") || e.contains("release-denied")),
        "{errors:?}"
    );
    Ok(())
}

/// The healthy hosts stay on OLD, idle, with no target; the rollout is
/// still paused and telemetry lists the halt.
async fn assert_healthy_hosts_stay_and_the_halt_stands(
    mesh: &Mesh,
    healthy: &[AgentProcess],
) -> Result<()> {
    for host in healthy {
        let status = host.status()?;
        assert_eq!(status.get("booted"), OLD);
        assert_eq!(status.get("target"), "", "{}", host.name());
        assert_eq!(host.boot_versions(), [OLD]);
    }
    let rollout = mesh.new_rollout().await?;
    assert!(rollout.paused, "{rollout:?}");
    let mut client = TelemetryServiceClient::connect(mesh.telemetry.url()).await?;
    let summary = client
        .get_fleet_summary(telemetry_pb::GetFleetSummaryRequest::default())
        .await?
        .into_inner()
        .summary
        .context("no summary")?;
    assert!(
        summary.halts.iter().any(|h| h.version == NEW),
        "{summary:?}"
    );
    Ok(())
}
