//! Automatic halt against the real policy service (started in process with
//! `upshift_policy::bind`): a staged failure pattern halts the rollout
//! exactly once, the policy then pauses it and stops offering the release,
//! a restart does not fire again, and an operator's resume lifts the halt.
//! On the in-memory store, the embedded store and a real etcd.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mem.rs"]
mod mem;
#[path = "support/stores.rs"]
mod stores;

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use harness::{Agent, Server, parse, status, sum};
use tokio_util::sync::CancellationToken;
use upshift_cincinnati::graph::{Graph, Node, PayloadScheme};
use upshift_common::auth::AdminAuth;
use upshift_common::clock::{ScaledClock, SharedClock};
use upshift_common::telemetry::Metrics;
use upshift_policy::PolicyConfig;
use upshift_policy::state::ScopeKey;
use upshift_policy::store::UpshiftStore;
use upshift_proto::policy::v1 as ppb;
use upshift_proto::policy::v1::policy_service_client::PolicyServiceClient;
use upshift_proto::policy::v1::rollout_admin_service_client::RolloutAdminServiceClient;
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::AgentState;
use upshift_store::SharedStore;

const TOKEN: &str = "policy-admin-token-0123";
const U: &str = "org.fedoraproject.coreos.updates";

fn node(v: &str, age: u64, md: &[(&str, &str)]) -> Node {
    let mut metadata: BTreeMap<String, String> = md
        .iter()
        .map(|(k, v)| (format!("{U}.{k}"), v.to_string()))
        .collect();
    metadata.insert(
        "org.fedoraproject.coreos.releases.age_index".into(),
        age.to_string(),
    );
    Node {
        version: v.into(),
        payload: format!("p{v}"),
        metadata,
    }
}

/// 1.0 -> 2.0, a rollout from t=1000 over 100 minutes.
fn rollout_graph() -> Graph {
    let rollout = [
        ("rollout", "true"),
        ("start_epoch", "1000"),
        ("start_value", "0"),
        ("duration_minutes", "100"),
    ];
    Graph::new(
        vec![node("1.0", 0, &[]), node("2.0", 1, &rollout)],
        vec![(0, 1)],
    )
    .unwrap()
}

struct Policy {
    url: String,
    stop: CancellationToken,
}

async fn start_policy(store: SharedStore, clock: SharedClock) -> Policy {
    let mut config = PolicyConfig::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let admin = AdminAuth::new(Some(TOKEN.into()), Vec::new());
    let srv = upshift_policy::bind(
        &config,
        UpshiftStore::shared(store),
        clock,
        Metrics::new("policy"),
        admin,
    )
    .await
    .unwrap();
    let key = ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    };
    srv.service.publish(key, 1, rollout_graph());
    let url = format!("http://{}", srv.bound.local_addr());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { srv.bound.serve(async move { s.cancelled().await }).await });
    Policy { url, stop }
}

fn telemetry_config(policy: &str) -> String {
    format!(
        r#"
        [policy]
        url = "{policy}"
        admin_token = "{TOKEN}"
        check_interval = "100ms"
        [halt.default]
        max_failure_ratio = 0.25
        min_attempts = 10
        "#
    )
}

/// What the policy tells a node on 1.0 that would otherwise get 2.0 now.
async fn hint(policy: &str) -> ppb::update_hint::Decision {
    let identity = ppb::NodeIdentity {
        node_uuid: "0123456789abcdef0123456789abcdef".into(),
        group: "default".into(),
        rollout_wariness: Some(0.1),
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: upshift_proto::graph::v1::PayloadScheme::Checksum as i32,
        booted_payload: "p1.0".into(),
        ..Default::default()
    };
    PolicyServiceClient::connect(policy.to_string())
        .await
        .unwrap()
        .get_update_hint(ppb::GetUpdateHintRequest {
            identity: Some(identity),
        })
        .await
        .unwrap()
        .into_inner()
        .hint
        .unwrap()
        .decision
        .unwrap()
}

async fn rollout(policy: &str) -> ppb::Rollout {
    let mut req = tonic::Request::new(ppb::ListRolloutsRequest {
        stream: "stable".into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let list = RolloutAdminServiceClient::connect(policy.to_string())
        .await
        .unwrap()
        .list_rollouts(req)
        .await
        .unwrap()
        .into_inner();
    list.rollouts
        .into_iter()
        .find(|r| r.version == "2.0")
        .unwrap()
}

async fn graph_edges(policy: &str) -> usize {
    let url = format!(
        "{policy}/v1/graph?basearch=x86_64&stream=stable&node_uuid=0123456789abcdef0123456789abcdef&rollout_wariness=0.1"
    );
    let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    body["edges"].as_array().unwrap().len()
}

/// Polls `f` every 50 ms for up to 15 s.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 15s");
}

async fn halts_stored(store: &SharedStore) -> usize {
    store.list("telemetry/halts/").await.unwrap().0.len()
}

/// The one stored halt record.
async fn halt_record(store: &SharedStore) -> upshift_telemetry::record::HaltRecord {
    let (kvs, _) = store.list("telemetry/halts/").await.unwrap();
    assert_eq!(kvs.len(), 1);
    upshift_telemetry::record::HaltRecord::decode(&kvs[0].value).unwrap()
}

/// Audit records of the halt's pause (a halt withdraws the release: `PauseMode::Withdraw`).
async fn pause_audits(store: &SharedStore) -> usize {
    let (kvs, _) = store.list("policy/audit/").await.unwrap();
    kvs.iter()
        .filter(|kv| String::from_utf8_lossy(&kv.value).contains("\"action\":\"withdraw\""))
        .count()
}

async fn staged_failures_halt_once(open: stores::Opener) {
    // Half way through the rollout (throttle 0.5): wariness 0.1 is offered 2.0.
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(1000 + 3000), 1.0);
    let store = open();
    let policy = start_policy(store.clone(), clock.clone()).await;
    let cfg = telemetry_config(&policy.url);
    let t = Server::start(&cfg, open(), clock.clone()).await;
    assert!(
        matches!(hint(&policy.url).await, ppb::update_hint::Decision::Target(ref x) if x.version == "2.0")
    );
    assert_eq!(graph_edges(&policy.url).await, 1);

    let mut client = t.client().await;
    let mut agents = Vec::new();
    for i in 0..10 {
        let mut a = Agent::connect(&mut client).await;
        a.report(status(
            &format!("h{i}"),
            "default",
            "1.0",
            "2.0",
            AgentState::Staging,
            "",
        ))
        .await
        .unwrap();
        agents.push(a);
    }
    // Two failures of ten (20%) stay under the 25% threshold.
    for (i, a) in agents.iter_mut().enumerate().take(2) {
        a.report(status(
            &format!("h{i}"),
            "default",
            "1.0",
            "2.0",
            AgentState::UpdateAvailable,
            "staging-failed",
        ))
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(halts_stored(&store).await, 0);
    assert!(!rollout(&policy.url).await.paused);

    // The third crosses it: 30%.
    agents[2]
        .report(status(
            "h2",
            "default",
            "1.0",
            "2.0",
            AgentState::UpdateAvailable,
            "finalize-failed",
        ))
        .await
        .unwrap();
    eventually("the policy pausing 2.0", || async {
        rollout(&policy.url).await.paused
    })
    .await;
    let r = rollout(&policy.url).await;
    assert!(
        r.pause_reason.contains("3 of 10 hosts"),
        "{}",
        r.pause_reason
    );
    assert!(matches!(
        hint(&policy.url).await,
        ppb::update_hint::Decision::NoUpdate(ref n) if n.reason() == ppb::NoUpdateReason::Paused
    ));
    assert_eq!(graph_edges(&policy.url).await, 0);

    // More failures do not halt again.
    for (i, a) in agents.iter_mut().enumerate().skip(3).take(3) {
        a.report(status(
            &format!("h{i}"),
            "default",
            "1.0",
            "2.0",
            AgentState::UpdateAvailable,
            "staging-failed",
        ))
        .await
        .unwrap();
    }
    eventually("the halt gauge", || async {
        let m = parse(&t.scrape().await);
        sum(
            &m,
            "upshift_telemetry_halts",
            &[("stream", "stable"), ("version", "2.0")],
        ) == 1.0
            && sum(
                &m,
                "upshift_telemetry_pause_calls_total",
                &[("result", "ok")],
            ) == 1.0
            && t.service.halts().iter().all(|h| h.paused_at_ms.is_some())
    })
    .await;
    assert_eq!(halts_stored(&store).await, 1);
    assert_eq!(pause_audits(&store).await, 1);
    let summary = t.summary(pb::HostFilter::default()).await;
    assert_eq!(summary.halts.len(), 1);
    assert!(
        summary.halts[0]
            .reason
            .contains("failure ratio above 25.0%"),
        "{}",
        summary.halts[0].reason
    );
    drop(agents);
    drop(client);
    t.stop().await;

    // A restart (new process state, same store) does not fire again.
    let t = Server::start(&cfg, open(), clock.clone()).await;
    let mut client = t.client().await;
    let mut a = Agent::connect(&mut client).await;
    a.report(status(
        "h9",
        "default",
        "1.0",
        "2.0",
        AgentState::UpdateAvailable,
        "staging-failed",
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = parse(&t.scrape().await);
    assert_eq!(sum(&m, "upshift_telemetry_pause_calls_total", &[]), 0.0);
    assert_eq!(
        sum(&m, "upshift_telemetry_halts", &[("version", "2.0")]),
        1.0
    );
    assert_eq!(halts_stored(&store).await, 1);

    // The operator resumes in the policy service: the halt is lifted, for good.
    let mut req = tonic::Request::new(ppb::ResumeRolloutRequest {
        stream: "stable".into(),
        version: "2.0".into(),
        reason: "fixed the finalize bug".into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    RolloutAdminServiceClient::connect(policy.url.clone())
        .await
        .unwrap()
        .resume_rollout(req)
        .await
        .unwrap();
    eventually("the halt lifted", || async {
        t.summary(pb::HostFilter::default()).await.halts.is_empty()
    })
    .await;
    let m = parse(&t.scrape().await);
    assert_eq!(
        sum(&m, "upshift_telemetry_halts", &[("version", "2.0")]),
        0.0
    );
    a.report(status(
        "h9",
        "default",
        "1.0",
        "2.0",
        AgentState::Staging,
        "",
    ))
    .await
    .unwrap();
    a.report(status(
        "h9",
        "default",
        "1.0",
        "2.0",
        AgentState::UpdateAvailable,
        "staging-failed",
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rollout(&policy.url).await.paused);
    assert_eq!(halts_stored(&store).await, 1);
    t.stop().await;
    policy.stop.cancel();
}
stores::on_each_store!(staged_failures_halt_once_on, staged_failures_halt_once);

/// A policy restart and a lock outage while 20 hosts are staged on 2.0: every
/// host reports `hints-unavailable`, then `gate-check-failed`. Nothing halts;
/// the errors are on `/metrics` by kind, not as update failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_while_staged_do_not_halt() {
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(1000 + 3000), 1.0);
    let store = harness::mem_store();
    let policy = start_policy(store.clone(), clock.clone()).await;
    let t = Server::start(&telemetry_config(&policy.url), store.clone(), clock).await;
    let mut client = t.client().await;
    let mut agents = Vec::new();
    for i in 0..20 {
        let mut a = Agent::connect(&mut client).await;
        let st = status(
            &format!("h{i}"),
            "default",
            "1.0",
            "2.0",
            AgentState::Staged,
            "",
        );
        a.report(st).await.unwrap();
        agents.push(a);
    }
    for (state, kind) in [
        (AgentState::Staged, "hints-unavailable"),
        (AgentState::WaitingForGates, "gate-check-failed"),
    ] {
        for (i, a) in agents.iter_mut().enumerate() {
            let st = status(&format!("h{i}"), "default", "1.0", "2.0", state, kind);
            a.report(st).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(halts_stored(&store).await, 0);
    assert!(!rollout(&policy.url).await.paused);
    let m = parse(&t.scrape().await);
    let errors = "upshift_telemetry_agent_errors_total";
    assert_eq!(
        sum(&m, errors, &[("error_kind", "hints-unavailable")]),
        20.0
    );
    assert_eq!(
        sum(&m, errors, &[("error_kind", "gate-check-failed")]),
        20.0
    );
    assert_eq!(sum(&m, "upshift_telemetry_update_failures_total", &[]), 0.0);
    assert_eq!(sum(&m, "upshift_telemetry_halts", &[]), 0.0);
    t.stop().await;
    policy.stop.cancel();
}

/// `[halt.streams.stable] enabled = false`: half of the attempts failing
/// (twice the default rule's ratio) halts nothing; the failures still count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_halts_disabled_is_never_halted() {
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(1000 + 3000), 1.0);
    let store = harness::mem_store();
    let policy = start_policy(store.clone(), clock.clone()).await;
    let cfg = format!(
        "{}\n[halt.streams.stable]\nenabled = false\n",
        telemetry_config(&policy.url)
    );
    let t = Server::start(&cfg, store.clone(), clock).await;
    let mut client = t.client().await;
    for i in 0..10 {
        let mut a = Agent::connect(&mut client).await;
        let id = format!("h{i}");
        a.report(status(
            &id,
            "default",
            "1.0",
            "2.0",
            AgentState::Staging,
            "",
        ))
        .await
        .unwrap();
        if i % 2 == 0 {
            let st = status(
                &id,
                "default",
                "1.0",
                "2.0",
                AgentState::UpdateAvailable,
                "staging-failed",
            );
            a.report(st).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(halts_stored(&store).await, 0);
    assert!(!rollout(&policy.url).await.paused);
    let m = parse(&t.scrape().await);
    assert_eq!(
        sum(
            &m,
            "upshift_telemetry_update_failures_total",
            &[("target_version", "2.0")]
        ),
        5.0
    );
    assert_eq!(sum(&m, "upshift_telemetry_pause_calls_total", &[]), 0.0);
    assert!(t.summary(pb::HostFilter::default()).await.halts.is_empty());
    t.stop().await;
    policy.stop.cancel();
}

/// While the policy service is down the pause is retried until it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_is_retried_until_the_policy_answers() {
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(4000), 1.0);
    let store = harness::mem_store();
    // Reserve a port for the policy service, then start it later on that port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let cfg = format!(
        "{}\n[halt.streams.stable]\nmax_failures = 0\n",
        telemetry_config(&url)
    );
    let t = Server::start(&cfg, store.clone(), clock.clone()).await;
    let mut client = t.client().await;
    let mut a = Agent::connect(&mut client).await;
    a.report(status(
        "x1",
        "default",
        "1.0",
        "2.0",
        AgentState::UpdateAvailable,
        "staging-failed",
    ))
    .await
    .unwrap();
    eventually("a failed pause call", || async {
        sum(
            &parse(&t.scrape().await),
            "upshift_telemetry_pause_calls_total",
            &[("result", "error")],
        ) >= 1.0
    })
    .await;
    assert_eq!(halts_stored(&store).await, 1);
    // The record says why the pause is not in force yet.
    eventually("the pause error on the halt record", || async {
        halt_record(&store)
            .await
            .last_error
            .is_some_and(|e| e.starts_with("Unavailable"))
    })
    .await;
    assert_eq!(halt_record(&store).await.paused_at_ms, None);

    let mut config = PolicyConfig::default();
    config.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let srv = upshift_policy::bind(
        &config,
        UpshiftStore::shared(store.clone()),
        clock,
        Metrics::new("policy"),
        AdminAuth::new(Some(TOKEN.into()), Vec::new()),
    )
    .await
    .unwrap();
    srv.service.publish(
        ScopeKey {
            stream: "stable".into(),
            basearch: "x86_64".into(),
            scheme: PayloadScheme::Checksum,
        },
        1,
        rollout_graph(),
    );
    tokio::spawn(srv.bound.serve(std::future::pending()));
    eventually("the pause after retries", || async {
        rollout(&url).await.paused
    })
    .await;
    eventually("the accepted pause on the halt record", || async {
        halt_record(&store).await.paused_at_ms.is_some()
    })
    .await;
    assert_eq!(halt_record(&store).await.last_error, None);
    t.stop().await;
}

/// Two replicas on one store, the failures split between them: one halt
/// record, one pause, and both replicas show it.
async fn replicas_halt_once(open: stores::Opener) {
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(4000), 1.0);
    let store = open();
    let policy = start_policy(store.clone(), clock.clone()).await;
    let cfg = telemetry_config(&policy.url);
    let a = Server::start(&cfg, open(), clock.clone()).await;
    let b = Server::start(&cfg, open(), clock.clone()).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut agents = Vec::new();
    for i in 0..20 {
        let client = if i % 2 == 0 { &mut ca } else { &mut cb };
        let mut agent = Agent::connect(client).await;
        let id = format!("r{i}");
        agent
            .report(status(
                &id,
                "default",
                "1.0",
                "2.0",
                AgentState::Staging,
                "",
            ))
            .await
            .unwrap();
        agents.push((id, agent));
    }
    // Failures arrive on both replicas at once: 8 of 20 (40%).
    let mut tasks = Vec::new();
    for (id, mut agent) in agents.into_iter().take(8) {
        tasks.push(tokio::spawn(async move {
            let st = status(
                &id,
                "default",
                "1.0",
                "2.0",
                AgentState::UpdateAvailable,
                "staging-failed",
            );
            agent.report(st).await.unwrap();
            agent
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.unwrap());
    }
    eventually("the policy pausing 2.0", || async {
        rollout(&policy.url).await.paused
    })
    .await;
    eventually("both replicas showing the halt", || async {
        a.summary(pb::HostFilter::default()).await.halts.len() == 1
            && b.summary(pb::HostFilter::default()).await.halts.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(halts_stored(&store).await, 1);
    assert_eq!(pause_audits(&store).await, 1);
    let calls = |text: String| {
        sum(
            &parse(&text),
            "upshift_telemetry_pause_calls_total",
            &[("result", "ok")],
        )
    };
    assert_eq!(calls(a.scrape().await) + calls(b.scrape().await), 1.0);
    drop(kept);
    a.stop().await;
    b.stop().await;
    policy.stop.cancel();
}
stores::on_each_store!(replicas_halt_once_on, replicas_halt_once);

/// A halt recorded by an instance that died before the policy accepted it
/// is paused by the next instance to start on the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_halt_is_paused_after_a_crash() {
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(4000), 1.0);
    let store = harness::mem_store();
    let record = serde_json::json!({
        "stream": "stable",
        "version": "2.0",
        "reason": "automatic halt by upshift-telemetry: recorded before a crash",
        "at_ms": 4_000_000u64,
    });
    let txn = upshift_store::Txn::new().then(upshift_store::Op::put(
        "telemetry/halts/stable/2.0",
        record.to_string().into_bytes(),
    ));
    store.txn(txn).await.unwrap();
    let policy = start_policy(store.clone(), clock.clone()).await;
    assert!(!rollout(&policy.url).await.paused);
    let t = Server::start(&telemetry_config(&policy.url), store.clone(), clock).await;
    eventually("the pause after the restart", || async {
        rollout(&policy.url).await.paused
    })
    .await;
    assert!(
        rollout(&policy.url)
            .await
            .pause_reason
            .contains("recorded before a crash")
    );
    eventually("the record marked accepted", || async {
        t.service.halts().iter().all(|h| h.paused_at_ms.is_some())
    })
    .await;
    t.stop().await;
    policy.stop.cancel();
}
