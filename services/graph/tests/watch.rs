//! WatchGraph over a catalog fed directly (no sources, no listener): what
//! a slow consumer gets, every scope at once, and resuming after a revision.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use upshift_proto::graph::v1 as pb;

fn fixture(path: &str) -> Vec<u8> {
    let root =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/fcos/stable");
    std::fs::read(root.join(path)).unwrap()
}

fn x86() -> pb::Scope {
    pb::Scope {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: 0,
    }
}

/// A WatchGraph consumer that does not read while several revisions are
/// published gets the latest one next, and nothing queued behind it.
#[tokio::test]
async fn a_slow_watch_graph_consumer_gets_the_latest_revision_not_a_backlog() {
    use upshift_graph::catalog::{Applied, Catalog, ScopeKey};
    use upshift_graph::source::{RawMetadata, SourceEvent};
    use upshift_proto::graph::v1::graph_service_server::GraphService as _;

    let event = |revision: &str| SourceEvent {
        stream: "stable".into(),
        result: Ok(RawMetadata {
            releases: fixture("releases.json").into(),
            updates: fixture(&format!("updates-history/{revision}.json")).into(),
            releases_from: "releases.json".into(),
            updates_from: "updates.json".into(),
        }),
    };
    let mut catalog = Catalog::new(
        [("stable".to_string(), "test".to_string(), Vec::new())],
        None,
    );
    let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    assert!(matches!(
        catalog.apply(event("010"), at),
        Applied::Changed(..)
    ));
    let shutdown = CancellationToken::new();
    let grpc = upshift_graph::grpc::GraphGrpc::new(catalog.subscribe(), shutdown.clone());
    let mut stream = grpc
        .watch_graph(tonic::Request::new(pb::WatchGraphRequest {
            scopes: vec![x86()],
            since_revision: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let revision_of = |m: Option<Result<pb::WatchGraphResponse, tonic::Status>>| {
        m.expect("a message").unwrap().graph.unwrap().revision
    };
    let first = revision_of(stream.next().await);

    // Four more revisions while the consumer does not read.
    for revision in ["017", "026", "030", "058"] {
        let applied = catalog.apply(event(revision), at);
        assert!(matches!(applied, Applied::Changed(..)), "{applied:?}");
    }
    let key = ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: upshift_cincinnati::graph::PayloadScheme::Checksum,
    };
    let latest = catalog.snapshot().scopes[&key].revision;
    assert!(latest >= first + 4, "{first} -> {latest}");
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the latest revision");
    assert_eq!(revision_of(next), latest, "skips the revisions in between");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err(),
        "nothing is queued behind the latest graph"
    );
    shutdown.cancel();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream ends at shutdown")
            .is_none()
    );
}

/// WatchGraph with no scope follows every scope; `since_revision` skips
/// the graphs the caller already has.
#[tokio::test]
async fn watch_graph_of_all_scopes_resumes_after_since_revision() {
    use upshift_graph::catalog::Catalog;
    use upshift_graph::source::{RawMetadata, SourceEvent};
    use upshift_proto::graph::v1::graph_service_server::GraphService as _;

    let event = |revision: &str| SourceEvent {
        stream: "stable".into(),
        result: Ok(RawMetadata {
            releases: fixture("releases.json").into(),
            updates: fixture(&format!("updates-history/{revision}.json")).into(),
            releases_from: "releases.json".into(),
            updates_from: "updates.json".into(),
        }),
    };
    let mut catalog = Catalog::new(
        [("stable".to_string(), "test".to_string(), Vec::new())],
        None,
    );
    let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    catalog.apply(event("058"), at);
    let current = catalog.snapshot().revision;
    let grpc = upshift_graph::grpc::GraphGrpc::new(catalog.subscribe(), CancellationToken::new());
    let watch = |since_revision| {
        grpc.watch_graph(tonic::Request::new(pb::WatchGraphRequest {
            scopes: Vec::new(),
            since_revision,
        }))
    };
    let scope_of = |m: pb::WatchGraphResponse| {
        let g = m.graph.unwrap();
        let s = g.scope.unwrap();
        (s.basearch, s.scheme, g.revision)
    };

    // From scratch: every scope at once.
    let mut all = watch(0).await.unwrap().into_inner();
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = tokio::time::timeout(Duration::from_secs(5), all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(scope_of(m));
    }
    got.sort();
    let (checksum, oci) = (
        pb::PayloadScheme::Checksum as i32,
        pb::PayloadScheme::Oci as i32,
    );
    assert_eq!(
        got,
        [
            ("aarch64".to_string(), checksum, current),
            ("aarch64".to_string(), oci, current),
            ("x86_64".to_string(), checksum, current),
            ("x86_64".to_string(), oci, current),
        ]
    );

    // Resuming at the current revision: nothing until something changes.
    let mut resumed = watch(current).await.unwrap().into_inner();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), resumed.next())
            .await
            .is_err(),
        "nothing new since {current}"
    );
    catalog.apply(event("026"), at);
    let m = tokio::time::timeout(Duration::from_secs(5), resumed.next())
        .await
        .expect("the new revision")
        .unwrap()
        .unwrap();
    assert!(scope_of(m).2 > current);
}
