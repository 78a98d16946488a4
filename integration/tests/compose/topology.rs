//! The compose topology without containers: etcd, the services and the
//! three simulated hosts updating to the newest release through them, and
//! the bridge serving an agent's metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use upshift_integration::{ServiceProcess, Workdir};

use crate::local::{
    Services, SimulatedHost, localise, metric_sum, metrics, newest_x86_release, start_agents,
    start_services, supervise_all, url_of,
};
use crate::model::{Compose, strings};
use crate::paths::{map_toml, mapped_command_with};
use crate::{agent_job, describe, repo, run, yaml};

/// The compose topology without containers: a real etcd, the services with
/// compose's command lines and configuration files (container paths mapped,
/// service names pointed at local addresses), compose's health checks, and
/// the three simulated hosts updating to the newest release through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_topology_runs_as_local_processes() -> Result<()> {
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
    let mut agents = start_agents(&compose, &dir, &hosts, &[])?;
    ensure!(agents.len() == 3);
    wait_all_booted(&mut agents, &services, &target).await?;
    for agent in &agents {
        ensure!(
            agent.reboots >= 1,
            "{} updated without a reboot",
            agent.name
        );
        eprintln!(
            "{} reached {target} after {} simulated reboot(s)",
            agent.name, agent.reboots
        );
    }

    // Every host reports steady on the new release to telemetry, and every
    // reboot slot is released again.
    let client = reqwest::Client::new();
    wait_steady(&client, &mut agents, &services, &target).await?;

    let bridge_process = start_bridge(&compose, &dir, &hosts, &agents).await?;
    let exposition = scrape_agent_through_bridge(&client, &mut agents, &bridge_process).await?;
    ensure!(
        metric_sum(&exposition, "upshift_agent_state", &[]) >= 1.0,
        "the agent's exposition through the bridge has no state:\n{exposition}"
    );
    upshift_integration::tools::promtool_check_metrics(&exposition)?;

    drop(bridge_process);
    drop(agents);
    drop(services);
    drop(etcd);
    Ok(())
}

/// Supervises the agents until every one booted `target`; fails with their
/// logs and the services' after 240 s.
async fn wait_all_booted(
    agents: &mut [SimulatedHost],
    services: &Services,
    target: &str,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let mut done = 0;
        for agent in agents.iter_mut() {
            agent.supervise()?;
            if agent.booted()? == target {
                done += 1;
            }
        }
        if done == agents.len() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let mut report = String::new();
            for agent in agents.iter() {
                report.push_str(&format!(
                    "--- {} booted {} after {} reboots:\n{}\n",
                    agent.name,
                    agent.booted()?,
                    agent.reboots,
                    agent.log_tail()
                ));
            }
            for (name, process) in services {
                report.push_str(&format!("--- {name}:\n{}\n", process.log_tail()));
            }
            bail!("the simulated hosts did not all reach {target}:\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until telemetry counts the three hosts on `target` and the lock
/// no holder.
async fn wait_steady(
    client: &reqwest::Client,
    agents: &mut [SimulatedHost],
    services: &Services,
    target: &str,
) -> Result<()> {
    let version_label = format!("version=\"{target}\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        supervise_all(agents)?;
        let telemetry = metrics(client, &url_of(services, "telemetry")).await?;
        let lock = metrics(client, &url_of(services, "lock")).await?;
        let fleet = metric_sum(&telemetry, "upshift_telemetry_hosts", &[&version_label]);
        let holders = metric_sum(&lock, "upshift_lock_holders", &[]);
        if fleet == 3.0 && holders == 0.0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "telemetry counts {fleet} hosts on {target} and the lock {holders} holders:\n\
                 {telemetry}\n{lock}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts the bridge with compose's command line, its shared volume
/// pointed at agent-1's, and checks it with compose's health check.
async fn start_bridge(
    compose: &Compose,
    dir: &Workdir,
    hosts: &BTreeMap<String, String>,
    agents: &[SimulatedHost],
) -> Result<ServiceProcess> {
    // agent-1's bridge serves the agent's metrics socket, reached through
    // the volume both containers mount, as the Prometheus job scrapes it.
    let bridge = compose.service("bridge")?;
    let shared = bridge
        .mounts
        .iter()
        .find(|m| !m.is_bind())
        .context("the bridge shares no volume with an agent")?;
    let agent_mount = compose
        .service("agent-1")?
        .mounts
        .iter()
        .find(|m| m.source == shared.source)
        .context("agent-1 does not mount the bridge's volume")?;
    let agent_1 = agents
        .iter()
        .find(|a| a.name == "agent-1")
        .context("agent-1")?;
    let volume = vec![(
        shared.target.clone(),
        agent_1
            .root
            .join(agent_mount.target.trim_start_matches('/')),
    )];
    let args = mapped_command_with(compose, bridge, dir.path(), |doc| {
        localise(doc, hosts);
        map_toml(doc, &volume);
    })?;
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let bridge_process = ServiceProcess::start("bridge", dir.path(), &arg_refs)?;
    bridge_process.wait_ready(Duration::from_secs(30)).await?;
    let health = run("upshift", &["health".to_string(), bridge_process.url()])?;
    ensure!(
        health.status.success(),
        "bridge: compose's health check fails:\n{}",
        describe(&health)
    );
    Ok(bridge_process)
}

/// The agent's exposition as the Prometheus `upshift-agent` job scrapes it
/// through the bridge.
async fn scrape_agent_through_bridge(
    client: &reqwest::Client,
    agents: &mut [SimulatedHost],
    bridge_process: &ServiceProcess,
) -> Result<String> {
    let prometheus = yaml(&repo().join("deploy/prometheus/prometheus.yml"))?;
    let job = agent_job(&prometheus).context("upshift-agent job")?;
    let path = job["metrics_path"].as_str().context("metrics_path")?;
    let selector = strings(&job["params"]["selector"], "selector")?.join("");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        supervise_all(agents)?;
        let response = client
            .get(format!("{}{path}", bridge_process.url()))
            .query(&[("selector", &selector)])
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        if status == 200 {
            return Ok(body);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the bridge answers {status} for the agent's metrics: {body}\n{}",
                bridge_process.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
