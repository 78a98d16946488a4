//! The mesh under test: graph, policy, lock and telemetry as processes on
//! a private copy of the metadata, its hosts, and what the services report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use upshift_integration::agent::{AgentProcess, AgentSpec, Release, release};
use upshift_integration::{ServiceProcess, Workdir, stable_metadata};
use upshift_proto::lock::v1 as lock_pb;
use upshift_proto::lock::v1::lock_admin_service_client::LockAdminServiceClient;
use upshift_proto::lock::v1::lock_service_client::LockServiceClient;
use upshift_proto::policy::v1 as policy_pb;
use upshift_proto::policy::v1::rollout_admin_service_client::RolloutAdminServiceClient;
use upshift_proto::telemetry::v1 as telemetry_pb;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;

use crate::wait::wait_for;
use crate::{GROUP, NEW, READY, TOKEN};

pub fn arg(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// What the mesh runs on and how it is configured.
pub struct MeshOptions {
    /// Reboot slots of every group.
    pub slots: u32,
    /// etcd client URLs (comma-separated) for policy, lock and telemetry;
    /// `None`: each uses its embedded store.
    pub etcd: Option<String>,
    /// Telemetry halt rule: (max_failure_ratio, min_attempts).
    pub halt: Option<(f64, u32)>,
}

impl MeshOptions {
    /// Two slots, the embedded stores, no halt rule.
    pub fn embedded() -> Self {
        Self {
            slots: 2,
            etcd: None,
            halt: None,
        }
    }
}

/// The four services as processes, on a private copy of the metadata.
pub struct Mesh {
    dir: Workdir,
    stream: PathBuf,
    _graph: ServiceProcess,
    pub policy: ServiceProcess,
    pub lock: ServiceProcess,
    pub telemetry: ServiceProcess,
}

impl Mesh {
    /// Copies revision 58 of the stable metadata, lets `edit` change
    /// `updates.json`, and starts graph, policy, lock and telemetry.
    pub async fn start(
        options: &MeshOptions,
        edit: impl FnOnce(&mut serde_json::Value) -> Result<()>,
    ) -> Result<Self> {
        let dir = Workdir::new()?;
        let metadata = dir.path().join("metadata");
        let stream = stable_metadata(&metadata, 58)?;
        let updates_path = stream.join("updates.json");
        let mut updates: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&updates_path)?)?;
        edit(&mut updates)?;
        std::fs::write(&updates_path, serde_json::to_vec_pretty(&updates)?)?;

        let token = dir.path().join("admin-token");
        std::fs::write(&token, format!("{TOKEN}\n"))?;
        let mut admin = vec!["--admin-token-file", arg(&token)];
        if let Some(endpoints) = &options.etcd {
            admin.extend(["--etcd", endpoints.as_str()]);
        }
        let graph = serve(&dir, "graph", &["--metadata", arg(&metadata)], &[]).await?;
        let policy = serve(&dir, "policy", &["--graph", &graph.url()], &admin).await?;

        let lock_config = dir.path().join("lock.toml");
        std::fs::write(
            &lock_config,
            format!("[default]\nslots = {}\n", options.slots),
        )?;
        let lock = serve(&dir, "lock", &["--config", arg(&lock_config)], &admin).await?;

        let telemetry_config = dir.path().join("telemetry.toml");
        let mut text = String::from("stale_after = \"30m\"\nwatch_coalesce = \"100ms\"\n");
        if let Some((ratio, attempts)) = options.halt {
            text.push_str(&format!(
                "[policy]\nurl = \"{}\"\ncheck_interval = \"2s\"\n\
                 [halt.default]\nmax_failure_ratio = {ratio:?}\nmin_attempts = {attempts}\n",
                policy.url()
            ));
        }
        std::fs::write(&telemetry_config, text)?;
        let config = ["--config", arg(&telemetry_config)];
        let telemetry = serve(&dir, "telemetry", &config, &admin).await?;

        Ok(Self {
            dir,
            stream,
            _graph: graph,
            policy,
            lock,
            telemetry,
        })
    }

    /// The x86_64 release `version`.
    pub fn release(&self, version: &str) -> Result<Release> {
        release(&self.stream, version)
    }

    /// A host of this mesh booted on `booted`.
    pub fn spec(&self, index: usize, wariness: Option<f64>, booted: &Release) -> AgentSpec {
        AgentSpec {
            name: format!("host-{index:02}"),
            node_uuid: format!("{:032x}", 0x5ce0_0000_u64 + index as u64),
            wariness,
            group: GROUP.into(),
            policy: self.policy.addr().to_string(),
            lock: self.lock.addr().to_string(),
            telemetry: Some(self.telemetry.addr().to_string()),
            fail_versions: Vec::new(),
            booted: booted.clone(),
        }
    }

    pub fn start_agent(&self, spec: &AgentSpec) -> Result<AgentProcess> {
        let hosts = self.dir.path().join("hosts");
        std::fs::create_dir_all(&hosts)?;
        AgentProcess::start(&hosts, spec)
    }

    /// Hosts 0, 1, … booted on `booted`, one for each of the `wariness`.
    pub fn start_agents(&self, wariness: &[f64], booted: &Release) -> Result<Vec<AgentProcess>> {
        let mut agents = Vec::new();
        for (index, w) in wariness.iter().enumerate() {
            agents.push(self.start_agent(&self.spec(index, Some(*w), booted))?);
        }
        Ok(agents)
    }

    pub async fn rollouts(&self) -> Result<Vec<policy_pb::Rollout>> {
        let mut client = RolloutAdminServiceClient::connect(self.policy.url()).await?;
        let mut request = tonic::Request::new(policy_pb::ListRolloutsRequest {
            stream: "stable".into(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse()?);
        Ok(client.list_rollouts(request).await?.into_inner().rollouts)
    }

    /// The rollout of [`NEW`].
    pub async fn new_rollout(&self) -> Result<policy_pb::Rollout> {
        let rollouts = self.rollouts().await?;
        rollouts
            .into_iter()
            .find(|r| r.version == NEW)
            .context("no rollout")
    }

    pub async fn fleet(&self) -> Result<Vec<telemetry_pb::HostStatus>> {
        let mut client = TelemetryServiceClient::connect(self.telemetry.url()).await?;
        let response = client
            .get_fleet(telemetry_pb::GetFleetRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await?;
        Ok(response
            .into_inner()
            .hosts
            .into_iter()
            .filter_map(|h| h.status)
            .collect())
    }

    /// Waits until telemetry sees the whole fleet of `hosts` steady on [`NEW`].
    pub async fn wait_fleet_on_new(&self, hosts: usize) -> Result<()> {
        wait_for(Duration::from_secs(20), "telemetry shows NEW", async || {
            let fleet = self.fleet().await?;
            Ok(
                (fleet.len() == hosts && fleet.iter().all(|h| h.booted_version == NEW))
                    .then_some(()),
            )
        })
        .await
    }

    /// The lock service's audit of the group, replayed oldest first.
    pub async fn lock_audit(&self) -> Result<LockAudit> {
        let mut client = LockAdminServiceClient::connect(self.lock.url()).await?;
        let mut request = tonic::Request::new(lock_pb::ListAuditRequest {
            group: GROUP.into(),
            limit: 10_000,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse()?);
        let mut entries = client.list_audit(request).await?.into_inner().entries;
        // Newest first on the wire.
        entries.reverse();
        let mut audit = LockAudit::default();
        let mut holding = 0usize;
        for entry in &entries {
            match entry.action.as_str() {
                "grant" => {
                    *audit.grants.entry(entry.target.clone()).or_default() += 1;
                    holding += 1;
                    audit.max_concurrent = audit.max_concurrent.max(holding);
                }
                "release" => {
                    ensure!(entry.actor != "lease", "a lease expired: {entry:?}");
                    *audit.releases.entry(entry.target.clone()).or_default() += 1;
                    holding = holding.saturating_sub(1);
                }
                other => bail!("unexpected audit action {other}: {entry:?}"),
            }
        }
        audit.entries = entries.len();
        Ok(audit)
    }

    pub async fn group(&self) -> Result<lock_pb::Group> {
        let mut client = LockServiceClient::connect(self.lock.url()).await?;
        let response = client
            .get_group(lock_pb::GetGroupRequest {
                group: GROUP.into(),
            })
            .await?;
        response.into_inner().group.context("no group")
    }
}

/// Starts `upshift serve NAME ARGS --data-dir DIR/NAME-data ADMIN` in the
/// mesh's directory and waits until it is ready.
async fn serve(dir: &Workdir, name: &str, args: &[&str], admin: &[&str]) -> Result<ServiceProcess> {
    let data = dir.path().join(format!("{name}-data"));
    let mut all = vec!["serve", name];
    all.extend(args);
    all.extend(["--data-dir", arg(&data)]);
    all.extend(admin);
    let process = ServiceProcess::start(name, dir.path(), &all)?;
    process.wait_ready(READY).await?;
    Ok(process)
}

/// The lock audit of the group: grants and releases by holder id.
#[derive(Debug, Default)]
pub struct LockAudit {
    pub grants: BTreeMap<String, u32>,
    pub releases: BTreeMap<String, u32>,
    /// Most holders at once, replaying grants and releases in order.
    pub max_concurrent: usize,
    pub entries: usize,
}
