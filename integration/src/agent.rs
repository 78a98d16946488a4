//! `upshift-agent` processes on the simulated OS backend, supervised the
//! way systemd supervises the real unit: exit code 100 is a simulated
//! reboot, after which the agent is started again with the new release
//! booted. Every boot is recorded, so tests can check the sequence of
//! releases a host went through.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bin;

/// The exit code of a simulated reboot.
pub const EXIT_REBOOT: i32 = 100;

/// A release of the simulated OS: version and payload (commit checksum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Version, e.g. `34.20211004.3.1`.
    pub version: String,
    /// x86_64 commit checksum.
    pub payload: String,
}

/// The x86_64 release `version` of a stream directory's `releases.json`.
pub fn release(stream_dir: &Path, version: &str) -> Result<Release> {
    let path = stream_dir.join("releases.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    let entry = doc["releases"]
        .as_array()
        .context("releases.json has no releases")?
        .iter()
        .find(|r| r["version"] == version)
        .with_context(|| format!("no release {version} in {}", path.display()))?;
    let payload = entry["commits"]
        .as_array()
        .and_then(|commits| {
            commits
                .iter()
                .find(|c| c["architecture"] == "x86_64")
                .and_then(|c| c["checksum"].as_str())
        })
        .with_context(|| format!("release {version} has no x86_64 commit"))?;
    Ok(Release {
        version: version.to_string(),
        payload: payload.to_string(),
    })
}

/// How to configure one simulated host (written as
/// `<root>/etc/upshift/agent.d/50-test.toml`, the keys `upshift dev` uses).
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Short name, used for the root directory and the log.
    pub name: String,
    /// `identity.node_uuid` (32 hex digits).
    pub node_uuid: String,
    /// `identity.rollout_wariness`; `None` derives it from the node id.
    pub wariness: Option<f64>,
    /// `identity.group` (the reboot lock group).
    pub group: String,
    /// Policy service `host:port` (`updates.backend = "stream"`).
    pub policy: String,
    /// Lock service `host:port` (`lock.kind = "grpc"`).
    pub lock: String,
    /// Telemetry service `host:port`, if reporting.
    pub telemetry: Option<String>,
    /// `os.fail_versions`: releases whose staging fails on this host.
    pub fail_versions: Vec<String>,
    /// The release booted at the first start.
    pub booted: Release,
}

impl AgentSpec {
    /// The fragment's TOML text.
    pub fn config(&self) -> String {
        let mut text = format!(
            "[identity]\n\
             group = {group:?}\n\
             stream = \"stable\"\n\
             basearch = \"x86_64\"\n\
             platform = \"qemu\"\n\
             node_uuid = {uuid:?}\n",
            group = self.group,
            uuid = self.node_uuid,
        );
        if let Some(w) = self.wariness {
            text.push_str(&format!("rollout_wariness = {w:?}\n"));
        }
        text.push_str(&format!(
            "\n[updates]\nbackend = \"stream\"\npolicy_url = \"http://{}\"\npoll_interval = \"5s\"\n\
             \n[lock]\nkind = \"grpc\"\nurl = \"http://{}\"\nttl = \"10m\"\n",
            self.policy, self.lock
        ));
        if let Some(telemetry) = &self.telemetry {
            text.push_str(&format!(
                "\n[telemetry]\nurl = \"http://{telemetry}\"\ninterval = \"2s\"\n"
            ));
        }
        let fails: Vec<String> = self
            .fail_versions
            .iter()
            .map(|v| format!("{v:?}"))
            .collect();
        text.push_str(&format!(
            "\n[os]\nbackend = \"simulated\"\nfail_versions = [{}]\n",
            fails.join(", ")
        ));
        text
    }
}

/// One boot of a supervised agent.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The booted version at that start.
    pub version: String,
    /// When the supervisor started the process (for ordering only).
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    child: Mutex<Option<Child>>,
    boots: Mutex<Vec<Boot>>,
    exits: Mutex<Vec<Option<i32>>>,
    /// Set when the supervisor gave up (an exit other than 100).
    finished: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A supervised `upshift-agent --root DIR run`.
#[derive(Debug)]
pub struct AgentProcess {
    name: String,
    root: PathBuf,
    log: PathBuf,
    program: PathBuf,
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
}

impl AgentProcess {
    /// Writes the host's root (`<parent>/<name>/`: config fragment,
    /// simulated OS state with `spec.booted`) and starts the supervisor.
    pub fn start(parent: &Path, spec: &AgentSpec) -> Result<Self> {
        let program = bin("upshift-agent")?;
        let root = parent.join(&spec.name);
        let config_dir = root.join("etc/upshift/agent.d");
        std::fs::create_dir_all(&config_dir)?;
        std::fs::write(config_dir.join("50-test.toml"), spec.config())?;
        let state_dir = root.join("var/lib/upshift");
        std::fs::create_dir_all(&state_dir)?;
        let sim = serde_json::json!({
            "booted": {"version": spec.booted.version, "payload": spec.booted.payload},
            "staged": null,
            "finalized": false,
            "sessions": 0,
        });
        std::fs::write(
            state_dir.join("simulated-os.json"),
            serde_json::to_vec_pretty(&sim)?,
        )?;
        let mut agent = Self {
            name: spec.name.clone(),
            log: parent.join(format!("{}.log", spec.name)),
            root,
            program,
            shared: Arc::new(Shared::default()),
            supervisor: None,
        };
        agent.spawn_supervisor()?;
        Ok(agent)
    }

    fn spawn_supervisor(&mut self) -> Result<()> {
        let shared = self.shared.clone();
        let (program, root, log) = (self.program.clone(), self.root.clone(), self.log.clone());
        let sim_file = self.sim_file();
        let handle = std::thread::Builder::new()
            .name(format!("supervise-{}", self.name))
            .spawn(move || supervise(&shared, &program, &root, &log, &sim_file))?;
        self.supervisor = Some(handle);
        Ok(())
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The log of every run of the agent.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn sim_file(&self) -> PathBuf {
        self.root.join("var/lib/upshift/simulated-os.json")
    }

    /// The simulated OS state (`booted`, `staged`, `finalized`).
    pub fn os_state(&self) -> Result<serde_json::Value> {
        let path = self.sim_file();
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The booted version of the simulated OS.
    pub fn booted(&self) -> Result<String> {
        booted_version(&self.sim_file())
    }

    /// The staged version of the simulated OS, if any.
    pub fn staged(&self) -> Result<Option<String>> {
        let state = self.os_state()?;
        Ok(state["staged"]["version"].as_str().map(str::to_string))
    }

    /// The versions booted at each start, in order (the first is the
    /// initial release; each later one follows a simulated reboot).
    pub fn boots(&self) -> Vec<Boot> {
        lock(&self.shared.boots).clone()
    }

    /// The booted versions, in order, without repeats of the same version
    /// (a restart that did not change the release is not an update).
    pub fn boot_versions(&self) -> Vec<String> {
        let mut versions: Vec<String> = Vec::new();
        for boot in self.boots() {
            if versions.last() != Some(&boot.version) {
                versions.push(boot.version);
            }
        }
        versions
    }

    /// Exit codes of the runs that ended so far (`None`: killed by a signal).
    pub fn exits(&self) -> Vec<Option<i32>> {
        lock(&self.shared.exits).clone()
    }

    /// Whether the supervisor stopped restarting the agent (it exited with
    /// something other than 100, or [`AgentProcess::stop`] was called).
    pub fn finished(&self) -> bool {
        self.shared.finished.load(Ordering::SeqCst)
    }

    /// `upshift-agent --root DIR status`, parsed into its `key: value`
    /// lines (`state`, `booted`, `target`, `lock held`, `dead-end`, ...).
    pub fn status(&self) -> Result<AgentStatus> {
        let output = Command::new(&self.program)
            .arg("--root")
            .arg(&self.root)
            .arg("status")
            .stdin(Stdio::null())
            .output()
            .context("running upshift-agent status")?;
        if !output.status.success() {
            bail!(
                "upshift-agent status for {} exited with {}: {}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(AgentStatus::parse(&String::from_utf8_lossy(&output.stdout)))
    }

    /// The agent's persisted state (`<root>/var/lib/upshift/agent-state.json`).
    pub fn persisted_state(&self) -> Result<serde_json::Value> {
        let path = self.root.join("var/lib/upshift/agent-state.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Stops supervising and kills the running agent.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(child) = lock(&self.shared.child).as_mut() {
            let _ = child.kill();
        }
        if let Some(handle) = self.supervisor.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- agent {} log ({}), last lines:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

fn booted_version(sim_file: &Path) -> Result<String> {
    let bytes =
        std::fs::read(sim_file).with_context(|| format!("reading {}", sim_file.display()))?;
    let state: serde_json::Value = serde_json::from_slice(&bytes)?;
    state["booted"]["version"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{} has no booted version", sim_file.display()))
}

/// The supervisor loop: start, wait, restart after exit 100.
fn supervise(shared: &Shared, program: &Path, root: &Path, log: &Path, sim_file: &Path) {
    let note = |line: String| {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(file, "=== supervisor: {line}");
        }
    };
    while !shared.stop.load(Ordering::SeqCst) {
        let version = booted_version(sim_file).unwrap_or_else(|e| format!("unreadable: {e:#}"));
        note(format!("starting upshift-agent, booted {version}"));
        lock(&shared.boots).push(Boot {
            version,
            at: Instant::now(),
        });
        let child = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|file| {
                Command::new(program)
                    .arg("--root")
                    .arg(root)
                    .arg("run")
                    .env(
                        "RUST_LOG",
                        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                    )
                    .stdin(Stdio::null())
                    .stdout(file.try_clone()?)
                    .stderr(file)
                    .spawn()
            });
        match child {
            Ok(child) => *lock(&shared.child) = Some(child),
            Err(e) => {
                note(format!("cannot start upshift-agent: {e}"));
                break;
            }
        }
        let code = loop {
            let mut guard = lock(&shared.child);
            let Some(child) = guard.as_mut() else {
                break None;
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    guard.take();
                    break status.code();
                }
                Ok(None) => {}
                Err(_) => {
                    guard.take();
                    break None;
                }
            }
            drop(guard);
            std::thread::sleep(Duration::from_millis(20));
        };
        lock(&shared.exits).push(code);
        note(format!("upshift-agent exited with {code:?}"));
        if code != Some(EXIT_REBOOT) {
            break;
        }
    }
    shared.finished.store(true, Ordering::SeqCst);
}

/// The parsed output of `upshift-agent status`.
#[derive(Debug, Clone, Default)]
pub struct AgentStatus {
    fields: Vec<(String, String)>,
}

impl AgentStatus {
    /// Parses `key:   value` lines; `-` means empty.
    pub fn parse(text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| {
                let v = v.trim();
                let v = if v == "-" { "" } else { v };
                (k.trim().to_string(), v.to_string())
            })
            .collect();
        Self { fields }
    }

    /// The value of `key` (`""` when absent or `-`).
    pub fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The `state` line (`idle`, `staged`, `dead-end`, ...).
    pub fn state(&self) -> &str {
        self.get("state")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        let status = AgentStatus::parse(
            "state:        dead-end\nbooted:       34.1\ntarget:       -\ndead-end:     see https://x/y\n",
        );
        assert_eq!(status.state(), "dead-end");
        assert_eq!(status.get("target"), "");
        assert_eq!(status.get("dead-end"), "see https://x/y");
        assert_eq!(status.get("missing"), "");
    }

    #[test]
    fn releases_are_found_by_version() {
        let stable = crate::fixtures().join("fcos/stable");
        let r = release(&stable, "34.20211004.3.1").unwrap();
        assert_eq!(
            r.payload,
            "a44c3b4d10b94db300d420cba76249b6c6de368fa1f93613796e50d3ee8b3568"
        );
        assert!(release(&stable, "1.2.3").is_err());
    }

    #[test]
    fn config_fragment_has_the_dev_keys() {
        let spec = AgentSpec {
            name: "h".into(),
            node_uuid: "0123456789abcdef0123456789abcdef".into(),
            wariness: Some(0.25),
            group: "default".into(),
            policy: "127.0.0.1:1".into(),
            lock: "127.0.0.1:2".into(),
            telemetry: Some("127.0.0.1:3".into()),
            fail_versions: vec!["34.2".into()],
            booted: Release {
                version: "34.1".into(),
                payload: "abc".into(),
            },
        };
        let text = spec.config();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(doc["identity"]["rollout_wariness"].as_float(), Some(0.25));
        assert_eq!(doc["lock"]["kind"].as_str(), Some("grpc"));
        assert_eq!(doc["os"]["fail_versions"][0].as_str(), Some("34.2"));
        assert_eq!(doc["telemetry"]["url"].as_str(), Some("http://127.0.0.1:3"));
    }
}
