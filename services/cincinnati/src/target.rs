//! Update target selection for a booted release, and per-client graph filtering.

use crate::codec::CincinnatiGraph;
use crate::graph::{AGE_INDEX, Graph};
use std::collections::BTreeSet;

const DEADEND: &str = "org.fedoraproject.coreos.updates.deadend";
const DEADEND_REASON: &str = "org.fedoraproject.coreos.updates.deadend_reason";
const BARRIER: &str = "org.fedoraproject.coreos.updates.barrier";

/// Why a target was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetReason {
    /// The newest release reachable in one edge.
    NewestReachable,
    /// The target is a barrier that must be passed through.
    Barrier,
}

/// Outcome of target selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetDecision {
    /// Update to node `index`.
    Update {
        /// Target node index.
        index: u32,
        /// Why this target.
        reason: TargetReason,
    },
    /// No newer release is reachable.
    UpToDate,
    /// Only hidden (throttled) releases are reachable; `next` is the best of them.
    Throttled {
        /// The best reachable target once throttling allows it.
        next: u32,
    },
    /// The booted release is a dead-end.
    DeadEnd {
        /// The dead-end reason.
        reason: String,
    },
    /// The booted payload is not in the graph.
    BootedUnknown,
}

/// Selects the update target of a host booted on `booted_payload`.
///
/// `visible(i)` says whether node `i` is visible to this client (rollout
/// throttling); `denied` lists versions the host refuses.
pub fn select_target(
    graph: &Graph,
    booted_payload: &str,
    visible: impl Fn(u32) -> bool,
    denied: &[String],
    allow_downgrade: bool,
) -> TargetDecision {
    let Some(booted) = graph.node_by_payload(booted_payload) else {
        return TargetDecision::BootedUnknown;
    };
    let node = &graph.nodes()[booted as usize];
    if node.metadata.get(DEADEND).map(String::as_str) == Some("true") {
        let reason = node
            .metadata
            .get(DEADEND_REASON)
            .cloned()
            .unwrap_or_default();
        return TargetDecision::DeadEnd { reason };
    }
    let booted_age = age(graph, booted);
    let candidates = graph.successors(booted).filter(|&i| {
        let n = &graph.nodes()[i as usize];
        !denied.contains(&n.version) && (allow_downgrade || age(graph, i) >= booted_age)
    });
    let (mut best_visible, mut best_hidden) = (None, None);
    for i in candidates {
        let slot = if visible(i) {
            &mut best_visible
        } else {
            &mut best_hidden
        };
        if slot.is_none_or(|b| rank(graph, i) > rank(graph, b)) {
            *slot = Some(i);
        }
    }
    match (best_visible, best_hidden) {
        (Some(index), _) => {
            let md = &graph.nodes()[index as usize].metadata;
            let reason = if md.get(BARRIER).map(String::as_str) == Some("true") {
                TargetReason::Barrier
            } else {
                TargetReason::NewestReachable
            };
            TargetDecision::Update { index, reason }
        }
        (None, Some(next)) => TargetDecision::Throttled { next },
        (None, None) => TargetDecision::UpToDate,
    }
}

fn age(graph: &Graph, i: u32) -> u64 {
    graph.nodes()[i as usize]
        .metadata
        .get(AGE_INDEX)
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::from(i))
}

fn rank(graph: &Graph, i: u32) -> (u64, &str) {
    (age(graph, i), graph.nodes()[i as usize].version.as_str())
}

/// The Cincinnati graph with edges into `hidden` nodes removed (nodes kept).
pub fn filtered_graph(graph: &Graph, hidden: &BTreeSet<u32>) -> CincinnatiGraph {
    let mut out = CincinnatiGraph::from(graph);
    out.edges
        .retain(|&[_, to]| u32::try_from(to).map_or(true, |to| !hidden.contains(&to)));
    out
}

#[cfg(test)]
mod tests;
