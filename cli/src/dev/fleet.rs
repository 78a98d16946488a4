//! The dev mesh's simulated fleet: in-process `upshift-agent`s on the
//! simulated OS backend, each configured through its own root directory
//! exactly like a host (`<root>/etc/upshift/agent.d/`), all on the mesh's
//! clock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use upshift_agent::driver::DriverError;
use upshift_agent::embed::{EmbedOptions, spawn};
use upshift_agent::os::Release;
use upshift_agent::status::Status;
use upshift_common::clock::SharedClock;

use super::{Addresses, FailSpec};

/// How to build the fleet.
#[derive(Debug)]
pub struct FleetOptions {
    /// Number of agents.
    pub agents: u32,
    /// Parent of the agents' root directories.
    pub dir: PathBuf,
    /// Where the services listen.
    pub addresses: Addresses,
    /// Release every agent boots first.
    pub initial: Release,
    /// Failure scenario.
    pub fail: Option<FailSpec>,
    /// Simulated time between two telemetry heartbeats of an agent.
    pub heartbeat: Duration,
    /// The mesh clock.
    pub clock: SharedClock,
    /// Stops every agent.
    pub cancel: CancellationToken,
}

struct Member {
    status: watch::Receiver<Status>,
    task: JoinHandle<Result<u64, DriverError>>,
}

/// The running fleet.
pub struct Fleet {
    members: Vec<Member>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("agents", &self.members.len())
            .finish()
    }
}

/// Counts of the fleet's agents.
#[derive(Debug, Default, Clone)]
pub struct FleetCounts {
    /// Agents by booted version.
    pub by_version: BTreeMap<String, u32>,
    /// Agents by state.
    pub by_state: BTreeMap<&'static str, u32>,
    /// Agents holding a reboot slot.
    pub lock_held: u32,
    /// Agents queued for a slot.
    pub queued: u32,
    /// Agents whose deny list holds a release (it failed for them).
    pub denied: BTreeMap<String, u32>,
    /// Simulated reboots so far.
    pub updates: u64,
    /// Staging failures so far.
    pub failures: u64,
    /// Agents that stopped with an error.
    pub stopped: u32,
    /// Agents.
    pub total: u32,
}

impl Fleet {
    /// Configures and starts every agent.
    pub fn spawn(options: &FleetOptions) -> anyhow::Result<Self> {
        let mut members = Vec::with_capacity(options.agents as usize);
        for index in 0..options.agents {
            let root = options.dir.join(member_dir(index));
            let fails = options
                .fail
                .as_ref()
                .filter(|f| fails_here(index, options.agents, f.percent));
            write_config(&root, index, options, fails)?;
            let settings = upshift_agent::app::load_settings(&root).map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::anyhow!("agent configuration: {}", lines.join("; "))
            })?;
            let ident =
                upshift_agent::app::load_ident(&root, &settings).map_err(|e| anyhow::anyhow!(e))?;
            let agent = spawn(
                settings,
                ident,
                options.clock.clone(),
                options.cancel.clone(),
                EmbedOptions {
                    initial: options.initial.clone(),
                    // The first host serves its metrics and control
                    // sockets, for the bridge and `upshift-agent status`.
                    sockets: index == 0,
                },
            )
            .with_context(|| format!("starting agent {index}"))?;
            members.push(Member {
                status: agent.status,
                task: agent.task,
            });
        }
        Ok(Self { members })
    }

    /// Counts the agents' current statuses.
    pub fn counts(&self) -> FleetCounts {
        let mut counts = FleetCounts {
            total: self.members.len() as u32,
            ..FleetCounts::default()
        };
        for member in &self.members {
            if member.task.is_finished() {
                counts.stopped += 1;
            }
            let status = member.status.borrow();
            *counts.by_version.entry(status.booted.clone()).or_default() += 1;
            *counts.by_state.entry(status.state).or_default() += 1;
            counts.lock_held += u32::from(status.lock_held);
            counts.queued += u32::from(status.lock_queue_position.is_some());
            counts.updates += status.updates;
            counts.failures += status.failures;
            for version in &status.deny_list {
                *counts.denied.entry(version.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Waits for every agent to stop (after the cancellation token fired).
    pub async fn stop(self) {
        for member in self.members {
            match member.task.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "agent stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "agent task failed"),
            }
        }
    }
}

/// The root directory name of agent `index`.
pub fn member_dir(index: u32) -> String {
    format!("node-{index:05}")
}

/// Whether agent `index` of `agents` is one of the `percent` that fail,
/// spread evenly over the fleet.
fn fails_here(index: u32, agents: u32, percent: f64) -> bool {
    let share = percent / 100.0;
    let before = (f64::from(index) * share).floor();
    let after = (f64::from(index + 1) * share).floor();
    agents > 0 && after > before
}

/// The node id of agent `index`: 32 hex digits, stable across runs.
pub fn node_uuid(index: u32) -> String {
    let digest = Sha256::digest(format!("upshift-dev-node-{index}").as_bytes());
    hex::encode(&digest[..16])
}

/// Simulated time between telemetry heartbeats at clock `speed`: the
/// agents' 60 s default, or one real second when the clock runs faster
/// than 60 times real time (a heartbeat every 60 simulated seconds of 2,000
/// hosts at x2880 is 96,000 reports a second, more than one embedded store
/// writes).
pub fn heartbeat(speed: f64) -> Duration {
    Duration::from_secs_f64(speed.clamp(60.0, 86_400.0))
}

fn write_config(
    root: &Path,
    index: u32,
    options: &FleetOptions,
    fails: Option<&FailSpec>,
) -> anyhow::Result<()> {
    let addresses = &options.addresses;
    let dir = root.join("etc/upshift/agent.d");
    std::fs::create_dir_all(&dir)?;
    let fail_versions = fails
        .map(|f| format!("[{:?}]", f.version))
        .unwrap_or_else(|| "[]".to_string());
    let config = format!(
        "# Written by `upshift dev` for simulated host {index}.\n\
         [identity]\n\
         group = \"default\"\n\
         stream = \"stable\"\n\
         basearch = \"x86_64\"\n\
         platform = \"qemu\"\n\
         node_uuid = \"{uuid}\"\n\
         \n\
         [updates]\n\
         backend = \"stream\"\n\
         policy_url = \"http://{policy}\"\n\
         \n\
         [lock]\n\
         kind = \"grpc\"\n\
         url = \"http://{lock}\"\n\
         ttl = \"30m\"\n\
         \n\
         [telemetry]\n\
         url = \"http://{telemetry}\"\n\
         interval = \"{heartbeat}s\"\n\
         \n\
         [os]\n\
         backend = \"simulated\"\n\
         fail_versions = {fail_versions}\n",
        uuid = node_uuid(index),
        policy = addresses.policy,
        lock = addresses.lock,
        telemetry = addresses.telemetry,
        heartbeat = options.heartbeat.as_secs(),
    );
    std::fs::write(dir.join("50-dev.toml"), config)?;
    Ok(())
}

/// The newest x86_64 release of `releases.json`.
pub fn newest_release(stream_dir: &Path) -> anyhow::Result<Release> {
    let releases = x86_releases(stream_dir)?;
    releases.last().cloned().context("no x86_64 release")
}

/// The release the fleet boots first: the one before the newest in
/// `releases.json` (x86_64), so there is an update to roll out.
pub fn initial_release(stream_dir: &Path) -> anyhow::Result<Release> {
    let releases = x86_releases(stream_dir)?;
    let index = releases
        .len()
        .checked_sub(2)
        .context("fewer than two x86_64 releases")?;
    Ok(releases[index].clone())
}

fn x86_releases(stream_dir: &Path) -> anyhow::Result<Vec<Release>> {
    let path = stream_dir.join("releases.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    let releases: Vec<Release> = doc["releases"]
        .as_array()
        .context("releases.json has no releases")?
        .iter()
        .filter_map(|r| {
            let version = r["version"].as_str()?;
            let payload = r["commits"].as_array()?.iter().find_map(|c| {
                (c["architecture"] == "x86_64")
                    .then(|| c["checksum"].as_str())
                    .flatten()
            })?;
            Some(Release {
                version: version.to_string(),
                payload: payload.to_string(),
            })
        })
        .collect();
    Ok(releases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_at_most_one_a_real_second() {
        assert_eq!(heartbeat(1.0), Duration::from_secs(60));
        assert_eq!(heartbeat(60.0), Duration::from_secs(60));
        assert_eq!(heartbeat(600.0), Duration::from_secs(600));
        assert_eq!(heartbeat(2880.0), Duration::from_secs(2880));
        assert_eq!(heartbeat(1e9), Duration::from_secs(86_400));
    }

    #[test]
    fn failing_share_is_spread_and_exact() {
        let failing: Vec<u32> = (0..200).filter(|&i| fails_here(i, 200, 30.0)).collect();
        assert_eq!(failing.len(), 60);
        assert!(failing.first() < Some(&10) && failing.last() > Some(&190));
        assert_eq!((0..200).filter(|&i| fails_here(i, 200, 0.0)).count(), 0);
        assert_eq!((0..200).filter(|&i| fails_here(i, 200, 100.0)).count(), 200);
    }

    #[test]
    fn node_ids_are_32_hex_digits_and_distinct() {
        let a = node_uuid(1);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, node_uuid(2));
    }

    #[test]
    fn the_fleet_starts_one_release_behind() {
        let stable =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fcos/stable");
        let release = initial_release(&stable).unwrap();
        assert_eq!(release.version, "34.20211004.3.1");
        assert_eq!(
            release.payload,
            "a44c3b4d10b94db300d420cba76249b6c6de368fa1f93613796e50d3ee8b3568"
        );
    }
}
