//! `upshift serve <service> --otlp-endpoint URL` as real processes (graph,
//! policy, lock, telemetry): each
//! exports its spans over OTLP to an in-process receiver
//! (opentelemetry-proto's tonic server), under its own `service.name`, and
//! a gRPC call carrying a W3C `traceparent` gets a server span in the
//! caller's trace, parented on the caller's span. The spans of a graceful
//! stop (SIGTERM) are flushed before the process exits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use upshift_integration::{ServiceProcess, Workdir, stable_metadata};
use upshift_proto::graph::v1 as gpb;
use upshift_proto::graph::v1::graph_service_client::GraphServiceClient;
use upshift_proto::lock::v1 as lpb;
use upshift_proto::lock::v1::lock_service_client::LockServiceClient;
use upshift_proto::policy::v1 as ppb;
use upshift_proto::policy::v1::policy_service_client::PolicyServiceClient;
use upshift_proto::telemetry::v1 as tpb;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

/// Spans received, with their resource's `service.name`.
#[derive(Debug, Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                spans.push((service.clone(), span));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_receiver() -> Result<(String, Receiver)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let receiver = Receiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Ok((url, receiver))
}

fn traced<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT}-01").parse().unwrap(),
    );
    req
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Starts `upshift serve <service> <extra>` exporting to `otlp`, ready.
async fn start(dir: &Workdir, service: &str, otlp: &str, extra: &[&str]) -> Result<ServiceProcess> {
    let data = dir.path().join(format!("{service}-data"));
    let mut args = vec![
        "serve",
        service,
        "--data-dir",
        data.to_str().unwrap(),
        "--otlp-endpoint",
        otlp,
    ];
    args.extend_from_slice(extra);
    let process = ServiceProcess::start(service, dir.path(), &args)?;
    process.wait_ready(Duration::from_secs(20)).await?;
    Ok(process)
}

/// Stops a service with SIGTERM; a graceful stop exits 0.
fn stop(mut process: ServiceProcess) -> Result<()> {
    let code = tokio::task::block_in_place(|| process.terminate(Duration::from_secs(20)))?;
    anyhow::ensure!(code == Some(0), "exit {code:?}:\n{}", process.log_tail());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exports_its_server_spans_in_the_callers_trace() -> Result<()> {
    let (otlp, receiver) = start_receiver().await?;
    let dir = Workdir::new()?;
    let metadata = dir.path().join("metadata");
    stable_metadata(&metadata, 58)?;

    let graph = start(
        &dir,
        "graph",
        &otlp,
        &["--metadata", metadata.to_str().unwrap()],
    )
    .await?;
    GraphServiceClient::connect(graph.url())
        .await?
        .get_graph(traced(gpb::GetGraphRequest {
            scope: Some(gpb::Scope {
                stream: "stable".into(),
                basearch: "x86_64".into(),
                scheme: gpb::PayloadScheme::Checksum as i32,
            }),
        }))
        .await?;
    let policy = start(&dir, "policy", &otlp, &["--graph", &graph.url()]).await?;
    let hint = PolicyServiceClient::connect(policy.url())
        .await?
        .get_update_hint(traced(ppb::GetUpdateHintRequest {
            identity: Some(ppb::NodeIdentity {
                node_uuid: "n1".into(),
                stream: "stable".into(),
                basearch: "x86_64".into(),
                ..Default::default()
            }),
        }))
        .await?;
    assert!(hint.into_inner().hint.is_some());
    stop(policy)?;
    stop(graph)?;

    let lock = start(&dir, "lock", &otlp, &[]).await?;
    // Found or not, the call is traced; only a transport failure fails here.
    if let Err(status) = LockServiceClient::connect(lock.url())
        .await?
        .get_group(traced(lpb::GetGroupRequest {
            group: "default".into(),
        }))
        .await
    {
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    }
    stop(lock)?;

    let telemetry = start(&dir, "telemetry", &otlp, &[]).await?;
    TelemetryServiceClient::connect(telemetry.url())
        .await?
        .get_fleet_summary(traced(tpb::GetFleetSummaryRequest::default()))
        .await?;
    stop(telemetry)?;

    let spans = receiver.0.lock().unwrap().clone();
    for (service, rpc) in [
        ("upshift-graph", "/upshift.graph.v1.GraphService/GetGraph"),
        (
            "upshift-policy",
            "/upshift.policy.v1.PolicyService/GetUpdateHint",
        ),
        ("upshift-lock", "/upshift.lock.v1.LockService/GetGroup"),
        (
            "upshift-telemetry",
            "/upshift.telemetry.v1.TelemetryService/GetFleetSummary",
        ),
    ] {
        let found: Vec<&Span> = spans
            .iter()
            .filter(|(svc, s)| {
                svc == service
                    && s.name == "grpc.server"
                    && s.attributes.iter().any(|kv| {
                        kv.key == "rpc"
                            && matches!(
                                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                                Some(Value::StringValue(v)) if v == rpc
                            )
                    })
            })
            .map(|(_, s)| s)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{service}: one grpc.server span for {rpc}; received: {:?}",
            spans
                .iter()
                .map(|(svc, s)| (svc.as_str(), s.name.as_str()))
                .collect::<Vec<_>>()
        );
        assert_eq!(hex(&found[0].trace_id), TRACE_ID, "{service}");
        assert_eq!(hex(&found[0].parent_span_id), PARENT, "{service}");
    }
    Ok(())
}
