use super::*;
use crate::graph::Node;
use std::collections::BTreeMap;

/// Node `i` with age_index `age` and extra metadata.
fn node(i: usize, age: u32, extra: &[(&str, &str)]) -> Node {
    let mut metadata = BTreeMap::from([(AGE_INDEX.to_owned(), age.to_string())]);
    for (k, v) in extra {
        metadata.insert(
            format!("org.fedoraproject.coreos.updates.{k}"),
            (*v).to_owned(),
        );
    }
    Node {
        version: format!("v{i}"),
        payload: format!("p{i}"),
        metadata,
    }
}

/// 0 -> {1 (barrier), 3}; 1 -> 3; 3 is a rollout; 4 dead-end; 2 -> 0 (a downgrade edge).
fn graph() -> Graph {
    let nodes = vec![
        node(0, 0, &[]),
        node(1, 1, &[("barrier", "true")]),
        node(2, 2, &[]),
        node(3, 3, &[("rollout", "true")]),
        node(4, 4, &[("deadend", "true"), ("deadend_reason", "broken")]),
    ];
    Graph::new(nodes, vec![(0, 1), (0, 3), (1, 3), (2, 0)]).unwrap()
}

fn all(_: u32) -> bool {
    true
}

#[test]
fn newest_reachable_wins() {
    let d = select_target(&graph(), "p0", all, &[], false);
    assert_eq!(
        d,
        TargetDecision::Update {
            index: 3,
            reason: TargetReason::NewestReachable
        }
    );
}

#[test]
fn barrier_target_when_newest_hidden() {
    let d = select_target(&graph(), "p0", |i| i != 3, &[], false);
    assert_eq!(
        d,
        TargetDecision::Update {
            index: 1,
            reason: TargetReason::Barrier
        }
    );
}

#[test]
fn deny_list_skips_versions() {
    let d = select_target(&graph(), "p0", all, &["v3".to_owned()], false);
    assert_eq!(
        d,
        TargetDecision::Update {
            index: 1,
            reason: TargetReason::Barrier
        }
    );
}

#[test]
fn throttled_when_only_hidden_successors() {
    let d = select_target(&graph(), "p1", |i| i != 3, &[], false);
    assert_eq!(d, TargetDecision::Throttled { next: 3 });
}

#[test]
fn downgrade_only_when_allowed() {
    assert_eq!(
        select_target(&graph(), "p2", all, &[], false),
        TargetDecision::UpToDate
    );
    assert_eq!(
        select_target(&graph(), "p2", all, &[], true),
        TargetDecision::Update {
            index: 0,
            reason: TargetReason::NewestReachable
        }
    );
}

#[test]
fn dead_end_and_unknown() {
    assert_eq!(
        select_target(&graph(), "p4", all, &[], false),
        TargetDecision::DeadEnd {
            reason: "broken".to_owned()
        }
    );
    assert_eq!(
        select_target(&graph(), "nope", all, &[], false),
        TargetDecision::BootedUnknown
    );
    assert_eq!(
        select_target(&graph(), "p3", all, &[], false),
        TargetDecision::UpToDate
    );
}

#[test]
fn filtered_graph_drops_edges_into_hidden() {
    let g = filtered_graph(&graph(), &BTreeSet::from([3]));
    assert_eq!(g.nodes.len(), 5);
    assert_eq!(g.edges, vec![[0, 1], [2, 0]]);
}
