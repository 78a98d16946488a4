//! Whole-mesh scenarios: real `upshift serve graph|policy|lock|telemetry`
//! processes and real `upshift-agent` processes on the simulated OS backend
//! (streamed hints from the policy, gRPC reboot lock, telemetry reports),
//! supervised by [`AgentProcess`] (exit 100 = simulated reboot, restarted
//! with the new release booted), on a copy of the Fedora CoreOS stable
//! metadata (revision 58) whose last rollout is re-dated to run during the
//! test. Everything runs on the real clock, so the tests wait with bounded
//! polling and assert only on order and outcomes, never on elapsed time.
//!
//! 1. A rollout reaches 8 hosts in wariness order, never more lock holders
//!    than the group's 2 slots (`WatchGroup` and the lock audit).
//! 2. A release failing on the first hosts is halted by telemetry; the
//!    other hosts never stage it.
//! 3. On a 3-member etcd cluster: SIGKILL and restart of lock, policy,
//!    telemetry and the etcd leader mid-rollout lose and duplicate no lock.
//! 4. Hosts before a barrier go through the barrier release first.
//! 5. A host on a dead-end release stays put and says why (status, motd,
//!    telemetry `DEAD_END`).
//!
//! Run: `cargo build --bins && cargo test -p upshift-integration --test
//! scenarios` (etcd on PATH for 3, or `UPSHIFT_SKIP_ETCD=1`). The scenarios
//! run one at a time, about two minutes in all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use tokio::task::JoinHandle;
use upshift_integration::agent::{AgentProcess, AgentSpec, Release, release};
use upshift_integration::etcd::EtcdCluster;
use upshift_integration::{ServiceProcess, Workdir, stable_metadata};
use upshift_proto::lock::v1 as lock_pb;
use upshift_proto::lock::v1::lock_admin_service_client::LockAdminServiceClient;
use upshift_proto::lock::v1::lock_service_client::LockServiceClient;
use upshift_proto::policy::v1 as policy_pb;
use upshift_proto::policy::v1::rollout_admin_service_client::RolloutAdminServiceClient;
use upshift_proto::telemetry::v1 as telemetry_pb;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;

const TOKEN: &str = "scenario-admin-token-0123456789abcdef";
const READY: Duration = Duration::from_secs(30);
/// The release every scenario's fleet starts on (revision 58's second newest).
const OLD: &str = "34.20211004.3.1";
/// The newest release of revision 58: the rollout under test.
const NEW: &str = "34.20211016.3.0";
const GROUP: &str = "default";

/// The scenarios run one at a time: each starts a dozen processes, and
/// the rollouts' timing assumes a machine that is not running four other
/// meshes (2 cores).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn arg(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// The wall clock: the service processes run on the system clock, so the
/// re-dated rollout must be placed on it too.
#[allow(clippy::disallowed_methods)]
fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Rewrites the last rollout of `updates.json` (the one of [`NEW`]).
fn set_last_rollout(updates: &mut serde_json::Value, rollout: serde_json::Value) -> Result<()> {
    let releases = updates["releases"]
        .as_array_mut()
        .context("updates.json has no releases")?;
    let last = releases
        .iter_mut()
        .rev()
        .find(|r| r["metadata"].get("rollout").is_some())
        .context("no rollout in updates.json")?;
    ensure!(
        last["version"] == NEW,
        "last rollout is {}",
        last["version"]
    );
    last["metadata"]["rollout"] = rollout;
    Ok(())
}

/// A rollout of [`NEW`] that started `ago` seconds ago at 0% and lasts
/// `minutes`.
fn rollout_started(ago: i64, minutes: u64) -> serde_json::Value {
    serde_json::json!({
        "start_epoch": now_epoch() - ago,
        "start_percentage": 0.0,
        "duration_minutes": minutes,
    })
}

/// What the mesh runs on and how it is configured.
struct MeshOptions {
    /// Reboot slots of every group.
    slots: u32,
    /// etcd client URLs (comma-separated) for policy, lock and telemetry;
    /// `None`: each uses its embedded store.
    etcd: Option<String>,
    /// Telemetry halt rule: (max_failure_ratio, min_attempts).
    halt: Option<(f64, u32)>,
}

/// The four services as processes, on a private copy of the metadata.
struct Mesh {
    dir: Workdir,
    stream: PathBuf,
    _graph: ServiceProcess,
    policy: ServiceProcess,
    lock: ServiceProcess,
    telemetry: ServiceProcess,
}

impl Mesh {
    /// Copies revision 58 of the stable metadata, lets `edit` change
    /// `updates.json`, and starts graph, policy, lock and telemetry.
    async fn start(
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
        let etcd_args = |args: &mut Vec<String>| {
            if let Some(endpoints) = &options.etcd {
                args.push("--etcd".into());
                args.push(endpoints.clone());
            }
        };
        let start = |name: &str, args: Vec<String>| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ServiceProcess::start(name, dir.path(), &args)
        };
        let dir_arg = |name: &str| arg(&dir.path().join(name)).to_string();

        let graph = start(
            "graph",
            vec![
                "serve".into(),
                "graph".into(),
                "--metadata".into(),
                arg(&metadata).into(),
                "--data-dir".into(),
                dir_arg("graph-data"),
            ],
        )?;
        graph.wait_ready(READY).await?;

        let mut args: Vec<String> = vec![
            "serve".into(),
            "policy".into(),
            "--graph".into(),
            graph.url(),
            "--data-dir".into(),
            dir_arg("policy-data"),
            "--admin-token-file".into(),
            arg(&token).into(),
        ];
        etcd_args(&mut args);
        let policy = start("policy", args)?;
        policy.wait_ready(READY).await?;

        let lock_config = dir.path().join("lock.toml");
        std::fs::write(
            &lock_config,
            format!("[default]\nslots = {}\n", options.slots),
        )?;
        let mut args: Vec<String> = vec![
            "serve".into(),
            "lock".into(),
            "--config".into(),
            arg(&lock_config).into(),
            "--data-dir".into(),
            dir_arg("lock-data"),
            "--admin-token-file".into(),
            arg(&token).into(),
        ];
        etcd_args(&mut args);
        let lock = start("lock", args)?;
        lock.wait_ready(READY).await?;

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
        let mut args: Vec<String> = vec![
            "serve".into(),
            "telemetry".into(),
            "--config".into(),
            arg(&telemetry_config).into(),
            "--data-dir".into(),
            dir_arg("telemetry-data"),
            "--admin-token-file".into(),
            arg(&token).into(),
        ];
        etcd_args(&mut args);
        let telemetry = start("telemetry", args)?;
        telemetry.wait_ready(READY).await?;

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
    fn release(&self, version: &str) -> Result<Release> {
        release(&self.stream, version)
    }

    /// A host of this mesh booted on `booted`.
    fn spec(&self, index: usize, wariness: Option<f64>, booted: &Release) -> AgentSpec {
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

    fn start_agent(&self, spec: &AgentSpec) -> Result<AgentProcess> {
        let hosts = self.dir.path().join("hosts");
        std::fs::create_dir_all(&hosts)?;
        AgentProcess::start(&hosts, spec)
    }

    async fn rollouts(&self) -> Result<Vec<policy_pb::Rollout>> {
        let mut client = RolloutAdminServiceClient::connect(self.policy.url()).await?;
        let mut request = tonic::Request::new(policy_pb::ListRolloutsRequest {
            stream: "stable".into(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse()?);
        Ok(client.list_rollouts(request).await?.into_inner().rollouts)
    }

    async fn fleet(&self) -> Result<Vec<telemetry_pb::HostStatus>> {
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

    /// The lock service's audit of the group, replayed oldest first.
    async fn lock_audit(&self) -> Result<LockAudit> {
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

    async fn group(&self) -> Result<lock_pb::Group> {
        let mut client = LockServiceClient::connect(self.lock.url()).await?;
        let response = client
            .get_group(lock_pb::GetGroupRequest {
                group: GROUP.into(),
            })
            .await?;
        response.into_inner().group.context("no group")
    }
}

/// The lock audit of the group: grants and releases by holder id.
#[derive(Debug, Default)]
struct LockAudit {
    grants: BTreeMap<String, u32>,
    releases: BTreeMap<String, u32>,
    /// Most holders at once, replaying grants and releases in order.
    max_concurrent: usize,
    entries: usize,
}

/// What the lock watcher saw.
#[derive(Debug, Default, Clone)]
struct LockRecord {
    /// Largest number of simultaneous holders.
    max_holders: usize,
    /// Largest configured slot count seen.
    slots: u32,
    /// Every holder id that ever held a slot.
    holders_seen: BTreeSet<String>,
    /// Group states received.
    updates: u64,
    /// Watch streams (re)opened.
    connections: u64,
}

/// Follows the group with `WatchGroup` (reconnecting across lock restarts)
/// and records the most holders at once.
fn watch_lock(url: String) -> (Arc<Mutex<LockRecord>>, JoinHandle<()>) {
    let record = Arc::new(Mutex::new(LockRecord::default()));
    let shared = record.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(mut client) = LockServiceClient::connect(url.clone()).await
                && let Ok(response) = client
                    .watch_group(lock_pb::WatchGroupRequest {
                        group: GROUP.into(),
                    })
                    .await
            {
                shared.lock().unwrap().connections += 1;
                let mut stream = response.into_inner();
                while let Ok(Some(message)) = stream.message().await {
                    if let Some(group) = message.group {
                        let mut r = shared.lock().unwrap();
                        r.updates += 1;
                        r.max_holders = r.max_holders.max(group.holders.len());
                        r.slots = r.slots.max(group.total_slots);
                        for h in group.holders {
                            r.holders_seen.insert(h.id);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (record, task)
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after
/// `limit` with `what` and the last observation.
async fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) if e.is::<Fatal>() => return Err(e.context(format!("waiting for {what}"))),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe(agents: &[AgentProcess]) -> String {
    agents
        .iter()
        .map(|a| {
            format!(
                "{}: booted {:?} staged {:?} boots {:?} exits {:?}",
                a.name(),
                a.booted().unwrap_or_default(),
                a.staged().ok().flatten(),
                a.boot_versions(),
                a.exits()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An error that ends [`wait_for`] at once instead of being retried.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Fails (fatally for [`wait_for`]) when an agent stopped with anything
/// but a simulated reboot.
fn check_alive(agents: &[AgentProcess]) -> Result<()> {
    for agent in agents {
        if agent.finished() {
            return Err(Fatal(format!(
                "{} stopped: exits {:?}\n{}",
                agent.name(),
                agent.exits(),
                agent.log_tail()
            ))
            .into());
        }
    }
    Ok(())
}

/// Waits until every agent booted `version` and is idle again (steady
/// reported, no slot held).
async fn wait_converged(agents: &[AgentProcess], version: &str, limit: Duration) -> Result<()> {
    wait_for(
        limit,
        &format!("every host idle on {version}"),
        async || {
            check_alive(agents)?;
            for agent in agents {
                if agent.booted()? != version {
                    return Ok(None);
                }
                let status = agent.status()?;
                if status.state() != "idle" || status.get("lock held") != "false" {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .with_context(|| describe(agents))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_reaches_every_host_in_wariness_order_within_the_slots() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Started 15 s ago over one minute: the throttle is at 25% and opens
    // the rest of the wariness space over the next 45 s.
    let mesh = Mesh::start(
        &MeshOptions {
            slots: 2,
            etcd: None,
            halt: None,
        },
        |updates| set_last_rollout(updates, rollout_started(15, 1)),
    )
    .await?;
    let old = mesh.release(OLD)?;
    // Four hosts are eligible at once (a tie, contending for 2 slots), the
    // others open about 12 s apart.
    let wariness = [0.0, 0.05, 0.1, 0.15, 0.4, 0.6, 0.8, 1.0];
    let (record, watcher) = watch_lock(mesh.lock.url());
    let mut agents = Vec::new();
    for (index, w) in wariness.iter().enumerate() {
        agents.push(mesh.start_agent(&mesh.spec(index, Some(*w), &old))?);
    }
    wait_converged(&agents, NEW, Duration::from_secs(120)).await?;
    watcher.abort();

    // Every host went OLD -> NEW in one reboot.
    for agent in &agents {
        assert_eq!(agent.boot_versions(), [OLD, NEW], "{}", describe(&agents));
    }
    // Hosts reach NEW in wariness order; hosts whose eligibility is less
    // than 0.2 of the wariness space (12 s) apart may tie.
    let reached: Vec<(f64, Instant, &str)> = agents
        .iter()
        .zip(wariness)
        .map(|(a, w)| {
            let at = a
                .boots()
                .iter()
                .find(|b| b.version == NEW)
                .map(|b| b.at)
                .expect("booted NEW");
            (w, at, a.name())
        })
        .collect();
    for (wa, at_a, a) in &reached {
        for (wb, at_b, b) in &reached {
            if wb - wa >= 0.2 {
                assert!(
                    at_a < at_b,
                    "{a} (wariness {wa}) reached {NEW} after {b} (wariness {wb})"
                );
            }
        }
    }
    let mut order: Vec<_> = reached.clone();
    order.sort_by_key(|(_, at, _)| *at);
    eprintln!(
        "order reached: {:?}",
        order.iter().map(|(w, _, n)| (*n, *w)).collect::<Vec<_>>()
    );

    // The reboot slots bound the hosts rebooting at once, and every host
    // held one.
    let record = record.lock().unwrap().clone();
    eprintln!("lock record: {record:?}");
    assert_eq!(record.slots, 2);
    assert!(record.max_holders <= 2, "{record:?}");
    assert_eq!(record.holders_seen.len(), agents.len(), "{record:?}");
    let group = mesh.group().await?;
    assert!(group.holders.is_empty(), "{group:?}");
    let rollouts = mesh.rollouts().await?;
    let rollout = rollouts
        .iter()
        .find(|r| r.version == NEW)
        .context("no rollout")?;
    assert!(!rollout.paused, "{rollout:?}");
    let audit = mesh.lock_audit().await?;
    eprintln!("lock audit: max {} holders at once", audit.max_concurrent);
    assert!(audit.max_concurrent <= 2, "{audit:#?}");
    assert_eq!(audit.grants.len(), agents.len(), "{audit:#?}");
    assert_eq!(audit.grants, audit.releases, "{audit:#?}");

    // Telemetry sees the whole fleet steady on NEW.
    wait_for(Duration::from_secs(20), "telemetry shows NEW", async || {
        let hosts = mesh.fleet().await?;
        Ok(
            (hosts.len() == agents.len() && hosts.iter().all(|h| h.booted_version == NEW))
                .then_some(()),
        )
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_release_is_halted_and_the_rest_never_stage_it() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Started 30 s ago over one minute: the throttle is at 50%; the failing
    // hosts (wariness <= 0.2) are eligible at once, the healthy ones
    // (wariness >= 0.8) would open over the next 18-30 s without a halt.
    let rollout = rollout_started(30, 1);
    let end = rollout["start_epoch"].as_i64().context("start")? + 60;
    let mesh = Mesh::start(
        &MeshOptions {
            slots: 2,
            etcd: None,
            halt: Some((0.3, 2)),
        },
        |updates| set_last_rollout(updates, rollout),
    )
    .await?;
    let old = mesh.release(OLD)?;
    let mut failing = Vec::new();
    for (index, w) in [0.0, 0.1, 0.2].into_iter().enumerate() {
        let mut spec = mesh.spec(index, Some(w), &old);
        spec.fail_versions = vec![NEW.into()];
        failing.push(mesh.start_agent(&spec)?);
    }
    let mut healthy = Vec::new();
    for (index, w) in [0.8, 0.85, 0.9, 0.95, 1.0].into_iter().enumerate() {
        healthy.push(mesh.start_agent(&mesh.spec(10 + index, Some(w), &old))?);
    }

    // Watch the healthy hosts' simulated OS until well after the rollout's
    // end (when, without the halt, all of them would have staged NEW).
    let mut halted_reason = None;
    let mut staged_seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while now_epoch() <= end + 5 {
        ensure!(Instant::now() < deadline, "the rollout's end never came");
        check_alive(&failing)?;
        check_alive(&healthy)?;
        for host in &healthy {
            let state = host.os_state()?;
            if state["staged"]["version"] == NEW || state["booted"]["version"] != OLD {
                staged_seen.push(format!("{}: {state}", host.name()));
            }
        }
        if halted_reason.is_none()
            && let Some(r) = mesh
                .rollouts()
                .await?
                .into_iter()
                .find(|r| r.version == NEW)
            && r.paused
        {
            halted_reason = Some(r.pause_reason);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        staged_seen.is_empty(),
        "healthy hosts staged {NEW}: {staged_seen:?}"
    );
    let reason = halted_reason.with_context(|| {
        format!(
            "{NEW} was never halted; hosts:\n{}\n{}",
            describe(&failing),
            describe(&healthy)
        )
    })?;
    assert!(reason.contains("telemetry"), "{reason}");
    eprintln!("halt reason: {reason}");

    // The failing hosts tried and failed (nothing staged, still on OLD).
    for host in &failing {
        assert_eq!(host.booted()?, OLD);
        assert_eq!(host.staged()?, None);
        assert_eq!(host.boot_versions(), [OLD]);
    }
    let errors: Vec<String> = failing
        .iter()
        .map(|h| h.status().map(|s| s.get("last error").to_string()))
        .collect::<Result<_>>()?;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("staging-failed") || e.contains("release-denied")),
        "{errors:?}"
    );
    // The healthy hosts stay on OLD, idle, with no target; the rollout is
    // still paused and telemetry lists the halt.
    for host in &healthy {
        let status = host.status()?;
        assert_eq!(status.get("booted"), OLD);
        assert_eq!(status.get("target"), "", "{}", host.name());
        assert_eq!(host.boot_versions(), [OLD]);
    }
    let rollouts = mesh.rollouts().await?;
    let rollout = rollouts
        .iter()
        .find(|r| r.version == NEW)
        .context("no rollout")?;
    assert!(rollout.paused, "{rollout:?}");
    let mut client = TelemetryServiceClient::connect(mesh.telemetry.url()).await?;
    let summary = client
        .get_fleet_summary(telemetry_pb::GetFleetSummaryRequest::default())
        .await?
        .into_inner()
        .summary
        .context("no summary")?;
    assert!(
        summary.halts.iter().any(|h| h.version == NEW),
        "{summary:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_policy_lock_telemetry_and_an_etcd_member_lose_no_lock() -> Result<()> {
    let _serial = SERIAL.lock().await;
    if upshift_store::testing::skip_etcd() {
        return Ok(());
    }
    let mut etcd = EtcdCluster::start(3).await?;
    // Started 15 s ago over one minute: three hosts are eligible at once,
    // the others in pairs over the next 45 s.
    let mut mesh = Mesh::start(
        &MeshOptions {
            slots: 2,
            etcd: Some(etcd.endpoints()),
            halt: None,
        },
        |updates| set_last_rollout(updates, rollout_started(15, 1)),
    )
    .await?;
    let old = mesh.release(OLD)?;
    let wariness = [0.0, 0.05, 0.1, 0.3, 0.35, 0.6, 0.65, 0.9];
    let (record, watcher) = watch_lock(mesh.lock.url());
    let mut agents = Vec::new();
    for (index, w) in wariness.iter().enumerate() {
        agents.push(mesh.start_agent(&mesh.spec(index, Some(*w), &old))?);
    }

    // Mid-rollout: once a host is through, and another holds a slot.
    let holding = wait_for(
        Duration::from_secs(60),
        "a host on NEW and a holder",
        async || {
            check_alive(&agents)?;
            let done = agents
                .iter()
                .filter(|a| a.booted().is_ok_and(|v| v == NEW))
                .count();
            let holders = mesh.group().await?.holders;
            Ok((done >= 1 && !holders.is_empty()).then_some(holders))
        },
    )
    .await
    .with_context(|| describe(&agents))?;
    let before: Vec<String> = agents
        .iter()
        .map(|a| a.booted().unwrap_or_default())
        .collect();
    // The etcd leader goes down with them.
    let leader = etcd.leader().await?;
    etcd.kill(leader);
    mesh.lock.restart()?;
    mesh.lock.wait_ready(READY).await?;
    mesh.policy.restart()?;
    mesh.policy.wait_ready(READY).await?;
    mesh.telemetry.restart()?;
    mesh.telemetry.wait_ready(READY).await?;
    etcd.restart(leader).await?;
    let after: Vec<String> = agents
        .iter()
        .map(|a| a.booted().unwrap_or_default())
        .collect();
    eprintln!(
        "etcd leader killed: member {leader}\nholding at the restarts: {holding:?}\nbooted before the restarts: {before:?}\nbooted after: {after:?}"
    );
    assert!(
        after.iter().any(|v| v == OLD),
        "the restarts came after the rollout: {after:?}"
    );

    wait_converged(&agents, NEW, Duration::from_secs(120)).await?;
    watcher.abort();

    // One reboot each: no host rebooted twice or skipped.
    for agent in &agents {
        assert_eq!(agent.boot_versions(), [OLD, NEW], "{}", describe(&agents));
    }
    let record = record.lock().unwrap().clone();
    eprintln!("lock record: {record:?}");
    assert!(
        record.connections >= 2,
        "the watch never saw the restart: {record:?}"
    );
    assert!(record.max_holders <= 2, "{record:?}");
    let group = mesh.group().await?;
    assert!(group.holders.is_empty(), "holder left: {group:?}");

    // The audit (kept in etcd across the restart): every host was granted a
    // slot exactly once and released it once, by itself at steady state;
    // no lease expired and nothing was force-released.
    let audit = mesh.lock_audit().await?;
    eprintln!("lock audit: max {} holders at once", audit.max_concurrent);
    assert_eq!(audit.grants.len(), agents.len(), "{audit:#?}");
    assert!(audit.grants.values().all(|&n| n == 1), "{audit:#?}");
    assert_eq!(audit.grants, audit.releases, "{audit:#?}");
    assert!(audit.max_concurrent <= 2, "{audit:#?}");

    // The restarted telemetry (on etcd) sees the whole fleet on NEW.
    wait_for(Duration::from_secs(20), "telemetry shows NEW", async || {
        let hosts = mesh.fleet().await?;
        Ok(
            (hosts.len() == agents.len() && hosts.iter().all(|h| h.booted_version == NEW))
                .then_some(()),
        )
    })
    .await?;
    Ok(())
}

/// The barrier of revision 58 (34.20210611.3.0, signing keys rotation).
const BARRIER: &str = "34.20210611.3.0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_is_passed_before_the_newest_release() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // The last rollout is complete: only the barrier stands between the
    // old hosts and NEW.
    let mesh = Mesh::start(
        &MeshOptions {
            slots: 2,
            etcd: None,
            halt: None,
        },
        |updates| {
            let releases = updates["releases"].as_array().context("releases")?;
            let barrier = releases
                .iter()
                .find(|r| r["version"] == BARRIER)
                .context("no barrier release")?;
            ensure!(barrier["metadata"]["barrier"].is_object(), "{barrier}");
            set_last_rollout(updates, rollout_started(600, 1))
        },
    )
    .await?;
    let starts = [
        "34.20210529.3.0",
        "34.20210529.3.0",
        "34.20210529.3.0",
        "34.20210427.3.0",
        "34.20210427.3.0",
    ];
    let (record, watcher) = watch_lock(mesh.lock.url());
    let mut agents = Vec::new();
    for (index, version) in starts.iter().enumerate() {
        let booted = mesh.release(version)?;
        // Wariness from the node id, as on a real host.
        agents.push(mesh.start_agent(&mesh.spec(index, None, &booted))?);
    }
    wait_converged(&agents, NEW, Duration::from_secs(90)).await?;
    watcher.abort();
    eprintln!("{}", describe(&agents));
    let record = record.lock().unwrap().clone();
    assert!(record.max_holders <= 2, "{record:?}");
    assert!(mesh.group().await?.holders.is_empty());
    for (agent, start) in agents.iter().zip(starts) {
        assert_eq!(
            agent.boot_versions(),
            [start, BARRIER, NEW],
            "{}",
            describe(&agents)
        );
        // One simulated reboot per update: two in all.
        assert_eq!(agent.exits(), [Some(100), Some(100)], "{}", agent.name());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_end_host_stays_put_and_says_why() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const REASON: &str = "https://example.org/upshift/dead-end-scenario";
    // OLD is a dead-end; the last rollout is complete.
    let mesh = Mesh::start(
        &MeshOptions {
            slots: 2,
            etcd: None,
            halt: None,
        },
        |updates| {
            let releases = updates["releases"].as_array_mut().context("releases")?;
            let old = releases
                .iter_mut()
                .find(|r| r["version"] == OLD)
                .context("no OLD in updates.json")?;
            old["metadata"]["deadend"] = serde_json::json!({ "reason": REASON });
            set_last_rollout(updates, rollout_started(600, 1))
        },
    )
    .await?;
    // A host on the dead-end release, and one on an earlier release that
    // still updates.
    let dead = mesh.start_agent(&mesh.spec(0, Some(0.5), &mesh.release(OLD)?))?;
    let earlier = "34.20210919.3.0";
    let other = mesh.start_agent(&mesh.spec(1, Some(0.5), &mesh.release(earlier)?))?;
    let agents = [dead, other];
    let [dead, other] = &agents;

    let status = wait_for(Duration::from_secs(60), "the dead-end status", async || {
        check_alive(&agents)?;
        let status = dead.status()?;
        Ok((status.state() == "dead-end").then_some(status))
    })
    .await
    .with_context(|| describe(&agents))?;
    assert!(status.get("dead-end").contains(REASON), "{status:?}");
    assert_eq!(status.get("target"), "", "{status:?}");
    let motd = dead.root().join("run/motd.d/85-upshift-deadend.motd");
    let notice =
        std::fs::read_to_string(&motd).with_context(|| format!("reading {}", motd.display()))?;
    assert!(notice.contains(REASON), "{notice}");

    // Telemetry shows the host in DEAD_END.
    let node = mesh.spec(0, None, &mesh.release(OLD)?).node_uuid;
    wait_for(Duration::from_secs(30), "telemetry DEAD_END", async || {
        let hosts = mesh.fleet().await?;
        Ok(hosts
            .iter()
            .any(|h| h.node_uuid == node && h.state == telemetry_pb::AgentState::DeadEnd as i32)
            .then_some(()))
    })
    .await?;

    // The other host updates meanwhile; the dead-end host stays put.
    wait_converged(std::slice::from_ref(other), NEW, Duration::from_secs(60)).await?;
    assert_eq!(other.boot_versions(), [earlier, NEW]);
    check_alive(&agents)?;
    assert_eq!(dead.boot_versions(), [OLD]);
    assert_eq!(dead.booted()?, OLD);
    assert_eq!(dead.staged()?, None);
    assert_eq!(dead.status()?.state(), "dead-end");
    Ok(())
}
