//! The graph service (the role of Cincinnati's graph-builder): reads each
//! stream's release index and update metadata from a directory or URLs,
//! builds one immutable graph per scope (stream x basearch x scheme), and
//! serves it over gRPC (`upshift.graph.v1.GraphService`) and as Cincinnati
//! JSON on `GET /v1/graph`.

pub mod catalog;
pub mod config;
pub mod grpc;
pub mod http;
mod metrics;
pub mod persist;
pub mod source;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::Meter;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use upshift_common::clock::SharedClock;
use upshift_common::server::Readiness;

use crate::catalog::{Applied, Catalog, LoadState, Snapshot};
use crate::config::ValidStream;
use crate::metrics::GraphMetrics;
use crate::source::SourceEvent;

/// gRPC service names this service implements (advertised by reflection).
pub const GRPC_SERVICES: &[&str] = &["upshift.graph.v1.GraphService"];

/// A running graph service: source tasks feeding the catalog task.
#[derive(Debug)]
pub struct GraphService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
}

impl GraphService {
    /// Starts the source and catalog tasks. Revisions persist under
    /// `data_dir` when given. Tasks stop on `shutdown`.
    pub fn start(
        streams: Vec<ValidStream>,
        debounce: Duration,
        data_dir: Option<&Path>,
        clock: SharedClock,
        meter: &Meter,
        readiness: Readiness,
        shutdown: CancellationToken,
    ) -> Self {
        let state_file = data_dir.map(|dir| dir.join("graph-state.json"));
        let catalog = Catalog::new(
            streams.iter().map(|s| {
                (
                    s.name.clone(),
                    s.location.to_string(),
                    s.architectures.clone(),
                )
            }),
            state_file,
        );
        let snapshots = catalog.subscribe();
        let metrics = GraphMetrics::new(meter, snapshots.clone());
        let (tx, rx) = mpsc::channel(streams.len().max(1) * 2);
        for stream in streams {
            source::spawn(stream, debounce, tx.clone(), shutdown.clone());
        }
        drop(tx);
        tokio::spawn(run_catalog(catalog, rx, clock, metrics, readiness));
        Self {
            snapshots,
            shutdown,
        }
    }

    /// Receiver of catalog snapshots.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// The gRPC service.
    pub fn grpc(
        &self,
    ) -> upshift_proto::graph::v1::graph_service_server::GraphServiceServer<grpc::GraphGrpc> {
        grpc::GraphGrpc::new(self.snapshots.clone(), self.shutdown.clone()).into_server()
    }

    /// The HTTP routes (`/v1/graph`).
    pub fn http(&self) -> axum::Router {
        http::router(self.snapshots.clone())
    }
}

async fn run_catalog(
    mut catalog: Catalog,
    mut events: mpsc::Receiver<SourceEvent>,
    clock: SharedClock,
    metrics: GraphMetrics,
    readiness: Readiness,
) {
    readiness.set_not_ready("no stream has loaded yet");
    while let Some(event) = events.recv().await {
        let stream = event.stream.clone();
        match catalog.apply(event, clock.now()) {
            Applied::Changed(revision, scopes) => {
                let scopes: Vec<String> = scopes.iter().map(ToString::to_string).collect();
                tracing::info!(%stream, revision, scopes = %scopes.join(","), "graph updated");
                metrics.loaded(&stream, true);
            }
            Applied::Unchanged => {
                tracing::debug!(%stream, "metadata reloaded, graphs unchanged");
                metrics.loaded(&stream, false);
            }
            Applied::Rejected(failure) => {
                tracing::warn!(
                    %stream, file = %failure.file, kind = failure.kind.as_str(), reason = %failure.message,
                    "metadata rejected; last good graph keeps serving"
                );
                metrics.load_failed(&stream, &failure);
            }
        }
        match not_ready_because(&catalog.snapshot()) {
            None => readiness.set_ready(),
            Some(why) => readiness.set_not_ready(why),
        }
    }
}

/// Why the service is not ready: a stream not tried yet, or no stream loaded
/// at all. A stream whose every attempt failed does not hold back the others
/// (it answers `unavailable` with its reason): one broken source must not
/// take every stream off a load balancer.
fn not_ready_because(snapshot: &Snapshot) -> Option<String> {
    let sources = || snapshot.sources.values();
    let untried: Vec<&str> = sources()
        .filter(|s| s.last_attempt.is_none())
        .map(|s| s.stream.as_str())
        .collect();
    if !untried.is_empty() {
        return Some(format!("waiting for streams: {}", untried.join(", ")));
    }
    if sources().all(|s| s.state == LoadState::NeverLoaded) {
        let failing: Vec<&str> = sources().map(|s| s.stream.as_str()).collect();
        return Some(format!("no stream has loaded: {}", failing.join(", ")));
    }
    None
}
