//! The pure per-node decision: no I/O, time passed in.
//!
//! A [`Decider`] holds what every node of one scope shares at one instant
//! (each rollout's throttle, pauses, the freeze) and memoizes the graph walk
//! by the inputs it depends on: booted payload, deny list, downgrade flag and
//! which rollout nodes the node's wariness hides. Re-deciding a whole fleet
//! after a change is then one walk per distinct class plus a little
//! arithmetic per node.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use upshift_cincinnati::rollout::{RolloutSpec, wariness_from_node_uuid};
use upshift_cincinnati::target::{TargetDecision, TargetReason, select_target};
use upshift_common::clock::from_epoch_secs;
use upshift_common::grpc::timestamp;
use upshift_proto::policy::v1 as pb;

use crate::overrides::{Mark, Overrides};
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

/// The throttle of a rollout node now, with overrides applied (a paused
/// rollout's throttle is held at its value when paused).
pub fn throttle(
    view: &ScopeView,
    spec: &RolloutSpec,
    version: &str,
    o: &Overrides,
    now: SystemTime,
) -> f64 {
    spec.throttle_at(o.effective_now(&view.key.stream, version, now))
}

/// The rollout nodes hidden from a client of `wariness` at `now`: withdrawn
/// rollouts, and rollouts whose (possibly held) throttle is below it.
pub fn hidden_mask(view: &ScopeView, wariness: f64, o: &Overrides, now: SystemTime) -> HiddenMask {
    Decider::new(view, o, now).hidden(wariness)
}

/// One decision: the hint's decision, and when the answer can next change
/// from the passage of time alone.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The decision, shared by every node of the same class.
    pub decision: Arc<pb::update_hint::Decision>,
    /// Resume token of (wariness, decision).
    pub token: Token,
    /// Next instant the answer may change by itself.
    pub next: Option<SystemTime>,
}

/// An opaque resume token: a hash of a hint's decision and wariness (not of
/// the revision or decision time, so an unchanged answer keeps its token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Token([u8; 10]);

impl Token {
    /// The token as sent on the wire (hex).
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Parses a token's wire form; anything else (an empty or foreign
    /// token) is `None`.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut t = [0u8; 10];
        hex::decode_to_slice(s, &mut t).ok()?;
        Some(Self(t))
    }
}

/// Per-rollout facts at the decider's instant, by position in `view.rollouts`.
#[derive(Debug, Clone)]
struct RolloutNow<'a> {
    throttle: f64,
    pause: Option<&'a Mark>,
    withdrawn: bool,
}

/// The memo key: everything the graph walk depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClassKey<'i> {
    booted: &'i str,
    denied: &'i [String],
    allow_downgrade: bool,
    throttled: HiddenMask,
}

impl ClassKey<'_> {
    fn hash64(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    fn matches(&self, k: &OwnedKey) -> bool {
        *self.booted == *k.booted
            && *self.denied == *k.denied
            && self.allow_downgrade == k.allow_downgrade
            && self.throttled == k.throttled
    }

    fn to_owned_key(&self) -> OwnedKey {
        OwnedKey {
            booted: self.booted.to_owned(),
            denied: self.denied.to_vec(),
            allow_downgrade: self.allow_downgrade,
            throttled: self.throttled.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct OwnedKey {
    booted: String,
    denied: Vec<String>,
    allow_downgrade: bool,
    throttled: HiddenMask,
}

/// Memoized graph walks for one scope view under one set of overrides.
/// Valid at any instant: time enters a walk only through the throttled set,
/// which is part of the key. Decisions come out shared (`Arc`), so a fleet
/// of nodes in one class holds one copy.
#[derive(Debug, Default)]
pub struct Memo {
    buckets: HashMap<u64, Vec<(OwnedKey, Class)>>,
}

impl Memo {
    /// Number of classes walked.
    pub fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }

    /// Whether nothing has been walked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The memoized part of a decision for one class.
#[derive(Debug, Clone)]
enum Shape {
    /// The same decision for every node of the class, with its digest.
    Fixed(Arc<pb::update_hint::Decision>, [u8; 32]),
    /// Throttled: the instant comes from each node's own wariness; with none,
    /// `fallback` is the answer.
    Throttled(Arc<pb::update_hint::Decision>, [u8; 32]),
}

#[derive(Debug, Clone)]
struct Class {
    shape: Shape,
    /// Successors of the booted node hidden by throttling and not paused:
    /// the rollouts whose opening changes the answer.
    opening: Vec<u32>,
}

/// Decides for the nodes of one scope at one instant.
#[derive(Debug)]
pub struct Decider<'v> {
    view: &'v ScopeView,
    o: &'v Overrides,
    now: SystemTime,
    frozen: Option<&'v Mark>,
    rollouts: Vec<RolloutNow<'v>>,
}

impl<'v> Decider<'v> {
    /// Computes the shared facts of `view` at `now`.
    pub fn new(view: &'v ScopeView, o: &'v Overrides, now: SystemTime) -> Self {
        let stream = &view.key.stream;
        let rollouts = view
            .rollouts
            .iter()
            .map(|r| {
                let rec = o.rollout(stream, &r.version);
                let pause = rec.and_then(|rec| rec.paused.as_ref());
                RolloutNow {
                    throttle: throttle(view, &r.spec, &r.version, o, now),
                    pause,
                    withdrawn: pause.is_some() && rec.is_some_and(|rec| rec.withdrawn),
                }
            })
            .collect();
        Self {
            view,
            o,
            now,
            frozen: o.freezes.get(stream),
            rollouts,
        }
    }

    /// The rollout nodes hidden from a client of `w` (for `/v1/graph`).
    pub fn hidden(&self, w: f64) -> HiddenMask {
        let mut mask = HiddenMask::default();
        for (p, r) in self.rollouts.iter().enumerate() {
            if r.withdrawn || w > r.throttle {
                mask.set(p);
            }
        }
        mask
    }

    fn throttled(&self, w: f64) -> HiddenMask {
        let mut mask = HiddenMask::default();
        for (p, r) in self.rollouts.iter().enumerate() {
            if w > r.throttle {
                mask.set(p);
            }
        }
        mask
    }

    fn at(&self, i: u32) -> Option<&RolloutNow<'v>> {
        self.view
            .rollout_pos
            .get(&i)
            .and_then(|&p| self.rollouts.get(p))
    }

    /// Decides for `id` whose wariness is `w`; `memo` must belong to this
    /// decider's view and overrides.
    pub fn decide(&self, memo: &mut Memo, id: &pb::NodeIdentity, w: f64) -> Decided {
        let key = ClassKey {
            booted: &id.booted_payload,
            denied: &id.denied_versions,
            allow_downgrade: id.allow_downgrade,
            throttled: self.throttled(w),
        };
        let bucket = memo.buckets.entry(key.hash64()).or_default();
        let pos = match bucket.iter().position(|(k, _)| key.matches(k)) {
            Some(p) => p,
            None => {
                bucket.push((key.to_owned_key(), self.walk(&key)));
                bucket.len() - 1
            }
        };
        let class = &bucket[pos].1;
        let next = class
            .opening
            .iter()
            .filter_map(|&s| self.opens_at(s, w))
            .min();
        let (decision, digest) = match (&class.shape, next) {
            (Shape::Fixed(d, digest), _) => (d.clone(), *digest),
            (Shape::Throttled(_, _), Some(at)) => {
                let d = Arc::new(no_update(
                    pb::NoUpdateReason::Throttled,
                    String::new(),
                    Some(at),
                ));
                let digest = decision_digest(&d);
                (d, digest)
            }
            (Shape::Throttled(d, digest), None) => (d.clone(), *digest),
        };
        Decided {
            decision,
            token: token(w, &digest),
            next,
        }
    }

    /// Real instant a node of wariness `w` starts to see rollout node `i`,
    /// when its throttle is running (not paused) and will open.
    fn opens_at(&self, i: u32, w: f64) -> Option<SystemTime> {
        let r = self.view.rollout(i)?;
        let stream = &self.view.key.stream;
        if self.o.pause(stream, &r.version).is_some() {
            return None;
        }
        let at = r.spec.eligible_at(w)? + self.o.offset(stream, &r.version);
        // One microsecond past the float instant so the throttle is open there.
        Some(from_epoch_secs(at) + Duration::from_micros(1))
    }

    /// The graph walk for one class.
    fn walk(&self, key: &ClassKey<'_>) -> Class {
        let fixed = |d: pb::update_hint::Decision| {
            let digest = decision_digest(&d);
            Class {
                shape: Shape::Fixed(Arc::new(d), digest),
                opening: Vec::new(),
            }
        };
        if let Some(f) = self.frozen {
            return fixed(no_update(
                pb::NoUpdateReason::Frozen,
                f.reason.clone(),
                None,
            ));
        }
        let view = self.view;
        let Some(&booted) = view.by_payload.get(key.booted) else {
            return fixed(no_update(
                pb::NoUpdateReason::BootedUnknown,
                format!("payload {:?} is not in the graph", key.booted),
                None,
            ));
        };
        let throttled = |i: u32| {
            view.rollout_pos
                .get(&i)
                .is_some_and(|&p| key.throttled.contains(p))
        };
        let withdrawn = |i: u32| self.at(i).is_some_and(|r| r.withdrawn);
        let select = |visible: &dyn Fn(u32) -> bool| {
            select_target(
                &view.graph,
                key.booted,
                visible,
                key.denied,
                key.allow_downgrade,
            )
        };
        let opening: Vec<u32> = view
            .graph
            .successors(booted)
            .filter(|&s| throttled(s) && self.at(s).is_some_and(|r| r.pause.is_none()))
            .collect();
        let decision = select(&|i| !withdrawn(i) && !throttled(i));
        let d = match decision {
            TargetDecision::Update { index, reason } => target(view, index, reason),
            TargetDecision::DeadEnd { reason } => {
                return fixed(no_update(pb::NoUpdateReason::DeadEnd, reason, None));
            }
            TargetDecision::BootedUnknown => {
                no_update(pb::NoUpdateReason::BootedUnknown, String::new(), None)
            }
            TargetDecision::UpToDate => {
                no_update(pb::NoUpdateReason::UpToDate, String::new(), None)
            }
            TargetDecision::Throttled { next: best } => match select(&|i| !throttled(i)) {
                // A candidate hidden only by a withdrawal: that is the answer.
                TargetDecision::Update { index, .. } => self.paused_answer(index),
                // Every candidate is throttled: each node's own opening
                // instant, or (none opens) a held pause or plain throttling.
                _ => {
                    let held = if self.at(best).is_some_and(|r| r.pause.is_some()) {
                        self.paused_answer(best)
                    } else {
                        no_update(
                            pb::NoUpdateReason::Throttled,
                            "the rollout does not reach this node's wariness".into(),
                            None,
                        )
                    };
                    let digest = decision_digest(&held);
                    return Class {
                        shape: Shape::Throttled(Arc::new(held), digest),
                        opening,
                    };
                }
            },
        };
        let digest = decision_digest(&d);
        Class {
            shape: Shape::Fixed(Arc::new(d), digest),
            opening,
        }
    }

    fn paused_answer(&self, index: u32) -> pb::update_hint::Decision {
        let reason = self
            .at(index)
            .and_then(|r| r.pause)
            .map(|m| m.reason.clone())
            .unwrap_or_default();
        no_update(pb::NoUpdateReason::Paused, reason, None)
    }

    /// The whole hint for `id` (`GetUpdateHint`, tests).
    pub fn hint(&self, id: &pb::NodeIdentity, w: f64) -> (pb::UpdateHint, Option<SystemTime>) {
        let d = self.decide(&mut Memo::default(), id, w);
        let hint = pb::UpdateHint {
            graph_revision: self.view.revision,
            decision: Some((*d.decision).clone()),
            wariness: w,
            decided_at: Some(timestamp(self.now)),
        };
        (hint, d.next)
    }
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
    match view {
        Some(view) => Decider::new(view, o, now).hint(id, w),
        None => (unknown_stream_hint(w, now), None),
    }
}

fn stream_unknown() -> pb::update_hint::Decision {
    no_update(
        pb::NoUpdateReason::StreamUnknown,
        "no graph for this stream, basearch and scheme".into(),
        None,
    )
}

/// The decision for a node whose scope has no graph.
pub fn unknown_scope(w: f64) -> Decided {
    let d = stream_unknown();
    let digest = decision_digest(&d);
    Decided {
        decision: Arc::new(d),
        token: token(w, &digest),
        next: None,
    }
}

fn unknown_stream_hint(w: f64, now: SystemTime) -> pb::UpdateHint {
    pb::UpdateHint {
        graph_revision: 0,
        decision: Some(stream_unknown()),
        wariness: w,
        decided_at: Some(timestamp(now)),
    }
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

/// Digest of the parts of a decision a client acts on.
pub fn decision_digest(d: &pb::update_hint::Decision) -> [u8; 32] {
    let mut h = Sha256::new();
    match d {
        pb::update_hint::Decision::Target(t) => {
            h.update(b"T\0");
            for part in [t.version.as_str(), t.payload.as_str()] {
                h.update(part.as_bytes());
                h.update(b"\0");
            }
            h.update(t.reason.to_be_bytes());
        }
        pb::update_hint::Decision::NoUpdate(n) => {
            h.update(b"N\0");
            h.update(n.reason.to_be_bytes());
            h.update(n.detail.as_bytes());
            h.update(b"\0");
            if let Some(ts) = &n.eligible_at {
                h.update(ts.seconds.to_be_bytes());
                h.update(ts.nanos.to_be_bytes());
            }
        }
    }
    h.finalize().into()
}

fn token(w: f64, digest: &[u8; 32]) -> Token {
    let mut h = Sha256::new();
    h.update(w.to_bits().to_be_bytes());
    h.update(digest);
    let mut t = [0u8; 10];
    t.copy_from_slice(&h.finalize()[..10]);
    Token(t)
}

/// Resume token of a hint (the same as [`Decided::token`] for its decision).
pub fn resume_token(hint: &pb::UpdateHint) -> Token {
    let digest = match &hint.decision {
        Some(d) => decision_digest(d),
        None => [0; 32],
    };
    token(hint.wariness, &digest)
}
