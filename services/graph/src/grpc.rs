//! `upshift.graph.v1.GraphService` over the catalog's snapshots.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use upshift_cincinnati::graph::PayloadScheme;
use upshift_common::grpc::timestamp;
use upshift_proto::graph::v1 as pb;

use crate::catalog::{LoadState, ScopeGraph, ScopeKey, Snapshot, SourceStatus};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GraphGrpc {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
}

impl GraphGrpc {
    /// Serves the snapshots of `snapshots`; watch streams end on `shutdown`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, shutdown: CancellationToken) -> Self {
        Self {
            snapshots,
            shutdown,
        }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> pb::graph_service_server::GraphServiceServer<Self> {
        pb::graph_service_server::GraphServiceServer::new(self)
    }
}

/// Converts a request scope; stream and basearch are required.
pub fn scope_key(scope: Option<&pb::Scope>) -> Result<ScopeKey, Status> {
    let scope = scope.ok_or_else(|| Status::invalid_argument("scope is required"))?;
    if scope.stream.is_empty() || scope.basearch.is_empty() {
        return Err(Status::invalid_argument(
            "scope.stream and scope.basearch are required",
        ));
    }
    let scheme = match pb::PayloadScheme::try_from(scope.scheme) {
        Ok(pb::PayloadScheme::Oci) => PayloadScheme::Oci,
        Ok(pb::PayloadScheme::Checksum | pb::PayloadScheme::Unspecified) => PayloadScheme::Checksum,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown scheme {}",
                scope.scheme
            )));
        }
    };
    Ok(ScopeKey {
        stream: scope.stream.clone(),
        basearch: scope.basearch.clone(),
        scheme,
    })
}

fn scope_proto(key: &ScopeKey) -> pb::Scope {
    pb::Scope {
        stream: key.stream.clone(),
        basearch: key.basearch.clone(),
        scheme: match key.scheme {
            PayloadScheme::Checksum => pb::PayloadScheme::Checksum,
            PayloadScheme::Oci => pb::PayloadScheme::Oci,
        } as i32,
    }
}

/// The protobuf form of a scope's graph.
pub fn graph_proto(scope: &ScopeGraph) -> pb::Graph {
    pb::Graph {
        scope: Some(scope_proto(&scope.key)),
        revision: scope.revision,
        nodes: scope
            .graph
            .nodes()
            .iter()
            .map(|node| pb::Release {
                version: node.version.clone(),
                payload: node.payload.clone(),
                metadata: node
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect(),
        edges: scope
            .graph
            .edges()
            .iter()
            .map(|&(from, to)| pb::Edge { from, to })
            .collect(),
        built_at: Some(timestamp(scope.built_at)),
        digest: scope.digest.clone(),
    }
}

/// Finds a scope's graph, or says why there is none.
pub fn lookup(snapshot: &Snapshot, key: &ScopeKey) -> Result<Arc<ScopeGraph>, Status> {
    if let Some(graph) = snapshot.scopes.get(key) {
        return Ok(graph.clone());
    }
    match snapshot.sources.get(&key.stream) {
        None => Err(Status::not_found(format!(
            "unknown stream {:?}",
            key.stream
        ))),
        Some(source) if source.state == LoadState::NeverLoaded => {
            Err(Status::unavailable(format!(
                "stream {:?} has not loaded yet{}",
                key.stream,
                source
                    .failure
                    .as_ref()
                    .map(|f| format!(": {}: {}", f.file, f.message))
                    .unwrap_or_default()
            )))
        }
        Some(_) => Err(Status::not_found(format!(
            "stream {:?} has no graph for {key}",
            key.stream
        ))),
    }
}

fn source_proto(source: &SourceStatus) -> pb::SourceStatus {
    let state = match source.state {
        LoadState::NeverLoaded => pb::SourceState::NeverLoaded,
        LoadState::Ok => pb::SourceState::Ok,
        LoadState::Rejected => pb::SourceState::Rejected,
    };
    let failure = source.failure.as_ref();
    pb::SourceStatus {
        stream: source.stream.clone(),
        location: source.location.clone(),
        state: state as i32,
        error: failure.map(|f| f.message.clone()).unwrap_or_default(),
        error_file: failure.map(|f| f.file.clone()).unwrap_or_default(),
        error_kind: failure
            .map(|f| f.kind.as_str().to_string())
            .unwrap_or_default(),
        last_attempt: source.last_attempt.map(timestamp),
        last_success: source.last_success.map(timestamp),
        warnings: source.warnings.clone(),
        architectures: source.architectures.clone(),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchGraphResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::graph_service_server::GraphService for GraphGrpc {
    async fn get_graph(
        &self,
        request: Request<pb::GetGraphRequest>,
    ) -> Result<Response<pb::GetGraphResponse>, Status> {
        let key = scope_key(request.get_ref().scope.as_ref())?;
        let snapshot = self.snapshots.borrow().clone();
        let graph = lookup(&snapshot, &key)?;
        Ok(Response::new(pb::GetGraphResponse {
            graph: Some(graph_proto(&graph)),
        }))
    }

    type WatchGraphStream = WatchStream;

    async fn watch_graph(
        &self,
        request: Request<pb::WatchGraphRequest>,
    ) -> Result<Response<Self::WatchGraphStream>, Status> {
        let request = request.into_inner();
        let filter = request
            .scopes
            .iter()
            .map(|s| scope_key(Some(s)))
            .collect::<Result<Vec<_>, _>>()?;
        let watcher = Watcher {
            snapshots: self.snapshots.clone(),
            filter,
            since: request.since_revision,
            sent: HashMap::new(),
            pending: VecDeque::new(),
            shutdown: self.shutdown.clone(),
            first: true,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            watcher,
            Watcher::next,
        ))))
    }

    async fn list_scopes(
        &self,
        _request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        let snapshot = self.snapshots.borrow().clone();
        let scopes = snapshot
            .scopes
            .values()
            .map(|g| pb::ScopeInfo {
                scope: Some(scope_proto(&g.key)),
                revision: g.revision,
                nodes: g.graph.nodes().len() as u32,
                edges: g.graph.edges().len() as u32,
                built_at: Some(timestamp(g.built_at)),
                digest: g.digest.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListScopesResponse { scopes }))
    }

    async fn get_source_status(
        &self,
        request: Request<pb::GetSourceStatusRequest>,
    ) -> Result<Response<pb::GetSourceStatusResponse>, Status> {
        let stream = &request.get_ref().stream;
        let snapshot = self.snapshots.borrow().clone();
        if !stream.is_empty() && !snapshot.has_stream(stream) {
            return Err(Status::not_found(format!("unknown stream {stream:?}")));
        }
        let sources = snapshot
            .sources
            .values()
            .filter(|s| stream.is_empty() || &s.stream == stream)
            .map(source_proto)
            .collect();
        Ok(Response::new(pb::GetSourceStatusResponse { sources }))
    }
}

/// State of one WatchGraph stream. It pulls from the snapshot channel only
/// when the client is ready for the next message, so a slow consumer gets
/// the latest graph of a scope, never a backlog.
struct Watcher {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    filter: Vec<ScopeKey>,
    since: u64,
    sent: HashMap<ScopeKey, u64>,
    pending: VecDeque<Arc<ScopeGraph>>,
    shutdown: CancellationToken,
    first: bool,
}

impl Watcher {
    async fn next(mut self) -> Option<(Result<pb::WatchGraphResponse, Status>, Self)> {
        loop {
            if let Some(graph) = self.pending.pop_front() {
                self.sent.insert(graph.key.clone(), graph.revision);
                let response = pb::WatchGraphResponse {
                    graph: Some(graph_proto(&graph)),
                };
                return Some((Ok(response), self));
            }
            if !self.first {
                tokio::select! {
                    () = self.shutdown.cancelled() => return None,
                    changed = self.snapshots.changed() => changed.ok()?,
                }
            }
            self.first = false;
            let snapshot = self.snapshots.borrow_and_update().clone();
            for (key, graph) in &snapshot.scopes {
                let wanted = self.filter.is_empty() || self.filter.contains(key);
                let seen = self.sent.get(key).copied().unwrap_or(self.since);
                if wanted && graph.revision > seen {
                    self.pending.push_back(graph.clone());
                }
            }
        }
    }
}
