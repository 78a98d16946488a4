//! Graph service metrics: per-scope gauges read from the current snapshot at
//! scrape time, and a load-error counter.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};
use tokio::sync::watch;
use upshift_common::clock::epoch_secs;

use crate::catalog::{ScopeGraph, Snapshot};
use crate::source::LoadFailure;

/// Instruments the catalog task updates.
#[derive(Debug, Clone)]
pub struct GraphMetrics {
    load_errors: Counter<u64>,
    loads: Counter<u64>,
}

fn scope_labels(graph: &ScopeGraph) -> [KeyValue; 3] {
    [
        KeyValue::new("stream", graph.key.stream.clone()),
        KeyValue::new("basearch", graph.key.basearch.clone()),
        KeyValue::new(
            "scheme",
            if graph.key.scheme == upshift_cincinnati::graph::PayloadScheme::Oci {
                "oci"
            } else {
                "checksum"
            },
        ),
    ]
}

impl GraphMetrics {
    /// Registers the instruments; gauges observe `snapshots` at scrape time.
    pub fn new(meter: &Meter, snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        let per_scope =
            |name: &'static str, description: &'static str, value: fn(&ScopeGraph) -> u64| {
                let snapshots = snapshots.clone();
                meter
                    .u64_observable_gauge(name)
                    .with_description(description)
                    .with_callback(move |observer| {
                        let snapshot = snapshots.borrow().clone();
                        for graph in snapshot.scopes.values() {
                            observer.observe(value(graph), &scope_labels(graph));
                        }
                    })
                    .build()
            };
        per_scope(
            "upshift_graph_nodes",
            "Nodes in the scope's current graph.",
            |g| g.graph.nodes().len() as u64,
        );
        per_scope(
            "upshift_graph_edges",
            "Edges in the scope's current graph.",
            |g| g.graph.edges().len() as u64,
        );
        per_scope(
            "upshift_graph_revision",
            "Revision of the scope's current graph.",
            |g| g.revision,
        );
        let last_success = snapshots.clone();
        meter
            .f64_observable_gauge("upshift_graph_last_success_timestamp_seconds")
            .with_description("Unix time of the stream's last accepted load.")
            .with_callback(move |observer| {
                let snapshot = last_success.borrow().clone();
                for source in snapshot.sources.values() {
                    if let Some(at) = source.last_success {
                        observer.observe(
                            epoch_secs(at),
                            &[KeyValue::new("stream", source.stream.clone())],
                        );
                    }
                }
            })
            .build();
        let rejected = snapshots;
        meter
            .u64_observable_gauge("upshift_graph_source_rejected")
            .with_description("1 when the stream's last load attempt was rejected.")
            .with_callback(move |observer| {
                let snapshot = rejected.borrow().clone();
                for source in snapshot.sources.values() {
                    let value = u64::from(source.failure.is_some());
                    observer.observe(value, &[KeyValue::new("stream", source.stream.clone())]);
                }
            })
            .build();
        Self {
            load_errors: meter
                .u64_counter("upshift_graph_load_errors")
                .with_description("Rejected metadata loads by stream and error kind.")
                .build(),
            loads: meter
                .u64_counter("upshift_graph_loads")
                .with_description("Accepted metadata loads by stream and outcome.")
                .build(),
        }
    }

    /// Counts a rejected load.
    pub fn load_failed(&self, stream: &str, failure: &LoadFailure) {
        self.load_errors.add(
            1,
            &[
                KeyValue::new("stream", stream.to_string()),
                KeyValue::new("kind", failure.kind.as_str()),
            ],
        );
    }

    /// Counts an accepted load.
    pub fn loaded(&self, stream: &str, changed: bool) {
        let outcome = if changed { "changed" } else { "unchanged" };
        self.loads.add(
            1,
            &[
                KeyValue::new("stream", stream.to_string()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }
}
