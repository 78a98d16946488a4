//! The pure per-node decision: no I/O, time passed in.

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use upshift_cincinnati::rollout::{RolloutSpec, wariness_from_node_uuid};
use upshift_cincinnati::target::{TargetDecision, TargetReason, select_target};
use upshift_common::clock::from_epoch_secs;
use upshift_common::grpc::timestamp;
use upshift_proto::policy::v1 as pb;

use crate::overrides::Overrides;
use crate::state::{HiddenMask, ScopeView};

#[cfg(test)]
mod tests;

/// The node's wariness: its explicit value clamped to [0, 1], else derived
/// from `node_uuid`. A non-finite explicit value falls back to the derived one
/// (the RPC layer rejects it before it gets here).
pub fn wariness(explicit: Option<f64>, node_uuid: &str) -> f64 {
    match explicit {
        Some(w) if w.is_finite() => w.clamp(0.0, 1.0),
        _ => wariness_from_node_uuid(node_uuid),
    }
}

/// The throttle of a rollout node now, with overrides applied.
pub fn throttle(
    view: &ScopeView,
    spec: &RolloutSpec,
    version: &str,
    o: &Overrides,
    now: SystemTime,
) -> f64 {
    spec.throttle_at(o.effective_now(&view.key.stream, version, now))
}

/// The rollout nodes hidden from a client of `wariness` at `now`: paused
/// rollouts, and rollouts whose throttle is below the wariness.
pub fn hidden_mask(view: &ScopeView, wariness: f64, o: &Overrides, now: SystemTime) -> HiddenMask {
    let mut mask = 0;
    for (p, r) in view.rollouts.iter().enumerate().take(128) {
        let paused = o.pause(&view.key.stream, &r.version).is_some();
        if paused || wariness > throttle(view, &r.spec, &r.version, o, now) {
            mask |= 1 << p;
        }
    }
    mask
}

/// Real instant a node of `wariness` starts to see rollout node `i`, when
/// the throttle is running (not paused) and will open.
fn opens_at(view: &ScopeView, i: u32, wariness: f64, o: &Overrides) -> Option<SystemTime> {
    let r = view.rollout(i)?;
    if o.pause(&view.key.stream, &r.version).is_some() {
        return None;
    }
    let at = r.spec.eligible_at(wariness)? + o.offset(&view.key.stream, &r.version);
    // One microsecond past the float instant so the throttle is open there.
    Some(from_epoch_secs(at) + Duration::from_micros(1))
}

/// Decides for one node. Returns the hint and the instant its answer can
/// next change from the passage of time alone.
pub fn decide(
    id: &pb::NodeIdentity,
    view: Option<&ScopeView>,
    o: &Overrides,
    now: SystemTime,
) -> (pb::UpdateHint, Option<SystemTime>) {
    let w = wariness(id.rollout_wariness, &id.node_uuid);
    let (decision, revision, next) = match view {
        None => (
            no_update(
                pb::NoUpdateReason::StreamUnknown,
                "no graph for this stream, basearch and scheme".into(),
                None,
            ),
            0,
            None,
        ),
        Some(view) => {
            let (d, next) = decide_in(id, w, view, o, now);
            (d, view.revision, next)
        }
    };
    let hint = pb::UpdateHint {
        graph_revision: revision,
        decision: Some(decision),
        wariness: w,
        decided_at: Some(timestamp(now)),
    };
    (hint, next)
}

fn decide_in(
    id: &pb::NodeIdentity,
    w: f64,
    view: &ScopeView,
    o: &Overrides,
    now: SystemTime,
) -> (pb::update_hint::Decision, Option<SystemTime>) {
    if let Some(f) = o.freezes.get(&view.key.stream) {
        return (
            no_update(pb::NoUpdateReason::Frozen, f.reason.clone(), None),
            None,
        );
    }
    let stream = &view.key.stream;
    let paused = |i: u32| {
        view.rollout(i)
            .is_some_and(|r| o.pause(stream, &r.version).is_some())
    };
    let throttled = |i: u32| {
        view.rollout(i)
            .is_some_and(|r| w > throttle(view, &r.spec, &r.version, o, now))
    };
    let graph = &view.graph;
    let select = |visible: &dyn Fn(u32) -> bool| {
        select_target(
            graph,
            &id.booted_payload,
            visible,
            &id.denied_versions,
            id.allow_downgrade,
        )
    };
    let decision = select(&|i| !paused(i) && !throttled(i));
    let Some(&booted) = view.by_payload.get(&id.booted_payload) else {
        return (
            no_update(
                pb::NoUpdateReason::BootedUnknown,
                format!("payload {:?} is not in the graph", id.booted_payload),
                None,
            ),
            None,
        );
    };
    let next = graph
        .successors(booted)
        .filter(|&s| throttled(s))
        .filter_map(|s| opens_at(view, s, w, o))
        .min();
    let d = match decision {
        TargetDecision::Update { index, reason } => target(view, index, reason),
        TargetDecision::DeadEnd { reason } => {
            return (no_update(pb::NoUpdateReason::DeadEnd, reason, None), None);
        }
        TargetDecision::BootedUnknown => unreachable_booted(),
        TargetDecision::UpToDate | TargetDecision::Throttled { .. } => {
            match select(&|i| !throttled(i)) {
                TargetDecision::Update { index, .. } if paused(index) => {
                    let r = view
                        .rollout(index)
                        .and_then(|r| o.pause(stream, &r.version));
                    no_update(
                        pb::NoUpdateReason::Paused,
                        r.map(|m| m.reason.clone()).unwrap_or_default(),
                        None,
                    )
                }
                _ if matches!(decision, TargetDecision::Throttled { .. }) => match next {
                    Some(at) => no_update(pb::NoUpdateReason::Throttled, String::new(), Some(at)),
                    None => no_update(
                        pb::NoUpdateReason::Paused,
                        "the successor's rollout is paused".into(),
                        None,
                    ),
                },
                _ => no_update(pb::NoUpdateReason::UpToDate, String::new(), None),
            }
        }
    };
    (d, next)
}

fn unreachable_booted() -> pb::update_hint::Decision {
    no_update(pb::NoUpdateReason::BootedUnknown, String::new(), None)
}

fn target(view: &ScopeView, index: u32, reason: TargetReason) -> pb::update_hint::Decision {
    let node = &view.graph.nodes()[index as usize];
    let reason = match reason {
        TargetReason::NewestReachable => pb::TargetReason::NewestReachable,
        TargetReason::Barrier => pb::TargetReason::Barrier,
    };
    pb::update_hint::Decision::Target(pb::UpdateTarget {
        version: node.version.clone(),
        payload: node.payload.clone(),
        reason: reason as i32,
        metadata: node
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn no_update(
    reason: pb::NoUpdateReason,
    detail: String,
    at: Option<SystemTime>,
) -> pb::update_hint::Decision {
    pb::update_hint::Decision::NoUpdate(pb::NoUpdate {
        reason: reason as i32,
        detail,
        eligible_at: at.map(timestamp),
    })
}

/// Opaque resume token of a hint: a hash of its decision and wariness (not
/// of the revision or decision time, so an unchanged answer keeps its token).
pub fn resume_token(hint: &pb::UpdateHint) -> String {
    let mut h = Sha256::new();
    h.update(hint.wariness.to_bits().to_be_bytes());
    match &hint.decision {
        Some(pb::update_hint::Decision::Target(t)) => {
            h.update(b"T\0");
            for part in [t.version.as_str(), t.payload.as_str()] {
                h.update(part.as_bytes());
                h.update(b"\0");
            }
            h.update(t.reason.to_be_bytes());
        }
        Some(pb::update_hint::Decision::NoUpdate(n)) => {
            h.update(b"N\0");
            h.update(n.reason.to_be_bytes());
            h.update(n.detail.as_bytes());
            h.update(b"\0");
            if let Some(ts) = &n.eligible_at {
                h.update(ts.seconds.to_be_bytes());
                h.update(ts.nanos.to_be_bytes());
            }
        }
        None => h.update(b"-"),
    }
    hex::encode(&h.finalize()[..10])
}
