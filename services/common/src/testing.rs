//! Helpers for the tests of every service: optional external tools.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Finds an executable on `PATH`.
pub fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Runs `promtool check metrics` (format and lint) on `exposition` and
/// panics, with promtool's findings and the exposition, unless it passes.
/// Skipped, with a notice on stderr, when promtool is not installed
/// (`cargo xtask test` installs it).
pub fn promtool_check_metrics(exposition: &str) {
    let Some(promtool) = find_on_path("promtool") else {
        eprintln!("NOTICE: promtool not on PATH; skipping `promtool check metrics`");
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(exposition.as_bytes())
        .expect("exposition written to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
