//! OTLP export of one host's update trace, received by an in-process OTLP
//! collector (opentelemetry-proto's tonic server). Its own test binary:
//! `init_tracing` installs a process-wide subscriber once.
//!
//! The simulated agent opens the trace (`agent.update`), asks the policy
//! service for its hint with the context in the gRPC metadata, and reports
//! to the telemetry service with the context both in the stream's metadata
//! and in `HostStatus.traceparent`; its failure report crosses the halt
//! threshold, so the telemetry service's pause call joins the trace too.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mem.rs"]
mod mem;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use harness::{Agent, Server, status};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tracing::Instrument;
use upshift_cincinnati::graph::{Graph, Node, PayloadScheme};
use upshift_common::auth::AdminAuth;
use upshift_common::clock::ScaledClock;
use upshift_common::config::LogFormat;
use upshift_common::telemetry::{Metrics, TracingOptions, init_tracing, inject_context};
use upshift_policy::PolicyConfig;
use upshift_policy::state::ScopeKey;
use upshift_policy::store::UpshiftStore;
use upshift_proto::policy::v1 as ppb;
use upshift_proto::policy::v1::policy_service_client::PolicyServiceClient;
use upshift_proto::telemetry::v1::AgentState;

const TOKEN: &str = "policy-admin-token-0123";

/// Spans received, with the `service.name` of their resource.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_collector() -> (String, Collector) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), collector)
}

fn graph() -> Graph {
    let u = "org.fedoraproject.coreos.updates";
    let node = |v: &str, age: u64, rollout: bool| {
        let mut metadata = BTreeMap::new();
        metadata.insert(
            "org.fedoraproject.coreos.releases.age_index".to_string(),
            age.to_string(),
        );
        if rollout {
            for (k, v) in [
                ("rollout", "true"),
                ("start_epoch", "1000"),
                ("start_value", "0"),
                ("duration_minutes", "100"),
            ] {
                metadata.insert(format!("{u}.{k}"), v.to_string());
            }
        }
        Node {
            version: v.into(),
            payload: format!("p{v}"),
            metadata,
        }
    };
    Graph::new(
        vec![node("1.0", 0, false), node("2.0", 1, true)],
        vec![(0, 1)],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_update_is_one_trace_across_agent_policy_and_telemetry() {
    let (endpoint, collector) = start_collector().await;
    let guard = init_tracing(&TracingOptions {
        log_format: LogFormat::Text,
        otlp_endpoint: Some(endpoint),
        service_name: "upshift-test".into(),
    })
    .unwrap();
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(4000), 1.0);
    let store = harness::mem_store();

    let mut config = PolicyConfig::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let policy = upshift_policy::bind(
        &config,
        UpshiftStore::shared(store.clone()),
        clock.clone(),
        Metrics::new("policy"),
        AdminAuth::new(Some(TOKEN.into()), Vec::new()),
    )
    .await
    .unwrap();
    let key = ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    };
    policy.service.publish(key, 1, graph());
    let policy_url = format!("http://{}", policy.bound.local_addr());
    tokio::spawn(policy.bound.serve(std::future::pending()));
    let cfg = format!(
        "[policy]\nurl = \"{policy_url}\"\nadmin_token = \"{TOKEN}\"\n[halt.default]\nmax_failures = 0\n"
    );
    let telemetry = Server::start(&cfg, store, clock).await;

    let root = tracing::info_span!("agent.update", node_uuid = "a1");
    async {
        // The hint, as the agent asks for it.
        let span = tracing::info_span!("agent.get_update_hint");
        let hint = async {
            let mut req = tonic::Request::new(ppb::GetUpdateHintRequest {
                identity: Some(ppb::NodeIdentity {
                    node_uuid: "a1".into(),
                    stream: "stable".into(),
                    basearch: "x86_64".into(),
                    booted_payload: "p1.0".into(),
                    rollout_wariness: Some(0.1),
                    ..Default::default()
                }),
            });
            inject_context(req.metadata_mut());
            PolicyServiceClient::connect(policy_url.clone())
                .await
                .unwrap()
                .get_update_hint(req)
                .await
                .unwrap()
        }
        .instrument(span)
        .await;
        assert!(hint.into_inner().hint.unwrap().decision.is_some());

        // The reports of the update: staging, then a failure that halts the rollout.
        let mut md = tonic::metadata::MetadataMap::new();
        inject_context(&mut md);
        let traceparent = md.get("traceparent").unwrap().to_str().unwrap().to_string();
        let mut client = telemetry.client().await;
        let mut agent = Agent::connect_with(&mut client, md).await;
        let mut st = status("a1", "default", "1.0", "2.0", AgentState::Staging, "");
        st.traceparent = traceparent.clone();
        agent.report(st).await.unwrap();
        let mut st = status(
            "a1",
            "default",
            "1.0",
            "2.0",
            AgentState::UpdateAvailable,
            "staging-failed",
        );
        st.traceparent = traceparent;
        agent.report(st).await.unwrap();
    }
    .instrument(root.clone())
    .await;
    // Wait for the halt's pause call to be accepted (its span then ends).
    for _ in 0..200 {
        if telemetry
            .service
            .halts()
            .iter()
            .any(|h| h.paused_at_ms.is_some())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        telemetry
            .service
            .halts()
            .iter()
            .any(|h| h.paused_at_ms.is_some())
    );
    telemetry.stop().await;
    drop(root);
    // Flushes the batch exporter.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let spans = collector.spans.lock().unwrap().clone();
    let by_name = |name: &str| -> Vec<Span> {
        spans
            .iter()
            .filter(|(_, s)| s.name == name)
            .map(|(_, s)| s.clone())
            .collect()
    };
    let one = |name: &str| -> Span {
        let found = by_name(name);
        assert_eq!(
            found.len(),
            1,
            "{name}: {:?}",
            spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
        );
        found.into_iter().next().unwrap()
    };
    let root = one("agent.update");
    assert!(
        root.parent_span_id.is_empty(),
        "the agent's update is the root"
    );
    assert!(spans.iter().all(|(svc, _)| svc.contains("upshift-test")));
    let hint = one("agent.get_update_hint");
    let stream = one("telemetry.report_stream");
    let reports = by_name("telemetry.report");
    assert_eq!(reports.len(), 2);
    let pause = one("telemetry.pause_rollout");
    for s in [&hint, &stream, &pause].into_iter().chain(reports.iter()) {
        assert_eq!(
            s.trace_id, root.trace_id,
            "{} is in the update's trace",
            s.name
        );
    }
    assert_eq!(hint.parent_span_id, root.span_id);
    // The policy service's server span joins through the gRPC metadata.
    assert!(
        spans.iter().any(|(_, s)| s.name == "grpc.server"
            && s.trace_id == root.trace_id
            && s.parent_span_id == hint.span_id),
        "the policy's GetUpdateHint server span is a child of the agent's call"
    );
    assert_eq!(
        stream.parent_span_id, root.span_id,
        "the stream joins via gRPC metadata"
    );
    for r in &reports {
        assert_eq!(
            r.parent_span_id, root.span_id,
            "reports join via HostStatus.traceparent"
        );
    }
    assert!(
        reports.iter().any(|r| r.span_id == pause.parent_span_id),
        "the pause is a child of the report that crossed the threshold"
    );
}
