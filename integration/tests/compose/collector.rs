//! The OpenTelemetry collector: OTLP in, Prometheus out, pipelines of
//! defined components, and every Upshift service exporting to it.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_yaml_ng::Value;

use crate::model::{Compose, strings};
use crate::paths::{check_service_url, map_path, service_config};
use crate::{DEFAULT_PORTS, yaml};

#[test]
fn collector_receives_otlp_and_exports_to_prometheus() -> Result<()> {
    let compose = Compose::load()?;
    let collector = compose.service("otel-collector")?;
    let map = compose.path_map(collector)?;
    let config_path = collector
        .command
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .context("collector --config")?;
    let config = yaml(Path::new(&map_path(&map, config_path)))?;
    let grpc = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .context("OTLP gRPC receiver")?;
    ensure!(grpc.ends_with(":4317"), "OTLP gRPC on {grpc}");
    ensure!(
        config["exporters"]["prometheus"].is_mapping(),
        "no prometheus exporter"
    );
    check_pipelines(&config)?;
    // Every Upshift service exports its spans to that receiver.
    for (name, _) in DEFAULT_PORTS {
        let service = compose.service(name)?;
        let config = service_config(&compose, service)?;
        let endpoint = config
            .get("server")
            .and_then(|s| s.get("otlp_endpoint"))
            .and_then(toml::Value::as_str)
            .with_context(|| format!("{name}: no server.otlp_endpoint"));
        let endpoint = endpoint?;
        ensure!(
            endpoint == "http://otel-collector:4317",
            "{name}: {endpoint}"
        );
        check_service_url(&compose, name, endpoint)?;
    }
    Ok(())
}

/// Pipelines use only defined components, and traces reach Prometheus.
fn check_pipelines(config: &Value) -> Result<()> {
    let defined = |kind: &str, name: &str| {
        config[kind]
            .as_mapping()
            .is_some_and(|m| m.contains_key(Value::String(name.to_string())))
    };
    let pipelines = config["service"]["pipelines"]
        .as_mapping()
        .context("pipelines")?;
    ensure!(pipelines.contains_key(Value::String("traces".into())));
    for (name, pipeline) in pipelines {
        for (field, kinds) in [
            ("receivers", &["receivers", "connectors"][..]),
            ("processors", &["processors"][..]),
            ("exporters", &["exporters", "connectors"][..]),
        ] {
            for component in strings(&pipeline[field], field)? {
                ensure!(
                    kinds.iter().any(|k| defined(k, &component)),
                    "pipeline {name:?}: {field} {component} is not defined"
                );
            }
        }
    }
    Ok(())
}
