use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use upshift_cincinnati::codec::CincinnatiGraph;
use upshift_cincinnati::fcos::{ReleaseIndex, UpdatesMetadata};
use upshift_cincinnati::graph::build_graph;
use upshift_common::clock::{Clock, epoch_secs};
use upshift_common::telemetry::Metrics;
use upshift_proto::policy::v1 as pb;

use super::*;
use crate::decide::decide;
use crate::state::ScopeView;

#[derive(Debug)]
struct FixedClock(SystemTime);

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
    fn deadline_for(&self, _: SystemTime) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
}

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/fcos/stable"
);

fn stable_view(history: &str) -> ScopeView {
    let index =
        ReleaseIndex::from_slice(&std::fs::read(format!("{FIXTURES}/releases.json")).unwrap())
            .unwrap();
    let updates = UpdatesMetadata::from_slice(
        &std::fs::read(format!("{FIXTURES}/updates-history/{history}")).unwrap(),
    )
    .unwrap();
    let g = build_graph(&index, &updates, "x86_64", PayloadScheme::Checksum)
        .unwrap()
        .graph;
    let key = ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    };
    ScopeView::new(key, 1, g)
}

fn http_state(view: ScopeView, now: SystemTime, o: Overrides) -> HttpState {
    let mut scopes = std::collections::HashMap::new();
    scopes.insert(view.key.clone(), Arc::new(view));
    let (_, state) = watch::channel(Arc::new(PolicyState {
        scopes,
        revision: 1,
    }));
    let (_, overrides) = watch::channel(Arc::new(o));
    HttpState {
        state,
        overrides,
        clock: Arc::new(FixedClock(now)),
        metrics: PolicyMetrics::new(Metrics::new("policy-test").meter()),
    }
}

async fn get(
    s: &HttpState,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router(s.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes().to_vec(),
    )
}

async fn edges(s: &HttpState, query: &str) -> BTreeSet<(u64, u64)> {
    let (status, headers, body) = get(
        s,
        &format!("/v1/graph?basearch=x86_64&stream=stable&{query}"),
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    CincinnatiGraph::from_slice(&body)
        .unwrap()
        .edges
        .into_iter()
        .map(|[a, b]| (a, b))
        .collect()
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

/// History 058, by hand from DESIGN.md section 2: barriers at 11, 13, 23, 24
/// and 40; rollout 49 (start_percentage 1.0, no start or duration: open to
/// all) and rollout 50 (from 1635868800 over 2880 minutes, from 0).
fn expected_058(into_50: bool) -> BTreeSet<(u64, u64)> {
    let mut e = BTreeSet::new();
    let mut span = |from: std::ops::Range<u64>, to: u64| e.extend(from.map(|i| (i, to)));
    span(0..11, 11);
    span(11..13, 13);
    span(13..23, 23);
    span(23..24, 24);
    span(24..40, 40);
    span(40..49, 49);
    if into_50 {
        span(40..50, 50);
    }
    e
}

#[tokio::test]
async fn hand_written_edge_sets_of_history_058() {
    let start = 1_635_868_800;
    let mid = start + 1440 * 60;
    for (now, query, into_50) in [
        (mid, "rollout_wariness=0.4", true),
        (mid, "rollout_wariness=0.6", false),
        (mid, "rollout_wariness=0.5", true),
        (start - 1, "rollout_wariness=0.000001", false),
        (start - 1, "rollout_wariness=0", true),
        (start + 2880 * 60, "rollout_wariness=1", true),
        (start + 2880 * 60 - 60, "rollout_wariness=1", false),
    ] {
        let s = http_state(stable_view("058.json"), at(now), Overrides::default());
        let got = edges(&s, query).await;
        assert_eq!(got.len(), if into_50 { 59 } else { 49 }, "{now} {query}");
        assert_eq!(got, expected_058(into_50), "{now} {query}");
    }
}

/// Reference semantics straight from the update metadata: an edge into a
/// rollout node is shown iff wariness <= throttle(now).
fn reference_edges(
    view: &ScopeView,
    updates: &serde_json::Value,
    w: f64,
    now: f64,
) -> BTreeSet<(u64, u64)> {
    let throttle = |version: &str| -> f64 {
        let Some(r) = updates["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == version)
        else {
            return 1.0;
        };
        let ro = &r["metadata"]["rollout"];
        if ro.is_null() {
            return 1.0;
        }
        let start = ro["start_epoch"].as_f64().unwrap_or(0.0);
        let value = ro["start_percentage"].as_f64().unwrap_or(0.0);
        if now < start {
            return 0.0;
        }
        match ro["duration_minutes"].as_f64() {
            None => value,
            Some(d) => {
                let end = start + 60.0 * d.max(1.0);
                if now >= end {
                    1.0
                } else {
                    value + (1.0 - value) * (now - start) / (end - start)
                }
            }
        }
    };
    view.graph
        .edges()
        .iter()
        .filter(|&&(_, to)| w <= throttle(&view.graph.nodes()[to as usize].version))
        .map(|&(a, b)| (u64::from(a), u64::from(b)))
        .collect()
}

#[tokio::test]
async fn every_history_file_matches_the_reference_over_a_grid() {
    let mut cases = 0;
    for entry in std::fs::read_dir(format!("{FIXTURES}/updates-history")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".json") {
            continue;
        }
        let raw: serde_json::Value = serde_json::from_slice(
            &std::fs::read(format!("{FIXTURES}/updates-history/{name}")).unwrap(),
        )
        .unwrap();
        let probe = stable_view(&name);
        for r in probe.rollouts.clone() {
            let start = r.spec.start_epoch;
            let len = r.spec.duration_minutes.unwrap_or(60) as i64 * 60;
            for now in [
                start - 1,
                start,
                start + len / 4,
                start + len / 2,
                start + len - 1,
                start + len + 1,
            ] {
                let s = http_state(stable_view(&name), at(now.max(0)), Overrides::default());
                let view = s.state.borrow().scopes.values().next().unwrap().clone();
                for w in [0.0, 0.000_001, 0.1, 0.25, 0.5, 0.75, 0.999, 1.0] {
                    let got = edges(&s, &format!("rollout_wariness={w}&node_uuid=ignored")).await;
                    let want = reference_edges(&view, &raw, w, epoch_secs(at(now.max(0))));
                    assert_eq!(got, want, "{name} now={now} w={w}");
                    cases += 1;
                }
            }
        }
    }
    assert!(cases > 1000, "{cases}");
}

#[tokio::test]
async fn errors_are_json_from_the_fixed_set() {
    let s = http_state(stable_view("058.json"), at(0), Overrides::default());
    for (uri, status, kind) in [
        ("/v1/graph?stream=stable", 400, "missing_params"),
        ("/v1/graph?basearch=x86_64", 400, "missing_params"),
        ("/v1/graph", 400, "missing_params"),
        (
            "/v1/graph?basearch=x86_64&stream=stable&rollout_wariness=NaN",
            400,
            "invalid_params",
        ),
        (
            "/v1/graph?basearch=x86_64&stream=stable&rollout_wariness=inf",
            400,
            "invalid_params",
        ),
        (
            "/v1/graph?basearch=x86_64&stream=stable&rollout_wariness=high",
            400,
            "invalid_params",
        ),
        (
            "/v1/graph?basearch=x86_64&stream=next",
            404,
            "unknown_stream",
        ),
        (
            "/v1/graph?basearch=s390x&stream=stable",
            404,
            "unknown_basearch",
        ),
    ] {
        let (st, h, body) = get(&s, uri, &[]).await;
        assert_eq!(st.as_u16(), status, "{uri}");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], kind, "{uri}");
        assert!(v["value"].is_string());
    }
    let post = router(s.clone())
        .oneshot(
            Request::post("/v1/graph?basearch=x86_64&stream=stable")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
    let body = post.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["kind"], "method_not_allowed");
    let (_, state) = watch::channel(Arc::new(PolicyState::default()));
    let empty = HttpState { state, ..s };
    let (st, _, body) = get(&empty, "/v1/graph?basearch=x86_64&stream=stable", &[]).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("graph_unavailable"));
}

#[tokio::test]
async fn accept_negotiation() {
    let s = http_state(stable_view("058.json"), at(0), Overrides::default());
    let uri = "/v1/graph?basearch=x86_64&stream=stable&unknown=1";
    for (accept, ok) in [
        ("application/json", true),
        ("text/html, application/*;q=0.2", true),
        ("*/*", true),
        ("text/html;q=1.0, */*;q=0.1", true),
        ("application/json; charset=utf-8", true),
        ("application/json;q=0, */*", false),
        ("text/html", false),
        ("application/json;q=0", false),
        ("", true),
    ] {
        let (st, _, body) = get(&s, uri, &[("accept", accept)]).await;
        if ok {
            assert_eq!(st, StatusCode::OK, "{accept:?}");
        } else {
            assert_eq!(st, StatusCode::NOT_ACCEPTABLE, "{accept:?}");
            assert!(String::from_utf8_lossy(&body).contains("not_acceptable"));
        }
    }
    let (st, _, _) = get(&s, uri, &[]).await;
    assert_eq!(st, StatusCode::OK, "no Accept header accepts anything");
}

#[tokio::test]
async fn etag_and_if_none_match() {
    let s = http_state(
        stable_view("058.json"),
        at(1_635_868_800 + 86_400),
        Overrides::default(),
    );
    let uri = "/v1/graph?basearch=x86_64&stream=stable&rollout_wariness=0.4";
    let (_, h, _) = get(&s, uri, &[]).await;
    let etag = h[header::ETAG].to_str().unwrap().to_owned();
    let (st, h2, body) = get(&s, uri, &[("if-none-match", &etag)]).await;
    assert_eq!(st, StatusCode::NOT_MODIFIED);
    assert_eq!(h2[header::ETAG], etag.as_str());
    assert!(body.is_empty());
    let other = "/v1/graph?basearch=x86_64&stream=stable&rollout_wariness=0.6";
    let (st, h3, _) = get(&s, other, &[("if-none-match", &etag)]).await;
    assert_eq!(
        st,
        StatusCode::OK,
        "a different variant has a different ETag"
    );
    assert_ne!(h3[header::ETAG], etag.as_str());
}

#[tokio::test]
async fn pause_and_freeze_apply_to_the_graph() {
    use crate::overrides::{Mark, RolloutOverride};
    let mark = Mark {
        reason: "r".into(),
        actor: "a".into(),
        at: 1_635_868_800.0,
    };
    let now = at(1_635_868_800 + 86_400);
    let paused = |withdrawn| {
        let mut o = Overrides::default();
        o.rollouts.insert(
            ("stable".into(), "34.20211016.3.0".into()),
            RolloutOverride {
                paused: Some(mark.clone()),
                withdrawn,
                ..Default::default()
            },
        );
        o
    };
    // Held at the pause instant, the rollout's start: only the least wary
    // clients had it, and keep it.
    let s = http_state(stable_view("058.json"), now, paused(false));
    assert_eq!(edges(&s, "rollout_wariness=0").await, expected_058(true));
    assert_eq!(
        edges(&s, "rollout_wariness=0.5").await,
        expected_058(false),
        "no new client becomes eligible while paused"
    );
    let s = http_state(stable_view("058.json"), now, paused(true));
    assert_eq!(
        edges(&s, "rollout_wariness=0").await,
        expected_058(false),
        "a withdrawn release is offered to nobody"
    );
    let mut o = Overrides::default();
    o.freezes.insert("stable".into(), mark);
    let s = http_state(stable_view("058.json"), now, o);
    assert!(
        edges(&s, "rollout_wariness=0").await.is_empty(),
        "a frozen stream has no edges"
    );
}

/// Zincati's request: its query parameters and `Accept: application/json`.
#[tokio::test]
async fn zincati_request_matches_get_update_hint() {
    let now = at(1_635_868_800 + 86_400);
    let s = http_state(stable_view("058.json"), now, Overrides::default());
    let view = s.state.borrow().scopes.values().next().unwrap().clone();
    let booted = &view.graph.nodes()[45];
    let mut answers = BTreeSet::new();
    // Ids on both sides of the rollout's throttle (about 0.5 a day in).
    let uuids: Vec<String> = (0..32u64)
        .map(|k| format!("{:032x}", k.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    for uuid in &uuids {
        let uuid = uuid.as_str();
        let query = format!(
            "basearch=x86_64&os_checksum={}&os_version={}&group=default&node_uuid={uuid}&platform=metal&stream=stable&oci=false",
            booted.payload, booted.version
        );
        let g = CincinnatiGraph::from_slice(
            &get(
                &s,
                &format!("/v1/graph?{query}"),
                &[("accept", "application/json")],
            )
            .await
            .2,
        )
        .unwrap();
        // Zincati's choice: the newest (by age index) release one edge away.
        let from = g
            .nodes
            .iter()
            .position(|n| n.payload.as_deref() == Some(&booted.payload))
            .unwrap() as u64;
        let best = g
            .edges
            .iter()
            .filter(|e| e[0] == from)
            .map(|e| e[1])
            .max()
            .map(|i| g.nodes[i as usize].version.clone());
        let id = pb::NodeIdentity {
            node_uuid: uuid.into(),
            stream: "stable".into(),
            basearch: "x86_64".into(),
            booted_payload: booted.payload.clone(),
            booted_version: booted.version.clone(),
            ..Default::default()
        };
        let (hint, _) = decide(&id, Some(&view), &Overrides::default(), now);
        let hinted = match hint.decision.unwrap() {
            pb::update_hint::Decision::Target(t) => Some(t.version),
            pb::update_hint::Decision::NoUpdate(_) => None,
        };
        assert_eq!(best, hinted, "{uuid}");
        answers.insert(best);
    }
    assert!(
        answers.len() >= 2,
        "the ids must include throttled and eligible nodes: {answers:?}"
    );
}
