//! `upshift dev` as a newcomer runs it (without the live view): the whole
//! control plane and a simulated fleet on a fast clock. A rollout reaches
//! every host; a failing release is halted automatically and the rest of
//! the fleet never gets it.

use std::process::Command;

use anyhow::{Context, Result};
use upshift_integration::{Workdir, bin, fixtures};

const NEWEST: &str = "34.20211016.3.0";
const PREVIOUS: &str = "34.20211004.3.1";

/// Runs `upshift dev` to completion; returns its stdout.
fn dev(dir: &Workdir, extra: &[&str]) -> Result<String> {
    let output = Command::new(bin("upshift")?)
        .args(["dev", "--no-ui", "--base-port", "0", "--speed", "10000"])
        .arg("--workdir")
        .arg(dir.path().join("dev"))
        .arg("--fixtures")
        .arg(fixtures())
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .context("running upshift dev")?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "upshift dev failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    Ok(stdout)
}

/// The final view's host count for `version` (`  <version>  <count> [...`).
fn hosts_on(view: &str, version: &str) -> u32 {
    view.lines()
        .rev()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(version))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

#[test]
fn a_rollout_reaches_the_whole_simulated_fleet() -> Result<()> {
    let dir = Workdir::new()?;
    let view = dev(
        &dir,
        &[
            "--agents",
            "40",
            "--until",
            "converged",
            "--run-for",
            "300s",
        ],
    )?;
    assert_eq!(hosts_on(&view, NEWEST), 40, "{view}");
    assert_eq!(hosts_on(&view, PREVIOUS), 0, "{view}");
    assert!(view.contains("no automatic halts"), "{view}");
    // The working copy of the metadata is there to edit.
    assert!(
        dir.path()
            .join("dev/metadata/stable/updates.json")
            .is_file()
    );
    Ok(())
}

#[test]
fn a_failing_release_is_halted_and_the_rest_never_get_it() -> Result<()> {
    let dir = Workdir::new()?;
    let fail = format!("{NEWEST}:50");
    let view = dev(
        &dir,
        &[
            "--agents",
            "40",
            "--fail",
            &fail,
            "--until",
            "halted",
            "--run-for",
            "300s",
        ],
    )?;
    assert!(view.contains(&format!("HALTED stable {NEWEST}")), "{view}");
    assert!(view.contains("PAUSED: automatic halt"), "{view}");
    // Half the hosts would fail; the halt stops the rollout long before the
    // other half has it.
    assert!(hosts_on(&view, NEWEST) < 20, "{view}");
    Ok(())
}

/// Bad flags are usage errors (64, as for every `upshift` command), found
/// before anything starts: no working directory is created.
#[test]
fn bad_flags_exit_64_before_starting() -> Result<()> {
    let dir = Workdir::new()?;
    let workdir = dir.path().join("dev");
    for bad in [
        &["--speed", "0"][..],
        &["--speed", "-5"],
        &["--speed", "NaN"],
        &["--agents", "20001"],
        &["--fail", "34.20211016.3.0:150"],
        &["--until", "converged"],
    ] {
        let output = Command::new(bin("upshift")?)
            .args(["dev", "--no-ui", "--base-port", "0"])
            .arg("--workdir")
            .arg(&workdir)
            .arg("--fixtures")
            .arg(fixtures())
            .args(bad)
            .output()
            .context("running upshift dev")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{bad:?}: {stderr}");
        assert!(!stderr.is_empty(), "{bad:?}: no message");
        assert!(!workdir.exists(), "{bad:?} started the mesh");
    }
    Ok(())
}

/// The addresses `upshift dev` prints: `graph A  policy B  lock C  telemetry D ... bridge E`.
fn printed_address(guide: &str, name: &str) -> Option<String> {
    let mut words = guide.split_whitespace();
    while let Some(word) = words.next() {
        if word == name {
            return words.next().map(str::to_string);
        }
    }
    None
}

#[tokio::test]
async fn the_printed_addresses_answer_including_the_bridge() -> Result<()> {
    use std::io::BufRead;
    let dir = Workdir::new()?;
    let mut child = Command::new(bin("upshift")?)
        .args(["dev", "--no-ui", "--base-port", "0", "--agents", "3"])
        .args(["--run-for", "300s"])
        .arg("--workdir")
        .arg(dir.path().join("dev"))
        .arg("--fixtures")
        .arg(fixtures())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let guide = tokio::task::spawn_blocking(move || {
        let mut guide = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            let done = line.contains("bridge ");
            guide.push_str(&line);
            guide.push('\n');
            if done {
                break;
            }
        }
        guide
    })
    .await?;
    let result = async {
        let graph_addr = printed_address(&guide, "graph").context("graph address")?;
        let whole = reqwest::get(format!(
            "http://{graph_addr}/v1/graph?basearch=x86_64&stream=stable"
        ))
        .await?;
        anyhow::ensure!(whole.status() == 200, "graph /v1/graph: {}", whole.status());
        // The guide's grpcurl line, through reflection.
        let scopes = upshift_integration::tools::grpcurl(&[
            &graph_addr,
            "upshift.graph.v1.GraphService/ListScopes",
        ])?;
        anyhow::ensure!(scopes.contains("\"stable\""), "{scopes}");
        let policy = printed_address(&guide, "policy").context("policy address")?;
        let bridge = printed_address(&guide, "bridge").context("bridge address")?;
        // The guide's `curl .../metrics | grep upshift_telemetry` finds something.
        let telemetry = printed_address(&guide, "telemetry").context("telemetry address")?;
        let metrics = reqwest::get(format!("http://{telemetry}/metrics")).await?;
        anyhow::ensure!(
            metrics.status() == 200,
            "telemetry /metrics: {}",
            metrics.status()
        );
        let metrics = metrics.text().await?;
        anyhow::ensure!(metrics.contains("upshift_telemetry"), "{metrics}");
        let graph = reqwest::get(format!(
            "http://{policy}/v1/graph?basearch=x86_64&stream=stable&rollout_wariness=1"
        ))
        .await?;
        anyhow::ensure!(
            graph.status() == 200,
            "policy /v1/graph: {}",
            graph.status()
        );
        // The agent's socket appears once host 0 is up: retry briefly.
        let mut last = String::new();
        for _ in 0..100 {
            let response = reqwest::get(format!("http://{bridge}/bridge?selector=agent")).await?;
            let status = response.status();
            last = response.text().await?;
            if status == 200 {
                anyhow::ensure!(last.contains("upshift_agent_"), "{last}");
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        anyhow::bail!("the bridge never served the agent's metrics: {last}")
    }
    .await;
    child.kill().ok();
    child.wait().ok();
    result.with_context(|| format!("guide:\n{guide}"))
}

/// Editing `updates.json` in the working directory: the graph service
/// reloads it and the fleet follows the new rollout. The newest rollout runs
/// 48 simulated hours (about 48 real minutes at `--speed 60`); the edit makes
/// it complete at once, and every host must have it well within the run.
#[tokio::test]
async fn an_edit_of_updates_json_is_followed_by_the_fleet() -> Result<()> {
    use std::io::BufRead;
    let dir = Workdir::new()?;
    let workdir = dir.path().join("dev");
    let mut child = Command::new(bin("upshift")?)
        .args(["dev", "--no-ui", "--base-port", "0", "--agents", "20"])
        .args(["--speed", "60", "--until", "converged", "--run-for", "120s"])
        .arg("--workdir")
        .arg(&workdir)
        .arg("--fixtures")
        .arg(fixtures())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            if line.contains("bridge ") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .context("upshift dev printed no addresses")?;
    // Up, and nowhere near converged: 20 hosts, a 48-hour rollout just begun.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let path = workdir.join("metadata/stable/updates.json");
    let mut updates: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let newest = updates["releases"]
        .as_array_mut()
        .context("releases")?
        .iter_mut()
        .find(|r| r["version"] == NEWEST)
        .context("newest release")?;
    newest["metadata"]["rollout"] = serde_json::json!({"start_percentage": 1.0});
    let edited = std::time::Instant::now();
    std::fs::write(&path, serde_json::to_vec_pretty(&updates)?)?;
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    let converged_after = edited.elapsed();
    let view = reader.join().unwrap_or_default();
    anyhow::ensure!(
        status.success(),
        "upshift dev did not converge ({status}):\n{view}"
    );
    assert_eq!(hosts_on(&view, NEWEST), 20, "{view}");
    eprintln!("converged {converged_after:?} after the edit");
    Ok(())
}
