//! `ListRollouts` and the admin calls on paused tokio time: the throttle
//! now, start/end shifted by paused time, the share of the open streams
//! that see the release, and what a hold, a resume and a withdrawal do to
//! each.

mod support;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Request;
use upshift_common::auth::AdminAuth;
use upshift_common::clock::{ScaledClock, SharedClock};
use upshift_common::telemetry::Metrics;
use upshift_policy::PolicyService;
use upshift_policy::grpc::PolicyGrpc;
use upshift_policy::metrics::PolicyMetrics;
use upshift_policy::store::MemoryStore;
use upshift_proto::policy::v1 as pb;
use upshift_proto::policy::v1::rollout_admin_service_server::RolloutAdminService;

use support::*;

fn admin(svc: &PolicyService, clock: SharedClock) -> PolicyGrpc {
    PolicyGrpc {
        state: svc.state.subscribe(),
        control: svc.control.clone(),
        hub: svc.hub.clone(),
        clock,
        admin: AdminAuth::new(Some(TOKEN.into()), Vec::new()),
        metrics: PolicyMetrics::new(Metrics::new("policy-test").meter()),
    }
}

fn authorized<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

async fn listed(g: &PolicyGrpc) -> pb::Rollout {
    let mut rollouts = g
        .list_rollouts(Request::new(pb::ListRolloutsRequest {
            stream: "stable".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .rollouts;
    assert_eq!(rollouts.len(), 1, "{rollouts:?}");
    rollouts.remove(0)
}

fn ts_secs(t: &Option<prost_types::Timestamp>) -> f64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-3
}

#[tokio::test(start_paused = true)]
async fn list_rollouts_reports_throttle_window_share_and_pauses() {
    // The rollout of 2.0 runs from 1000 over 6000 s: at 4000 its throttle is 0.5.
    let clock = ScaledClock::shared(at(4000.0), 1.0);
    let svc = start(
        &config(Duration::from_secs(3600), Duration::from_secs(36_000)),
        MemoryStore::shared(),
        clock.clone(),
        CancellationToken::new(),
    );
    svc.publish(key(), 1, rollout_graph());
    let g = admin(&svc, clock.clone());
    // Four open streams; two of them (0.1 and 0.3) are reached now.
    let _streams: Vec<_> = [0.1, 0.3, 0.7, 0.9]
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            svc.hub
                .subscribe(identity("p1.0", Some(w), &format!("n{i}")), String::new())
        })
        .collect();
    // An open stream of another stream does not count.
    let _other = svc.hub.subscribe(
        pb::NodeIdentity {
            stream: "testing".into(),
            ..identity("p1.0", Some(0.0), "t")
        },
        String::new(),
    );

    let r = listed(&g).await;
    assert_eq!(r.version, "2.0");
    assert!(close(r.throttle, 0.5), "{}", r.throttle);
    assert!(close(ts_secs(&r.start), 1000.0));
    assert!(close(ts_secs(&r.end), 7000.0));
    assert_eq!(r.start_value, 0.0);
    assert!(close(r.eligible_share, 0.5), "{}", r.eligible_share);
    assert!(!r.paused);
    assert_eq!(r.pause_mode(), pb::PauseMode::Unspecified);

    // The admin calls need the token and a reason.
    let hold = pb::PauseRolloutRequest {
        stream: "stable".into(),
        version: "2.0".into(),
        reason: "canary crashes".into(),
        mode: pb::PauseMode::Hold as i32,
    };
    let denied = g
        .pause_rollout(Request::new(hold.clone()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");
    let paused = g
        .pause_rollout(authorized(hold))
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    assert!(paused.paused);
    assert_eq!(paused.pause_mode(), pb::PauseMode::Hold);
    assert!(close(ts_secs(&paused.paused_at), 4000.0));

    // Held for 1000 s: the throttle and the share stay where they were.
    tokio::time::sleep(Duration::from_secs(1000)).await;
    let r = listed(&g).await;
    assert!(r.paused);
    assert!(
        r.pause_reason.contains("canary crashes"),
        "{}",
        r.pause_reason
    );
    assert!(close(r.throttle, 0.5), "held: {}", r.throttle);
    assert!(close(r.eligible_share, 0.5), "{}", r.eligible_share);

    // Resumed at 5000: it continues from 0.5, and start/end move 1000 s later.
    let resumed = g
        .resume_rollout(authorized(pb::ResumeRolloutRequest {
            stream: "stable".into(),
            version: "2.0".into(),
            reason: "fixed".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    assert!(!resumed.paused);
    assert_eq!(resumed.pause_mode(), pb::PauseMode::Unspecified);
    assert!(close(resumed.throttle, 0.5), "{}", resumed.throttle);
    assert!(close(ts_secs(&resumed.start), 2000.0));
    assert!(close(ts_secs(&resumed.end), 8000.0));

    // 1500 s later (6500): 0.75 of the way, so 0.7 is reached too.
    tokio::time::sleep(Duration::from_secs(1500)).await;
    let r = listed(&g).await;
    assert!(close(r.throttle, 0.75), "{}", r.throttle);
    assert!(close(r.eligible_share, 0.75), "{}", r.eligible_share);

    // A withdrawal offers it to no one: share 0, the throttle held.
    let withdrawn = g
        .pause_rollout(authorized(pb::PauseRolloutRequest {
            stream: "stable".into(),
            version: "2.0".into(),
            reason: "halt".into(),
            mode: pb::PauseMode::Withdraw as i32,
        }))
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    assert_eq!(withdrawn.pause_mode(), pb::PauseMode::Withdraw);
    assert_eq!(withdrawn.eligible_share, 0.0);
    assert!(close(withdrawn.throttle, 0.75), "{}", withdrawn.throttle);

    // Unknown rollouts are NOT_FOUND; a freeze is listed.
    let unknown = g
        .resume_rollout(authorized(pb::ResumeRolloutRequest {
            stream: "stable".into(),
            version: "9.9".into(),
            reason: "x".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    g.freeze_stream(authorized(pb::FreezeStreamRequest {
        stream: "stable".into(),
        reason: "incident".into(),
    }))
    .await
    .unwrap();
    let all = g
        .list_rollouts(Request::new(pb::ListRolloutsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.freezes.len(), 1);
    assert_eq!(all.freezes[0].stream, "stable");
    assert!(all.freezes[0].reason.contains("incident"));
}
