//! Harness for whole-mesh tests: starts the real `upshift` binaries as
//! processes on OS-assigned ports in temp dirs, and keeps their logs: the
//! whole work dir when a test panics, the `*.log` files of every run under
//! `target/integration-logs/<test>/` otherwise (a test that fails by
//! returning an error drops its processes before anyone knows).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod agent;
pub mod etcd;
pub mod tools;

/// The directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("UPSHIFT_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// Path of a workspace binary, with a clear error when it was not built.
pub fn bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (`cargo build --bins`; `cargo xtask test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// The shared fixtures directory (`shared/fixtures` beside the repository).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

/// Copies the bundled Fedora CoreOS stable metadata into `dir/stable/`,
/// with `updates.json` taken from history revision `revision`.
pub fn stable_metadata(dir: &Path, revision: u32) -> Result<PathBuf> {
    let stream = dir.join("stable");
    std::fs::create_dir_all(&stream)?;
    let fcos = fixtures().join("fcos/stable");
    std::fs::copy(fcos.join("releases.json"), stream.join("releases.json"))?;
    std::fs::copy(
        fcos.join(format!("updates-history/{revision:03}.json")),
        stream.join("updates.json"),
    )?;
    Ok(stream)
}

/// A running service process.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    child: Option<Child>,
    addr: String,
    log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    addr_file: PathBuf,
}

impl ServiceProcess {
    /// Starts `upshift <args> --listen 127.0.0.1:0 --addr-file ...` and
    /// waits until it is listening.
    pub fn start(name: &str, workdir: &Path, args: &[&str]) -> Result<Self> {
        let program = bin("upshift")?;
        let addr_file = workdir.join(format!("{name}.addr"));
        let log = workdir.join(format!("{name}.log"));
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut process = Self {
            name: name.to_string(),
            child: None,
            addr: String::new(),
            log,
            program,
            args,
            addr_file,
        };
        process.spawn("127.0.0.1:0")?;
        Ok(process)
    }

    fn spawn(&mut self, listen: &str) -> Result<()> {
        let _ = std::fs::remove_file(&self.addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .args(["--listen", listen, "--addr-file"])
            .arg(&self.addr_file)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&self.addr_file)
                && !addr.trim().is_empty()
            {
                self.addr = addr.trim().to_string();
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited with {status} before listening; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not start listening in 30 s; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `host:port` the service listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            let ok = client
                .get(format!("{}/readyz", self.url()))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for a graceful exit; returns its status code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills and starts the process again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let addr = self.addr.clone();
        self.spawn(&addr)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}), last lines:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

/// A temp directory kept (and printed) when the test panics. Otherwise its
/// `*.log` files are copied to `target/integration-logs/<test name>/`
/// (replacing the previous run's) before it is removed, so the logs of a
/// test that failed by returning an error are kept too.
#[derive(Debug)]
pub struct Workdir(Option<tempfile::TempDir>);

/// Where [`Workdir`] keeps the logs of the tests run by this executable.
pub fn logs_dir() -> PathBuf {
    bin_dir().parent().map_or_else(
        || PathBuf::from("integration-logs"),
        |t| t.join("integration-logs"),
    )
}

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    let name = std::thread::current()
        .name()
        .filter(|n| *n != "main" && !n.starts_with("tokio-"))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("pid-{}", std::process::id()));
    name.replace("::", "-")
}

/// Copies every `*.log` under `from` (two levels deep) to `to`.
fn archive_logs(from: &Path, to: &Path) -> std::io::Result<usize> {
    let _ = std::fs::remove_dir_all(to);
    let mut copied = 0;
    let mut dirs = vec![(from.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() && depth < 2 {
                dirs.push((path, depth + 1));
            } else if path.extension().is_some_and(|e| e == "log") {
                let rel = path.strip_prefix(from).unwrap_or(&path);
                let dest = to.join(rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::copy(&path, dest)?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}

impl Workdir {
    /// A new temp dir.
    pub fn new() -> Result<Self> {
        Ok(Self(Some(
            tempfile::Builder::new().prefix("upshift-it-").tempdir()?,
        )))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("workdir").path()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("--- keeping work dir {}", dir.keep().display());
            return;
        }
        let to = logs_dir().join(test_name());
        match archive_logs(dir.path(), &to) {
            Ok(0) => {}
            Ok(n) => eprintln!("--- {n} log files kept in {}", to.display()),
            Err(e) => eprintln!(
                "--- could not keep the logs of {}: {e}",
                dir.path().display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_archived_and_the_rest_is_not() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::write(from.path().join("graph.log"), "graph up\n").unwrap();
        std::fs::create_dir_all(from.path().join("agents/host-0")).unwrap();
        std::fs::write(from.path().join("agents/host-0.log"), "agent\n").unwrap();
        std::fs::write(from.path().join("agents/host-0/state.json"), "{}").unwrap();
        let dest = to.path().join("a-test");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("stale.log"), "old run").unwrap();
        assert_eq!(archive_logs(from.path(), &dest).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(dest.join("graph.log")).unwrap(),
            "graph up\n"
        );
        assert!(dest.join("agents/host-0.log").is_file());
        assert!(!dest.join("agents/host-0/state.json").exists());
        assert!(
            !dest.join("stale.log").exists(),
            "the previous run's logs go"
        );
    }
}
