//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use upshift_cincinnati::graph::{Graph, Node, PayloadScheme};
use upshift_common::auth::AdminAuth;
use upshift_common::clock::SharedClock;
use upshift_common::telemetry::Metrics;
use upshift_policy::hub::HintStream;
use upshift_policy::state::ScopeKey;
use upshift_policy::store::SharedKv;
use upshift_policy::{PolicyConfig, PolicyService};
use upshift_proto::policy::v1 as pb;
use upshift_proto::policy::v1::watch_update_hints_response::Event;

pub const U: &str = "org.fedoraproject.coreos.updates";
pub const TOKEN: &str = "s3cret";

pub fn at(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs)
}

pub fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

pub fn node(v: &str, age: u64, md: &[(&str, &str)]) -> Node {
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

/// 1.0 -> 2.0, a rollout from t=1000 over 100 minutes (until 7000).
pub fn rollout_graph() -> Graph {
    let nodes = vec![
        node("1.0", 0, &[]),
        node(
            "2.0",
            1,
            &[
                ("rollout", "true"),
                ("start_epoch", "1000"),
                ("start_value", "0"),
                ("duration_minutes", "100"),
            ],
        ),
    ];
    Graph::new(nodes, vec![(0, 1)]).unwrap()
}

/// `rollout_graph` plus 3.0, reachable from 2.0 without throttling.
pub fn grown_graph() -> Graph {
    let mut nodes = rollout_graph().nodes().to_vec();
    nodes.push(node(
        "3.0",
        2,
        &[("barrier", "true"), ("barrier_reason", "x")],
    ));
    Graph::new(nodes, vec![(0, 1), (1, 2)]).unwrap()
}

pub fn key() -> ScopeKey {
    ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    }
}

pub fn identity(payload: &str, w: Option<f64>, uuid: &str) -> pb::NodeIdentity {
    pb::NodeIdentity {
        node_uuid: uuid.into(),
        group: "default".into(),
        rollout_wariness: w,
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: upshift_proto::graph::v1::PayloadScheme::Checksum as i32,
        booted_payload: payload.into(),
        ..Default::default()
    }
}

pub fn config(keepalive: Duration, max_age: Duration) -> PolicyConfig {
    let mut c = PolicyConfig {
        keepalive_interval: keepalive,
        max_stream_age: max_age,
        ..PolicyConfig::default()
    };
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c
}

pub fn start(
    c: &PolicyConfig,
    store: SharedKv,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> PolicyService {
    let admin = AdminAuth::new(Some(TOKEN.into()), Vec::new());
    PolicyService::start(
        c,
        store,
        clock,
        &Metrics::new("policy-test"),
        admin,
        shutdown,
    )
}

/// The next non-keepalive event.
pub async fn next_event(s: &mut HintStream) -> Option<(Event, String)> {
    loop {
        let msg = s.next().await?.unwrap();
        match msg.event.unwrap() {
            Event::Keepalive(_) => continue,
            e => return Some((e, msg.resume_token)),
        }
    }
}

pub fn hint(e: Event) -> pb::UpdateHint {
    match e {
        Event::Hint(h) => h,
        other => panic!("expected a hint, got {other:?}"),
    }
}

pub fn target_of(h: &pb::UpdateHint) -> Option<&str> {
    match h.decision.as_ref().unwrap() {
        pb::update_hint::Decision::Target(t) => Some(&t.version),
        pb::update_hint::Decision::NoUpdate(_) => None,
    }
}

pub fn no_update(h: &pb::UpdateHint) -> pb::NoUpdateReason {
    match h.decision.as_ref().unwrap() {
        pb::update_hint::Decision::NoUpdate(n) => n.reason(),
        pb::update_hint::Decision::Target(t) => panic!("target {}", t.version),
    }
}
