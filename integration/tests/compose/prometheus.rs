//! Prometheus: the config and rules as the container mounts them, checked
//! with promtool, and the metric names rules and dashboards use.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_yaml_ng::Value;
use upshift_integration::tools::promtool_check_file;

use crate::model::{Compose, Service, strings};
use crate::{describe, read, repo, yaml};

#[test]
fn prometheus_config_and_rules_pass_promtool() -> Result<()> {
    // /etc/prometheus as the container sees it, assembled from the mounts.
    let compose = Compose::load()?;
    let prometheus = compose.service("prometheus")?;
    let etc = assemble_etc(prometheus)?;
    let config = etc.path().join("prometheus.yml");
    ensure!(
        prometheus
            .command
            .contains(&"--config.file=/etc/prometheus/prometheus.yml".to_string()),
        "Prometheus should load /etc/prometheus/prometheus.yml"
    );
    let doc = yaml(&config)?;
    let mut rules_text = String::new();
    let mut alerts = BTreeSet::new();
    for pattern in strings(&doc["rule_files"], "rule_files")? {
        let (dir, suffix) = pattern
            .rsplit_once("/*")
            .with_context(|| format!("rule_files entry {pattern} is not DIR/*.EXT"))?;
        let mut files = 0;
        for entry in std::fs::read_dir(etc.path().join(dir))? {
            let path = entry?.path();
            if !path.to_string_lossy().ends_with(suffix) {
                continue;
            }
            files += 1;
            let text = read(&path)?;
            check_alerts(&path, &mut alerts)?;
            rules_text.push_str(&text);
        }
        ensure!(files > 0, "rule_files {pattern} matches no mounted file");
    }
    ensure!(
        rules_text.contains("upshift_telemetry_halts") && alerts.contains("UpshiftRolloutHalted"),
        "no alert on automatic halts"
    );
    ensure!(
        rules_text.contains("up{job=~\"upshift-.*\"} == 0"),
        "no alert on services down"
    );
    ensure!(alerts.len() >= 8, "only {} alerts", alerts.len());
    if !promtool_check_file("config", &config)? {
        eprintln!("NOTICE: promtool absent: Prometheus config and rules parsed as YAML only");
        return Ok(());
    }
    let tests = repo().join("deploy/prometheus/tests/upshift.test.yaml");
    let output = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&tests)
        .output()?;
    ensure!(
        output.status.success(),
        "promtool test rules:\n{}",
        describe(&output)
    );
    Ok(())
}

/// A copy of the Prometheus service's bind mounts under /etc/prometheus.
fn assemble_etc(prometheus: &Service) -> Result<tempfile::TempDir> {
    let etc = tempfile::tempdir()?;
    for mount in prometheus.mounts.iter().filter(|m| m.is_bind()) {
        let relative = mount
            .target
            .strip_prefix("/etc/prometheus/")
            .with_context(|| format!("unexpected Prometheus mount {}", mount.target))?;
        let dest = etc.path().join(relative);
        std::fs::create_dir_all(dest.parent().context("parent")?)?;
        std::fs::copy(mount.host_path(), &dest)?;
    }
    Ok(etc)
}

/// Every alert of a rule file has a unique name (added to `alerts`), a
/// severity and a summary.
fn check_alerts(path: &Path, alerts: &mut BTreeSet<String>) -> Result<()> {
    let rules: Value = yaml(path)?;
    for group in rules["groups"].as_sequence().context("groups")? {
        for rule in group["rules"].as_sequence().context("rules")? {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            ensure!(
                alerts.insert(name.to_string()),
                "alert {name} defined twice across the rule files"
            );
            ensure!(
                rule["labels"]["severity"].as_str().is_some(),
                "alert {name} without severity"
            );
            ensure!(
                rule["annotations"]["summary"].as_str().is_some(),
                "alert {name} without summary"
            );
        }
    }
    Ok(())
}

/// `upshift_*` metric names in a text (PromQL, rules, dashboards).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("upshift_") {
        let start = i + found;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
        };
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end] == b'_'
                || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        if boundary {
            names.insert(text[start..end].trim_end_matches('_').to_string());
        }
        i = end.max(start + 1);
    }
    names
}

fn rust_sources(dir: &Path, out: &mut String) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&read(&path)?);
        }
    }
    Ok(())
}

#[test]
fn alerts_and_dashboards_name_metrics_the_code_exports() -> Result<()> {
    let mut sources = String::new();
    for dir in ["services", "agent/src"] {
        rust_sources(&repo().join(dir), &mut sources)?;
    }
    let mut text = read(&repo().join("deploy/prometheus/rules/upshift.yaml"))?;
    for entry in std::fs::read_dir(repo().join("deploy/grafana/dashboards"))? {
        text.push_str(&read(&entry?.path())?);
    }
    let names = metric_names(&text);
    ensure!(names.len() >= 15, "few metrics found: {names:?}");
    let mut missing = Vec::new();
    for name in &names {
        // Exposition suffixes the exporter adds to the instrument's name.
        let mut base = name.as_str();
        for suffix in ["_bucket", "_sum", "_count", "_total"] {
            base = base.strip_suffix(suffix).unwrap_or(base);
        }
        let unitless = base.strip_suffix("_seconds").unwrap_or(base);
        let candidates = [
            format!("\"{base}\""),
            format!("\"{unitless}\""),
            // Instruments named with dots and the server kind as a parameter.
            format!(
                "\"{}\"",
                unitless
                    .replacen("upshift_http_server_", "upshift.{prefix}.server.", 1)
                    .replacen("upshift_grpc_server_", "upshift.{prefix}.server.", 1)
            ),
            // Hand-written expositions (the agent) write the full name.
            format!("\"{name}\""),
            format!("\"{name}{{"),
        ];
        if !candidates.iter().any(|c| sources.contains(c.as_str())) {
            missing.push(name.clone());
        }
    }
    ensure!(
        missing.is_empty(),
        "rules/dashboards name metrics no code exports: {missing:?}"
    );
    Ok(())
}
