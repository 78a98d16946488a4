//! Graph follower: `WatchGraph` on the graph service, reconnecting with
//! jittered exponential backoff, publishing a new [`PolicyState`] per change
//! and keeping the last graphs while disconnected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use upshift_cincinnati::graph::{Graph, Node, PayloadScheme};
use upshift_common::server::Readiness;
use upshift_proto::graph::v1 as gpb;
use upshift_proto::graph::v1::graph_service_client::GraphServiceClient;

use crate::state::{PolicyState, ScopeKey, ScopeView};

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Errors converting a received graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The message has no scope or an unspecified scheme.
    #[error("graph message without a valid scope")]
    Scope,
    /// The graph is not a DAG or has dangling edges.
    #[error("invalid graph")]
    Invalid(#[source] upshift_cincinnati::graph::BuildError),
    /// An edge names a node that does not exist.
    #[error("edge ({0}, {1}) names a missing node")]
    Edge(u32, u32),
}

/// Converts a graph-service message into a scope key and graph.
pub fn from_proto(g: gpb::Graph) -> Result<(ScopeKey, u64, Graph), GraphError> {
    let scope = g.scope.ok_or(GraphError::Scope)?;
    let scheme = match gpb::PayloadScheme::try_from(scope.scheme) {
        Ok(gpb::PayloadScheme::Checksum) => PayloadScheme::Checksum,
        Ok(gpb::PayloadScheme::Oci) => PayloadScheme::Oci,
        _ => return Err(GraphError::Scope),
    };
    let n = g.nodes.len() as u32;
    if let Some(e) = g.edges.iter().find(|e| e.from >= n || e.to >= n) {
        return Err(GraphError::Edge(e.from, e.to));
    }
    let nodes = g
        .nodes
        .into_iter()
        .map(|r| Node {
            version: r.version,
            payload: r.payload,
            metadata: r.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        })
        .collect();
    let edges = g.edges.iter().map(|e| (e.from, e.to)).collect();
    let graph = Graph::new(nodes, edges).map_err(GraphError::Invalid)?;
    let key = ScopeKey {
        stream: scope.stream,
        basearch: scope.basearch,
        scheme,
    };
    Ok((key, g.revision, graph))
}

/// Publishes `graph` for `key` at `revision` (ignored when not newer).
pub fn publish(tx: &watch::Sender<Arc<PolicyState>>, key: ScopeKey, revision: u64, graph: Graph) {
    let cur = tx.borrow().clone();
    if cur.scopes.get(&key).is_some_and(|v| v.revision >= revision) {
        return;
    }
    let mut scopes = cur.scopes.clone();
    tracing::info!(scope = ?key, revision, nodes = graph.nodes().len(), "graph received");
    scopes.insert(key.clone(), Arc::new(ScopeView::new(key, revision, graph)));
    tx.send_replace(Arc::new(PolicyState {
        scopes,
        revision: cur.revision.max(revision),
    }));
}

/// Follows the graph service at `url` until `shutdown`.
pub async fn follow(
    url: String,
    tx: watch::Sender<Arc<PolicyState>>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = watch_once(&url, &tx, &readiness) => r,
        };
        match result {
            Ok(()) => {
                tracing::info!(%url, "graph watch ended; reconnecting");
                backoff = MIN_BACKOFF;
            }
            Err(e) => tracing::warn!(%url, error = %e, "graph watch failed; retrying"),
        }
        let jittered = backoff.mul_f64(rand::random_range(0.5..1.0));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(jittered) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn watch_once(
    url: &str,
    tx: &watch::Sender<Arc<PolicyState>>,
    readiness: &Readiness,
) -> Result<(), tonic::Status> {
    let mut client = GraphServiceClient::connect(url.to_owned())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    // Every scope from revision 0: graphs are small and a replayed revision
    // is ignored by `publish`.
    let req = gpb::WatchGraphRequest {
        scopes: Vec::new(),
        since_revision: 0,
    };
    let mut stream = client.watch_graph(req).await?.into_inner();
    while let Some(msg) = stream.message().await? {
        let Some(g) = msg.graph else { continue };
        match from_proto(g) {
            Ok((key, rev, graph)) => {
                publish(tx, key, rev, graph);
                readiness.set_ready();
            }
            Err(e) => tracing::warn!(error = %e, "ignoring graph"),
        }
    }
    Ok(())
}
