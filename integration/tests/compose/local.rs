//! The compose topology as local processes: the services with compose's
//! command lines and configuration, and the simulated hosts supervised as
//! compose's `restart` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use upshift_integration::{ServiceProcess, Workdir, bin};

use crate::model::{Compose, Service};
use crate::paths::{install_agent_defaults, map_path, mapped_command_with};
use crate::{default_port, describe, read, repo, run};

/// Points `scheme://SERVICE:PORT` URLs of the compose network at local
/// addresses, and drops the OTLP endpoint (no collector runs here).
pub fn localise(value: &mut toml::Value, hosts: &BTreeMap<String, String>) {
    match value {
        toml::Value::String(s) => {
            for (from, to) in hosts {
                *s = s.replace(&format!("://{from}"), &format!("://{to}"));
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| localise(v, hosts)),
        toml::Value::Table(table) => {
            table.remove("otlp_endpoint");
            table.iter_mut().for_each(|(_, v)| localise(v, hosts));
        }
        _ => {}
    }
}

/// One simulated host of compose.yaml run as a local process, restarted
/// after each simulated reboot (exit code 100) as compose's `restart` does.
#[derive(Debug)]
pub struct SimulatedHost {
    pub name: String,
    pub root: PathBuf,
    log: PathBuf,
    child: Option<std::process::Child>,
    pub reboots: u32,
}

impl SimulatedHost {
    pub fn start(
        compose: &Compose,
        service: &Service,
        dir: &Path,
        hosts: &BTreeMap<String, String>,
        fail_versions: &[String],
    ) -> Result<Self> {
        let root = dir.join(&service.name);
        if !fail_versions.is_empty() {
            write_fail_fragment(&root, fail_versions)?;
        }
        let map = compose.path_map(service)?;
        for (target, host) in &map {
            if !target.starts_with("/etc/upshift/agent.d/") {
                continue;
            }
            let mut doc = toml::Value::Table(read(host)?.parse::<toml::Table>()?);
            localise(&mut doc, hosts);
            let dest = root.join(target.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().context("parent")?)?;
            std::fs::write(dest, toml::to_string(&doc)?)?;
        }
        install_agent_defaults(&root)?;
        // What seed-and-run.sh does on the first start.
        let state = root.join("var/lib/upshift");
        std::fs::create_dir_all(&state)?;
        std::fs::copy(
            map_path(&map, "/etc/upshift/simulated-os.seed.json"),
            state.join("simulated-os.json"),
        )?;
        let mut host = Self {
            name: service.name.clone(),
            log: dir.join(format!("{}.log", service.name)),
            root,
            child: None,
            reboots: 0,
        };
        host.spawn()?;
        Ok(host)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(bin("upshift-agent")?)
                .arg("--root")
                .arg(&self.root)
                .arg("run")
                .env("RUST_LOG", "info")
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        Ok(())
    }

    /// Restarts the agent after a simulated reboot; fails on any other exit.
    pub fn supervise(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait()? {
            None => Ok(()),
            Some(status) if status.code() == Some(100) => {
                self.reboots += 1;
                self.spawn()
            }
            Some(status) => bail!("{} exited with {status}:\n{}", self.name, self.log_tail()),
        }
    }

    pub fn booted(&self) -> Result<String> {
        let state: serde_json::Value =
            serde_json::from_str(&read(&self.root.join("var/lib/upshift/simulated-os.json"))?)?;
        Ok(state["booted"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for SimulatedHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fragment after compose's, under `root`: these releases fail to stage.
fn write_fail_fragment(root: &Path, fail_versions: &[String]) -> Result<()> {
    let fragment = root.join("etc/upshift/agent.d/90-fail.toml");
    std::fs::create_dir_all(fragment.parent().context("parent")?)?;
    let mut os = toml::Table::new();
    os.insert("fail_versions".into(), fail_versions.to_vec().into());
    let mut doc = toml::Table::new();
    doc.insert("os".into(), os.into());
    std::fs::write(fragment, toml::to_string(&doc)?)?;
    Ok(())
}

/// Starts every simulated host of compose.yaml against the local `hosts`,
/// failing to stage `fail_versions`.
pub fn start_agents(
    compose: &Compose,
    dir: &Workdir,
    hosts: &BTreeMap<String, String>,
    fail_versions: &[String],
) -> Result<Vec<SimulatedHost>> {
    let mut agents = Vec::new();
    for service in compose.agents() {
        agents.push(SimulatedHost::start(
            compose,
            service,
            dir.path(),
            hosts,
            fail_versions,
        )?);
    }
    Ok(agents)
}

/// Restarts every agent that rebooted; fails if one exited otherwise.
pub fn supervise_all(agents: &mut [SimulatedHost]) -> Result<()> {
    for agent in agents {
        agent.supervise()?;
    }
    Ok(())
}

/// Sum of a metric's samples whose labels contain every `label="value"`.
pub fn metric_sum(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `/metrics` exposition of the service at `url`.
pub async fn metrics(client: &reqwest::Client, url: &str) -> Result<String> {
    Ok(client
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// The newest release of the compose metadata for x86_64.
pub fn newest_x86_release() -> Result<String> {
    let releases: serde_json::Value =
        serde_json::from_str(&read(&repo().join("deploy/metadata/stable/releases.json"))?)?;
    releases["releases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["commits"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["architecture"] == "x86_64")
        })
        .filter_map(|r| r["version"].as_str())
        .next_back()
        .map(str::to_string)
        .context("no x86_64 release")
}

/// The services [`start_services`] started, by compose name.
pub type Services = Vec<(&'static str, ServiceProcess)>;

/// The URL of the started service `name` (empty when it is not running).
pub fn url_of(services: &Services, name: &str) -> String {
    services
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| p.url())
        .unwrap_or_default()
}

/// Starts graph, policy, lock and telemetry with compose's command lines and
/// configuration (paths mapped, service names pointed at the local
/// addresses, data in `dir`), checks each with compose's health check, and
/// returns them with the host map for the agents.
pub async fn start_services(
    compose: &Compose,
    dir: &Workdir,
    etcd: &upshift_store::testing::EtcdServer,
) -> Result<(Services, BTreeMap<String, String>)> {
    let mut hosts = BTreeMap::new();
    hosts.insert(
        "etcd:2379".to_string(),
        etcd.endpoint().trim_start_matches("http://").to_string(),
    );
    let mut services = Vec::new();
    for name in ["graph", "policy", "lock", "telemetry"] {
        let service = compose.service(name)?;
        let hosts_now = hosts.clone();
        let mut args = mapped_command_with(compose, service, dir.path(), |doc| {
            localise(doc, &hosts_now)
        })?;
        args.push("--data-dir".to_string());
        args.push(
            dir.path()
                .join(format!("{name}-data"))
                .display()
                .to_string(),
        );
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = ServiceProcess::start(name, dir.path(), &arg_refs)?;
        process.wait_ready(Duration::from_secs(60)).await?;
        // The compose health check, against the real service.
        let health = run("upshift", &["health".to_string(), process.url()])?;
        ensure!(
            health.status.success(),
            "{name}: compose's health check fails:\n{}",
            describe(&health)
        );
        let port = default_port(name).context("port")?;
        hosts.insert(format!("{name}:{port}"), process.addr().to_string());
        services.push((name, process));
    }
    Ok((services, hosts))
}
