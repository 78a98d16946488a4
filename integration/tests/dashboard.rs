//! The Grafana dashboard with the replicas `deploy/kubernetes` runs (two
//! telemetry, two lock, three policy). Every telemetry replica exports the
//! whole fleet view, and every lock replica the holders of every group, so
//! those gauges are the same on each replica; counters and per-instance
//! gauges are each replica's share. The panels must show the fleet's
//! figures once: the dashboard's own queries run through `promtool test
//! rules` over such series.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use upshift_integration::tools::on_path;

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy/grafana/dashboards/upshift.json")
}

/// Series every replica of a service exports alike (fleet-wide state).
const SHARED: &[(&str, &str, &str)] = &[
    (
        "telemetry",
        r#"upshift_telemetry_hosts{stream="stable", version="40.1", state="idle", group="workers"}"#,
        "30x10",
    ),
    (
        "telemetry",
        r#"upshift_telemetry_hosts{stream="stable", version="40.2", state="staged", group="workers"}"#,
        "10x10",
    ),
    (
        "telemetry",
        r#"upshift_telemetry_hosts{stream="stable", version="40.1", state="idle", group="canary"}"#,
        "5x10",
    ),
    (
        "telemetry",
        r#"upshift_telemetry_stale_hosts{stream="stable"}"#,
        "3x10",
    ),
    (
        "telemetry",
        r#"upshift_telemetry_halts{stream="stable", version="40.2"}"#,
        "1x10",
    ),
    ("lock", r#"upshift_lock_holders{group="workers"}"#, "2x10"),
    ("lock", r#"upshift_lock_slots{group="workers"}"#, "4x10"),
];

/// Series of what each replica did itself: (service, replica, series, values).
const OWN: &[(&str, usize, &str, &str)] = &[
    (
        "telemetry",
        0,
        r#"upshift_telemetry_update_attempts_total{stream="stable", target_version="40.2"}"#,
        "0+1x10",
    ),
    (
        "telemetry",
        1,
        r#"upshift_telemetry_update_attempts_total{stream="stable", target_version="40.2"}"#,
        "0+2x10",
    ),
    (
        "telemetry",
        0,
        r#"upshift_telemetry_update_failures_total{stream="stable", target_version="40.2", error_kind="staging-failed"}"#,
        "0+1x10",
    ),
    ("policy", 0, "upshift_policy_open_streams", "100x10"),
    ("policy", 1, "upshift_policy_open_streams", "50x10"),
    ("policy", 2, "upshift_policy_open_streams", "25x10"),
    (
        "lock",
        0,
        r#"upshift_lock_queue_length{group="workers"}"#,
        "3x10",
    ),
    (
        "lock",
        1,
        r#"upshift_lock_queue_length{group="workers"}"#,
        "1x10",
    ),
];

/// Samples (labels, value) a query must give.
type Samples = &'static [(&'static str, f64)];

/// (panel title, target index, expected samples) at 10m.
const EXPECTED: &[(&str, usize, Samples)] = &[
    ("Hosts reporting", 0, &[("{}", 45.0)]),
    ("Stale hosts", 0, &[("{}", 3.0)]),
    ("Rollout halts in force", 0, &[("{}", 1.0)]),
    (
        "Fleet by booted version",
        0,
        &[(r#"{version="40.1"}"#, 35.0), (r#"{version="40.2"}"#, 10.0)],
    ),
    (
        "Fleet by update state",
        0,
        &[(r#"{state="idle"}"#, 35.0), (r#"{state="staged"}"#, 10.0)],
    ),
    (
        "Hosts by group and version",
        0,
        &[
            (r#"{group="workers", version="40.1"}"#, 30.0),
            (r#"{group="workers", version="40.2"}"#, 10.0),
            (r#"{group="canary", version="40.1"}"#, 5.0),
        ],
    ),
    (
        "Halted rollouts",
        0,
        &[(r#"{stream="stable", version="40.2"}"#, 1.0)],
    ),
    (
        "Lock holders and slots",
        0,
        &[(r#"{group="workers"}"#, 2.0)],
    ),
    (
        "Lock holders and slots",
        1,
        &[(r#"{group="workers"}"#, 4.0)],
    ),
    ("Lock queue length", 0, &[(r#"{group="workers"}"#, 4.0)]),
    ("Hint streams open", 0, &[("{}", 175.0)]),
    (
        "Update attempts by target",
        0,
        &[(r#"{target_version="40.2"}"#, 15.0)],
    ),
    (
        "Update failures by error kind",
        0,
        &[(
            r#"{target_version="40.2", error_kind="staging-failed"}"#,
            5.0,
        )],
    ),
];

fn replicas(service: &str) -> usize {
    match service {
        "policy" => 3,
        _ => 2,
    }
}

/// `series` with the target labels of `service`'s replica `i`.
fn on_replica(series: &str, service: &str, i: usize) -> String {
    let target =
        format!(r#"job="upshift-{service}", instance="10.0.0.{i}:7400", pod="{service}-{i}""#);
    match series.strip_suffix('}') {
        Some(open) => format!("{open}, {target}}}"),
        None => format!("{series}{{{target}}}"),
    }
}

/// The `expr` of target `index` of the panel titled `title`, as Grafana sends it.
fn panel_expr(dashboard: &serde_json::Value, title: &str, index: usize) -> Result<String> {
    let panel = dashboard["panels"]
        .as_array()
        .context("panels")?
        .iter()
        .find(|p| p["title"] == title)
        .with_context(|| format!("no panel {title:?}"))?;
    let expr = panel["targets"][index]["expr"]
        .as_str()
        .with_context(|| format!("panel {title:?} has no target {index}"))?;
    Ok(expr
        .replace("$__rate_interval", "5m")
        .replace("$stream", ".*"))
}

fn promtool_tests(dashboard: &serde_json::Value) -> Result<String> {
    let mut yaml = String::from(
        "rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
    );
    let mut input = |series: String, values: &str| {
        let _ = write!(
            yaml,
            "      - series: {}\n        values: '{values}'\n",
            serde_json::to_string(&series).unwrap_or_default()
        );
    };
    for (service, series, values) in SHARED {
        for i in 0..replicas(service) {
            input(on_replica(series, service, i), values);
        }
    }
    for (service, i, series, values) in OWN {
        input(on_replica(series, service, *i), values);
    }
    yaml.push_str("    promql_expr_test:\n");
    for (title, index, samples) in EXPECTED {
        let expr = panel_expr(dashboard, title, *index)?;
        let _ = write!(
            yaml,
            "      - expr: {}\n        eval_time: 10m\n        exp_samples:\n",
            serde_json::to_string(&expr)?
        );
        for (labels, value) in *samples {
            let _ = write!(
                yaml,
                "          - labels: {}\n            value: {value}\n",
                serde_json::to_string(labels)?
            );
        }
    }
    Ok(yaml)
}

#[test]
fn panels_show_the_fleet_once_with_several_replicas() -> Result<()> {
    let text = std::fs::read_to_string(dashboard_path())?;
    let dashboard: serde_json::Value = serde_json::from_str(&text)?;
    let tests = promtool_tests(&dashboard)?;
    if !on_path("promtool") {
        eprintln!("NOTICE: promtool not on PATH; the dashboard queries were not evaluated");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("dashboard.test.yaml");
    std::fs::write(&file, &tests)?;
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()?;
    ensure!(
        out.status.success(),
        "promtool test rules over the dashboard's queries:\n{}{}\n{tests}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
