//! gRPC API: queueing, cancellation, restart (also from the embedded file
//! closed and reopened), pause, windows, admin and audit, on each store.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mem.rs"]
mod mem;
#[path = "support/stores.rs"]
mod stores;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use harness::{Server, admin_req};
use tonic::Code;
use upshift_common::clock::SystemClock;
use upshift_proto::lock::v1 as pb;
use upshift_proto::lock::v1::acquire_response::Event;
use upshift_store::embedded::EmbeddedStore;

const CONFIG: &str = "[groups.default]\nslots = 1\n[groups.workers]\nslots = 2\n";

type Acq = tonic::Streaming<pb::AcquireResponse>;

async fn acquire(s: &Server, id: &str, group: &str) -> Acq {
    s.client()
        .await
        .acquire(pb::AcquireRequest {
            id: id.into(),
            group: group.into(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next(stream: &mut Acq) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no acquire event within 10s")
        .expect("stream ended")
        .unwrap()
        .event
        .unwrap()
}

fn queued(e: Event) -> (u32, u32, String) {
    match e {
        Event::Queued(q) => (q.position, q.queue_length, q.reason),
        Event::Granted(g) => panic!("unexpected grant {g:?}"),
    }
}

fn granted(e: Event) -> pb::Holder {
    match e {
        Event::Granted(g) => g.holder.unwrap(),
        Event::Queued(q) => panic!("unexpected queued {q:?}"),
    }
}

/// Skips position updates until the grant.
async fn until_granted(stream: &mut Acq) -> pb::Holder {
    loop {
        if let Event::Granted(g) = next(stream).await {
            return g.holder.unwrap();
        }
    }
}

/// Skips updates until one at `position`.
async fn until_position(stream: &mut Acq, position: u32) -> (u32, u32, String) {
    loop {
        let q = queued(next(stream).await);
        if q.0 == position {
            return q;
        }
    }
}

async fn release(s: &Server, id: &str, group: &str) -> bool {
    s.client()
        .await
        .release(pb::ReleaseRequest {
            id: id.into(),
            group: group.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .released
}

async fn queue_order_and_cancel(open: stores::Opener) {
    let s = Server::start(CONFIG, open(), SystemClock::shared()).await;
    let mut h = acquire(&s, "holder", "default").await;
    assert_eq!(granted(next(&mut h).await).id, "holder");
    let mut again = acquire(&s, "holder", "default").await;
    granted(next(&mut again).await); // recursive: at once

    let mut a = acquire(&s, "a", "default").await;
    assert_eq!(queued(next(&mut a).await), (1, 1, "slots-full".into()));
    let mut b = acquire(&s, "b", "default").await;
    assert_eq!(queued(next(&mut b).await), (2, 2, "slots-full".into()));
    let mut c = acquire(&s, "c", "default").await;
    assert_eq!(queued(next(&mut c).await), (3, 3, "slots-full".into()));

    assert!(release(&s, "holder", "default").await);
    assert_eq!(until_granted(&mut a).await.id, "a");
    until_position(&mut b, 1).await;
    until_position(&mut c, 2).await;

    drop(b); // cancelling leaves the queue
    assert_eq!(until_position(&mut c, 1).await, (1, 1, "slots-full".into()));
    let g = s
        .client()
        .await
        .get_group(pb::GetGroupRequest {
            group: "default".into(),
        })
        .await
        .unwrap();
    let g = g.into_inner().group.unwrap();
    assert_eq!(g.queue_length, 1);
    assert_eq!(g.holders.len(), 1);
    assert_eq!(g.holders[0].method, pb::AcquireMethod::Grpc as i32);

    assert!(release(&s, "a", "default").await);
    assert_eq!(until_granted(&mut c).await.id, "c");
    assert!(!release(&s, "b", "default").await, "b never held a slot");
    s.stop().await;
}

stores::on_each_store!(queue_order_and_cancel_on, queue_order_and_cancel);

async fn restart_keeps_holders(open: stores::Opener) {
    let s = Server::start(CONFIG, open(), SystemClock::shared()).await;
    let mut h = acquire(&s, "survivor", "workers").await;
    granted(next(&mut h).await);
    s.stop().await;
    let s = Server::start(CONFIG, open(), SystemClock::shared()).await;
    let g = s
        .client()
        .await
        .get_group(pb::GetGroupRequest {
            group: "workers".into(),
        })
        .await
        .unwrap();
    let holders = g.into_inner().group.unwrap().holders;
    assert_eq!(
        holders.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["survivor"]
    );
    s.stop().await;
}

stores::on_each_store!(restart_keeps_holders_on, restart_keeps_holders);

/// A restart as after a process exit: the embedded store file is closed
/// (every handle gone) and opened again from disk by a new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_survive_closing_and_reopening_the_embedded_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store: upshift_store::SharedStore = Arc::new(EmbeddedStore::open(&path).unwrap());
    let handle = Arc::downgrade(&store);
    let s = Server::start(CONFIG, store, SystemClock::shared()).await;
    let mut h = acquire(&s, "grpc-node", "workers").await;
    granted(next(&mut h).await);
    drop(h);
    let resp = reqwest::Client::new()
        .post(s.url("/v1/pre-reboot"))
        .header("fleet-lock-protocol", "true")
        .body(r#"{"client_params":{"id":"http-node","group":"workers"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    s.stop().await;

    // The service's tasks end after the shutdown; then the file is closed.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while handle.strong_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the embedded store was never closed");
    let reopened = Arc::new(EmbeddedStore::open(&path).expect("reopening the closed file"));
    let s = Server::start(CONFIG, reopened, SystemClock::shared()).await;
    let group = s
        .client()
        .await
        .get_group(pb::GetGroupRequest {
            group: "workers".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    let mut holders: Vec<_> = group.holders.iter().map(|h| h.id.as_str()).collect();
    holders.sort_unstable();
    assert_eq!(holders, ["grpc-node", "http-node"]);
    let mut third = acquire(&s, "third", "workers").await;
    assert_eq!(queued(next(&mut third).await).2, "slots-full");
    s.stop().await;
}

async fn pause_window_admin_audit(open: stores::Opener) {
    let s = Server::start(CONFIG, open(), SystemClock::shared()).await;
    let mut admin = s.admin().await;

    // Admin auth.
    let err = admin
        .pause_group(pb::PauseGroupRequest {
            group: "default".into(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut bad = tonic::Request::new(pb::PauseGroupRequest {
        group: "default".into(),
        reason: "x".into(),
    });
    bad.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        admin.pause_group(bad).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let err = admin
        .pause_group(admin_req(pb::PauseGroupRequest {
            group: "default".into(),
            reason: "".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "reason is required");

    // Paused group: queued with reason, granted on resume.
    let g = admin
        .pause_group(admin_req(pb::PauseGroupRequest {
            group: "default".into(),
            reason: "incident 42".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    assert!(g.paused);
    let mut w = s
        .client()
        .await
        .watch_group(pb::WatchGroupRequest {
            group: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = w.next().await.unwrap().unwrap().group.unwrap();
    assert_eq!(first.pause_reason, "incident 42");
    let mut a = acquire(&s, "a", "default").await;
    assert_eq!(queued(next(&mut a).await).2, "paused");
    admin
        .resume_group(admin_req(pb::ResumeGroupRequest {
            group: "default".into(),
            reason: "fixed".into(),
        }))
        .await
        .unwrap();
    assert_eq!(until_granted(&mut a).await.id, "a");
    // WatchGroup saw the resume and then the grant.
    let mut saw_holder = false;
    while !saw_holder {
        let g = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .group
            .unwrap();
        saw_holder = g.holders.iter().any(|h| h.id == "a");
    }

    // Slot changes and force-release.
    let g = admin
        .set_slots(admin_req(pb::SetSlotsRequest {
            group: "default".into(),
            slots: 3,
            reason: "more".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    assert_eq!(g.total_slots, 3);
    let r = admin
        .force_release(admin_req(pb::ForceReleaseRequest {
            group: "default".into(),
            id: "a".into(),
            reason: "stuck".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.released.unwrap().id, "a");
    // An admin call that changes nothing is audited all the same.
    let r = admin
        .force_release(admin_req(pb::ForceReleaseRequest {
            group: "default".into(),
            id: "nobody".into(),
            reason: "cleanup".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.released.is_none());

    let audit = admin
        .list_audit(admin_req(pb::ListAuditRequest {
            group: "default".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<_> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("force-release", "nobody", "held nothing"),
            ("force-release", "a", "released"),
            ("set-slots", "3", "changed"),
            ("grant", "a", ""),
            ("resume", "", "changed"),
            ("pause", "", "changed"),
        ],
        "newest first"
    );
    assert_eq!(audit[0].actor, "token");
    assert_eq!(audit[0].reason, "cleanup");
    assert_eq!(audit[1].reason, "stuck");
    assert!(audit.iter().all(|e| e.at.is_some()));

    // Page by page, the same entries.
    let mut paged = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_audit(admin_req(pb::ListAuditRequest {
                group: "default".into(),
                limit: 4,
                page_token: page_token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 4);
        paged.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(paged, audit);
    let bad = admin
        .list_audit(admin_req(pb::ListAuditRequest {
            page_token: "nonsense".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        admin
            .list_audit(pb::ListAuditRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    s.stop().await;
}

stores::on_each_store!(pause_admin_audit_on, pause_window_admin_audit);

stores::on_each_store!(
    closed_window_denies_on,
    closed_window_denies_over_http_and_grpc
);

async fn closed_window_denies_over_http_and_grpc(open: stores::Opener) {
    use chrono::{Timelike, Utc};
    // A daily one-hour window starting two hours from now (UTC).
    #[allow(clippy::disallowed_methods)]
    let now = Utc::now();
    let start = (now.hour() + 2) % 24;
    let cfg = format!(
        "[groups.win]\nslots = 1\n[[groups.win.windows]]\nstart = \"{start:02}:00\"\nlength = \"1h\"\ntime_zone = \"UTC\"\n"
    );
    let s = Server::start(&cfg, open(), SystemClock::shared()).await;
    let resp = reqwest::Client::new()
        .post(s.url("/v1/pre-reboot"))
        .header("fleet-lock-protocol", "true")
        .body(r#"{"client_params":{"id":"a","group":"win"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CONFLICT);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["kind"], "failed_lock_outside_window");
    let mut a = acquire(&s, "a", "win").await;
    assert_eq!(queued(next(&mut a).await).2, "outside-window");
    let g = s
        .client()
        .await
        .get_group(pb::GetGroupRequest {
            group: "win".into(),
        })
        .await
        .unwrap();
    let g = g.into_inner().group.unwrap();
    assert!(!g.window_open);
    assert!(g.next_window_open.is_some());
    s.stop().await;
}
