use std::time::Duration;

use axum::body::Body;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as Hs;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use super::*;
use crate::clock::SystemClock;

const GRAPH: &str = "upshift.graph.v1.GraphService";

struct Running {
    addr: SocketAddr,
    readiness: Readiness,
    stop: CancellationToken,
    handle: JoinHandle<std::io::Result<()>>,
}

/// An HTTP route streaming chunks until the host's shutdown token fires.
fn stream_route(token: CancellationToken) -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|peer: Option<axum::Extension<PeerIdentity>>| async move {
                peer.and_then(|p| p.0.common_name).unwrap_or_else(|| "anonymous".into())
            }),
        )
        .route(
        "/stream",
        get(move || {
            let token = token.clone();
            async move {
                let ticks = futures::stream::unfold(token, |t| async move {
                    tokio::select! {
                        () = t.cancelled() => None,
                        () = tokio::time::sleep(Duration::from_millis(20)) =>
                            Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"tick\n")), t)),
                    }
                });
                Body::from_stream(ticks)
            }
        }),
    )
}

async fn start(tls: Option<TlsSettings>) -> Running {
    let readiness = Readiness::new();
    let builder = ServiceHost::builder("test", Metrics::new("test"), SystemClock::shared())
        .grpc_service_names(&[GRAPH])
        .readiness(readiness.clone());
    let token = builder.shutdown_token();
    let settings = ServerSettings {
        shutdown_grace: Duration::from_secs(2),
        ..Default::default()
    };
    let bound = builder
        .http(stream_route(token))
        .settings(&settings)
        .bind("127.0.0.1:0".parse().unwrap(), tls)
        .await
        .unwrap();
    let addr = bound.local_addr();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let handle = tokio::spawn(bound.serve(async move { s.cancelled().await }));
    Running {
        addr,
        readiness,
        stop,
        handle,
    }
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health(addr: SocketAddr, service: &str) -> Hs {
    let mut client = HealthClient::new(channel(addr).await);
    let resp = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    Hs::try_from(resp.into_inner().status).unwrap()
}

#[tokio::test]
async fn http_health_readiness_and_metrics() {
    let srv = start(None).await;
    let base = format!("http://{}", srv.addr);
    let http = reqwest::Client::new();
    let get = |p: &str| http.get(format!("{base}{p}")).send();

    let r = get("/healthz").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");

    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "starting");
    assert_eq!(health(srv.addr, "").await, Hs::NotServing);

    srv.readiness.set_ready();
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(health(srv.addr, "").await, Hs::Serving);
    assert_eq!(health(srv.addr, GRAPH).await, Hs::Serving);

    srv.readiness.set_not_ready("store unreachable");
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "store unreachable");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(health(srv.addr, GRAPH).await, Hs::NotServing);

    let r = get("/no/such/page").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"kind":"not_found","value":"/no/such/page"}"#
    );

    let unknown = HealthClient::new(channel(srv.addr).await)
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let r = get("/metrics").await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4");
    let text = r.text().await.unwrap();
    assert!(
        text.contains(
            r#"upshift_http_server_requests_total{method="GET",route="/readyz",status_class="5xx"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("upshift_http_server_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"upshift_grpc_server_requests_total{code="Ok",rpc="/grpc.health.v1.Health/Check"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"upshift_grpc_server_requests_total{code="NotFound",rpc="/grpc.health.v1.Health/Check"} 1"#),
        "{text}"
    );
    srv.stop.cancel();
    srv.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn reflection_lists_only_advertised_services() {
    let srv = start(None).await;
    let mut client = ServerReflectionClient::new(channel(srv.addr).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = client
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection response {msg:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert!(names.contains(&GRAPH.to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    assert!(
        names.iter().all(|n| n == GRAPH
            || n == "grpc.health.v1.Health"
            || n.starts_with("grpc.reflection.")),
        "advertises services it does not implement: {names:?}"
    );
    srv.stop.cancel();
    srv.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_ends_streams_and_returns() {
    let srv = start(None).await;
    let resp = reqwest::get(format!("http://{}/stream", srv.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(resp.text());
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.stop.cancel();
    let body = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(body.starts_with("tick\n"), "{body}");
    tokio::time::timeout(Duration::from_secs(5), srv.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn tls_serves_http1_and_grpc() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let srv = start(Some(TlsSettings {
        cert,
        key,
        client_ca: None,
    }))
    .await;
    srv.readiness.set_ready();

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    let r = http
        .get(format!("https://localhost:{}/healthz", srv.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.text().await.unwrap(), "ok");

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ck.cert.pem()))
        .domain_name("localhost");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", srv.addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(resp.into_inner().status, Hs::Serving as i32);
    srv.stop.cancel();
    srv.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn mtls_client_cert_is_optional_and_identified() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let server = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test client ca");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut leaf_params = CertificateParams::new(vec!["ops-admin".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "ops-admin");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();

    let tls = TlsSettings {
        cert: write("cert.pem", server.cert.pem()),
        key: write("key.pem", server.key_pair.serialize_pem()),
        client_ca: Some(write("ca.pem", ca.pem())),
    };
    let srv = start(Some(tls)).await;
    let url = format!("https://localhost:{}/whoami", srv.addr.port());
    let root = reqwest::Certificate::from_pem(server.cert.pem().as_bytes()).unwrap();

    let anonymous = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .build()
        .unwrap();
    assert_eq!(
        anonymous
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "anonymous"
    );

    let identity = reqwest::Identity::from_pem(
        format!("{}{}", leaf.pem(), leaf_key.serialize_pem()).as_bytes(),
    )
    .unwrap();
    let admin = reqwest::Client::builder()
        .add_root_certificate(root)
        .identity(identity)
        .build()
        .unwrap();
    assert_eq!(
        admin.get(&url).send().await.unwrap().text().await.unwrap(),
        "ops-admin"
    );
    srv.stop.cancel();
    srv.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn grpcurl_lists_advertised_services() {
    let Some(grpcurl) = crate::testing::find_on_path("grpcurl") else {
        return;
    };
    let srv = start(None).await;
    let out = tokio::process::Command::new(grpcurl)
        .args(["-plaintext", &srv.addr.to_string(), "list"])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<&str> = listed
        .lines()
        .filter(|l| !l.starts_with("grpc.reflection."))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["grpc.health.v1.Health", GRAPH]);
    srv.stop.cancel();
    srv.handle.await.unwrap().unwrap();
}

/// Requests stopped by the body limit or the timeout get the same JSON
/// error body as every other HTTP error.
#[tokio::test]
async fn body_limit_and_timeout_errors_are_json() {
    let builder = ServiceHost::builder("test", Metrics::new("test"), SystemClock::shared());
    let settings = ServerSettings {
        max_request_bytes: 1024,
        request_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let routes = Router::new()
        .route(
            "/echo",
            axum::routing::post(|body: bytes::Bytes| async move { body }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
    let bound = builder
        .http(routes)
        .settings(&settings)
        .bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let base = format!("http://{}", bound.local_addr());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let handle = tokio::spawn(bound.serve(async move { s.cancelled().await }));
    let http = reqwest::Client::new();

    let ok = http
        .post(format!("{base}/echo"))
        .body(vec![b'x'; 512])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for (request, status, kind) in [
        (
            http.post(format!("{base}/echo")).body(vec![b'x'; 4096]),
            413,
            "body_too_large",
        ),
        (http.get(format!("{base}/slow")), 408, "request_timeout"),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["content-type"], "application/json");
        let text = r.text().await.unwrap();
        let prefix = format!(r#"{{"kind":"{kind}","value":""#);
        assert!(
            text.starts_with(&prefix) && text.len() > prefix.len() + 2,
            "{text}"
        );
    }
    stop.cancel();
    handle.await.unwrap().unwrap();
}
