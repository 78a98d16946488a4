//! The telemetry service as a real process: agent reports over gRPC,
//! GetFleetSummary and GetFleet through grpcurl, /metrics through promtool,
//! acknowledged reports surviving a SIGKILL, and configuration errors.

use std::time::Duration;

use anyhow::Result;
use upshift_integration::tools::{grpcurl, promtool_check_metrics};
use upshift_integration::{ServiceProcess, Workdir, bin};
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;

fn report(
    sequence: u64,
    id: &str,
    booted: &str,
    target: &str,
    state: pb::AgentState,
) -> pb::ReportRequest {
    pb::ReportRequest {
        sequence,
        status: Some(pb::HostStatus {
            node_uuid: id.into(),
            group: "workers".into(),
            stream: "stable".into(),
            basearch: "x86_64".into(),
            booted_version: booted.into(),
            target_version: target.into(),
            state: state as i32,
            ..Default::default()
        }),
    }
}

/// Sends the reports on one stream; returns the acknowledged sequences.
async fn send(url: &str, reports: Vec<pb::ReportRequest>) -> Result<Vec<u64>> {
    let mut client = TelemetryServiceClient::connect(url.to_string()).await?;
    let mut acks = client
        .report(futures::stream::iter(reports))
        .await?
        .into_inner();
    let mut seen = Vec::new();
    while let Some(ack) = acks.message().await? {
        seen.push(ack.acknowledged);
    }
    Ok(seen)
}

fn summary(addr: &str) -> Result<serde_json::Value> {
    let out = grpcurl(&[
        "-d",
        "{}",
        addr,
        "upshift.telemetry.v1.TelemetryService/GetFleetSummary",
    ])?;
    Ok(serde_json::from_str(&out)?)
}

#[tokio::test]
async fn reports_summary_via_grpcurl_and_restart() -> Result<()> {
    let dir = Workdir::new()?;
    let data = dir.path().join("data");
    let mut telemetry = ServiceProcess::start(
        "telemetry",
        dir.path(),
        &["serve", "telemetry", "--data-dir", data.to_str().unwrap()],
    )?;
    telemetry.wait_ready(Duration::from_secs(20)).await?;
    let url = telemetry.url();
    let acks = send(
        &url,
        vec![
            report(1, "host-a", "40.1", "", pb::AgentState::Idle),
            report(2, "host-b", "40.1", "40.2", pb::AgentState::Staging),
            report(3, "host-c", "40.2", "", pb::AgentState::Idle),
        ],
    )
    .await?;
    assert_eq!(acks, [1, 2, 3]);

    let addr = telemetry.addr().to_string();
    let services = grpcurl(&[&addr, "list"])?;
    assert!(
        services.contains("upshift.telemetry.v1.TelemetryService"),
        "{services}"
    );
    let s = summary(&addr)?;
    let s = &s["summary"];
    assert_eq!(s["totalHosts"], 3, "{s}");
    let counts = s["counts"].as_array().unwrap();
    assert_eq!(counts.len(), 3, "{s}");
    assert!(
        counts.iter().any(|c| c["version"] == "40.1"
            && c["state"] == "AGENT_STATE_STAGING"
            && c["hosts"] == 1),
        "{s}"
    );
    let filtered = grpcurl(&[
        "-d",
        r#"{"filter":{"version":"40.1"},"page_size":1}"#,
        &addr,
        "upshift.telemetry.v1.TelemetryService/GetFleet",
    ])?;
    let filtered: serde_json::Value = serde_json::from_str(&filtered)?;
    assert_eq!(filtered["hosts"].as_array().unwrap().len(), 1, "{filtered}");
    assert_eq!(filtered["hosts"][0]["status"]["nodeUuid"], "host-a");
    assert_eq!(filtered["nextPageToken"], "host-a");

    let metrics = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    assert!(
        metrics.contains(r#"upshift_telemetry_hosts{group="workers",state="idle",stream="stable",version="40.2"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("upshift_telemetry_update_attempts_total"),
        "{metrics}"
    );
    promtool_check_metrics(&metrics)?;

    // Acknowledged means stored: a SIGKILL loses none of it.
    telemetry.restart()?;
    telemetry.wait_ready(Duration::from_secs(20)).await?;
    assert_eq!(summary(telemetry.addr())?["summary"]["totalHosts"], 3);
    Ok(())
}

#[test]
fn invalid_configuration_exits_64_with_every_error() -> Result<()> {
    let dir = Workdir::new()?;
    let config = dir.path().join("telemetry.toml");
    std::fs::write(
        &config,
        "stale_after = \"2h\"\ndrop_after = \"1h\"\n[halt.default]\nenabled = true\nmax_failure_ratio = 2.0\n",
    )?;
    let out = std::process::Command::new(bin("upshift")?)
        .args(["serve", "telemetry", "--check-config", "--config"])
        .arg(&config)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for key in [
        "drop_after",
        "halt.default.enabled",
        "halt.default.max_failure_ratio",
    ] {
        assert!(stderr.contains(key), "{key} missing: {stderr}");
    }
    Ok(())
}
