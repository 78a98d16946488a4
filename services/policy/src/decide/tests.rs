use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use upshift_cincinnati::graph::{Graph, Node, PayloadScheme};
use upshift_common::grpc::from_timestamp;

use super::*;
use crate::overrides::{Mark, RolloutOverride};
use crate::state::ScopeKey;

const U: &str = "org.fedoraproject.coreos.updates";

fn node(v: &str, md: &[(&str, &str)]) -> Node {
    let mut metadata: BTreeMap<String, String> = md
        .iter()
        .map(|(k, v)| (format!("{U}.{k}"), v.to_string()))
        .collect();
    metadata.insert(
        "org.fedoraproject.coreos.releases.age_index".into(),
        v.replace('.', "").parse::<u64>().unwrap().to_string(),
    );
    Node {
        version: v.into(),
        payload: format!("p{v}"),
        metadata,
    }
}

/// 1.0 -> 2.0 (rollout from t=1000 over 100 min, i.e. until 7000) and
/// 1.0 -> 1.5 (dead-end release reachable, no rollout).
fn view() -> ScopeView {
    let nodes = vec![
        node("1.0", &[]),
        node(
            "1.5",
            &[("deadend", "true"), ("deadend_reason", "bad disk")],
        ),
        node(
            "2.0",
            &[
                ("rollout", "true"),
                ("start_epoch", "1000"),
                ("start_value", "0"),
                ("duration_minutes", "100"),
            ],
        ),
    ];
    let g = Graph::new(nodes, vec![(0, 1), (0, 2)]).unwrap();
    let key = ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    };
    ScopeView::new(key, 7, g)
}

fn id(payload: &str, w: f64) -> pb::NodeIdentity {
    pb::NodeIdentity {
        node_uuid: "n".into(),
        rollout_wariness: Some(w),
        stream: "stable".into(),
        basearch: "x86_64".into(),
        booted_payload: payload.into(),
        ..Default::default()
    }
}

fn at(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs)
}

fn run(
    i: &pb::NodeIdentity,
    o: &Overrides,
    now: f64,
) -> (pb::update_hint::Decision, Option<SystemTime>) {
    let v = view();
    let (h, next) = decide(i, Some(&v), o, at(now));
    assert_eq!(h.graph_revision, 7);
    (h.decision.unwrap(), next)
}

fn reason(d: &pb::update_hint::Decision) -> pb::NoUpdateReason {
    match d {
        pb::update_hint::Decision::NoUpdate(n) => n.reason(),
        pb::update_hint::Decision::Target(t) => panic!("unexpected target {}", t.version),
    }
}

fn target(d: &pb::update_hint::Decision) -> &str {
    match d {
        pb::update_hint::Decision::Target(t) => &t.version,
        pb::update_hint::Decision::NoUpdate(n) => panic!("no update: {:?}", n.reason()),
    }
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn throttle_opens_at_the_formula_instant() {
    let o = Overrides::default();
    // Wariness 0.5 opens halfway: 1000 + 0.5 * 6000 = 4000.
    for now in [0.0, 1000.0, 3999.0] {
        let (d, next) = run(&id("p1.0", 0.5), &o, now);
        assert_eq!(
            target(&d),
            "1.5",
            "the visible successor is offered meanwhile"
        );
        assert!((secs(next.unwrap()) - 4000.0).abs() < 1e-3);
    }
    let (d, next) = run(&id("p1.0", 0.5), &o, 4000.001);
    assert_eq!(target(&d), "2.0");
    assert_eq!(next, None);
}

#[test]
fn throttled_reports_eligible_at() {
    let o = Overrides::default();
    let i = pb::NodeIdentity {
        denied_versions: vec!["1.5".into()],
        ..id("p1.0", 0.25)
    };
    let (d, next) = run(&i, &o, 1500.0);
    assert_eq!(reason(&d), pb::NoUpdateReason::Throttled);
    let pb::update_hint::Decision::NoUpdate(n) = &d else {
        unreachable!()
    };
    let eligible = from_timestamp(n.eligible_at.as_ref().unwrap());
    assert!((secs(eligible) - 2500.0).abs() < 1e-3);
    assert_eq!(Some(eligible), next);
}

#[test]
fn terminal_reasons() {
    let o = Overrides::default();
    let (d, _) = run(&id("p1.5", 0.5), &o, 9000.0);
    assert_eq!(reason(&d), pb::NoUpdateReason::DeadEnd);
    let pb::update_hint::Decision::NoUpdate(n) = &d else {
        unreachable!()
    };
    assert_eq!(n.detail, "bad disk");
    assert_eq!(
        reason(&run(&id("p2.0", 0.5), &o, 9000.0).0),
        pb::NoUpdateReason::UpToDate
    );
    assert_eq!(
        reason(&run(&id("nope", 0.5), &o, 9000.0).0),
        pb::NoUpdateReason::BootedUnknown
    );
    let (h, next) = decide(&id("p1.0", 0.5), None, &o, at(0.0));
    assert_eq!(
        reason(&h.decision.unwrap()),
        pb::NoUpdateReason::StreamUnknown
    );
    assert_eq!(next, None);
}

#[test]
fn freeze_stops_everything() {
    let mut o = Overrides::default();
    o.freezes.insert(
        "stable".into(),
        Mark {
            reason: "incident".into(),
            actor: "a".into(),
            at: 0.0,
        },
    );
    let (d, next) = run(&id("p1.0", 0.0), &o, 9000.0);
    assert_eq!(reason(&d), pb::NoUpdateReason::Frozen);
    assert_eq!(next, None);
}

fn paused_at(at: f64, withdrawn: bool) -> RolloutOverride {
    RolloutOverride {
        paused: Some(Mark {
            reason: "halt".into(),
            actor: "a".into(),
            at,
        }),
        withdrawn,
        ..Default::default()
    }
}

#[test]
fn pause_holds_and_resume_continues_from_the_held_value() {
    let i = pb::NodeIdentity {
        denied_versions: vec!["1.5".into()],
        ..id("p1.0", 0.5)
    };
    let low = pb::NodeIdentity {
        rollout_wariness: Some(0.2),
        ..i.clone()
    };
    let mut o = Overrides::default();
    let key = ("stable".to_owned(), "2.0".to_owned());
    // Paused at 3000 (throttle 1/3).
    o.rollouts.insert(key.clone(), paused_at(3000.0, false));
    let (d, next) = run(&low, &o, 3500.0);
    assert_eq!(
        target(&d),
        "2.0",
        "0.2 was eligible when paused: it keeps it"
    );
    assert_eq!(next, None);
    let (d, next) = run(&i, &o, 6000.0);
    assert_eq!(reason(&d), pb::NoUpdateReason::Paused, "no new eligibility");
    let pb::update_hint::Decision::NoUpdate(n) = &d else {
        unreachable!()
    };
    assert_eq!(n.detail, "halt");
    assert_eq!(next, None, "no time-based change while paused");
    let v = view();
    let r = &v.rollouts[0];
    assert!((throttle(&v, &r.spec, "2.0", &o, at(6000.0)) - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(
        hidden_mask(&v, 0.2, &o, at(6000.0)),
        HiddenMask::default(),
        "/v1/graph keeps the edge for 0.2"
    );
    assert!(hidden_mask(&v, 0.5, &o, at(6000.0)).contains(0));
    // Resumed at 5000 after 2000 s: the throttle continues from 1/3.
    o.rollouts.insert(
        key,
        RolloutOverride {
            paused: None,
            paused_total: 2000.0,
            ..Default::default()
        },
    );
    assert!((throttle(&v, &r.spec, "2.0", &o, at(5000.0)) - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(target(&run(&low, &o, 5000.0).0), "2.0");
    let (d, next) = run(&i, &o, 5000.0);
    assert_eq!(reason(&d), pb::NoUpdateReason::Throttled);
    assert!(
        (secs(next.unwrap()) - 6000.0).abs() < 1e-3,
        "opens 2000 s later than without the pause"
    );
}

#[test]
fn a_withdrawn_rollout_is_offered_to_no_one() {
    let i = pb::NodeIdentity {
        denied_versions: vec!["1.5".into()],
        ..id("p1.0", 0.2)
    };
    let mut o = Overrides::default();
    o.rollouts.insert(
        ("stable".to_owned(), "2.0".to_owned()),
        paused_at(3000.0, true),
    );
    let (d, next) = run(&i, &o, 3500.0);
    assert_eq!(
        reason(&d),
        pb::NoUpdateReason::Paused,
        "0.2 would see it, but not while withdrawn"
    );
    assert_eq!(next, None);
    let v = view();
    assert!(hidden_mask(&v, 0.0, &o, at(3500.0)).contains(0));
    // Without the deny list the dead-end 1.5 is still offered meanwhile.
    assert_eq!(target(&run(&id("p1.0", 0.2), &o, 3500.0).0), "1.5");
}

#[test]
fn a_rollout_that_never_reaches_the_wariness_is_throttled_not_paused() {
    // No duration: the throttle stays at its start value 0.3.
    let nodes = vec![
        node("1.0", &[]),
        node(
            "2.0",
            &[
                ("rollout", "true"),
                ("start_epoch", "1000"),
                ("start_value", "0.3"),
            ],
        ),
    ];
    let g = Graph::new(nodes, vec![(0, 1)]).unwrap();
    let v = ScopeView::new(view().key.clone(), 1, g);
    let o = Overrides::default();
    let (h, next) = decide(&id("p1.0", 0.5), Some(&v), &o, at(5000.0));
    assert_eq!(reason(&h.decision.unwrap()), pb::NoUpdateReason::Throttled);
    assert_eq!(next, None);
    let (h, _) = decide(&id("p1.0", 0.2), Some(&v), &o, at(5000.0));
    assert_eq!(target(&h.decision.unwrap()), "2.0");
}

#[test]
fn more_than_128_rollouts_are_all_throttled() {
    // 1.0 -> r1..r200, every one a rollout that has not started.
    let mut nodes = vec![node("1.0", &[])];
    let mut edges = Vec::new();
    for k in 1..=200u32 {
        nodes.push(node(
            &format!("2.{k}"),
            &[
                ("rollout", "true"),
                ("start_epoch", "100000"),
                ("duration_minutes", "60"),
            ],
        ));
        edges.push((0, k));
    }
    let g = Graph::new(nodes, edges).unwrap();
    let v = ScopeView::new(view().key.clone(), 1, g);
    let o = Overrides::default();
    let (h, next) = decide(&id("p1.0", 0.5), Some(&v), &o, at(0.0));
    assert_eq!(reason(&h.decision.unwrap()), pb::NoUpdateReason::Throttled);
    assert!(next.is_some());
    let mask = hidden_mask(&v, 0.5, &o, at(0.0));
    assert!((0..200).all(|p| mask.contains(p)));
    let body = v
        .variant(crate::state::VariantKey::Hidden(mask))
        .body
        .clone();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["edges"].as_array().unwrap().len(), 0);
}

#[test]
fn a_shared_decider_answers_like_one_decision_per_node() {
    let v = view();
    let mut o = Overrides::default();
    o.rollouts.insert(
        ("stable".to_owned(), "2.0".to_owned()),
        paused_at(2500.0, false),
    );
    let ids: Vec<pb::NodeIdentity> = (0..200)
        .map(|k| pb::NodeIdentity {
            denied_versions: if k % 3 == 0 {
                vec!["1.5".into()]
            } else {
                vec![]
            },
            booted_payload: ["p1.0", "p1.5", "p2.0", "nope"][k % 4].into(),
            ..id("", f64::from(k as u32) / 200.0)
        })
        .collect();
    // One memo across instants: walks do not depend on time.
    let mut memo = Memo::default();
    for now in [0.0, 2000.0, 4000.0, 9000.0] {
        let shared = Decider::new(&v, &o, at(now));
        for i in &ids {
            let w = wariness(i.rollout_wariness, &i.node_uuid);
            let (alone, next) = decide(i, Some(&v), &o, at(now));
            let d = shared.decide(&mut memo, i, w);
            assert_eq!(
                Some(&*d.decision),
                alone.decision.as_ref(),
                "{i:?} at {now}"
            );
            assert_eq!(d.next, next);
            assert_eq!(d.token, resume_token(&alone));
        }
    }
    assert!(
        memo.len() < 40,
        "a class per distinct input, not per node: {}",
        memo.len()
    );
}

#[test]
fn resume_token_ignores_revision_and_time() {
    let o = Overrides::default();
    let v = view();
    let (a, _) = decide(&id("p1.0", 0.9), Some(&v), &o, at(10.0));
    let (mut b, _) = decide(&id("p1.0", 0.9), Some(&v), &o, at(20.0));
    b.graph_revision = 99;
    assert_eq!(resume_token(&a), resume_token(&b));
    let (c, _) = decide(&id("p1.0", 0.9), Some(&v), &o, at(9000.0));
    assert_ne!(resume_token(&a), resume_token(&c));
}

#[test]
fn explicit_wariness_is_clamped_and_derived_otherwise() {
    assert_eq!(wariness(Some(7.0), "x"), 1.0);
    assert_eq!(wariness(Some(-1.0), "x"), 0.0);
    assert_eq!(
        wariness(None, "x"),
        upshift_cincinnati::rollout::wariness_from_node_uuid("x")
    );
}
