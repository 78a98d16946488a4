//! `upshift fleet summary|hosts` against a real telemetry service, and an
//! automatic halt as the fleet commands and `rollout list` show it.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use upshift_integration::{ServiceProcess, Workdir};
use upshift_proto::telemetry::v1::AgentState;

use crate::support::{Mesh, NEW_ROLLOUT, golden, host, report, run_cli};

/// The release the fleet runs before the rollout of [`NEW_ROLLOUT`].
const OLD: &str = "34.20211004.3.1";

#[tokio::test]
async fn fleet_summary_and_hosts_from_a_real_telemetry_service() -> Result<()> {
    let dir = Workdir::new()?;
    let data = dir.path().join("telemetry-data");
    let telemetry = ServiceProcess::start(
        "telemetry",
        dir.path(),
        &["serve", "telemetry", "--data-dir", data.to_str().unwrap()],
    )?;
    telemetry.wait_ready(Duration::from_secs(20)).await?;
    report_three_hosts(&telemetry).await?;
    let env = [("UPSHIFT_TELEMETRY_URL", telemetry.url())];
    let urls = vec![(telemetry.url(), "<telemetry-url>")];

    check_summary(&env, &urls)?;
    let hosts = run_cli(&["fleet", "hosts"], &env)?.expect(0)?;
    golden("fleet-hosts", &hosts.stdout, &urls)?;
    check_host_pages(&env)?;
    check_host_filters(&env)?;
    let status = run_cli(&["status", "--only", "telemetry", "-o", "json"], &env)?
        .expect(0)?
        .json()?;
    assert_eq!(status["services"][0]["details"]["hosts"], 3, "{status}");
    Ok(())
}

/// One host idle on the new release, one rebooting into it, one staging it.
async fn report_three_hosts(telemetry: &ServiceProcess) -> Result<()> {
    report(
        telemetry,
        vec![
            host(
                "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
                "workers",
                NEW_ROLLOUT,
                AgentState::Idle as i32,
                "",
            ),
            host(
                "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
                "workers",
                OLD,
                AgentState::Rebooting as i32,
                NEW_ROLLOUT,
            ),
            host(
                "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c",
                "db",
                OLD,
                AgentState::Staging as i32,
                NEW_ROLLOUT,
            ),
        ],
    )
    .await
}

/// `fleet summary` as a table and as JSON.
fn check_summary(env: &[(&str, String)], urls: &[(String, &'static str)]) -> Result<()> {
    let summary = run_cli(&["fleet", "summary"], env)?.expect(0)?;
    golden("fleet-summary", &summary.stdout, urls)?;
    let json = run_cli(&["fleet", "summary", "-o", "json"], env)?
        .expect(0)?
        .json()?;
    assert_eq!(json["total_hosts"], 3, "{json}");
    assert_eq!(json["stale_hosts"], 0);
    let rebooting: Vec<&Value> = json["counts"]
        .as_array()
        .context("counts")?
        .iter()
        .filter(|c| c["state"] == "rebooting")
        .collect();
    assert_eq!(rebooting.len(), 1, "{json}");
    assert_eq!(rebooting[0]["hosts"], 1);
    Ok(())
}

/// One host per page: the pages are followed, and --limit stops early.
fn check_host_pages(env: &[(&str, String)]) -> Result<()> {
    let paged = run_cli(&["fleet", "hosts", "--page-size", "1", "-o", "json"], env)?
        .expect(0)?
        .json()?;
    let ids: Vec<&str> = paged["hosts"]
        .as_array()
        .context("hosts")?
        .iter()
        .filter_map(|h| h["node_uuid"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c"
        ]
    );
    let limited = run_cli(
        &[
            "fleet",
            "hosts",
            "--page-size",
            "1",
            "--limit",
            "2",
            "-o",
            "json",
        ],
        env,
    )?
    .expect(0)?
    .json()?;
    assert_eq!(limited["hosts"].as_array().map(Vec::len), Some(2));
    Ok(())
}

/// `fleet hosts --version --group` and `--state` select the matching hosts.
fn check_host_filters(env: &[(&str, String)]) -> Result<()> {
    let filtered = run_cli(
        &[
            "fleet",
            "hosts",
            "--version",
            OLD,
            "--group",
            "workers",
            "-o",
            "json",
        ],
        env,
    )?
    .expect(0)?
    .json()?;
    let hosts = filtered["hosts"].as_array().context("hosts")?;
    assert_eq!(hosts.len(), 1, "{filtered}");
    assert_eq!(hosts[0]["node_uuid"], "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
    assert_eq!(hosts[0]["state"], "rebooting");
    assert_eq!(hosts[0]["target_version"], NEW_ROLLOUT);
    assert_eq!(hosts[0]["lock_held"], true);
    let staging = run_cli(&["fleet", "hosts", "--state", "staging", "-o", "json"], env)?
        .expect(0)?
        .json()?;
    assert_eq!(
        staging["hosts"].as_array().map(Vec::len),
        Some(1),
        "{staging}"
    );
    Ok(())
}

#[tokio::test]
async fn an_automatic_halt_shows_in_fleet_summary_and_rollout_list() -> Result<()> {
    let mesh = Mesh::start().await?;
    let telemetry = start_halting_telemetry(&mesh).await?;
    report_one_failure_in_two(&telemetry).await?;
    let list = wait_paused(&mesh).await?;
    let reason = list["rollouts"][1]["pause_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("automatic halt"), "{list}");

    let mut urls = mesh.urls();
    urls.push((telemetry.url(), "<telemetry-url>"));
    let env = [("UPSHIFT_TELEMETRY_URL", telemetry.url())];
    let summary = run_cli(&["fleet", "summary"], &env)?.expect(0)?;
    golden("fleet-summary-halted", &summary.stdout, &urls)?;
    let json = run_cli(&["fleet", "summary", "-o", "json"], &env)?
        .expect(0)?
        .json()?;
    assert_eq!(json["halts"][0]["version"], NEW_ROLLOUT, "{json}");
    let rollouts = mesh.cli(&["rollout", "list"])?.expect(0)?;
    golden("rollout-list-halted", &rollouts.stdout, &urls)?;
    let hosts = run_cli(&["fleet", "hosts", "--state", "staging"], &env)?.expect(0)?;
    assert!(hosts.stdout.contains("staging-failed"), "{}", hosts.stdout);
    Ok(())
}

/// A telemetry service that halts a rollout failing on over 10% of at
/// least two hosts, in the mesh's policy service.
async fn start_halting_telemetry(mesh: &Mesh) -> Result<ServiceProcess> {
    let config = mesh.dir.path().join("telemetry.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\nurl = {:?}\nadmin_token_file = {:?}\n\
             [halt.default]\nmax_failure_ratio = 0.1\nmin_attempts = 2\n",
            mesh.policy.url(),
            mesh.token_file.to_str().unwrap(),
        ),
    )?;
    let data = mesh.dir.path().join("telemetry-data");
    let telemetry = ServiceProcess::start(
        "telemetry",
        mesh.dir.path(),
        &[
            "serve",
            "telemetry",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    )?;
    telemetry.wait_ready(Duration::from_secs(20)).await?;
    Ok(telemetry)
}

/// Two hosts attempt the new release; one fails: 50% > 10%.
async fn report_one_failure_in_two(telemetry: &ServiceProcess) -> Result<()> {
    let staging = AgentState::Staging as i32;
    let mut failing = host(
        "0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d",
        "workers",
        OLD,
        staging,
        NEW_ROLLOUT,
    );
    failing.last_error_kind = "staging-failed".into();
    failing.last_error = "no space left on device".into();
    report(
        telemetry,
        vec![
            host(
                "0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e",
                "workers",
                OLD,
                staging,
                NEW_ROLLOUT,
            ),
            failing,
        ],
    )
    .await
}

/// The telemetry service pauses the rollout in the policy service: waits
/// for `rollout list` to show it, and returns that list.
async fn wait_paused(mesh: &Mesh) -> Result<Value> {
    let mut paused = None;
    for _ in 0..400 {
        let list = mesh
            .cli(&["rollout", "list", "-o", "json"])?
            .expect(0)?
            .json()?;
        if list["rollouts"][1]["paused"] == true {
            paused = Some(list);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    paused.context("the rollout was never halted")
}
