//! The command lines of compose.yaml run against the real binaries: the
//! services' `--check-config`, the health checks, the flags of etcd and
//! Prometheus, and the simulated agents' configuration and seeds.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use upshift_integration::tools::on_path;

use crate::model::{Compose, Service};
use crate::paths::{
    check_service_url, config_arg, install_agent_defaults, map_path, mapped_command,
};
use crate::{DEFAULT_PORTS, default_port, describe, read, repo, run};

#[test]
fn serve_commands_pass_check_config_with_the_mounted_files() -> Result<()> {
    let compose = Compose::load()?;
    let dir = tempfile::tempdir()?;
    let mut checked = 0;
    for service in compose.upshift_services() {
        if service.command[0] != "upshift" {
            continue;
        }
        ensure!(
            service.entrypoint.is_empty(),
            "{}: the image has no entrypoint to override",
            service.name
        );
        let mut args = mapped_command(&compose, service, dir.path())?;
        args.push("--check-config".to_string());
        let output = run("upshift", &args)?;
        ensure!(
            output.status.success()
                && String::from_utf8_lossy(&output.stdout).contains("configuration OK"),
            "{}: upshift {} rejected:\n{}",
            service.name,
            args.join(" "),
            describe(&output)
        );
        checked += 1;
    }
    ensure!(
        checked == DEFAULT_PORTS.len(),
        "checked {checked} upshift services"
    );

    // The check can fail: without the path mapping the mounted metadata and
    // token files are missing, and the services say so with exit code 64.
    for name in ["policy", "lock"] {
        let service = compose.service(name)?;
        let mut args: Vec<String> = service.command[1..].to_vec();
        let config = config_arg(&service.command).context("--config")?;
        let host = map_path(&compose.path_map(service)?, config);
        let position = args.iter().position(|a| a == config).context("config")?;
        args[position] = host;
        args.push("--check-config".to_string());
        let output = run("upshift", &args)?;
        ensure!(
            output.status.code() == Some(64),
            "{name}: unmapped container paths should be rejected:\n{}",
            describe(&output)
        );
    }
    Ok(())
}

#[test]
fn health_checks_call_the_grpc_health_service() -> Result<()> {
    let compose = Compose::load()?;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    for service in compose.upshift_services() {
        if service.healthcheck.is_empty() {
            continue;
        }
        let port = default_port(&service.name)
            .with_context(|| format!("{} has a health check but no port", service.name))?;
        ensure!(
            service.healthcheck
                == [
                    "CMD",
                    "upshift",
                    "health",
                    &format!("http://127.0.0.1:{port}")
                ],
            "{}: health check should be `upshift health http://127.0.0.1:{port}`, is {:?}",
            service.name,
            service.healthcheck
        );
    }
    // The command line parses and reports an unreachable service with the
    // documented exit code 3 (64 would be a usage error).
    let output = run(
        "upshift",
        &["health".to_string(), format!("http://127.0.0.1:{closed}")],
    )?;
    ensure!(
        output.status.code() == Some(3),
        "upshift health on a closed port: {}",
        describe(&output)
    );
    let etcd = compose.service("etcd")?;
    ensure!(
        etcd.healthcheck.iter().any(|a| a == "endpoint")
            && etcd.healthcheck.iter().any(|a| a == "health"),
        "etcd needs an `etcdctl endpoint health` check"
    );
    for dependent in ["policy", "lock", "telemetry"] {
        ensure!(
            compose
                .service(dependent)?
                .depends_on
                .contains(&"etcd".into()),
            "{dependent} should wait for etcd"
        );
    }
    Ok(())
}

#[test]
fn etcd_and_prometheus_flags_exist() -> Result<()> {
    let compose = Compose::load()?;
    for (service, binary) in [("etcd", "etcd"), ("prometheus", "prometheus")] {
        if !on_path(binary) {
            eprintln!("NOTICE: {binary} not on PATH; not checking the {service} flags");
            continue;
        }
        let help = Command::new(binary).arg("--help").output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&help.stdout),
            String::from_utf8_lossy(&help.stderr)
        );
        let command = &compose.service(service)?.command;
        for flag in command.iter().filter(|a| a.starts_with("--")) {
            let name = flag.split('=').next().unwrap_or_default();
            ensure!(
                text.contains(name),
                "{service}: `{binary} --help` knows no {name}"
            );
        }
    }
    Ok(())
}

/// The agents' fragments, as the agent merges them over the image's
/// defaults (a root assembled like the container's file system).
fn agent_root(compose: &Compose, service: &Service) -> Result<tempfile::TempDir> {
    let root = tempfile::tempdir()?;
    install_agent_defaults(root.path())?;
    for (target, host) in compose.path_map(service)? {
        if target.starts_with("/etc/upshift/agent.d/") {
            let dest = root.path().join(target.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().context("parent")?)?;
            std::fs::copy(&host, &dest)?;
        }
    }
    Ok(root)
}

#[test]
fn simulated_agents_have_valid_configs_and_seeds() -> Result<()> {
    let compose = Compose::load()?;
    let releases: serde_json::Value =
        serde_json::from_str(&read(&repo().join("deploy/metadata/stable/releases.json"))?)?;
    let agents: Vec<_> = compose.agents().collect();
    ensure!(agents.len() == 3, "three simulated agents expected");
    let mut uuids = BTreeSet::new();
    for agent in agents {
        ensure!(
            agent.command == ["upshift-agent", "--root", "/", "run"],
            "{}: command {:?}",
            agent.name,
            agent.command
        );
        check_seed(&compose, agent, &releases)?;
        check_merged_config(&compose, agent, &mut uuids)?;
    }
    Ok(())
}

/// The entrypoint seeds the booted release, then execs the command; the
/// seed is a release of releases.json.
fn check_seed(compose: &Compose, agent: &Service, releases: &serde_json::Value) -> Result<()> {
    let map = compose.path_map(agent)?;
    let script = agent.entrypoint.last().context("entrypoint")?;
    let script = map_path(&map, script);
    let text = read(Path::new(&script))?;
    ensure!(
        text.contains("exec \"$@\""),
        "{script} must exec the command"
    );
    let seed = map_path(&map, "/etc/upshift/simulated-os.seed.json");
    let seed: serde_json::Value = serde_json::from_str(&read(Path::new(&seed))?)
        .with_context(|| format!("{}: seed", agent.name))?;
    let version = seed["booted"]["version"].as_str().context("version")?;
    let payload = seed["booted"]["payload"].as_str().context("payload")?;
    let release = releases["releases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["version"] == version)
        .with_context(|| format!("{}: {version} is not in releases.json", agent.name))?;
    ensure!(
        release["commits"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["architecture"] == "x86_64" && c["checksum"] == payload),
        "{}: payload of {version} does not match releases.json",
        agent.name
    );
    Ok(())
}

/// The agent accepts the merged configuration: the simulated backend, a
/// node id of its own (recorded in `uuids`), and URLs of compose services.
fn check_merged_config(
    compose: &Compose,
    agent: &Service,
    uuids: &mut BTreeSet<String>,
) -> Result<()> {
    let root = agent_root(compose, agent)?;
    let args = vec![
        "--root".to_string(),
        root.path().display().to_string(),
        "config".to_string(),
        "show".to_string(),
    ];
    let output = run("upshift-agent", &args)?;
    ensure!(
        output.status.success(),
        "{}: upshift-agent config show:\n{}",
        agent.name,
        describe(&output)
    );
    let shown = String::from_utf8_lossy(&output.stdout);
    let value = |key: &str| -> Option<String> {
        shown.lines().find_map(|l| {
            l.strip_prefix(&format!("{key} = "))
                .map(|v| v.split("  #").next().unwrap_or_default().to_string())
        })
    };
    ensure!(
        value("os.backend").as_deref() == Some("\"simulated\""),
        "{}: not on the simulated backend:\n{shown}",
        agent.name
    );
    let uuid = value("identity.node_uuid").with_context(|| {
        format!(
            "{}: no node_uuid (containers have no machine-id)",
            agent.name
        )
    })?;
    ensure!(uuids.insert(uuid), "{}: node_uuid reused", agent.name);
    for key in [
        "updates.policy_url",
        "updates.cincinnati_url",
        "lock.url",
        "telemetry.url",
    ] {
        if let Some(url) = value(key) {
            check_service_url(compose, &agent.name, url.trim_matches('"'))?;
        }
    }
    Ok(())
}
