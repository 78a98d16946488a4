//! End to end against a Cincinnati-only and a FleetLock-only HTTP fake that
//! check each request is shaped as Zincati's (query parameters; FleetLock
//! header and body).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use upshift_agent::config::MergedInputs;
use upshift_agent::driver::{Exit, Ident, Runtime, run, run_with};
use upshift_agent::os::{OsBackend, Release, Simulated};
use upshift_agent::settings::{LockKind, Settings};
use upshift_agent::status::ErrorKind;
use upshift_common::clock::SystemClock;

const GRAPH: &str = r#"{"nodes":[
 {"version":"1","payload":"p1","metadata":{"org.fedoraproject.coreos.releases.age_index":"0"}},
 {"version":"2","payload":"p2","metadata":{"org.fedoraproject.coreos.releases.age_index":"1"}}],
 "edges":[[0,1]]}"#;

/// Calls the fakes answered.
#[derive(Debug, Default)]
struct Calls {
    graph: AtomicUsize,
    pre_reboot: AtomicUsize,
    steady: AtomicUsize,
    /// Requests that were not what Zincati sends (answered 400).
    bad: Mutex<Vec<String>>,
    /// When set: the agent's state file, copied into `at_grant` as the
    /// slot is granted (what a crash at that instant leaves on disk).
    state_file: Mutex<Option<PathBuf>>,
    at_grant: Mutex<Option<Vec<u8>>>,
}

impl Calls {
    /// Records `problem` (if any) and answers 400 for it.
    fn check(&self, problem: Option<String>) -> Result<(), StatusCode> {
        match problem {
            None => Ok(()),
            Some(p) => {
                self.bad.lock().unwrap().push(p);
                Err(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// One run until the simulated reboot; a run that does not get there
    /// fails with the bad requests seen.
    async fn run_to_reboot(&self, s: &Settings, ident: &Ident, os: &Simulated) {
        let r =
            tokio::time::timeout(Duration::from_secs(20), run(s, ident, os, &SystemClock)).await;
        match r {
            Ok(exit) => assert_eq!(exit.unwrap(), Exit::Rebooted),
            Err(_) => panic!("no reboot; {}", self.bad_summary()),
        }
    }

    fn bad_summary(&self) -> String {
        let bad = self.bad.lock().unwrap();
        format!("{} bad requests, the first: {:?}", bad.len(), bad.first())
    }

    fn assert_all_good(&self) {
        assert!(
            self.bad.lock().unwrap().is_empty(),
            "{}",
            self.bad_summary()
        );
    }
}

/// The node the tests run (see [`setup`]).
const NODE: &str = "u1";

/// A graph request must carry Zincati's parameters for this node.
fn graph_problem(q: &HashMap<String, String>) -> Option<String> {
    let want = [
        ("basearch", "x86_64"),
        ("stream", "stable"),
        ("node_uuid", NODE),
        ("group", "default"),
        ("platform", "qemu"),
        ("oci", "false"),
    ];
    for (k, v) in want {
        if q.get(k).map(String::as_str) != Some(v) {
            return Some(format!("graph: {k} = {:?}, want {v:?}", q.get(k)));
        }
    }
    // The booted release: 1 (p1) before the update, 2 (p2) after it.
    match (q.get("os_version"), q.get("os_checksum")) {
        (Some(v), Some(c)) if (v == "1" || v == "2") && *c == format!("p{v}") => None,
        other => Some(format!("graph: os_version/os_checksum {other:?}")),
    }
}

/// A FleetLock request: the protocol header and `{"client_params": {"id", "group"}}`.
fn fleetlock_problem(op: &str, h: &HeaderMap, body: &[u8]) -> Option<String> {
    if h.get("fleet-lock-protocol").and_then(|v| v.to_str().ok()) != Some("true") {
        return Some(format!("{op}: no fleet-lock-protocol: true header"));
    }
    let json = h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) if json => v,
        _ => return Some(format!("{op}: body is not JSON")),
    };
    let want = serde_json::json!({"client_params": {"id": NODE, "group": "default"}});
    (v != want).then(|| format!("{op}: body {v}, want {want}"))
}

/// A Cincinnati-only and FleetLock-only HTTP server on one port; the first
/// `pre-reboot` is refused as if another node held the slot. Requests not
/// shaped as Zincati's are answered 400 and recorded in `bad`.
async fn fakes() -> (String, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let (c1, c2, c3) = (calls.clone(), calls.clone(), calls.clone());
    let app = Router::new()
        .route(
            "/v1/graph",
            get(move |Query(q): Query<HashMap<String, String>>| {
                let c = c1.clone();
                async move {
                    c.check(graph_problem(&q))?;
                    c.graph.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, StatusCode>(GRAPH)
                }
            }),
        )
        .route(
            "/v1/pre-reboot",
            post(move |h: HeaderMap, body: Bytes| {
                let c = c2.clone();
                async move {
                    c.check(fleetlock_problem("pre-reboot", &h, &body))?;
                    if c.pre_reboot.fetch_add(1, Ordering::SeqCst) == 0 {
                        return Err(StatusCode::CONFLICT);
                    }
                    let file = c.state_file.lock().unwrap().clone();
                    if let Some(f) = file {
                        *c.at_grant.lock().unwrap() = std::fs::read(f).ok();
                    }
                    Ok(StatusCode::OK)
                }
            }),
        )
        .route(
            "/v1/steady-state",
            post(move |h: HeaderMap, body: Bytes| {
                let c = c3.clone();
                async move {
                    c.check(fleetlock_problem("steady-state", &h, &body))?;
                    c.steady.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, StatusCode>(StatusCode::OK)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, calls)
}

fn setup(root: &std::path::Path, base: &str) -> (Settings, Ident, Simulated) {
    let mut s = Settings::validate(&MergedInputs::default(), root).unwrap();
    s.cincinnati_url = Some(base.into());
    s.lock_kind = LockKind::Fleetlock;
    s.lock_url = Some(base.into());
    s.poll_interval = Duration::from_millis(50);
    s.basearch = "x86_64".into();
    let ident = Ident {
        node_uuid: NODE.into(),
        platform: "qemu".into(),
        motd_path: Some(root.join("run/motd.d/85-upshift-deadend.motd")),
    };
    let os = Simulated {
        file: s.simulated_state_file.clone(),
        fail_versions: vec![],
        fail_boot_versions: vec![],
        initial: Release {
            version: "1".into(),
            payload: "p1".into(),
        },
    };
    (s, ident, os)
}

#[tokio::test(flavor = "current_thread")]
async fn cincinnati_and_fleetlock_update_completes() {
    let (base, calls) = fakes().await;
    let t = tempfile::tempdir().unwrap();
    let (s, ident, os) = setup(t.path(), &base);
    calls.run_to_reboot(&s, &ident, &os).await;
    assert_eq!(os.booted().await.unwrap().version, "2");
    assert_eq!(calls.pre_reboot.load(Ordering::SeqCst), 2);
    let p = upshift_agent::persist::load(&s.state_dir).unwrap();
    assert!(p.lock_held);
    assert_eq!(p.pending_target.as_deref(), Some("2"));

    // Restart after the reboot: steady state releases the lock once.
    let _ = tokio::time::timeout(Duration::from_secs(1), run(&s, &ident, &os, &SystemClock)).await;
    assert_eq!(calls.steady.load(Ordering::SeqCst), 1);
    let p = upshift_agent::persist::load(&s.state_dir).unwrap();
    assert!(!p.lock_held);
    assert_eq!(p.pending_target, None);
    calls.assert_all_good();
}

#[tokio::test(flavor = "current_thread")]
async fn restart_after_a_rollback_releases_the_lock_once() {
    let (base, calls) = fakes().await;
    let t = tempfile::tempdir().unwrap();
    let (s, ident, mut os) = setup(t.path(), &base);
    // The host fails to boot 2 and comes back on 1.
    os.fail_boot_versions = vec!["2".into()];
    calls.run_to_reboot(&s, &ident, &os).await;
    assert_eq!(os.booted().await.unwrap().version, "1");
    assert_eq!(os.staged().await.unwrap(), None);
    let pre = calls.pre_reboot.load(Ordering::SeqCst);

    let cancel = CancellationToken::new();
    let (mut rt, _control) = Runtime::new(SystemClock::shared(), cancel.clone());
    let mut status = rt.status.subscribe();
    let (s2, i2, os2) = (s.clone(), ident.clone(), os.clone());
    let task = tokio::spawn(async move { run_with(&s2, &i2, &os2, &mut rt).await.unwrap() });
    let st = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.state == "update-available"),
    )
    .await
    .expect("update-available after the rollback")
    .unwrap()
    .clone();
    let e = st.last_error.expect("an error is reported");
    assert_eq!(e.kind, ErrorKind::RolledBack);
    assert!(e.message.contains('2'), "{}", e.message);
    assert!(!st.lock_held);
    // Polls keep coming (50 ms); the retry waits out its 30 s backoff.
    let polls = calls.graph.load(Ordering::SeqCst);
    while calls.graph.load(Ordering::SeqCst) < polls + 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.steady.load(Ordering::SeqCst), 1, "released once");
    assert_eq!(
        calls.pre_reboot.load(Ordering::SeqCst),
        pre,
        "no gate round"
    );
    assert_eq!(os.staged().await.unwrap(), None, "no second deploy");
    assert_eq!(status.borrow().state, "update-available");
    cancel.cancel();
    assert_eq!(task.await.unwrap(), Exit::Cancelled);
    let p = upshift_agent::persist::load(&s.state_dir).unwrap();
    assert!(!p.lock_held);
    assert_eq!(p.pending_target, None);
    assert_eq!(p.failure_counts.get("2"), Some(&1));
    calls.assert_all_good();
}

#[tokio::test(flavor = "current_thread")]
async fn a_crash_right_after_the_fleetlock_grant_does_not_leak_the_slot() {
    let (base, calls) = fakes().await;
    let t = tempfile::tempdir().unwrap();
    let (s, ident, os) = setup(t.path(), &base);
    let file = upshift_agent::persist::path(&s.state_dir);
    *calls.state_file.lock().unwrap() = Some(file.clone());
    calls.run_to_reboot(&s, &ident, &os).await;
    // The process dies as the slot is granted: the state file is as it
    // was then (lock_held not saved yet), the host rebooted into 2.
    let at_grant = calls.at_grant.lock().unwrap().clone().expect("granted");
    std::fs::write(&file, at_grant).unwrap();
    assert!(
        !upshift_agent::persist::load(&s.state_dir)
            .unwrap()
            .lock_held
    );
    assert_eq!(os.booted().await.unwrap().version, "2");
    // FleetLock slots have no TTL: steady state must give it back.
    let _ = tokio::time::timeout(Duration::from_secs(1), run(&s, &ident, &os, &SystemClock)).await;
    assert_eq!(calls.steady.load(Ordering::SeqCst), 1);
    let p = upshift_agent::persist::load(&s.state_dir).unwrap();
    assert!(!p.lock_held && !p.lock_acquiring);
    calls.assert_all_good();
}
