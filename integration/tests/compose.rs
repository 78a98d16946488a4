//! compose.yaml, the Containerfile and everything under deploy/, checked
//! without a container engine: referenced files exist, ports agree with the
//! services' defaults and with Prometheus, every `upshift` and
//! `upshift-agent` command line is accepted by the real binaries with the
//! real configuration files (container paths mapped to the repository),
//! Prometheus config, rules and dashboard queries pass promtool, and the
//! Grafana, collector and Kubernetes files are consistent with the rest.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result};
use serde_yaml_ng::Value;
use upshift_integration::bin;

// A test crate root resolves `mod x;` next to itself, so the modules under
// compose/ are named by path.
#[path = "compose/collector.rs"]
mod collector;
#[path = "compose/commands.rs"]
mod commands;
#[path = "compose/grafana.rs"]
mod grafana;
#[path = "compose/halt.rs"]
mod halt;
#[path = "compose/image.rs"]
mod image;
#[path = "compose/kubernetes.rs"]
mod kubernetes;
#[path = "compose/local.rs"]
mod local;
#[path = "compose/model.rs"]
mod model;
#[path = "compose/paths.rs"]
mod paths;
#[path = "compose/ports.rs"]
mod ports;
#[path = "compose/prometheus.rs"]
mod prometheus;
#[path = "compose/topology.rs"]
mod topology;

/// The Upshift services of compose.yaml and their documented default ports
/// (README.md "Default ports"; `ports::the_default_ports_are_the_binaries_own`
/// checks them against the binaries).
const DEFAULT_PORTS: &[(&str, u16)] = &[
    ("graph", 7401),
    ("policy", 7402),
    ("lock", 7403),
    ("telemetry", 7404),
    ("bridge", 9598),
];

/// Ports of the third-party services, as their images and configs define them.
const OTHER_PORTS: &[(&str, &[u16])] = &[
    ("etcd", &[2379, 2380]),
    ("otel-collector", &[4317, 4318, 8888, 8889]),
    ("prometheus", &[9090]),
    ("grafana", &[3000]),
];

/// The image the Containerfile builds, used by every Upshift service.
const UPSHIFT_IMAGE: &str = "localhost/upshift:dev";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn yaml(path: &Path) -> Result<Value> {
    serde_yaml_ng::from_str(&read(path)?).with_context(|| format!("parsing {}", path.display()))
}

fn default_port(service: &str) -> Option<u16> {
    DEFAULT_PORTS
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, port)| *port)
}

/// Runs a workspace binary; returns its output.
fn run(binary: &str, args: &[String]) -> Result<Output> {
    let path = bin(binary)?;
    Command::new(&path)
        .args(args)
        .env_remove("UPSHIFT_CONFIG")
        .env_remove("UPSHIFT_ETCD")
        .env_remove("UPSHIFT_LISTEN")
        .env_remove("UPSHIFT_DATA_DIR")
        .output()
        .with_context(|| format!("running {}", path.display()))
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `upshift-agent` job of the Prometheus config: the agent's metrics,
/// scraped through the bridge.
fn agent_job(prometheus: &Value) -> Option<&Value> {
    prometheus["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|j| j["job_name"].as_str() == Some("upshift-agent"))
}
