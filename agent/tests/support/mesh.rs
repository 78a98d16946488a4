//! Shared by the tests that run the agent against the real policy and lock
//! services in process (`services.rs`, `restart.rs`): the services on
//! loopback ports, a counting simulated backend that can hold an OS call
//! forever, and one agent run in a task.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use upshift_agent::config::MergedInputs;
use upshift_agent::driver::{Control, Exit, Ident, Runtime, run_with};
use upshift_agent::os::{OsBackend, OsError, PayloadScheme, Release, Simulated};
use upshift_agent::settings::{HintBackend, LockKind, Settings};
use upshift_agent::status::Status;
use upshift_cincinnati::graph::{Graph, Node};
use upshift_common::auth::AdminAuth;
use upshift_common::clock::{ScaledClock, SharedClock, SystemClock};
use upshift_common::config::{ServerSettings, parse_toml};
use upshift_common::telemetry::Metrics;
use upshift_policy::state::ScopeKey;
use upshift_policy::{PolicyConfig, PolicyService};
use upshift_proto::lock::v1 as lpb;
use upshift_proto::lock::v1::lock_service_client::LockServiceClient;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn node(v: &str, age: u64) -> Node {
    let mut metadata = BTreeMap::new();
    metadata.insert(
        "org.fedoraproject.coreos.releases.age_index".to_string(),
        age.to_string(),
    );
    Node {
        version: v.into(),
        payload: format!("p{v}"),
        metadata,
    }
}

pub fn graph(versions: &[&str], edges: &[(u32, u32)]) -> Graph {
    let nodes = versions
        .iter()
        .enumerate()
        .map(|(i, v)| node(v, i as u64))
        .collect();
    Graph::new(nodes, edges.to_vec()).unwrap()
}

pub fn rel(v: &str) -> Release {
    Release {
        version: v.into(),
        payload: format!("p{v}"),
    }
}

pub fn key() -> ScopeKey {
    ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    }
}

pub struct Policy {
    pub url: String,
    pub service: PolicyService,
    stop: CancellationToken,
}

impl Drop for Policy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn policy(max_age: Duration) -> Policy {
    let mut c = PolicyConfig {
        keepalive_interval: Duration::from_millis(100).min(max_age),
        max_stream_age: max_age,
        ..PolicyConfig::default()
    };
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    let srv = upshift_policy::bind(
        &c,
        upshift_policy::store::MemoryStore::shared(),
        SystemClock::shared(),
        Metrics::new("policy-test"),
        AdminAuth::new(None, Vec::new()),
    )
    .await
    .unwrap();
    let url = format!("http://{}", srv.bound.local_addr());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { srv.bound.serve(async move { s.cancelled().await }).await });
    Policy {
        url,
        service: srv.service,
        stop,
    }
}

pub struct Lock {
    pub url: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Lock {
    pub async fn client(&self) -> LockServiceClient<tonic::transport::Channel> {
        LockServiceClient::connect(self.url.clone()).await.unwrap()
    }

    pub async fn holders(&self) -> Vec<String> {
        let g = self
            .client()
            .await
            .get_group(lpb::GetGroupRequest {
                group: "default".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .group
            .unwrap();
        g.holders.into_iter().map(|h| h.id).collect()
    }

    /// Takes the one slot for `id` (waits for the grant).
    pub async fn take(&self, id: &str) {
        let mut s = self
            .client()
            .await
            .acquire(lpb::AcquireRequest {
                id: id.into(),
                group: "default".into(),
                ttl: None,
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(m) = s.message().await.unwrap() {
            if matches!(m.event, Some(lpb::acquire_response::Event::Granted(_))) {
                return;
            }
        }
        panic!("no grant for {id}");
    }

    pub async fn release(&self, id: &str) {
        self.client()
            .await
            .release(lpb::ReleaseRequest {
                id: id.into(),
                group: "default".into(),
            })
            .await
            .unwrap();
    }
}

pub async fn lock() -> Lock {
    lock_on(SystemClock::shared()).await
}

/// A lock service whose leases run on `clock`.
pub async fn lock_on(clock: SharedClock) -> Lock {
    let dir = tempfile::tempdir().unwrap();
    let store: upshift_store::SharedStore = Arc::new(
        upshift_store::embedded::EmbeddedStore::open(&dir.path().join("lock.redb")).unwrap(),
    );
    let cfg: upshift_lock::LockConfig = parse_toml("[default]\nslots = 1\n").unwrap();
    let server = ServerSettings {
        listen: ([127, 0, 0, 1], 0).into(),
        ..Default::default()
    };
    let srv = upshift_lock::bind(
        &server,
        cfg.validate().unwrap(),
        store,
        clock,
        Metrics::new("lock-test"),
        AdminAuth::new(None, vec![]),
    )
    .await
    .unwrap();
    let url = format!("http://{}", srv.bound.local_addr());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { srv.bound.serve(async move { s.cancelled().await }).await });
    Lock {
        url,
        stop,
        _dir: dir,
    }
}

/// An OS operation a test can hold forever (to stop the agent inside a state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Reading the booted release (the agent stays in `start`).
    Booted,
    Stage,
    /// The sessions gate (the agent stays in `staged`).
    Sessions,
    Finalize,
    Reboot,
}

/// The simulated backend, counting completed deploys and staging attempts,
/// with an optional hold.
#[derive(Debug, Clone)]
pub struct Counting {
    pub inner: Simulated,
    pub deploys: Arc<AtomicUsize>,
    /// Calls to `stage`, failed or not.
    pub stages: Arc<AtomicUsize>,
    pub hold: Arc<Mutex<Option<Hold>>>,
    /// Calls stopped by the hold so far.
    pub held: Arc<AtomicUsize>,
    /// The sessions check fails (logind unreachable) while set.
    pub sessions_fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Counting {
    pub fn new(dir: &std::path::Path, fail: &[&str]) -> Self {
        Self {
            inner: Simulated {
                file: dir.join("simulated-os.json"),
                fail_versions: fail.iter().map(|s| s.to_string()).collect(),
                fail_boot_versions: vec![],
                initial: rel("1"),
            },
            deploys: Arc::default(),
            stages: Arc::default(),
            hold: Arc::default(),
            held: Arc::default(),
            sessions_fail: Arc::default(),
        }
    }

    async fn gate(&self, op: Hold) {
        let held = *self.hold.lock().unwrap() == Some(op);
        if held {
            self.held.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
    }

    /// Waits until a call is stopped by the hold.
    pub async fn wait_held(&self) {
        let t0 = tokio::time::Instant::now();
        while self.held.load(Ordering::SeqCst) == 0 {
            assert!(t0.elapsed() < WAIT, "no call reached the hold");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl OsBackend for Counting {
    async fn booted(&self) -> Result<Release, OsError> {
        self.gate(Hold::Booted).await;
        self.inner.booted().await
    }
    async fn booted_scheme(&self) -> Result<PayloadScheme, OsError> {
        self.inner.booted_scheme().await
    }
    async fn staged(&self) -> Result<Option<Release>, OsError> {
        self.inner.staged().await
    }
    async fn stage(&self, target: &Release) -> Result<(), OsError> {
        self.gate(Hold::Stage).await;
        self.stages.fetch_add(1, Ordering::SeqCst);
        self.inner.stage(target).await?;
        self.deploys.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn finalize(&self) -> Result<(), OsError> {
        self.gate(Hold::Finalize).await;
        self.inner.finalize().await
    }
    async fn cleanup(&self) -> Result<(), OsError> {
        self.inner.cleanup().await
    }
    async fn reboot(&self) -> Result<(), OsError> {
        self.gate(Hold::Reboot).await;
        self.inner.reboot().await
    }
    async fn active_sessions(&self) -> Result<usize, OsError> {
        self.gate(Hold::Sessions).await;
        if self.sessions_fail.load(Ordering::SeqCst) {
            return Err(OsError::Io(std::io::Error::other("logind unreachable")));
        }
        self.inner.active_sessions().await
    }
}

pub fn settings(dir: &std::path::Path, policy: &str, lock: Option<&str>) -> Settings {
    let mut s = Settings::validate(&MergedInputs::default(), dir).unwrap();
    s.basearch = "x86_64".into();
    s.hint_backend = HintBackend::Stream;
    s.policy_url = Some(policy.into());
    // No Cincinnati URL and an hour between polls: only pushes can act.
    s.cincinnati_url = None;
    s.poll_interval = Duration::from_secs(3600);
    match lock {
        Some(u) => {
            s.lock_kind = LockKind::Grpc;
            s.lock_url = Some(u.into());
            s.lock_ttl = Duration::from_secs(30);
        }
        None => s.lock_kind = LockKind::Immediate,
    }
    s
}

pub fn ident() -> Ident {
    Ident {
        node_uuid: "agent-1".into(),
        platform: "qemu".into(),
        motd_path: None,
    }
}

/// One agent run in a task; `stop()` cancels it.
pub struct Run {
    pub status: watch::Receiver<Status>,
    pub control: Control,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<Exit>,
}

pub fn start(s: &Settings, os: &Counting, clock: SharedClock) -> Run {
    let cancel = CancellationToken::new();
    let (mut rt, control) = Runtime::new(clock, cancel.clone());
    let status = rt.status.subscribe();
    let (s, os) = (s.clone(), os.clone());
    let task = tokio::spawn(async move { run_with(&s, &ident(), &os, &mut rt).await.unwrap() });
    Run {
        status,
        control,
        cancel,
        task,
    }
}

impl Run {
    pub async fn until(&mut self, what: &str, f: impl Fn(&Status) -> bool) -> Status {
        let r = tokio::time::timeout(WAIT, self.status.wait_for(|s| f(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match r {
            Ok(Ok(s)) => s,
            _ => panic!("{what}: not reached; status {:?}", *self.status.borrow()),
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        assert_eq!(self.task.await.unwrap(), Exit::Cancelled);
    }

    pub async fn finished(self) -> Exit {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("run did not end")
            .unwrap()
    }
}

/// The persisted agent state of `s`.
pub fn persisted(s: &Settings) -> upshift_agent::persist::Persisted {
    upshift_agent::persist::load(&s.state_dir).unwrap()
}

pub fn fast_clock() -> SharedClock {
    let now = upshift_common::clock::Clock::now(&SystemClock);
    ScaledClock::shared(now, 1000.0)
}

pub fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

/// A clock the test moves by hand.
#[derive(Debug)]
pub struct ManualClock(pub Mutex<std::time::SystemTime>);

impl upshift_common::clock::Clock for ManualClock {
    fn now(&self) -> std::time::SystemTime {
        *self.0.lock().unwrap()
    }
    fn deadline_for(&self, at: std::time::SystemTime) -> tokio::time::Instant {
        let wait = at.duration_since(self.now()).unwrap_or_default();
        tokio::time::Instant::now() + wait
    }
}
