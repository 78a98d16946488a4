//! Grafana: the provisioned Prometheus datasource and dashboards, whose
//! panels use that datasource and whose queries are valid PromQL.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use upshift_integration::tools::promtool_check_file;

use crate::model::Compose;
use crate::paths::{check_service_url, map_path};
use crate::{read, repo, yaml};

/// Every `expr` of a dashboard panel, with Grafana's variables replaced.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}

#[test]
fn grafana_dashboard_uses_the_provisioned_datasource_and_valid_queries() -> Result<()> {
    let compose = Compose::load()?;
    let grafana = compose.service("grafana")?;
    let map = compose.path_map(grafana)?;
    let datasources = yaml(Path::new(&map_path(
        &map,
        "/etc/grafana/provisioning/datasources/prometheus.yaml",
    )))?;
    let source = &datasources["datasources"][0];
    let uid = source["uid"].as_str().context("datasource uid")?;
    ensure!(source["type"].as_str() == Some("prometheus"));
    let url = source["url"].as_str().context("datasource url")?;
    check_service_url(&compose, "grafana", url)?;

    let providers = yaml(Path::new(&map_path(
        &map,
        "/etc/grafana/provisioning/dashboards/upshift.yaml",
    )))?;
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .context("dashboard provider path")?;
    let dashboards = PathBuf::from(map_path(&map, path));
    ensure!(
        dashboards.is_dir() && dashboards.starts_with(repo()),
        "provider path {path} is not a mounted directory"
    );
    let mut found = 0;
    for entry in std::fs::read_dir(&dashboards)? {
        let path = entry?.path();
        let dashboard: serde_json::Value = serde_json::from_str(&read(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        found += 1;
        ensure!(dashboard["uid"].as_str().is_some(), "dashboard without uid");
        check_datasource_uids(&dashboard, uid)?;
        check_queries(&dashboard, &path)?;
    }
    ensure!(found >= 1, "no dashboard in {}", dashboards.display());
    Ok(())
}

/// Panels (with unique ids), their targets and the template variables all
/// use the datasource `uid`.
fn check_datasource_uids(dashboard: &serde_json::Value, uid: &str) -> Result<()> {
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        ensure!(
            ids.insert(panel["id"].as_u64().context("panel id")?),
            "duplicate panel id"
        );
        if panel["type"] == "row" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"].as_str() == Some(uid),
            "panel {} does not use datasource {uid}",
            panel["title"]
        );
        for target in panel["targets"].as_array().context("targets")? {
            ensure!(
                target["datasource"]["uid"].as_str() == Some(uid),
                "a target of {} does not use datasource {uid}",
                panel["title"]
            );
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        ensure!(
            variable["datasource"]["uid"].as_str() == Some(uid),
            "variable {} does not use datasource {uid}",
            variable["name"]
        );
    }
    Ok(())
}

/// The dashboard at `path` shows the topics it exists for, and each query
/// is valid PromQL.
fn check_queries(dashboard: &serde_json::Value, path: &Path) -> Result<()> {
    let exprs = dashboard_exprs(dashboard);
    // The topics the dashboard exists for.
    for (topic, metric) in [
        ("fleet by version", "upshift_telemetry_hosts"),
        ("rollout throttle", "upshift_policy_rollout_throttle"),
        ("halts", "upshift_telemetry_halts"),
        ("lock holders", "upshift_lock_holders"),
        ("errors", "upshift_grpc_server_requests_total"),
    ] {
        ensure!(
            exprs.iter().any(|(_, e)| e.contains(metric)),
            "no panel shows {topic} ({metric})"
        );
    }
    // Each query is valid PromQL: promtool checks them as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$stream", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr)?
        ));
    }
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), rules)?;
    promtool_check_file("rules", file.path())
        .with_context(|| format!("queries of {}", path.display()))?;
    Ok(())
}
