//! A served instance: graph follower against a fake graph service, gRPC and
//! HTTP on one listener, two replicas sharing a store, and grpcurl.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use upshift_cincinnati::codec::CincinnatiGraph;
use upshift_cincinnati::graph::Graph;
use upshift_common::auth::AdminAuth;
use upshift_common::clock::SystemClock;
use upshift_common::telemetry::Metrics;
use upshift_policy::store::{MemoryStore, SharedKv};
use upshift_proto::graph::v1 as gpb;
use upshift_proto::policy::v1 as pb;
use upshift_proto::policy::v1::policy_service_client::PolicyServiceClient;
use upshift_proto::policy::v1::rollout_admin_service_client::RolloutAdminServiceClient;

use support::*;

/// A graph service that streams whatever graph its channel holds.
#[derive(Clone)]
struct FakeGraph(watch::Receiver<Option<gpb::Graph>>, CancellationToken);

type GraphStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<gpb::WatchGraphResponse, Status>> + Send>>;

#[tonic::async_trait]
impl gpb::graph_service_server::GraphService for FakeGraph {
    async fn get_graph(
        &self,
        _: Request<gpb::GetGraphRequest>,
    ) -> Result<Response<gpb::GetGraphResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type WatchGraphStream = GraphStream;
    async fn watch_graph(
        &self,
        _: Request<gpb::WatchGraphRequest>,
    ) -> Result<Response<GraphStream>, Status> {
        let (rx, stop) = (self.0.clone(), self.1.clone());
        // Streams end at stop so a graceful shutdown completes.
        let s = futures::stream::unfold((rx, true), move |(mut rx, first)| {
            let stop = stop.clone();
            async move {
                if !first {
                    tokio::select! {
                        r = rx.changed() => r.ok()?,
                        _ = stop.cancelled() => return None,
                    }
                }
                let g = rx.borrow_and_update().clone();
                Some((g, (rx, false)))
            }
        });
        let s = futures::StreamExt::filter_map(s, |g| async move {
            g.map(|graph| Ok(gpb::WatchGraphResponse { graph: Some(graph) }))
        });
        Ok(Response::new(Box::pin(s)))
    }
    async fn list_scopes(
        &self,
        _: Request<gpb::ListScopesRequest>,
    ) -> Result<Response<gpb::ListScopesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_source_status(
        &self,
        _: Request<gpb::GetSourceStatusRequest>,
    ) -> Result<Response<gpb::GetSourceStatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

fn graph_proto(g: &Graph, revision: u64) -> gpb::Graph {
    gpb::Graph {
        scope: Some(gpb::Scope {
            stream: "stable".into(),
            basearch: "x86_64".into(),
            scheme: gpb::PayloadScheme::Checksum as i32,
        }),
        revision,
        nodes: g
            .nodes()
            .iter()
            .map(|n| gpb::Release {
                version: n.version.clone(),
                payload: n.payload.clone(),
                metadata: n.metadata.clone().into_iter().collect(),
            })
            .collect(),
        edges: g
            .edges()
            .iter()
            .map(|&(from, to)| gpb::Edge { from, to })
            .collect(),
        built_at: None,
        digest: String::new(),
    }
}

async fn serve_fake(
    listener: tokio::net::TcpListener,
    rx: watch::Receiver<Option<gpb::Graph>>,
    stop: CancellationToken,
) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(gpb::graph_service_server::GraphServiceServer::new(
            FakeGraph(rx, stop.clone()),
        ))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .unwrap();
}

struct Served {
    addr: SocketAddr,
    svc: upshift_policy::PolicyService,
    stop: CancellationToken,
}

async fn serve_policy(graph_url: &str, store: SharedKv) -> Served {
    let mut c = config(Duration::from_secs(1), Duration::from_secs(600));
    c.graph_url = Some(graph_url.to_owned());
    let admin = AdminAuth::new(Some(TOKEN.into()), Vec::new());
    let srv = upshift_policy::bind(
        &c,
        store,
        SystemClock::shared(),
        Metrics::new("policy-test"),
        admin,
    )
    .await
    .unwrap();
    let addr = srv.bound.local_addr();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(srv.bound.serve(async move { s.cancelled().await }));
    Served {
        addr,
        svc: srv.service,
        stop,
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn graph_now_rollout() -> Graph {
    // 1.0 -> 2.0 rolled out to everyone already (started long ago).
    let nodes = vec![
        node("1.0", 0, &[]),
        node(
            "2.0",
            1,
            &[
                ("rollout", "true"),
                ("start_epoch", "1000"),
                ("start_value", "0"),
                ("duration_minutes", "1"),
            ],
        ),
    ];
    Graph::new(nodes, vec![(0, 1)]).unwrap()
}

fn admin_req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

#[tokio::test]
async fn follows_the_graph_service_and_serves_http_and_grpc() {
    let (gtx, grx) = watch::channel(Some(graph_proto(&graph_now_rollout(), 1)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gaddr = listener.local_addr().unwrap();
    let gstop = CancellationToken::new();
    let fake = tokio::spawn(serve_fake(listener, grx.clone(), gstop.clone()));
    let p = serve_policy(&format!("http://{gaddr}"), MemoryStore::shared()).await;
    wait_for("readiness", || p.svc.readiness.is_ready()).await;

    // Zincati-shaped HTTP request and GetUpdateHint for the same identity.
    let url = format!(
        "http://{}/v1/graph?basearch=x86_64&os_checksum=p1.0&os_version=1.0&group=default&node_uuid=abc&platform=metal&stream=stable",
        p.addr
    );
    let resp = reqwest::Client::new()
        .get(&url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let g = CincinnatiGraph::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(g.edges, vec![[0, 1]]);
    let mut client = PolicyServiceClient::connect(format!("http://{}", p.addr))
        .await
        .unwrap();
    let hint = client
        .get_update_hint(pb::GetUpdateHintRequest {
            identity: Some(identity("p1.0", None, "abc")),
        })
        .await
        .unwrap()
        .into_inner()
        .hint
        .unwrap();
    assert_eq!(target_of(&hint), Some(g.nodes[1].version.as_str()));
    assert_eq!(hint.graph_revision, 1);

    // The graph service goes away: the last graph keeps serving.
    gstop.cancel();
    fake.await.unwrap();
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);

    // It comes back on the same port with a new revision: followed again.
    gtx.send_replace(Some(graph_proto(&grown_graph(), 2)));
    let listener = tokio::net::TcpListener::bind(gaddr).await.unwrap();
    let gstop = CancellationToken::new();
    tokio::spawn(serve_fake(listener, grx, gstop.clone()));
    wait_for("revision 2", || p.svc.state.borrow().revision == 2).await;
    let bad = client
        .get_update_hint(pb::GetUpdateHintRequest {
            identity: Some(pb::NodeIdentity {
                rollout_wariness: Some(f64::NAN),
                ..identity("p1.0", None, "abc")
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    gstop.cancel();
    p.stop.cancel();
}

/// `/readyz` (and `/v1/graph`) wait for the first graph; losing the graph
/// service afterwards keeps the instance ready on the graph it has.
#[tokio::test]
async fn ready_once_a_graph_arrives_and_while_the_graph_service_is_gone() {
    let (gtx, grx) = watch::channel(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gaddr = listener.local_addr().unwrap();
    let gstop = CancellationToken::new();
    let fake = tokio::spawn(serve_fake(listener, grx, gstop.clone()));
    let p = serve_policy(&format!("http://{gaddr}"), MemoryStore::shared()).await;
    let base = format!("http://{}", p.addr);
    let graph_url = format!("{base}/v1/graph?basearch=x86_64&stream=stable");
    let readyz = || async { reqwest::get(format!("{base}/readyz")).await.unwrap() };

    // Connected, but no graph has been sent yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = readyz().await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("no graph"));
    let r = reqwest::get(&graph_url).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["kind"], "graph_unavailable");

    gtx.send_replace(Some(graph_proto(&graph_now_rollout(), 1)));
    wait_for("readiness", || p.svc.readiness.is_ready()).await;
    assert_eq!(readyz().await.status(), 200);

    gstop.cancel();
    fake.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(readyz().await.status(), 200, "the last graph keeps serving");
    assert_eq!(reqwest::get(&graph_url).await.unwrap().status(), 200);
    p.stop.cancel();
}

#[tokio::test]
async fn a_pause_on_one_replica_is_seen_by_another_sharing_the_store() {
    let (_gtx, grx) = watch::channel(Some(graph_proto(&rollout_graph(), 1)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gaddr = listener.local_addr().unwrap();
    tokio::spawn(serve_fake(listener, grx, CancellationToken::new()));
    let store = MemoryStore::shared();
    let a = serve_policy(&format!("http://{gaddr}"), store.clone()).await;
    let b = serve_policy(&format!("http://{gaddr}"), store).await;
    wait_for("readiness", || {
        a.svc.readiness.is_ready() && b.svc.readiness.is_ready()
    })
    .await;
    let mut admin_a = RolloutAdminServiceClient::connect(format!("http://{}", a.addr))
        .await
        .unwrap();
    let mut admin_b = RolloutAdminServiceClient::connect(format!("http://{}", b.addr))
        .await
        .unwrap();

    let req = pb::PauseRolloutRequest {
        stream: "stable".into(),
        version: "2.0".into(),
        reason: "canary failures".into(),
        mode: pb::PauseMode::Withdraw as i32,
    };
    let denied = admin_a
        .pause_rollout(Request::new(req.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            denied.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ),
        "{denied:?}"
    );
    let no_reason = admin_a
        .pause_rollout(admin_req(pb::PauseRolloutRequest {
            reason: " ".into(),
            ..req.clone()
        }))
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), tonic::Code::InvalidArgument);
    let unknown = admin_a
        .pause_rollout(admin_req(pb::PauseRolloutRequest {
            version: "9.9".into(),
            ..req.clone()
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let paused = admin_a
        .pause_rollout(admin_req(req))
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    assert!(paused.paused);
    assert_eq!(paused.pause_mode(), pb::PauseMode::Withdraw);
    assert_eq!(paused.throttle, 1.0, "the rollout had already completed");

    let b_state = b.svc.control.subscribe();
    wait_for("the pause on replica b", || {
        b_state.borrow().pause("stable", "2.0").is_some()
    })
    .await;
    let listed = admin_b
        .list_rollouts(pb::ListRolloutsRequest {
            stream: "stable".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.rollouts.len(), 1);
    assert!(listed.rollouts[0].paused);
    assert!(listed.rollouts[0].pause_reason.contains("canary failures"));
    let mut client_b = PolicyServiceClient::connect(format!("http://{}", b.addr))
        .await
        .unwrap();
    let hint = client_b
        .get_update_hint(pb::GetUpdateHintRequest {
            identity: Some(identity("p1.0", None, "n")),
        })
        .await
        .unwrap()
        .into_inner()
        .hint
        .unwrap();
    assert_eq!(no_update(&hint), pb::NoUpdateReason::Paused);

    // Freeze on b, seen on a.
    admin_b
        .freeze_stream(admin_req(pb::FreezeStreamRequest {
            stream: "stable".into(),
            reason: "incident".into(),
        }))
        .await
        .unwrap();
    let a_state = a.svc.control.subscribe();
    wait_for("the freeze on replica a", || {
        a_state.borrow().freezes.contains_key("stable")
    })
    .await;
    let listed = admin_a
        .list_rollouts(pb::ListRolloutsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.freezes.len(), 1);
    admin_a
        .unfreeze_stream(admin_req(pb::UnfreezeStreamRequest {
            stream: "stable".into(),
            reason: "over".into(),
        }))
        .await
        .unwrap();
    wait_for("the unfreeze on replica b", || {
        !b_state.borrow().freezes.contains_key("stable")
    })
    .await;
}

async fn grpcurl(args: &[&str]) -> Option<(bool, String)> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|d| d.join("grpcurl"))
        .find(|p| p.is_file());
    let Some(bin) = found else {
        eprintln!("!!!!!!!! grpcurl not on PATH: SKIPPING the grpcurl checks !!!!!!!!");
        return None;
    };
    let out = tokio::process::Command::new(bin)
        .args(args)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[tokio::test]
async fn grpcurl_get_watch_and_list() {
    let (_gtx, grx) = watch::channel(Some(graph_proto(&graph_now_rollout(), 1)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gaddr = listener.local_addr().unwrap();
    tokio::spawn(serve_fake(listener, grx, CancellationToken::new()));
    let p = serve_policy(&format!("http://{gaddr}"), MemoryStore::shared()).await;
    wait_for("readiness", || p.svc.readiness.is_ready()).await;
    let addr = p.addr.to_string();
    let id = r#"{"identity":{"node_uuid":"abc","stream":"stable","basearch":"x86_64","scheme":"PAYLOAD_SCHEME_CHECKSUM","booted_payload":"p1.0"}}"#;
    let Some((ok, out)) = grpcurl(&[
        "-plaintext",
        "-d",
        id,
        &addr,
        "upshift.policy.v1.PolicyService/GetUpdateHint",
    ])
    .await
    else {
        return;
    };
    assert!(ok, "{out}");
    assert!(out.contains("\"version\": \"2.0\""), "{out}");
    let (_, out) = grpcurl(&[
        "-plaintext",
        "-max-time",
        "3",
        "-d",
        id,
        &addr,
        "upshift.policy.v1.PolicyService/WatchUpdateHints",
    ])
    .await
    .unwrap();
    assert!(out.contains("\"version\": \"2.0\""), "{out}");
    assert!(out.contains("keepalive"), "keepalives every second: {out}");
    assert!(out.contains("resumeToken"), "{out}");
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"stream":"stable"}"#,
        &addr,
        "upshift.policy.v1.RolloutAdminService/ListRollouts",
    ])
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(
        out.contains("\"version\": \"2.0\"") && out.contains("\"throttle\": 1"),
        "{out}"
    );
    p.stop.cancel();
}
