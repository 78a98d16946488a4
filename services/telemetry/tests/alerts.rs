//! The shipped alert rules: valid for promtool, and naming only metrics the
//! service exports.

use std::path::Path;
use std::process::Command;

fn alerts() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts.yaml")
}

#[test]
fn promtool_accepts_the_rules() {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("promtool").is_file()));
    if !on_path {
        eprintln!("NOTICE: promtool not on PATH; skipping `promtool check rules`");
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(alerts())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_name_exported_metrics() {
    let rules = std::fs::read_to_string(alerts()).unwrap();
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
            .unwrap();
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("upshift_telemetry_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let instrument = name.trim_end_matches("_total");
        assert!(
            source.contains(&format!("\"{instrument}\"")),
            "alerts.yaml uses {name}, which src/metrics.rs does not define"
        );
    }
}
