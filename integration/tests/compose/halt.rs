//! The automatic halt as compose wires it: telemetry pauses the failing
//! rollout in policy, and policy stops offering the release.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use upshift_integration::Workdir;

use crate::local::{
    Services, SimulatedHost, metric_sum, metrics, newest_x86_release, start_agents, start_services,
    supervise_all, url_of,
};
use crate::model::Compose;
use crate::read;

/// The automatic halt as compose wires it: telemetry (on etcd) pauses the
/// rollout in policy with the admin token from the mounted secret when the
/// compose hosts fail to stage the release, and policy stops offering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_halt_pauses_a_failing_rollout() -> Result<()> {
    if upshift_store::testing::skip_etcd() {
        return Ok(());
    }
    let etcd = upshift_store::testing::EtcdServer::start()
        .await
        .context("etcd must be installed (cargo xtask test installs it)")?;
    let compose = Compose::load()?;
    let dir = Workdir::new()?;
    let (services, hosts) = start_services(&compose, &dir, &etcd).await?;
    let target = newest_x86_release()?;
    let mut agents = start_agents(&compose, &dir, &hosts, std::slice::from_ref(&target))?;
    let client = reqwest::Client::new();
    wait_halted(&client, &mut agents, &services, &target).await?;
    // No host installed the failing release, and policy offers it to none of
    // them any more (Cincinnati, as Zincati and agent-3 ask).
    for agent in &agents {
        check_not_offered(&client, agent, &services, &target).await?;
    }
    drop(agents);
    drop(services);
    drop(etcd);
    Ok(())
}

/// Supervises the agents until telemetry counts a halt of `target` and
/// policy a paused rollout; fails with the logs after 120 s.
async fn wait_halted(
    client: &reqwest::Client,
    agents: &mut [SimulatedHost],
    services: &Services,
    target: &str,
) -> Result<()> {
    let halt_label = format!("version=\"{target}\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        supervise_all(agents)?;
        let telemetry = metrics(client, &url_of(services, "telemetry")).await?;
        let policy = metrics(client, &url_of(services, "policy")).await?;
        let halts = metric_sum(&telemetry, "upshift_telemetry_halts", &[&halt_label]);
        let paused = metric_sum(&policy, "upshift_policy_paused_rollouts", &[]);
        if halts == 1.0 && paused >= 1.0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = agents.iter().map(SimulatedHost::log_tail).collect();
            bail!(
                "no halt of {target}: telemetry halts {halts}, policy paused {paused}\n\
                 telemetry log:\n{}\nagents:\n{}",
                services
                    .iter()
                    .find(|(n, _)| *n == "telemetry")
                    .map(|(_, p)| p.log_tail())
                    .unwrap_or_default(),
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `agent` did not install `target`, and the policy's Cincinnati graph for
/// it has no edge to `target`.
async fn check_not_offered(
    client: &reqwest::Client,
    agent: &SimulatedHost,
    services: &Services,
    target: &str,
) -> Result<()> {
    let booted = agent.booted()?;
    ensure!(booted != target, "{} installed {target}", agent.name);
    let uuid = read(&agent.root.join("etc/upshift/agent.d/50-agent.toml"))?
        .parse::<toml::Table>()?["identity"]["node_uuid"]
        .as_str()
        .context("node_uuid")?
        .to_string();
    let graph: serde_json::Value = client
        .get(format!("{}/v1/graph", url_of(services, "policy")))
        .query(&[
            ("basearch", "x86_64"),
            ("stream", "stable"),
            ("current_version", booted.as_str()),
            ("node_uuid", uuid.as_str()),
        ])
        .send()
        .await?
        .json()
        .await?;
    let nodes = graph["nodes"].as_array().context("nodes")?;
    let index = nodes
        .iter()
        .position(|n| n["version"] == target)
        .context("target node")?;
    let edges = graph["edges"].as_array().context("edges")?;
    ensure!(!edges.is_empty(), "policy serves a graph without edges");
    let offered = edges.iter().any(|e| e[1].as_u64() == Some(index as u64));
    ensure!(
        !offered,
        "{}: policy still offers {target} after the halt",
        agent.name
    );
    Ok(())
}
