//! The graph service in process: a polled HTTP source with ETags, and a
//! watched directory feeding WatchGraph, served through the real host.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use upshift_common::clock::SystemClock;
use upshift_common::server::{Readiness, ServiceHost};
use upshift_common::telemetry::Metrics;
use upshift_graph::GraphService;
use upshift_graph::config::{GraphConfig, StreamSource};
use upshift_proto::graph::v1 as pb;
use upshift_proto::graph::v1::graph_service_client::GraphServiceClient;

fn fixture(path: &str) -> Vec<u8> {
    let root =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/fcos/stable");
    std::fs::read(root.join(path)).unwrap()
}

/// A metadata server that honours If-None-Match and counts full responses.
#[derive(Clone, Default)]
struct Origin {
    updates: Arc<Mutex<(Vec<u8>, u32)>>,
    full_responses: Arc<AtomicUsize>,
    conditional_hits: Arc<AtomicUsize>,
}

async fn serve_origin(origin: Origin) -> String {
    let releases = fixture("releases.json");
    let app = axum::Router::new()
        .route(
            "/stable/releases.json",
            axum::routing::get(move || {
                let releases = releases.clone();
                async move { ([(header::ETAG, "\"releases-1\"")], releases) }
            }),
        )
        .route(
            "/stable/updates.json",
            axum::routing::get({
                let origin = origin.clone();
                move |headers: HeaderMap| {
                    let origin = origin.clone();
                    async move {
                        let (body, version) = origin.updates.lock().await.clone();
                        let etag = format!("\"updates-{version}\"");
                        if headers
                            .get(header::IF_NONE_MATCH)
                            .is_some_and(|v| v == etag.as_str())
                        {
                            origin.conditional_hits.fetch_add(1, Ordering::SeqCst);
                            return StatusCode::NOT_MODIFIED.into_response();
                        }
                        origin.full_responses.fetch_add(1, Ordering::SeqCst);
                        ([(header::ETAG, etag)], body).into_response()
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/")
}

async fn host(config: &GraphConfig) -> (String, CancellationToken) {
    host_with_debounce(config, Duration::from_millis(50)).await
}

async fn host_with_debounce(
    config: &GraphConfig,
    debounce: Duration,
) -> (String, CancellationToken) {
    let streams = config.validate().expect("valid config");
    let metrics = Metrics::new("graph-test");
    let readiness = Readiness::new();
    let builder = ServiceHost::builder("graph", metrics.clone(), SystemClock::shared())
        .readiness(readiness.clone())
        .grpc_service_names(upshift_graph::GRPC_SERVICES);
    let shutdown = builder.shutdown_token();
    let service = GraphService::start(
        streams,
        debounce,
        None,
        SystemClock::shared(),
        &metrics.meter(),
        readiness,
        shutdown.clone(),
    );
    let server = builder
        .grpc(tonic::service::Routes::new(service.grpc()))
        .http(service.http())
        .bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.serve(std::future::pending()));
    (url, shutdown)
}

fn x86() -> pb::Scope {
    pb::Scope {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: 0,
    }
}

#[tokio::test]
async fn polled_urls_use_etags_and_pick_up_changes() {
    let origin = Origin::default();
    *origin.updates.lock().await = (fixture("updates-history/010.json"), 1);
    let base = serve_origin(origin.clone()).await;
    let mut config = GraphConfig::default();
    config
        .add_metadata_flag(&base, &["stable".to_string()])
        .unwrap();
    config.streams.get_mut("stable").unwrap().poll_interval = Some(Duration::from_millis(100));
    let (url, _shutdown) = host(&config).await;

    let mut client = GraphServiceClient::connect(url).await.unwrap();
    let mut watch = client
        .watch_graph(pb::WatchGraphRequest {
            scopes: vec![x86()],
            since_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap().graph.unwrap();

    // Unchanged content is revalidated with If-None-Match, not refetched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(origin.conditional_hits.load(Ordering::SeqCst) >= 2);
    assert_eq!(origin.full_responses.load(Ordering::SeqCst), 1);

    *origin.updates.lock().await = (fixture("updates-history/026.json"), 2);
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let next = next.graph.unwrap();
    assert!(next.revision > first.revision);
    assert_ne!(next.digest, first.digest);
}

#[tokio::test]
async fn a_stream_that_never_loaded_is_unavailable_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stable");
    std::fs::create_dir_all(&stream).unwrap();
    std::fs::write(stream.join("releases.json"), fixture("releases.json")).unwrap();
    let mut config = GraphConfig::default();
    config.streams.insert(
        "stable".into(),
        StreamSource {
            dir: Some(stream.clone()),
            ..Default::default()
        },
    );
    let (url, _shutdown) = host(&config).await;

    let mut client = GraphServiceClient::connect(url.clone()).await.unwrap();
    let status = loop {
        match client
            .get_graph(pb::GetGraphRequest { scope: Some(x86()) })
            .await
        {
            Err(status) if status.message().contains("updates.json") => break status,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);

    // The missing file appears: the stream loads, and the service turns ready.
    std::fs::write(
        stream.join("updates.json"),
        fixture("updates-history/026.json"),
    )
    .unwrap();
    let graph = loop {
        if let Ok(response) = client
            .get_graph(pb::GetGraphRequest { scope: Some(x86()) })
            .await
        {
            break response.into_inner().graph.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!graph.nodes.is_empty());
    assert_eq!(
        reqwest::get(format!("{url}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
}

/// One broken source does not take the other streams off a load balancer:
/// once every stream has been tried and one has loaded, the service is
/// ready, and the broken stream answers `unavailable` with its reason.
#[tokio::test]
async fn a_broken_stream_does_not_make_the_others_unready() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("stable");
    let broken = dir.path().join("testing");
    for d in [&good, &broken] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("releases.json"), fixture("releases.json")).unwrap();
    }
    std::fs::write(
        good.join("updates.json"),
        fixture("updates-history/026.json"),
    )
    .unwrap();
    std::fs::write(broken.join("updates.json"), b"{ not json").unwrap();
    let mut config = GraphConfig::default();
    for (name, d) in [("stable", &good), ("testing", &broken)] {
        config.streams.insert(
            name.into(),
            StreamSource {
                dir: Some(d.clone()),
                ..Default::default()
            },
        );
    }
    let (url, _shutdown) = host(&config).await;
    let mut ready = 0;
    for _ in 0..250 {
        ready = reqwest::get(format!("{url}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16();
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 200, "stable loaded, testing was tried and rejected");
    let mut client = GraphServiceClient::connect(url).await.unwrap();
    let testing = client
        .get_graph(pb::GetGraphRequest {
            scope: Some(pb::Scope {
                stream: "testing".into(),
                ..x86()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(testing.code(), tonic::Code::Unavailable);
    assert!(
        testing.message().contains("updates.json"),
        "{}",
        testing.message()
    );
    let stable = client
        .get_graph(pb::GetGraphRequest { scope: Some(x86()) })
        .await
        .unwrap();
    assert!(!stable.into_inner().graph.unwrap().nodes.is_empty());
}

/// The value of `name{...}` whose labels include every one of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn metrics_text(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A watched directory in process: a bad edit is rejected (status RPC and
/// metrics say so) while the last good graph keeps serving; a good edit
/// reaches an open WatchGraph as a new revision, and the per-scope gauges
/// follow.
#[tokio::test]
async fn a_watched_directory_reloads_rejects_bad_edits_and_reports_them_on_metrics() {
    const SCOPE: [(&str, &str); 3] = [
        ("stream", "stable"),
        ("basearch", "x86_64"),
        ("scheme", "checksum"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stable");
    std::fs::create_dir_all(&stream).unwrap();
    std::fs::write(stream.join("releases.json"), fixture("releases.json")).unwrap();
    let updates = stream.join("updates.json");
    std::fs::write(&updates, fixture("updates-history/010.json")).unwrap();
    let mut config = GraphConfig::default();
    config.streams.insert(
        "stable".into(),
        StreamSource {
            dir: Some(stream.clone()),
            ..Default::default()
        },
    );
    let (url, _shutdown) = host(&config).await;
    let mut client = GraphServiceClient::connect(url.clone()).await.unwrap();
    let mut watch = client
        .watch_graph(pb::WatchGraphRequest {
            scopes: vec![x86()],
            since_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .graph
        .unwrap();

    let text = metrics_text(&url).await;
    assert_eq!(
        metric(&text, "upshift_graph_nodes", &SCOPE),
        Some(first.nodes.len() as f64),
        "{text}"
    );
    assert_eq!(
        metric(&text, "upshift_graph_edges", &SCOPE),
        Some(first.edges.len() as f64)
    );
    assert_eq!(
        metric(&text, "upshift_graph_revision", &SCOPE),
        Some(first.revision as f64)
    );
    let stable = [("stream", "stable")];
    assert!(
        metric(
            &text,
            "upshift_graph_last_success_timestamp_seconds",
            &stable
        )
        .is_some_and(|t| t > 1.0e9),
        "{text}"
    );
    assert_eq!(
        metric(&text, "upshift_graph_source_rejected", &stable),
        Some(0.0)
    );

    // A malformed edit: rejected as a whole, visible, last good graph stays.
    std::fs::write(&updates, b"{ not json").unwrap();
    let status = loop {
        let status = client
            .get_source_status(pb::GetSourceStatusRequest {
                stream: "stable".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .sources
            .remove(0);
        if status.state == pb::SourceState::Rejected as i32 {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.error_file, updates.display().to_string());
    assert_eq!(status.error_kind, "parse");
    let still = client
        .get_graph(pb::GetGraphRequest { scope: Some(x86()) })
        .await
        .unwrap()
        .into_inner()
        .graph
        .unwrap();
    assert_eq!(
        (still.revision, &still.digest),
        (first.revision, &first.digest)
    );
    let text = metrics_text(&url).await;
    assert!(
        metric(
            &text,
            "upshift_graph_load_errors_total",
            &[("stream", "stable"), ("kind", "parse")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "upshift_graph_source_rejected", &stable),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "upshift_graph_revision", &SCOPE),
        Some(first.revision as f64)
    );

    // A good edit reaches the open stream as a new revision.
    std::fs::write(&updates, fixture("updates-history/026.json")).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a new revision after the edit")
        .unwrap()
        .unwrap()
        .graph
        .unwrap();
    assert!(next.revision > first.revision);
    assert_ne!(next.digest, first.digest);
    let text = metrics_text(&url).await;
    assert_eq!(
        metric(&text, "upshift_graph_revision", &SCOPE),
        Some(next.revision as f64)
    );
    assert_eq!(
        metric(&text, "upshift_graph_edges", &SCOPE),
        Some(next.edges.len() as f64)
    );
    assert_eq!(
        metric(&text, "upshift_graph_source_rejected", &stable),
        Some(0.0)
    );
}

/// Edits in quick succession are read once the directory has been quiet for
/// the debounce time: a half-written (malformed) state and an intermediate
/// revision in between are never loaded.
#[tokio::test]
async fn a_burst_of_edits_is_loaded_once_after_the_debounce() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stable");
    std::fs::create_dir_all(&stream).unwrap();
    std::fs::write(stream.join("releases.json"), fixture("releases.json")).unwrap();
    let updates = stream.join("updates.json");
    std::fs::write(&updates, fixture("updates-history/010.json")).unwrap();
    let mut config = GraphConfig::default();
    config.streams.insert(
        "stable".into(),
        StreamSource {
            dir: Some(stream.clone()),
            ..Default::default()
        },
    );
    let (url, _shutdown) = host_with_debounce(&config, Duration::from_millis(500)).await;
    let mut client = GraphServiceClient::connect(url.clone()).await.unwrap();
    let mut watch = client
        .watch_graph(pb::WatchGraphRequest {
            scopes: vec![x86()],
            since_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .graph
        .unwrap();

    for content in [
        b"{ \"stream\": ".to_vec(),
        fixture("updates-history/017.json"),
        fixture("updates-history/026.json"),
    ] {
        std::fs::write(&updates, content).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the burst is loaded")
        .unwrap()
        .unwrap()
        .graph
        .unwrap();
    assert_eq!(next.revision, first.revision + 1, "one load for the burst");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), watch.next())
            .await
            .is_err(),
        "no second revision"
    );
    let text = metrics_text(&url).await;
    assert_eq!(
        metric(
            &text,
            "upshift_graph_loads_total",
            &[("stream", "stable"), ("outcome", "changed")]
        ),
        Some(2.0),
        "the first load and the burst: {text}"
    );
    assert!(
        metric(
            &text,
            "upshift_graph_load_errors_total",
            &[("stream", "stable")]
        )
        .is_none(),
        "the half-written file was never read: {text}"
    );
    let status = client
        .get_source_status(pb::GetSourceStatusRequest {
            stream: "stable".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sources
        .remove(0);
    assert_eq!(status.state, pb::SourceState::Ok as i32);
}

/// `--metadata` is repeatable: each directory adds its streams (one
/// subdirectory each), and together they are enough to run the service.
#[tokio::test]
async fn repeated_metadata_flags_add_their_streams_together() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (root, stream) in [(&a, "stable"), (&b, "testing")] {
        let dir = root.path().join(stream);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("releases.json"), fixture("releases.json")).unwrap();
        std::fs::write(
            dir.join("updates.json"),
            fixture("updates-history/026.json"),
        )
        .unwrap();
    }
    std::fs::create_dir_all(b.path().join("not-a-stream")).unwrap();
    let mut config = GraphConfig::default();
    for root in [&a, &b] {
        config
            .add_metadata_flag(root.path().to_str().unwrap(), &[])
            .unwrap();
    }
    assert_eq!(
        config.streams.keys().collect::<Vec<_>>(),
        ["stable", "testing"]
    );
    let (url, _shutdown) = host(&config).await;
    let mut client = GraphServiceClient::connect(url).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..500 {
        let scopes = client
            .list_scopes(pb::ListScopesRequest {})
            .await
            .unwrap()
            .into_inner()
            .scopes;
        streams = scopes
            .into_iter()
            .map(|s| s.scope.unwrap().stream)
            .collect();
        streams.dedup();
        if streams.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(streams, ["stable", "testing"]);
    let empty = tempfile::tempdir().unwrap();
    let err = config
        .add_metadata_flag(empty.path().to_str().unwrap(), &[])
        .unwrap_err();
    assert!(err.contains("no subdirectory holds both"), "{err}");
}

/// An origin that sends `Last-Modified` and no ETag is revalidated with
/// `If-Modified-Since`: its files are fetched in full once.
#[tokio::test]
async fn polled_urls_without_etags_use_if_modified_since() {
    const MODIFIED: &str = "Wed, 21 Oct 2025 07:28:00 GMT";
    let full = Arc::new(AtomicUsize::new(0));
    let revalidated = Arc::new(AtomicUsize::new(0));
    let route = |body: Vec<u8>| {
        let (full, revalidated) = (full.clone(), revalidated.clone());
        axum::routing::get(move |headers: HeaderMap| {
            let (body, full, revalidated) = (body.clone(), full.clone(), revalidated.clone());
            async move {
                if headers
                    .get(header::IF_MODIFIED_SINCE)
                    .is_some_and(|v| v == MODIFIED)
                {
                    revalidated.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::NOT_MODIFIED.into_response();
                }
                full.fetch_add(1, Ordering::SeqCst);
                ([(header::LAST_MODIFIED, MODIFIED)], body).into_response()
            }
        })
    };
    let app = axum::Router::new()
        .route("/stable/releases.json", route(fixture("releases.json")))
        .route(
            "/stable/updates.json",
            route(fixture("updates-history/026.json")),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut config = GraphConfig::default();
    config
        .add_metadata_flag(&base, &["stable".to_string()])
        .unwrap();
    config.streams.get_mut("stable").unwrap().poll_interval = Some(Duration::from_millis(100));
    let (url, _shutdown) = host(&config).await;
    let mut client = GraphServiceClient::connect(url).await.unwrap();
    let mut loaded = false;
    for _ in 0..250 {
        if client
            .get_graph(pb::GetGraphRequest { scope: Some(x86()) })
            .await
            .is_ok()
        {
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(loaded, "the polled stream never loaded");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        full.load(Ordering::SeqCst),
        2,
        "each file fetched in full once"
    );
    assert!(
        revalidated.load(Ordering::SeqCst) >= 4,
        "both files revalidated on later polls: {}",
        revalidated.load(Ordering::SeqCst)
    );
}
