//! Ports: published ports, the services' listen addresses and defaults, the
//! URLs in the configs, and what Prometheus scrapes.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use serde_yaml_ng::Value;

use crate::model::{Compose, strings};
use crate::paths::{check_service_url, host_port, service_config, urls_in_file};
use crate::{DEFAULT_PORTS, agent_job, repo, run, yaml};

#[test]
fn ports_agree_with_defaults_configs_and_prometheus() -> Result<()> {
    let compose = Compose::load()?;
    check_listen_and_published_ports(&compose)?;
    check_config_urls(&compose)?;

    // Prometheus scrapes every Upshift service on its port, the collector's
    // exporter, and nothing that does not exist.
    let prometheus = yaml(&repo().join("deploy/prometheus/prometheus.yml"))?;
    let targets = scrape_targets(&compose, &prometheus)?;
    for (name, port) in DEFAULT_PORTS {
        let job = format!("upshift-{name}");
        ensure!(
            targets.get(&job) == Some(&vec![(name.to_string(), *port)]),
            "job {job} should scrape {name}:{port}, has {:?}",
            targets.get(&job)
        );
    }
    check_agent_job(&compose, &prometheus)?;
    let collector = yaml(&repo().join("deploy/otel-collector/config.yaml"))?;
    let exporter = collector["exporters"]["prometheus"]["endpoint"]
        .as_str()
        .context("collector prometheus exporter endpoint")?;
    let exporter_port: u16 = exporter.rsplit_once(':').context("port")?.1.parse()?;
    ensure!(
        targets
            .values()
            .flatten()
            .any(|t| *t == ("otel-collector".to_string(), exporter_port)),
        "Prometheus does not scrape the collector's exporter on {exporter_port}"
    );
    Ok(())
}

/// Each Upshift service listens on its default port, publishes it on
/// 127.0.0.1 only and has a health check; no service publishes a port it
/// does not listen on.
fn check_listen_and_published_ports(compose: &Compose) -> Result<()> {
    for (name, port) in DEFAULT_PORTS {
        let service = compose.service(name)?;
        let config = service_config(compose, service)?;
        let listen = config
            .get("server")
            .and_then(|s| s.get("listen"))
            .and_then(toml::Value::as_str)
            .with_context(|| format!("{name}: [server] listen"))?;
        ensure!(
            listen == format!("0.0.0.0:{port}"),
            "{name} listens on {listen}, not its default port {port}"
        );
        ensure!(
            service.ports.len() == 1,
            "{name}: one published port expected"
        );
        let published = &service.ports[0];
        ensure!(
            published.container == *port && published.host == *port,
            "{name} publishes {}:{}, expected {port}:{port}",
            published.host,
            published.container
        );
        ensure!(
            published.host_ip.as_deref() == Some("127.0.0.1"),
            "{name}: publish on 127.0.0.1 only (admin APIs, a dev token)"
        );
        ensure!(
            !service.healthcheck.is_empty(),
            "{name} has no health check"
        );
    }
    for service in compose.services.values() {
        for port in &service.ports {
            let known = compose.known_ports(&service.name)?;
            ensure!(
                known.contains(&port.container),
                "{} publishes {}, which it does not listen on ({known:?})",
                service.name,
                port.container
            );
        }
    }
    Ok(())
}

/// URLs inside the service configs and agent fragments point at the
/// right service and port, and the service waits for it.
fn check_config_urls(compose: &Compose) -> Result<()> {
    for service in compose.upshift_services() {
        let map = compose.path_map(service)?;
        for (target, host) in &map {
            if !(target.ends_with(".toml") && host.is_file()) {
                continue;
            }
            for url in urls_in_file(host)? {
                check_service_url(compose, &service.name, &url)
                    .with_context(|| format!("in {}", host.display()))?;
            }
        }
    }
    Ok(())
}

/// Job name -> (host, port) of every static target Prometheus scrapes,
/// each checked to be a port of a service Prometheus depends on.
fn scrape_targets(
    compose: &Compose,
    prometheus: &Value,
) -> Result<BTreeMap<String, Vec<(String, u16)>>> {
    let mut targets: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
    for job in prometheus["scrape_configs"]
        .as_sequence()
        .context("scrape_configs")?
    {
        let name = job["job_name"].as_str().context("job_name")?.to_string();
        for sc in job["static_configs"]
            .as_sequence()
            .context("static_configs")?
        {
            for target in strings(&sc["targets"], "targets")? {
                let (host, port) = host_port(&format!("http://{target}"))?;
                if host != "localhost" {
                    let known = compose.known_ports(&host)?;
                    ensure!(
                        known.contains(&port),
                        "job {name}: {target}: {host} listens on {known:?}"
                    );
                    ensure!(
                        compose.dependency_closure("prometheus").contains(&host),
                        "prometheus should depend on {host}"
                    );
                }
                targets.entry(name.clone()).or_default().push((host, port));
            }
        }
    }
    Ok(targets)
}

/// The agents' job scrapes the bridge with selectors the bridge knows.
fn check_agent_job(compose: &Compose, prometheus: &Value) -> Result<()> {
    let agent_job = agent_job(prometheus)
        .context("no upshift-agent job (the agent's metrics through the bridge)")?;
    ensure!(agent_job["metrics_path"].as_str() == Some("/bridge"));
    let selector = strings(&agent_job["params"]["selector"], "selector")?;
    let bridge = compose.service("bridge")?;
    let bridge_config = service_config(compose, bridge)?;
    for name in &selector {
        ensure!(
            bridge_config
                .get("selectors")
                .and_then(|s| s.get(name))
                .is_some(),
            "selector {name} scraped but not configured in the bridge"
        );
    }
    Ok(())
}

/// `DEFAULT_PORTS` is what the binaries themselves default to: each service
/// run with no listen address reports the one it would use, and the bridge's
/// help names its default.
#[test]
fn the_default_ports_are_the_binaries_own() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let stream = upshift_integration::stable_metadata(dir.path(), 58)?;
    let metadata = stream
        .parent()
        .context("metadata root")?
        .display()
        .to_string();
    for (name, port) in DEFAULT_PORTS.iter().filter(|(n, _)| *n != "bridge") {
        let mut args: Vec<String> = ["serve", name, "--check-config"].map(String::from).to_vec();
        match *name {
            "graph" => args.extend(["--metadata".to_string(), metadata.clone()]),
            "policy" => args.extend(["--graph".into(), "http://127.0.0.1:1".into()]),
            _ => {}
        }
        let out = run("upshift", &args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains(&format!("would listen on 0.0.0.0:{port}")),
            "upshift serve {name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let help = run("upshift", &["bridge".into(), "--help".into()])?;
    let help = String::from_utf8_lossy(&help.stdout);
    let bridge = crate::default_port("bridge").context("bridge port")?;
    ensure!(
        help.contains(&format!("default 0.0.0.0:{bridge}")),
        "upshift bridge --help: {help}"
    );
    Ok(())
}
