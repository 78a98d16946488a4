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

stores::on_each_store!(airlock_layout_takeover_on, airlock_layout_takeover);

/// Taking over an Airlock deployment in place: its holders stay holders.
async fn airlock_layout_takeover(open: stores::Opener) {
    use upshift_store::{Op, Txn};
    let store = open();
    let key = "com.coreos.airlock/groups/default/v1/semaphore";
    let airlock = r#"{"total_slots":2,"holders":["zz-airlock-node"],"note":"kept"}"#;
    store
        .txn(Txn::new().then(Op::put(key, airlock)))
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
    let raw = store.get(key).await.unwrap().unwrap().value;
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["total_slots"], 2);
    assert_eq!(v["holders"], json!(["a-node", "zz-airlock-node"]));
    assert_eq!(v["note"], "kept");
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
    let v: Value = serde_json::from_slice(&store.get(key).await.unwrap().unwrap().value).unwrap();
    assert_eq!(v["holders"], json!(["a-node"]));
    assert!(
        store
            .get("upshift/lock/groups/default")
            .await
            .unwrap()
            .is_none()
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
