//! The embedded agent (simulated fleet entry point) with its metrics and
//! control sockets, gates (windows, sessions, pause, finalize-now) and
//! telemetry reports, against the real policy and telemetry services.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use upshift_agent::config::MergedInputs;
use upshift_agent::driver::Ident;
use upshift_agent::embed::{EmbedOptions, EmbeddedAgent, spawn};
use upshift_agent::local::{self, CONTROL_SOCKET, METRICS_SOCKET};
use upshift_agent::os::Release;
use upshift_agent::settings::{HintBackend, LockKind, Settings};
use upshift_agent::status::Status;
use upshift_cincinnati::graph::{Graph, Node, PayloadScheme};
use upshift_common::auth::AdminAuth;
use upshift_common::clock::{Clock, ScaledClock, SharedClock, SystemClock};
use upshift_common::config::{ConfigErrors, ServerSettings, parse_toml};
use upshift_common::telemetry::Metrics;
use upshift_common::window::WindowConfig;
use upshift_policy::state::ScopeKey;
use upshift_policy::{PolicyConfig, PolicyService};

const WAIT: Duration = Duration::from_secs(30);

fn graph(versions: &[&str], edges: &[(u32, u32)]) -> Graph {
    let nodes = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut metadata = BTreeMap::new();
            metadata.insert(
                "org.fedoraproject.coreos.releases.age_index".to_string(),
                i.to_string(),
            );
            Node {
                version: v.to_string(),
                payload: format!("p{v}"),
                metadata,
            }
        })
        .collect();
    Graph::new(nodes, edges.to_vec()).unwrap()
}

fn key() -> ScopeKey {
    ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    }
}

async fn policy(stop: &CancellationToken) -> (String, PolicyService) {
    let mut c = PolicyConfig::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    let srv = upshift_policy::bind(
        &c,
        upshift_policy::store::MemoryStore::shared(),
        SystemClock::shared(),
        Metrics::new("policy-test"),
        AdminAuth::new(None, Vec::new()),
    )
    .await
    .unwrap();
    let url = format!("http://{}", srv.bound.local_addr());
    let s = stop.clone();
    tokio::spawn(async move { srv.bound.serve(async move { s.cancelled().await }).await });
    (url, srv.service)
}

fn settings(root: &std::path::Path, policy: &str) -> Settings {
    let mut s = Settings::validate(&MergedInputs::default(), root).unwrap();
    s.basearch = "x86_64".into();
    s.hint_backend = HintBackend::Stream;
    s.policy_url = Some(policy.into());
    s.poll_interval = Duration::from_secs(3600);
    s.lock_kind = LockKind::Immediate;
    s
}

fn ident(id: &str) -> Ident {
    Ident {
        node_uuid: id.into(),
        platform: "qemu".into(),
        motd_path: None,
    }
}

fn options() -> EmbedOptions {
    EmbedOptions {
        initial: Release {
            version: "1".into(),
            payload: "p1".into(),
        },
        sockets: true,
    }
}

async fn until(agent: &mut EmbeddedAgent, what: &str, f: impl Fn(&Status) -> bool) -> Status {
    let r = tokio::time::timeout(WAIT, agent.status.wait_for(|s| f(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match r {
        Ok(Ok(s)) => s,
        _ => panic!("{what}: not reached; status {:?}", *agent.status.borrow()),
    }
}

async fn ask(run_dir: &std::path::Path, line: &str) -> local::Answer {
    local::request(&run_dir.join(CONTROL_SOCKET), line)
        .await
        .unwrap()
}

/// A daily window opening 12 hours from now (so closed now).
fn closed_window() -> upshift_common::window::Window {
    let start = chrono::Utc::now() + chrono::Duration::hours(12);
    let c = WindowConfig {
        days: vec![],
        start: start.format("%H:%M").to_string(),
        length: Duration::from_secs(3600),
        time_zone: Some("UTC".into()),
    };
    c.validate("w", &mut ConfigErrors::new()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_pause_window_and_finalize_now() {
    let stop = CancellationToken::new();
    let (url, pol) = policy(&stop).await;
    pol.publish(key(), 1, graph(&["1"], &[]));
    let t = tempfile::tempdir().unwrap();
    let mut s = settings(t.path(), &url);
    s.windows = vec![closed_window()];
    let run_dir = s.run_dir.clone();
    let mut agent = spawn(
        s,
        ident("n1"),
        SystemClock::shared(),
        stop.clone(),
        options(),
    )
    .unwrap();
    let mode = std::fs::metadata(run_dir.join(CONTROL_SOCKET))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    until(&mut agent, "idle", |s| s.state == "idle" && s.checks >= 1).await;

    // Paused: a pushed update is known (update-available) but not staged.
    assert!(ask(&run_dir, "pause").await.ok);
    pol.publish(key(), 2, graph(&["1", "2"], &[(0, 1)]));
    let st = until(&mut agent, "hint seen", |s| {
        s.checks >= 2 && s.state != "idle"
    })
    .await;
    assert_eq!(st.state, "update-available");
    assert_eq!(st.target.as_deref(), Some("2"));
    assert!(st.paused);
    // The simulated host's file is written by the first deploy.
    let sim = t.path().join("var/lib/upshift/simulated-os.json");
    assert!(!sim.exists(), "nothing staged while paused");
    let a = ask(&run_dir, "status").await;
    assert!(a.ok);
    assert_eq!(a.status.as_ref().unwrap()["paused"], true);
    assert!(!ask(&run_dir, "finalize-now").await.ok);
    assert!(!ask(&run_dir, "reboot please").await.ok);

    // Resumed: staged, then held by the closed maintenance window.
    assert!(ask(&run_dir, "resume").await.ok);
    let st = until(&mut agent, "outside the window", |s| {
        s.state == "waiting-for-gates" && s.waiting_for.contains("maintenance")
    })
    .await;
    assert!(st.next_window.is_some());
    let metrics = local::scrape(&run_dir.join(METRICS_SOCKET)).await.unwrap();
    for want in [
        "upshift_agent_state{state=\"waiting-for-gates\"} 1\n",
        "upshift_agent_state{state=\"idle\"} 0\n",
        "upshift_agent_pending_target_info{version=\"2\"} 1\n",
        "upshift_agent_lock_held 0\n",
        "upshift_agent_deadend 0\n",
        "upshift_agent_updates_total 0\n",
    ] {
        assert!(metrics.contains(want), "{want:?} missing from\n{metrics}");
    }
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    upshift_common::testing::promtool_check_metrics(&metrics);
    let a = ask(&run_dir, "status").await;
    assert!(local::format_status(a.status.as_ref().unwrap()).contains("target:       2\n"));

    // finalize-now skips the window: the simulated host reboots into 2 and
    // the embedded loop starts again.
    let a = ask(&run_dir, "finalize-now").await;
    assert!(a.ok, "{a:?}");
    let st = until(&mut agent, "rebooted into 2", |s| {
        s.booted == "2" && s.state == "idle"
    })
    .await;
    assert_eq!(st.updates, 1);
    let metrics = local::scrape(&run_dir.join(METRICS_SOCKET)).await.unwrap();
    assert!(metrics.contains("upshift_agent_updates_total 1\n"));
    assert!(metrics.contains("upshift_agent_booted_info{version=\"2\"} 1\n"));
    stop.cancel();
    assert_eq!(agent.task.await.unwrap().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_in_users_postpone_the_reboot_up_to_the_limit() {
    let stop = CancellationToken::new();
    let (url, pol) = policy(&stop).await;
    pol.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let t = tempfile::tempdir().unwrap();
    let mut s = settings(t.path(), &url);
    s.max_postpone = Duration::from_secs(600);
    let sim_file = s.simulated_state_file.clone();
    std::fs::create_dir_all(s.simulated_state_file.parent().unwrap()).unwrap();
    std::fs::write(
        &s.simulated_state_file,
        r#"{"booted":{"version":"1","payload":"p1"},"sessions":2}"#,
    )
    .unwrap();
    // Ten minutes of postponement pass in well under a second.
    let clock: SharedClock = ScaledClock::shared(SystemClock.now(), 2000.0);
    let mut agent = spawn(s, ident("n2"), clock, stop.clone(), options()).unwrap();
    let st = until(&mut agent, "postponed", |s| {
        s.state == "waiting-for-gates" && s.waiting_for.contains("2 interactive session")
    })
    .await;
    assert_eq!(st.target.as_deref(), Some("2"));
    let told = std::fs::read_to_string(sim_file.with_extension("messages")).unwrap();
    assert!(told.contains("reboot"), "{told}");
    until(&mut agent, "rebooted after the limit", |s| s.booted == "2").await;
    stop.cancel();
    assert_eq!(agent.task.await.unwrap().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_reach_the_telemetry_service() {
    use upshift_proto::telemetry::v1 as tpb;
    let stop = CancellationToken::new();
    let (url, pol) = policy(&stop).await;
    pol.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let cfg: upshift_telemetry::TelemetryConfig = parse_toml("").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: upshift_store::SharedStore =
        Arc::new(upshift_store::embedded::EmbeddedStore::open(&dir.path().join("t.redb")).unwrap());
    let srv = upshift_telemetry::bind(
        &ServerSettings {
            listen: ([127, 0, 0, 1], 0).into(),
            ..Default::default()
        },
        cfg.validate().unwrap(),
        store,
        SystemClock::shared(),
        Metrics::new("telemetry-test"),
    )
    .await
    .unwrap();
    let turl = format!("http://{}", srv.bound.local_addr());
    let service = srv.service;
    let s2 = stop.clone();
    tokio::spawn(async move { srv.bound.serve(async move { s2.cancelled().await }).await });

    let t = tempfile::tempdir().unwrap();
    let mut s = settings(t.path(), &url);
    s.telemetry_url = Some(turl);
    let mut agent = spawn(
        s,
        ident("n3"),
        SystemClock::shared(),
        stop.clone(),
        options(),
    )
    .unwrap();
    until(&mut agent, "updated", |s| {
        s.booted == "2" && s.state == "idle"
    })
    .await;
    // The fleet view converges on the agent's latest status.
    let host = tokio::time::timeout(WAIT, async {
        loop {
            let (hosts, _) = service.page(&tpb::HostFilter::default(), "", 10);
            if let Some(h) = hosts.into_iter().find(|h| {
                h.status.as_ref().is_some_and(|s| {
                    s.booted_version == "2" && s.state == tpb::AgentState::Idle as i32
                })
            }) {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("report with the new version");
    let st = host.status.unwrap();
    assert_eq!(st.node_uuid, "n3");
    assert_eq!(st.group, "default");
    assert_eq!(st.stream, "stable");
    assert!(st.observed_at.is_some() && st.state_since.is_some());
    stop.cancel();
}
