//! Harness for whole-mesh tests: starts the real `upshift` binaries as
//! processes on OS-assigned ports in temp dirs, and keeps their logs when a
//! test fails.

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

/// A temp directory kept (and printed) when the test panics.
#[derive(Debug)]
pub struct Workdir(Option<tempfile::TempDir>);

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
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("--- keeping work dir {}", dir.keep().display());
        }
    }
}
