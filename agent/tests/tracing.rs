//! One host update is one trace: the agent (in process, simulated OS) with
//! its OTLP export to an in-process receiver, against the real policy,
//! lock and telemetry services in process, through a whole update with a
//! simulated reboot; one host takes the reboot lock over gRPC, one over
//! FleetLock HTTP. Its own test binary: the agent's subscriber is
//! process-wide.

#[path = "support/otlp.rs"]
mod otlp;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio_util::sync::CancellationToken;
use upshift_agent::config::MergedInputs;
use upshift_agent::driver::{Exit, Ident, Runtime, run_with};
use upshift_agent::os::{OsBackend, Release, Simulated};
use upshift_agent::settings::{HintBackend, LockKind, Settings};
use upshift_cincinnati::graph::{Graph, Node, PayloadScheme};
use upshift_common::auth::AdminAuth;
use upshift_common::clock::SystemClock;
use upshift_common::config::{ServerSettings, parse_toml};
use upshift_common::telemetry::Metrics;
use upshift_policy::PolicyConfig;
use upshift_policy::state::ScopeKey;
use upshift_proto::telemetry::v1 as tpb;

const WAIT: Duration = Duration::from_secs(30);

fn graph() -> Graph {
    let node = |v: &str, age: u64| Node {
        version: v.into(),
        payload: format!("p{v}"),
        metadata: [(
            "org.fedoraproject.coreos.releases.age_index".to_string(),
            age.to_string(),
        )]
        .into(),
    };
    Graph::new(vec![node("1", 0), node("2", 1)], vec![(0, 1)]).unwrap()
}

fn embedded(dir: &tempfile::TempDir, name: &str) -> upshift_store::SharedStore {
    Arc::new(upshift_store::embedded::EmbeddedStore::open(&dir.path().join(name)).unwrap())
}

fn loopback() -> ServerSettings {
    ServerSettings {
        listen: ([127, 0, 0, 1], 0).into(),
        ..Default::default()
    }
}

/// The policy (publishing 1 -> 2), lock (one slot) and telemetry services
/// on loopback ports until `stop`; their URLs and the telemetry service.
async fn services(
    dir: &tempfile::TempDir,
    stop: &CancellationToken,
) -> ([String; 3], upshift_telemetry::TelemetryService) {
    let mut pc = PolicyConfig::default();
    pc.server.listen = "127.0.0.1:0".parse().unwrap();
    let policy = upshift_policy::bind(
        &pc,
        upshift_policy::store::MemoryStore::shared(),
        SystemClock::shared(),
        Metrics::new("policy-test"),
        AdminAuth::new(None, Vec::new()),
    )
    .await
    .unwrap();
    let key = ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    };
    policy.service.publish(key, 1, graph());
    let lc: upshift_lock::LockConfig = parse_toml("[default]\nslots = 1\n").unwrap();
    let lock = upshift_lock::bind(
        &loopback(),
        lc.validate().unwrap(),
        embedded(dir, "lock.redb"),
        SystemClock::shared(),
        Metrics::new("lock-test"),
        AdminAuth::new(None, vec![]),
    )
    .await
    .unwrap();
    let tc: upshift_telemetry::TelemetryConfig = parse_toml("").unwrap();
    let telemetry = upshift_telemetry::bind(
        &loopback(),
        tc.validate().unwrap(),
        embedded(dir, "telemetry.redb"),
        SystemClock::shared(),
        Metrics::new("telemetry-test"),
    )
    .await
    .unwrap();
    let urls = [
        format!("http://{}", policy.bound.local_addr()),
        format!("http://{}", lock.bound.local_addr()),
        format!("http://{}", telemetry.bound.local_addr()),
    ];
    let (s1, s2, s3) = (stop.clone(), stop.clone(), stop.clone());
    tokio::spawn(async move { policy.bound.serve(s1.cancelled_owned()).await });
    tokio::spawn(async move { lock.bound.serve(s2.cancelled_owned()).await });
    tokio::spawn(async move { telemetry.bound.serve(s3.cancelled_owned()).await });
    (urls, telemetry.service)
}

fn settings(
    dir: &std::path::Path,
    [policy, lock, telemetry]: &[String; 3],
    lock_kind: LockKind,
) -> Settings {
    let mut s = Settings::validate(&MergedInputs::default(), dir).unwrap();
    s.basearch = "x86_64".into();
    s.hint_backend = HintBackend::Stream;
    s.policy_url = Some(policy.clone());
    s.cincinnati_url = None;
    s.poll_interval = Duration::from_secs(3600);
    s.lock_kind = lock_kind;
    s.lock_url = Some(lock.clone());
    s.lock_ttl = Duration::from_secs(30);
    s.telemetry_url = Some(telemetry.clone());
    s
}

fn ident(node_uuid: &str) -> Ident {
    Ident {
        node_uuid: node_uuid.into(),
        platform: "qemu".into(),
        motd_path: None,
    }
}

/// One agent "process": a fresh runtime, the run loop and the telemetry
/// reporter, as `upshift-agent run` has them.
struct Process {
    status: tokio::sync::watch::Receiver<upshift_agent::status::Status>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Exit>,
}

fn start(s: &Settings, node: &str, os: &Simulated) -> Process {
    let cancel = CancellationToken::new();
    let (mut rt, control) = Runtime::new(SystemClock::shared(), cancel.clone());
    let status = rt.status.subscribe();
    upshift_agent::telemetry::spawn(
        s,
        &ident(node),
        status.clone(),
        SystemClock::shared(),
        Box::new(|| 0.5),
        cancel.clone(),
    );
    let (s, os, id) = (s.clone(), os.clone(), ident(node));
    let task = tokio::spawn(async move {
        let _control = control;
        run_with(&s, &id, &os, &mut rt).await.unwrap()
    });
    Process {
        status,
        cancel,
        task,
    }
}

/// Waits until the telemetry service holds a report of `node` in `state`.
async fn reported(
    telemetry: &upshift_telemetry::TelemetryService,
    node: &str,
    state: tpb::AgentState,
) {
    tokio::time::timeout(WAIT, async {
        loop {
            let (hosts, _) = telemetry.page(&tpb::HostFilter::default(), "", 10);
            let mut seen = hosts.iter().filter_map(|h| h.status.as_ref());
            if seen.any(|s| s.node_uuid == node && s.state == state as i32) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {state:?} report"));
}

/// The spans received, by name, with lookups by id.
struct Spans {
    all: Vec<Span>,
    by_id: HashMap<Vec<u8>, Span>,
}

impl Spans {
    fn new(received: Vec<(String, Span)>) -> Self {
        assert!(
            received.iter().all(|(svc, _)| svc == "upshift-agent"),
            "the agent's exporter names the service"
        );
        let all: Vec<Span> = received.into_iter().map(|(_, s)| s).collect();
        let by_id = all.iter().map(|s| (s.span_id.clone(), s.clone())).collect();
        Spans { all, by_id }
    }

    fn named(&self, name: &str) -> Vec<&Span> {
        self.all.iter().filter(|s| s.name == name).collect()
    }

    /// The one `update` span of `node`.
    fn update(&self, node: &str) -> &Span {
        let found: Vec<_> = self
            .named("update")
            .into_iter()
            .filter(|s| otlp::attr(s, "node_uuid").as_deref() == Some(node))
            .collect();
        assert_eq!(found.len(), 1, "update of {node}: {:?}", self.names());
        found[0]
    }

    fn names(&self) -> BTreeMap<&str, usize> {
        let mut n = BTreeMap::new();
        for s in &self.all {
            *n.entry(s.name.as_str()).or_default() += 1;
        }
        n
    }

    /// The one child of `parent` called `name`.
    fn child(&self, parent: &Span, name: &str) -> &Span {
        let found: Vec<_> = self
            .named(name)
            .into_iter()
            .filter(|s| s.parent_span_id == parent.span_id)
            .collect();
        assert_eq!(found.len(), 1, "one {name} under {}", parent.name);
        assert_eq!(found[0].trace_id, parent.trace_id);
        found[0]
    }

    /// The server span of the gRPC method `rpc` that is a child of `client`.
    fn server(&self, client: &Span, rpc: &str) -> &Span {
        self.server_span(client, "grpc.server", "rpc", rpc)
    }

    /// The server span of the HTTP `route` that is a child of `client`.
    fn http_server(&self, client: &Span, route: &str) -> &Span {
        self.server_span(client, "http.server", "route", route)
    }

    fn server_span(&self, client: &Span, name: &str, key: &str, value: &str) -> &Span {
        let found: Vec<_> = self
            .named(name)
            .into_iter()
            .filter(|s| s.parent_span_id == client.span_id)
            .collect();
        assert_eq!(found.len(), 1, "one {name} under {}", client.name);
        let server = found[0];
        assert_eq!(otlp::attr(server, key).as_deref(), Some(value));
        assert_eq!(server.trace_id, client.trace_id);
        assert_eq!(server.kind, SpanKind::Server as i32);
        assert_eq!(client.kind, SpanKind::Client as i32, "{}", client.name);
        server
    }
}

const GRPC_HOST: &str = "4d4a86c9c6644a479560ded5d19a30c5";
const FLEETLOCK_HOST: &str = "2e074e9b299c41a59923c51ae16f279b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_update_is_one_trace_from_hint_to_steady_state() {
    let (endpoint, receiver) = otlp::Receiver::start().await;
    let guard = upshift_agent::trace::init(Some(&endpoint)).unwrap();
    assert!(guard.exporting());
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (urls, telemetry) = services(&dir, &stop).await;
    // One after the other: the lock has one slot.
    let mut persisted = Vec::new();
    for (node, kind) in [
        (GRPC_HOST, LockKind::Grpc),
        (FLEETLOCK_HOST, LockKind::Fleetlock),
    ] {
        let host = dir.path().join(node);
        let s = settings(&host, &urls, kind);
        persisted.push(update(&s, node, &telemetry).await);
    }
    stop.cancel();
    // Flushes the batch exporter.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let spans = Spans::new(receiver.spans());
    for (node, traceparent) in [GRPC_HOST, FLEETLOCK_HOST].into_iter().zip(&persisted) {
        let update = spans.update(node);
        check_structure(&spans, update, traceparent);
        if node == GRPC_HOST {
            let acquire = spans.child(spans.child(update, "gates"), "lock.acquire");
            spans.server(acquire, "/upshift.lock.v1.LockService/Acquire");
            let release = spans.child(spans.child(update, "steady"), "lock.release");
            spans.server(release, "/upshift.lock.v1.LockService/Release");
        } else {
            let pre = spans.child(spans.child(update, "gates"), "lock.fleetlock");
            assert_eq!(otlp::attr(pre, "op").as_deref(), Some("pre-reboot"));
            spans.http_server(pre, "/v1/pre-reboot");
            let steady = spans.child(spans.child(update, "steady"), "lock.fleetlock");
            assert_eq!(otlp::attr(steady, "op").as_deref(), Some("steady-state"));
            spans.http_server(steady, "/v1/steady-state");
        }
    }
}

/// One host's update 1 -> 2 with its reboot; the `traceparent` persisted
/// across the reboot.
async fn update(
    s: &Settings,
    node: &str,
    telemetry: &upshift_telemetry::TelemetryService,
) -> String {
    let os = Simulated {
        file: s.state_dir.join("simulated-os.json"),
        fail_versions: vec![],
        fail_boot_versions: vec![],
        initial: Release {
            version: "1".into(),
            payload: "p1".into(),
        },
    };
    // The hint 1 -> 2 arrives on the stream; the agent stages, takes the
    // lock, finalizes and reboots.
    let first = start(s, node, &os);
    let exit = tokio::time::timeout(WAIT, first.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, Exit::Rebooted);
    reported(telemetry, node, tpb::AgentState::Rebooting).await;
    first.cancel.cancel();
    let persisted = upshift_agent::persist::load(&s.state_dir).unwrap();
    let traceparent = persisted
        .traceparent
        .clone()
        .expect("persisted traceparent");

    // The restarted agent boots 2, reports steady state and frees the slot.
    let mut second = start(s, node, &os);
    tokio::time::timeout(
        WAIT,
        second
            .status
            .wait_for(|s| s.state == "idle" && s.hint_stream_connected),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(os.booted().await.unwrap().version, "2");
    assert_eq!(
        second.status.borrow().traceparent,
        None,
        "the update is over"
    );
    let after = upshift_agent::persist::load(&s.state_dir).unwrap();
    assert_eq!(after.traceparent, None);
    assert!(!after.lock_held);
    second.cancel.cancel();
    assert_eq!(second.task.await.unwrap(), Exit::Cancelled);
    traceparent
}

/// The update's spans form one tree under the `update` root, across the
/// restart, with the services' server spans under the agent's calls (the
/// lock's are checked by the caller).
fn check_structure(spans: &Spans, update: &Span, persisted: &str) {
    assert!(update.parent_span_id.is_empty(), "the update is a root");
    assert_eq!(otlp::attr(update, "from_version").as_deref(), Some("1"));
    assert_eq!(otlp::attr(update, "to_version").as_deref(), Some("2"));
    assert_eq!(otlp::attr(update, "group").as_deref(), Some("default"));
    assert_eq!(
        persisted,
        format!("00-{}-{}-01", hex(&update.trace_id), hex(&update.span_id)),
        "the persisted traceparent names the update span"
    );

    // Before the reboot, then after the restart in the same trace.
    for step in ["staging", "gates", "finalize", "reboot", "steady"] {
        spans.child(update, step);
    }

    // The policy: the update links to the stream connect that brought the
    // hint (its own trace, opened before the update)...
    let watch = "/upshift.policy.v1.PolicyService/WatchUpdateHints";
    assert_eq!(update.links.len(), 1, "{:?}", update.links);
    let hint_call = &spans.by_id[&update.links[0].span_id];
    assert_eq!(hint_call.name, "policy.watch_update_hints");
    assert!(hint_call.parent_span_id.is_empty());
    assert_ne!(hint_call.trace_id, update.trace_id);
    spans.server(hint_call, watch);
    // ...and the stream's connect after the reboot (the new booted
    // version) is part of the update.
    let reconnect = spans.child(update, "policy.watch_update_hints");
    spans.server(reconnect, watch);

    // Telemetry: reports made during the update join it.
    let in_update = spans
        .named("telemetry.report")
        .into_iter()
        .filter(|r| r.parent_span_id == update.span_id)
        .count();
    assert!(in_update >= 1, "{:?}", spans.names());

    // One tree: every span of the trace hangs off the root.
    let trace: Vec<&Span> = spans
        .all
        .iter()
        .filter(|s| s.trace_id == update.trace_id)
        .collect();
    for s in &trace {
        if s.span_id != update.span_id {
            let parent = spans.by_id.get(&s.parent_span_id);
            assert!(
                parent.is_some_and(|p| p.trace_id == update.trace_id),
                "{} hangs off the update",
                s.name
            );
        }
    }
    let names: BTreeSet<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    for n in [
        "update",
        "staging",
        "gates",
        "finalize",
        "reboot",
        "steady",
        "policy.watch_update_hints",
        "grpc.server",
        "telemetry.report",
    ] {
        assert!(names.contains(n), "{n} missing from {names:?}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
