//! What FleetLock requests do to the stored record, on each store: a paused
//! group refuses new holders over HTTP (its holders still lock again),
//! requests that change nothing write nothing, and configured slot counts
//! are reconciled at start without evicting holders.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mem.rs"]
mod mem;
#[path = "support/stores.rs"]
mod stores;

use harness::{Server, admin_req};
use reqwest::StatusCode;
use serde_json::Value;
use upshift_common::clock::SystemClock;
use upshift_lock::StoreLayout;
use upshift_lock::layout::Keys;
use upshift_proto::lock::v1 as pb;
use upshift_store::SharedStore;

/// A FleetLock call with Zincati's request shape; status, `kind` (if any)
/// and Content-Type.
async fn fleetlock(
    s: &Server,
    endpoint: &str,
    id: &str,
    group: &str,
) -> (StatusCode, String, Option<String>) {
    let body = serde_json::to_string_pretty(
        &serde_json::json!({"client_params": {"id": id, "group": group}}),
    )
    .unwrap();
    let resp = reqwest::Client::new()
        .post(s.url(&format!("/v1/{endpoint}")))
        .header("fleet-lock-protocol", "true")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    let kind = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, kind, ct)
}

/// The group's record key on the store's root handle, its `mod_revision`
/// and the store revision.
async fn revisions(store: &SharedStore, group: &str) -> (u64, u64) {
    let key = Keys::new(StoreLayout::Upshift, store.key_prefix()).group_key(group);
    let root = store.clone().root();
    let (kvs, store_rev) = root.list(&key).await.unwrap();
    let kv = kvs.iter().find(|kv| kv.key == key).expect("record stored");
    (kv.mod_revision, store_rev)
}

async fn paused_group_refuses_new_holders_over_http(open: stores::Opener) {
    let cfg = "[groups.workers]\nslots = 2\n";
    let s = Server::start(cfg, open(), SystemClock::shared()).await;
    assert_eq!(
        fleetlock(&s, "pre-reboot", "held", "workers").await.0,
        StatusCode::OK
    );
    s.admin()
        .await
        .pause_group(admin_req(pb::PauseGroupRequest {
            group: "workers".into(),
            reason: "incident".into(),
        }))
        .await
        .unwrap();

    let (st, kind, ct) = fleetlock(&s, "pre-reboot", "new", "workers").await;
    assert_eq!(
        (st, kind.as_str()),
        (StatusCode::CONFLICT, "failed_lock_group_paused"),
        "a free slot, but the group is paused"
    );
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(
        fleetlock(&s, "pre-reboot", "held", "workers").await.0,
        StatusCode::OK,
        "a holder locks again while paused (recursive)"
    );
    assert_eq!(
        fleetlock(&s, "steady-state", "held", "workers").await.0,
        StatusCode::OK,
        "releasing is allowed while paused"
    );
    let (state, _, _) = s.service.load("workers").await.unwrap();
    assert!(state.holders.is_empty(), "{state:?}");

    s.admin()
        .await
        .resume_group(admin_req(pb::ResumeGroupRequest {
            group: "workers".into(),
            reason: "over".into(),
        }))
        .await
        .unwrap();
    assert_eq!(
        fleetlock(&s, "pre-reboot", "new", "workers").await.0,
        StatusCode::OK
    );

    // Requests are counted by API and result kind, with latencies.
    let text = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = text.lines().find(|l| {
        l.starts_with("upshift_lock_requests_total{")
            && l.contains(r#"api="fleetlock_pre_reboot""#)
            && l.contains(r#"result="failed_lock_group_paused""#)
    });
    assert!(
        refused.is_some_and(|l| l.ends_with(" 1")),
        "one paused refusal counted: {refused:?}\n{text}"
    );
    assert!(
        text.lines().any(|l| {
            l.starts_with("upshift_lock_request_duration_seconds_count{")
                && l.contains(r#"api="fleetlock_steady_state""#)
        }),
        "{text}"
    );
    s.stop().await;
}

stores::on_each_store!(paused_group_on, paused_group_refuses_new_holders_over_http);

async fn requests_that_change_nothing_write_nothing(open: stores::Opener) {
    let store = open();
    let cfg = "[groups.default]\nslots = 1\n";
    let s = Server::start(cfg, store.clone(), SystemClock::shared()).await;
    assert_eq!(
        fleetlock(&s, "pre-reboot", "node-a", "default").await.0,
        StatusCode::OK
    );
    let before = revisions(&store, "default").await;

    // Lock again, unlock ids that hold nothing, and a refused lock.
    assert_eq!(
        fleetlock(&s, "pre-reboot", "node-a", "default").await.0,
        StatusCode::OK
    );
    for id in ["node-b", "NODE-A"] {
        assert_eq!(
            fleetlock(&s, "steady-state", id, "default").await.0,
            StatusCode::OK
        );
    }
    let (st, kind, _) = fleetlock(&s, "pre-reboot", "node-b", "default").await;
    assert_eq!(
        (st, kind.as_str()),
        (StatusCode::CONFLICT, "failed_lock_semaphore_full")
    );
    assert_eq!(
        revisions(&store, "default").await,
        before,
        "(record mod_revision, store revision): no record, no audit entry written"
    );

    // A real release writes.
    assert_eq!(
        fleetlock(&s, "steady-state", "node-a", "default").await.0,
        StatusCode::OK
    );
    let after = revisions(&store, "default").await;
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "{before:?} -> {after:?}"
    );
    let again = revisions(&store, "default").await;
    assert_eq!(
        fleetlock(&s, "steady-state", "node-a", "default").await.0,
        StatusCode::OK
    );
    assert_eq!(
        revisions(&store, "default").await,
        again,
        "idempotent unlock"
    );
    s.stop().await;
}

stores::on_each_store!(no_write_on, requests_that_change_nothing_write_nothing);

async fn slots_are_reconciled_at_start_and_shrinking_keeps_holders(open: stores::Opener) {
    let s = Server::start("[groups.g]\nslots = 2\n", open(), SystemClock::shared()).await;
    for id in ["a", "b"] {
        assert_eq!(fleetlock(&s, "pre-reboot", id, "g").await.0, StatusCode::OK);
    }
    s.stop().await;

    // Restart with one slot: both holders stay, nobody new gets in until
    // the holders fit.
    let s = Server::start("[groups.g]\nslots = 1\n", open(), SystemClock::shared()).await;
    let (state, _, _) = s.service.load("g").await.unwrap();
    assert_eq!(state.total_slots, 1, "the configured count was written");
    let ids: Vec<_> = state.holders.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"], "shrinking evicts nobody");
    let full = || async { fleetlock(&s, "pre-reboot", "c", "g").await.1 };
    assert_eq!(full().await, "failed_lock_semaphore_full");
    assert_eq!(
        fleetlock(&s, "steady-state", "a", "g").await.0,
        StatusCode::OK
    );
    assert_eq!(
        full().await,
        "failed_lock_semaphore_full",
        "one holder fills the one slot"
    );
    assert_eq!(
        fleetlock(&s, "steady-state", "b", "g").await.0,
        StatusCode::OK
    );
    assert_eq!(
        fleetlock(&s, "pre-reboot", "c", "g").await.0,
        StatusCode::OK
    );
    s.stop().await;

    // Growing again is written at the next start too.
    let s = Server::start("[groups.g]\nslots = 3\n", open(), SystemClock::shared()).await;
    let (state, _, _) = s.service.load("g").await.unwrap();
    assert_eq!(state.total_slots, 3);
    assert_eq!(state.holders.len(), 1);
    s.stop().await;
}

stores::on_each_store!(
    reconcile_on,
    slots_are_reconciled_at_start_and_shrinking_keeps_holders
);

/// A group record that cannot be decoded is reported, not overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_500_store_corrupt_and_left_alone() {
    use upshift_store::{Op, Txn};
    let store = harness::mem_store();
    let key = Keys::new(StoreLayout::Upshift, store.key_prefix()).group_key("default");
    store
        .clone()
        .root()
        .txn(Txn::new().then(Op::put(key.clone(), "{not a record")))
        .await
        .unwrap();
    let s = Server::start(
        "[groups.other]\nslots = 1\n[default]\nslots = 1\n",
        store.clone(),
        SystemClock::shared(),
    )
    .await;
    for endpoint in ["pre-reboot", "steady-state"] {
        let (st, kind, ct) = fleetlock(&s, endpoint, "a", "default").await;
        assert_eq!(
            (st, kind.as_str(), ct.as_deref()),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_corrupt",
                Some("application/json")
            ),
            "{endpoint}"
        );
    }
    let raw = store.clone().root().get(&key).await.unwrap().unwrap().value;
    assert_eq!(raw, b"{not a record");
    assert_eq!(
        fleetlock(&s, "pre-reboot", "a", "other").await.0,
        StatusCode::OK,
        "other groups are unaffected"
    );
    s.stop().await;
}

/// A body announced over the server-wide limit (`[server]
/// max_request_bytes`, 4 MiB) is refused before FleetLock reads it, with the
/// same JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_server_limit_is_a_json_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start(
        "[groups.default]\nslots = 1\n",
        harness::mem_store(),
        SystemClock::shared(),
    )
    .await;
    // Only the head: the server answers from Content-Length alone.
    let head = format!(
        "POST /v1/pre-reboot HTTP/1.1\r\nhost: {}\r\nfleet-lock-protocol: true\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        s.addr,
        5 << 20
    );
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    let response = String::from_utf8_lossy(&response).to_lowercase();
    assert!(response.starts_with("http/1.1 413"), "{response}");
    assert!(
        response.contains("content-type: application/json"),
        "{response}"
    );
    assert!(
        response.contains(r#"{"kind":"body_too_large","value":"#),
        "{response}"
    );
    s.stop().await;
}
