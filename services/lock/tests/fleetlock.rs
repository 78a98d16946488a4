//! FleetLock HTTP conformance over a real listener.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mem.rs"]
mod mem;
#[path = "support/stores.rs"]
mod stores;

use harness::Server;
use reqwest::StatusCode;
use serde_json::{Value, json};
use upshift_common::clock::SystemClock;

const CONFIG: &str = r#"
[groups.default]
slots = 1
[groups.workers]
slots = 2
"#;

/// Exactly what Zincati sends: pretty-printed JSON, no Content-Type.
fn zincati_body(id: &str, group: &str) -> String {
    serde_json::to_string_pretty(&json!({"client_params": {"id": id, "group": group}})).unwrap()
}

async fn post(
    s: &Server,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Option<Value>, Option<String>) {
    let resp = reqwest::Client::new()
        .post(s.url(path))
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
    (status, serde_json::from_str(&text).ok(), ct)
}

fn kind(v: &Option<Value>) -> &str {
    v.as_ref()
        .and_then(|v| v["kind"].as_str())
        .unwrap_or("<none>")
}

async fn conformance(open: stores::Opener) {
    let s = Server::start(CONFIG, open(), SystemClock::shared()).await;

    // Zincati's exact request shape: lock, recursion, full, unlock, idempotent unlock.
    let (st, _, _) = post(&s, "/v1/pre-reboot", zincati_body("node-a", "default")).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = post(&s, "/v1/pre-reboot", zincati_body("node-a", "default")).await;
    assert_eq!(st, StatusCode::OK, "recursive lock");
    let (st, body, ct) = post(&s, "/v1/pre-reboot", zincati_body("node-b", "default")).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(kind(&body), "failed_lock_semaphore_full");
    assert_eq!(ct.as_deref(), Some("application/json"));
    let (st, _, _) = post(&s, "/v1/pre-reboot", zincati_body("NODE-A", "default")).await;
    assert_eq!(st, StatusCode::CONFLICT, "ids are case-sensitive");
    let (st, _, _) = post(&s, "/v1/steady-state", zincati_body("node-b", "default")).await;
    assert_eq!(st, StatusCode::OK, "unlock of a non-holder succeeds");
    let (st, _, _) = post(&s, "/v1/steady-state", zincati_body("node-a", "default")).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = post(&s, "/v1/steady-state", zincati_body("node-a", "default")).await;
    assert_eq!(st, StatusCode::OK, "idempotent unlock");
    let (st, _, _) = post(&s, "/v1/pre-reboot", zincati_body("node-b", "default")).await;
    assert_eq!(st, StatusCode::OK, "slot freed");

    // Older Zincati releases name the id `node_uuid`.
    let old = r#"{"client_params":{"node_uuid":"old-node","group":"workers"}}"#;
    assert_eq!(post(&s, "/v1/pre-reboot", old).await.0, StatusCode::OK);

    // Header.
    let resp = reqwest::Client::new()
        .post(s.url("/v1/pre-reboot"))
        .body(zincati_body("x", "workers"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["kind"], "missing_fleet_lock_header");

    // Methods.
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let resp = reqwest::Client::new()
            .request(method, s.url("/v1/steady-state"))
            .header("fleet-lock-protocol", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["kind"], "method_not_allowed");
    }

    // Bad bodies and params.
    for (body, want_status, want_kind) in [
        (
            "{not json",
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        ("", StatusCode::BAD_REQUEST, "invalid_client_params"),
        (
            r#"{"client_params":{"id":"","group":"default"}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            r#"{"client_params":{"id":"a","group":"bad group!"}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            r#"{"client_params":{"id":"a","group":""}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            r#"{"client_params":{"id":"a"}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
        ),
        (
            r#"{"client_params":{"id":"a","group":"nosuch"}}"#,
            StatusCode::NOT_FOUND,
            "unknown_group",
        ),
    ] {
        let (st, v, ct) = post(&s, "/v1/pre-reboot", body).await;
        assert_eq!((st, kind(&v)), (want_status, want_kind), "body {body:?}");
        assert_eq!(ct.as_deref(), Some("application/json"));
    }

    // Oversized body.
    let big = format!(
        r#"{{"client_params":{{"id":"a","group":"default"}},"pad":"{}"}}"#,
        "x".repeat(20 * 1024)
    );
    let (st, v, _) = post(&s, "/v1/pre-reboot", big).await;
    assert_eq!(
        (st, kind(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );

    // Metrics are exposed.
    let text = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("upshift_lock_requests"), "{text}");
    assert!(text.contains("upshift_lock_holders"), "{text}");
    s.stop().await;
}

stores::on_each_store!(conformance_on, conformance);

/// The bytes Zincati's reqwest client puts on the wire, written by hand.
#[tokio::test]
async fn zincati_wire_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start(CONFIG, harness::mem_store(), SystemClock::shared()).await;
    let body = "{\n  \"client_params\": {\n    \"id\": \"e0f3745b108f471cbd4883c6fbed8cdd\",\n    \"group\": \"default\"\n  }\n}";
    let req = format!(
        "POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: true\r\naccept: */*\r\nhost: {}\r\ncontent-length: {}\r\n\r\n{body}",
        s.addr,
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(conn);
    let (state, _, _) = s.service.load("default").await.unwrap();
    assert_eq!(state.holders[0].id, "e0f3745b108f471cbd4883c6fbed8cdd");
    s.stop().await;
}

#[tokio::test]
async fn base_path_and_default_template() {
    let cfg = "base_path = \"/fleet\"\n[default]\nslots = 1\n";
    let s = Server::start(cfg, harness::mem_store(), SystemClock::shared()).await;
    assert_eq!(
        post(&s, "/fleet/v1/pre-reboot", zincati_body("a", "any.group-1"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        post(&s, "/v1/pre-reboot", zincati_body("a", "any.group-1"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    s.stop().await;
}

stores::on_each_store!(
    airlock_layout_keeps_foreign_fields_on,
    airlock_layout_keeps_foreign_fields
);

/// The Airlock layout on each store: its holders stay holders, our fields go
/// alongside Airlock's, fields of others are kept. The record is read and
/// written through the root handle, at Airlock's exact key.
async fn airlock_layout_keeps_foreign_fields(open: stores::Opener) {
    use upshift_store::{Op, Txn};
    let store = open();
    let root = store.clone().root();
    let key = AIRLOCK_KEY;
    let airlock = r#"{"total_slots":2,"holders":["zz-airlock-node"],"note":"kept"}"#;
    root.txn(Txn::new().then(Op::put(key, airlock)))
        .await
        .unwrap();
    let cfg = "store_layout = \"airlock\"\n[groups.default]\nslots = 2\n";
    let s = Server::start(cfg, store.clone(), SystemClock::shared()).await;
    assert_eq!(
        post(&s, "/v1/pre-reboot", zincati_body("a-node", "default"))
            .await
            .0,
        StatusCode::OK
    );
    let (st, v, _) = post(&s, "/v1/pre-reboot", zincati_body("b-node", "default")).await;
    assert_eq!(
        (st, kind(&v)),
        (StatusCode::CONFLICT, "failed_lock_semaphore_full")
    );
    let raw = root.get(key).await.unwrap().unwrap().value;
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["total_slots"], 2);
    assert_eq!(v["holders"], json!(["a-node", "zz-airlock-node"]));
    assert_eq!(v["note"], "kept");
    let imported = v["upshift_holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == "zz-airlock-node")
        .expect("the Airlock holder gets a record of ours with the next write");
    assert!(
        imported["acquired_at"].as_u64().unwrap() > 0,
        "dated to when it was first seen: {imported}"
    );
    assert_eq!(
        post(
            &s,
            "/v1/steady-state",
            zincati_body("zz-airlock-node", "default")
        )
        .await
        .0,
        StatusCode::OK
    );
    let v: Value = serde_json::from_slice(&root.get(key).await.unwrap().unwrap().value).unwrap();
    assert_eq!(v["holders"], json!(["a-node"]));
    let (own, _) = root.list("").await.unwrap();
    assert!(
        own.iter()
            .all(|kv| !kv.key.contains("upshift/lock/groups/")),
        "no record in our own layout"
    );
    s.stop().await;
}

const AIRLOCK_KEY: &str = "com.coreos.airlock/groups/default/v1/semaphore";

/// Taking over a live Airlock deployment in place on a real etcd, with the
/// default `[store.etcd]` settings (key prefix "/upshift/"): the record
/// Airlock wrote with its own client is honoured and stays where Airlock
/// reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airlock_takeover_on_etcd_with_default_prefix() {
    if upshift_store::testing::skip_etcd() {
        return;
    }
    let etcd = upshift_store::testing::EtcdServer::start().await.unwrap();
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    raw.put(
        AIRLOCK_KEY,
        r#"{"total_slots":1,"holders":["airlock-node"]}"#,
        None,
    )
    .await
    .unwrap();
    let clock = SystemClock::shared();
    let started = clock.now();

    let cfg = format!(
        "store_layout = \"airlock\"\n[groups.default]\nslots = 1\n\
         [store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"{}\"]\n",
        etcd.endpoint()
    );
    let file: upshift_lock::LockConfig = upshift_common::config::parse_toml(&cfg).unwrap();
    assert_eq!(
        file.store.etcd.key_prefix, "/upshift/",
        "the default prefix"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = file.store.open(dir.path()).await.unwrap();
    let s = Server::start(&cfg, store, clock).await;

    let (st, v, _) = post(&s, "/v1/pre-reboot", zincati_body("b-node", "default")).await;
    assert_eq!(
        (st, kind(&v)),
        (StatusCode::CONFLICT, "failed_lock_semaphore_full"),
        "Airlock's holder keeps the only slot"
    );

    // Its age counts from when the service first saw it, not from 1970.
    let group = s
        .client()
        .await
        .get_group(upshift_proto::lock::v1::GetGroupRequest {
            group: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    let holder = &group.holders[0];
    assert_eq!(holder.id, "airlock-node");
    let acquired = holder.acquired_at.unwrap().seconds as u64;
    let started_secs = started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(acquired >= started_secs, "{acquired} < {started_secs}");
    assert!(holder.age.unwrap().seconds < 60);
    let age = s
        .metric("upshift_lock_oldest_holder_age_seconds", "default")
        .await
        .unwrap();
    assert!(age < 60.0, "oldest holder age {age}");

    let (st, _, _) = post(
        &s,
        "/v1/steady-state",
        zincati_body("airlock-node", "default"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "the Airlock holder can release");
    let (st, _, _) = post(&s, "/v1/pre-reboot", zincati_body("b-node", "default")).await;
    assert_eq!(st, StatusCode::OK);

    let value = raw.get(AIRLOCK_KEY, None).await.unwrap().kvs()[0]
        .value()
        .to_vec();
    let v: Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(v["total_slots"], 1);
    assert_eq!(v["holders"], json!(["b-node"]), "where Airlock reads it");
    let prefixed = format!("/upshift/{AIRLOCK_KEY}");
    assert!(raw.get(prefixed, None).await.unwrap().kvs().is_empty());
    let audit = raw
        .get(
            "/upshift/upshift/lock/audit/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(
        audit.kvs().len() >= 2,
        "our own keys stay under the prefix: release and grant audited"
    );
    s.stop().await;
}

#[tokio::test]
async fn store_outage_is_503_store_unavailable() {
    let mem = std::sync::Arc::new(mem::MemStore::new());
    let cfg = "request_timeout = \"300ms\"\n[groups.default]\nslots = 1\n";
    let s = Server::start(cfg, mem.clone(), SystemClock::shared()).await;
    mem.set_failing(true);
    let (st, v, ct) = post(&s, "/v1/pre-reboot", zincati_body("a", "default")).await;
    assert_eq!(
        (st, kind(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
    );
    assert_eq!(ct.as_deref(), Some("application/json"));
    mem.set_failing(false);
    assert_eq!(
        post(&s, "/v1/pre-reboot", zincati_body("a", "default"))
            .await
            .0,
        StatusCode::OK
    );
    let text = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("upshift_lock_store_errors"), "{text}");
    s.stop().await;
}

/// A configured group shows on /metrics before anyone ever locked it (no
/// stored record yet): its configured slots, no holder, no queue.
#[tokio::test]
async fn configured_groups_are_exported_before_their_first_lock() {
    let s = Server::start(CONFIG, harness::mem_store(), SystemClock::shared()).await;
    let (_, rev, _) = s.service.load("workers").await.unwrap();
    assert_eq!(rev, 0, "no record stored yet");
    for (name, value) in [
        ("upshift_lock_slots", 2.0),
        ("upshift_lock_holders", 0.0),
        ("upshift_lock_oldest_holder_age_seconds", 0.0),
        ("upshift_lock_queue_length", 0.0),
    ] {
        assert_eq!(s.metric(name, "workers").await, Some(value), "{name}");
    }
    assert_eq!(s.metric("upshift_lock_slots", "default").await, Some(1.0));
    // After a first lock the stored record is what is reported.
    let (st, _, _) = post(&s, "/v1/pre-reboot", zincati_body("a", "workers")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(s.metric("upshift_lock_holders", "workers").await, Some(1.0));
    assert_eq!(s.metric("upshift_lock_slots", "workers").await, Some(2.0));
    s.stop().await;
}
