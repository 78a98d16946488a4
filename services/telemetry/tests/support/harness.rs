//! Starts the telemetry service on a loopback port, simulated agents, and a
//! Prometheus text parser for the tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use upshift_common::clock::SharedClock;
use upshift_common::config::{ServerSettings, parse_toml};
use upshift_common::telemetry::Metrics;
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::AgentState;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;
use upshift_store::SharedStore;
use upshift_telemetry::{TelemetryConfig, TelemetryService};

pub type Client = TelemetryServiceClient<tonic::transport::Channel>;

pub struct Server {
    pub addr: SocketAddr,
    pub service: TelemetryService,
    pub metrics: Metrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(toml: &str, store: SharedStore, clock: SharedClock) -> Server {
        let cfg: TelemetryConfig = parse_toml(toml).unwrap();
        let settings = cfg.validate().unwrap();
        let server = ServerSettings {
            listen: ([127, 0, 0, 1], 0).into(),
            ..Default::default()
        };
        let metrics = Metrics::new("upshift-telemetry");
        let started = upshift_telemetry::bind(&server, settings, store, clock, metrics.clone())
            .await
            .unwrap();
        let addr = started.bound.local_addr();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            started
                .bound
                .serve(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        Server {
            addr,
            service: started.service,
            metrics,
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A client on its own connection.
    pub async fn client(&self) -> Client {
        TelemetryServiceClient::connect(self.url("")).await.unwrap()
    }

    pub async fn scrape(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn summary(&self, filter: pb::HostFilter) -> pb::FleetSummary {
        self.client()
            .await
            .get_fleet_summary(pb::GetFleetSummaryRequest {
                filter: Some(filter),
            })
            .await
            .unwrap()
            .into_inner()
            .summary
            .unwrap()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

pub fn mem_store() -> SharedStore {
    Arc::new(super::mem::MemStore::new())
}

/// A status report.
pub fn status(
    id: &str,
    group: &str,
    booted: &str,
    target: &str,
    state: AgentState,
    error_kind: &str,
) -> pb::HostStatus {
    pb::HostStatus {
        node_uuid: id.into(),
        group: group.into(),
        stream: "stable".into(),
        basearch: "x86_64".into(),
        booted_version: booted.into(),
        target_version: target.into(),
        state: state as i32,
        last_error_kind: error_kind.into(),
        last_error: if error_kind.is_empty() {
            String::new()
        } else {
            format!("{error_kind}: simulated")
        },
        agent_version: "0.1.0".into(),
        ..Default::default()
    }
}

/// One simulated agent: a Report stream and its sequence.
pub struct Agent {
    tx: mpsc::Sender<pb::ReportRequest>,
    acks: tonic::Streaming<pb::ReportResponse>,
    sequence: u64,
}

impl Agent {
    pub async fn connect(client: &mut Client) -> Agent {
        Self::connect_with(client, tonic::metadata::MetadataMap::new()).await
    }

    /// Opens the stream with extra request metadata (e.g. a traceparent).
    pub async fn connect_with(
        client: &mut Client,
        metadata: tonic::metadata::MetadataMap,
    ) -> Agent {
        let (tx, rx) = mpsc::channel(8);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        *req.metadata_mut() = metadata;
        let acks = client.report(req).await.unwrap().into_inner();
        Agent {
            tx,
            acks,
            sequence: 0,
        }
    }

    /// Sends a report and waits for its acknowledgement.
    pub async fn report(&mut self, status: pb::HostStatus) -> Result<u64, tonic::Status> {
        self.sequence += 1;
        self.tx
            .send(pb::ReportRequest {
                sequence: self.sequence,
                status: Some(status),
            })
            .await
            .map_err(|_| tonic::Status::unavailable("stream closed"))?;
        let ack = tokio::time::timeout(Duration::from_secs(30), self.acks.message())
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no ack within 30s"))??
            .ok_or_else(|| tonic::Status::unavailable("stream ended"))?;
        assert_eq!(ack.acknowledged, self.sequence);
        Ok(ack.acknowledged)
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a text exposition (no escapes in our label values).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").expect("label");
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("sample value"),
            }
        })
        .collect()
}

/// Sum of the samples of `name` whose labels include `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}
