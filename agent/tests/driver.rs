//! End to end against a Cincinnati-only and a FleetLock-only HTTP fake.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use upshift_agent::config::MergedInputs;
use upshift_agent::driver::{Exit, Ident, run};
use upshift_agent::os::{OsBackend, Release, Simulated};
use upshift_agent::settings::{LockKind, Settings};

const GRAPH: &str = r#"{"nodes":[
 {"version":"1","payload":"p1","metadata":{"org.fedoraproject.coreos.releases.age_index":"0"}},
 {"version":"2","payload":"p2","metadata":{"org.fedoraproject.coreos.releases.age_index":"1"}}],
 "edges":[[0,1]]}"#;

#[tokio::test(flavor = "current_thread")]
async fn cincinnati_and_fleetlock_update_completes() {
    let pre = Arc::new(AtomicUsize::new(0));
    let steady = Arc::new(AtomicUsize::new(0));
    let (p2, s2) = (pre.clone(), steady.clone());
    let app = Router::new()
        .route("/v1/graph", get(|| async { GRAPH }))
        .route(
            "/v1/pre-reboot",
            post(move |h: axum::http::HeaderMap| {
                let p2 = p2.clone();
                async move {
                    assert_eq!(h.get("fleet-lock-protocol").unwrap(), "true");
                    // Refuse the first attempt: the lock is held by another node.
                    if p2.fetch_add(1, Ordering::SeqCst) == 0 {
                        StatusCode::CONFLICT
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
        .route(
            "/v1/steady-state",
            post(move || {
                let s2 = s2.clone();
                async move {
                    s2.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let t = tempfile::tempdir().unwrap();
    let mut s = Settings::validate(&MergedInputs::default(), t.path()).unwrap();
    s.cincinnati_url = Some(base.clone());
    s.lock_kind = LockKind::Fleetlock;
    s.lock_url = Some(base);
    s.poll_interval = Duration::from_millis(50);
    let ident = Ident {
        node_uuid: "u1".into(),
        platform: "qemu".into(),
        motd_path: Some(t.path().join("run/motd.d/85-upshift-deadend.motd")),
    };
    let os = Simulated {
        file: s.simulated_state_file.clone(),
        fail_versions: vec![],
        initial: Release {
            version: "1".into(),
            payload: "p1".into(),
        },
    };
    let exit = run(&s, &ident, &os, &upshift_common::clock::SystemClock)
        .await
        .unwrap();
    assert_eq!(exit, Exit::Rebooted);
    assert_eq!(os.booted().await.unwrap().version, "2");
    assert_eq!(pre.load(Ordering::SeqCst), 2);
    let p = upshift_agent::persist::load(&s.state_dir).unwrap();
    assert!(p.lock_held);
    assert_eq!(p.pending_target.as_deref(), Some("2"));

    // Restart after the reboot: steady state releases the lock once.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        run(&s, &ident, &os, &upshift_common::clock::SystemClock),
    )
    .await;
    assert_eq!(steady.load(Ordering::SeqCst), 1);
    let p = upshift_agent::persist::load(&s.state_dir).unwrap();
    assert!(!p.lock_held);
    assert_eq!(p.pending_target, None);
}
