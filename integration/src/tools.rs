//! External tools the tests drive: grpcurl and promtool.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Whether an executable is on PATH.
pub fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
}

/// Runs `grpcurl -plaintext <args>` and returns stdout; fails with stderr.
pub fn grpcurl(args: &[&str]) -> Result<String> {
    let output = Command::new("grpcurl")
        .arg("-plaintext")
        .args(args)
        .output()
        .context("running grpcurl (cargo xtask test installs it)")?;
    check(output, "grpcurl")
}

/// Runs `promtool check metrics` on an exposition; `Ok(false)` when promtool is absent.
pub fn promtool_check_metrics(exposition: &str) -> Result<bool> {
    if !on_path("promtool") {
        eprintln!("NOTICE: promtool not on PATH; skipping the exposition lint (CI installs it)");
        return Ok(false);
    }
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())?;
    let output = child.wait_with_output()?;
    check(output, "promtool check metrics")?;
    Ok(true)
}

/// Runs `promtool check <what> <file>` when promtool is present.
pub fn promtool_check_file(what: &str, file: &Path) -> Result<bool> {
    if !on_path("promtool") {
        eprintln!("NOTICE: promtool not on PATH; skipping `promtool check {what}`");
        return Ok(false);
    }
    let output = Command::new("promtool")
        .args(["check", what])
        .arg(file)
        .output()?;
    check(output, "promtool")?;
    Ok(true)
}

fn check(output: Output, what: &str) -> Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}
