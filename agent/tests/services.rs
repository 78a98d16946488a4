//! The agent against the real policy and lock services, in process on
//! loopback ports: pushed hints, the gRPC reboot lock, the deny list, TLS.
//! Restarts in every state are in `restart.rs`.

#[path = "support/mesh.rs"]
mod mesh;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh::*;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use upshift_agent::driver::{Exit, Ident, Runtime, run_with};
use upshift_agent::hints::Hint;
use upshift_agent::os::{OsBackend, PayloadScheme, Release};
use upshift_agent::settings::Settings;
use upshift_cincinnati::graph::Graph;
use upshift_common::auth::AdminAuth;
use upshift_common::clock::SystemClock;
use upshift_common::telemetry::Metrics;
use upshift_policy::PolicyConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_hint_starts_staging_without_a_poll() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1"], &[]));
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, None);
    let os = Counting::new(t.path(), &[]);
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("idle with the stream open", |s| {
        s.state == "idle" && s.hint_stream_connected && s.checks >= 1
    })
    .await;
    assert_eq!(os.deploys.load(Ordering::SeqCst), 0);
    // A new graph revision is pushed; the agent stages and reboots.
    p.service.publish(key(), 2, graph(&["1", "2"], &[(0, 1)]));
    assert_eq!(run.finished().await, Exit::Rebooted);
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
    assert_eq!(os.booted().await.unwrap(), rel("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_held_elsewhere_keeps_the_agent_waiting() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let l = lock().await;
    l.take("other-node").await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, Some(&l.url));
    let os = Counting::new(t.path(), &[]);
    let mut run = start(&s, &os, SystemClock::shared());
    let st = run
        .until("queued for the lock", |s| {
            s.state == "waiting-for-gates" && s.lock_queue_position == Some(1)
        })
        .await;
    assert!(!st.lock_held);
    assert_eq!(l.holders().await, vec!["other-node".to_string()]);
    assert_eq!(os.booted().await.unwrap(), rel("1"));
    l.release("other-node").await;
    assert_eq!(run.finished().await, Exit::Rebooted);
    assert_eq!(l.holders().await, vec!["agent-1".to_string()]);
    assert_eq!(os.booted().await.unwrap(), rel("2"));
    // After the reboot: steady state releases the slot.
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("idle after the reboot", |s| s.state == "idle")
        .await;
    assert!(l.holders().await.is_empty());
    assert!(
        !upshift_agent::persist::load(&s.state_dir)
            .unwrap()
            .lock_held
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_staging_reaches_the_deny_list_then_the_next_target() {
    let p = policy(Duration::from_secs(1800)).await;
    // 1 -> 1.5 and 1 -> 2; 2 is preferred but fails to stage.
    p.service
        .publish(key(), 1, graph(&["1", "1.5", "2"], &[(0, 1), (0, 2)]));
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, None);
    let os = Counting::new(t.path(), &["2"]);
    // Staging backoff (30 s, 60 s) runs on a clock 1000 times faster.
    let run = start(&s, &os, fast_clock());
    assert_eq!(run.finished().await, Exit::Rebooted);
    let persisted = upshift_agent::persist::load(&s.state_dir).unwrap();
    assert!(persisted.deny_list.contains("2"));
    // Choosing 1.5 started a new budget.
    assert_eq!(persisted.failure_counts.get("2"), None);
    assert_eq!(os.booted().await.unwrap(), rel("1.5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hint_stream_reconnects_with_its_resume_token() {
    // Streams end after about a second with Reconnect{max-age}.
    let p = policy(Duration::from_secs(1)).await;
    p.service.publish(key(), 1, graph(&["1"], &[]));
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, None);
    let (_node_tx, node_rx) = watch::channel(upshift_agent::hints::NodeView {
        booted: rel("1"),
        scheme: PayloadScheme::Checksum,
        denied: vec![],
    });
    let cancel = CancellationToken::new();
    let src = upshift_agent::hints::spawn(
        s,
        ident(),
        node_rx,
        watch::channel(None).1,
        SystemClock::shared(),
        Box::new(|| 0.0),
        cancel.clone(),
    );
    let mut feed = src.feed.clone();
    // Once the third stream opens, the second one (opened with the token)
    // has ended: anything it sent has arrived.
    let f = tokio::time::timeout(WAIT, feed.wait_for(|f| f.connects >= 3))
        .await
        .expect("reconnected")
        .unwrap()
        .clone();
    // The unchanged hint was not sent again on the later streams.
    assert_eq!(f.pushed, 1);
    assert_eq!(f.hint, Some(upshift_agent::hints::Hint::UpToDate));
    p.service.publish(key(), 2, graph(&["1", "2"], &[(0, 1)]));
    let f = tokio::time::timeout(WAIT, feed.wait_for(|f| f.pushed >= 2))
        .await
        .expect("pushed after reconnect")
        .unwrap()
        .clone();
    assert_eq!(f.hint, Some(upshift_agent::hints::Hint::Update(rel("2"))));
    cancel.cancel();
}

/// Keepalives are timed on the agent's clock, the one the lease runs on:
/// on a clock 100 times faster (the dev mesh runs faster still), a 60 s
/// lease is 0.6 s of real time, and the slot is still held after more than
/// three lease lengths. Timed in real time (10 s apart), it was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_is_kept_alive_on_the_agent_clock() {
    use upshift_agent::lock::{LockCheck, RebootLock};
    let now = upshift_common::clock::Clock::now(&SystemClock);
    let clock = upshift_common::clock::ScaledClock::shared(now, 100.0);
    let l = lock_on(clock.clone()).await;
    let t = tempfile::tempdir().unwrap();
    let mut s = settings(t.path(), &closed_url(), Some(&l.url));
    s.lock_ttl = Duration::from_secs(60);
    let mut lock = RebootLock::new(&s, "agent-1", clock).unwrap();
    tokio::time::timeout(WAIT, async {
        while !matches!(lock.acquire().await.unwrap(), LockCheck::Held) {
            lock.changed().await;
        }
    })
    .await
    .expect("granted");
    // 200 simulated seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(lock.held());
    assert_eq!(l.holders().await, vec!["agent-1".to_string()]);
    lock.release().await.unwrap();
    assert!(l.holders().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_lock_service_means_no_reboot() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, Some(&closed));
    let os = Counting::new(t.path(), &[]);
    let mut run = start(&s, &os, SystemClock::shared());
    let st = run
        .until("gate check failed", |s| {
            s.state == "waiting-for-gates"
                && s.last_error
                    .as_ref()
                    .is_some_and(|e| e.kind == upshift_agent::status::ErrorKind::GateCheckFailed)
        })
        .await;
    assert!(!st.lock_held);
    run.stop().await;
    assert_eq!(os.booted().await.unwrap(), rel("1"));
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
    assert!(
        !upshift_agent::persist::load(&s.state_dir)
            .unwrap()
            .lock_held
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sessions_check_means_no_reboot_until_it_answers() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, None);
    let os = Counting::new(t.path(), &[]);
    os.sessions_fail.store(true, Ordering::SeqCst);
    // Gate re-checks (every 10 s) run on a clock 1000 times faster.
    let mut run = start(&s, &os, fast_clock());
    let st = run
        .until("sessions check failed", |s| {
            s.state == "waiting-for-gates"
                && s.last_error
                    .as_ref()
                    .is_some_and(|e| e.kind == upshift_agent::status::ErrorKind::GateCheckFailed)
        })
        .await;
    assert!(
        st.last_error.unwrap().message.contains("sessions check"),
        "the error names the gate"
    );
    // Several re-checks later, still no reboot while the check fails.
    run.until("checked again", |s| s.failures >= 3).await;
    assert_eq!(os.booted().await.unwrap(), rel("1"));
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
    // Once logind answers (no one logged in), the host reboots.
    os.sessions_fail.store(false, Ordering::SeqCst);
    assert_eq!(run.finished().await, Exit::Rebooted);
    assert_eq!(os.booted().await.unwrap(), rel("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_end_hint_writes_the_notice() {
    let p = policy(Duration::from_secs(1800)).await;
    let mut dead = node("1", 0);
    dead.metadata.insert(
        "org.fedoraproject.coreos.updates.deadend".into(),
        "true".into(),
    );
    dead.metadata.insert(
        "org.fedoraproject.coreos.updates.deadend_reason".into(),
        "see issue 42".into(),
    );
    p.service.publish(
        key(),
        1,
        Graph::new(vec![dead, node("2", 1)], vec![(0, 1)]).unwrap(),
    );
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, None);
    let os = Counting::new(t.path(), &[]);
    let motd = t.path().join("run/motd.d/85-upshift-deadend.motd");
    let cancel = CancellationToken::new();
    let (mut rt, _control) = Runtime::new(SystemClock::shared(), cancel.clone());
    let mut status = rt.status.subscribe();
    let id = Ident {
        motd_path: Some(motd.clone()),
        ..ident()
    };
    let (s2, os2) = (s.clone(), os.clone());
    let task = tokio::spawn(async move { run_with(&s2, &id, &os2, &mut rt).await.unwrap() });
    let st = tokio::time::timeout(WAIT, status.wait_for(|s| s.state == "dead-end"))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(st.dead_end.as_deref(), Some("see issue 42"));
    // The metrics socket's dump says so too.
    let metrics = st.render_metrics();
    assert!(
        metrics.contains("upshift_agent_deadend 1\n")
            && metrics.contains("upshift_agent_state{state=\"dead-end\"} 1\n"),
        "{metrics}"
    );
    assert!(
        std::fs::read_to_string(&motd)
            .unwrap()
            .contains("see issue 42")
    );
    cancel.cancel();
    assert_eq!(task.await.unwrap(), Exit::Cancelled);
    assert_eq!(os.deploys.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cincinnati_polling_fills_in_while_the_stream_is_down() {
    // The policy service's own /v1/graph is the Cincinnati server; the
    // stream points at a port nobody listens on.
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let t = tempfile::tempdir().unwrap();
    let mut s = settings(t.path(), &closed_url(), None);
    s.cincinnati_url = Some(p.url.clone());
    let (_node_tx, node_rx) = watch::channel(upshift_agent::hints::NodeView {
        booted: rel("1"),
        scheme: PayloadScheme::Checksum,
        denied: vec![],
    });
    let cancel = CancellationToken::new();
    let src = upshift_agent::hints::spawn(
        s,
        ident(),
        node_rx,
        watch::channel(None).1,
        SystemClock::shared(),
        Box::new(|| 0.0),
        cancel.clone(),
    );
    let mut feed = src.feed.clone();
    let f = tokio::time::timeout(WAIT, feed.wait_for(|f| f.hint.is_some()))
        .await
        .expect("a polled hint")
        .unwrap()
        .clone();
    assert_eq!(f.hint, Some(upshift_agent::hints::Hint::Update(rel("2"))));
    assert!(!f.connected);
    assert_eq!(f.connects, 0);
    assert!(f.errors >= upshift_agent::hints::FALLBACK_AFTER as u64);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_is_checked_again_once_the_lock_is_granted() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let l = lock().await;
    l.take("other-node").await;
    let t = tempfile::tempdir().unwrap();
    let mut s = settings(t.path(), &p.url, Some(&l.url));
    // 2026-11-25 10:00 UTC, inside a daily 09:50-10:20 window.
    let ten = std::time::UNIX_EPOCH + Duration::from_secs(1_795_600_800);
    let window = upshift_common::window::WindowConfig {
        days: vec![],
        start: "09:50".into(),
        length: Duration::from_secs(30 * 60),
        time_zone: None,
    };
    s.windows = vec![
        window
            .validate("w", &mut upshift_common::config::ConfigErrors::new())
            .unwrap(),
    ];
    let clock = Arc::new(ManualClock(Mutex::new(ten)));
    let os = Counting::new(t.path(), &[]);
    let mut run = start(&s, &os, clock.clone());
    run.until("queued inside the window", |s| {
        s.lock_queue_position == Some(1)
    })
    .await;
    // The window closes while the agent waits; then the slot frees up.
    *clock.0.lock().unwrap() = ten + Duration::from_secs(30 * 60);
    l.release("other-node").await;
    let st = run
        .until("granted, then back to the window", |s| {
            s.waiting_for.contains("maintenance") && s.state == "waiting-for-gates"
        })
        .await;
    assert!(!st.lock_held);
    assert!(l.holders().await.is_empty(), "the slot was given back");
    assert_eq!(os.booted().await.unwrap(), rel("1"));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_now_still_takes_the_lock_unless_forced() {
    use upshift_agent::driver::Command;
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let l = lock().await;
    l.take("other-node").await;
    let t = tempfile::tempdir().unwrap();
    let mut s = settings(t.path(), &p.url, Some(&l.url));
    // A daily window opening 12 hours from now: closed for the whole test.
    let opens = chrono::Utc::now() + chrono::Duration::hours(12);
    let window = upshift_common::window::WindowConfig {
        days: vec![],
        start: opens.format("%H:%M").to_string(),
        length: Duration::from_secs(3600),
        time_zone: None,
    };
    s.windows = vec![
        window
            .validate("w", &mut upshift_common::config::ConfigErrors::new())
            .unwrap(),
    ];
    let os = Counting::new(t.path(), &[]);
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("staged, outside the window", |s| {
        s.state == "waiting-for-gates" && s.waiting_for.contains("maintenance")
    })
    .await;
    assert_eq!(
        run.status.borrow().lock_queue_position,
        None,
        "no slot asked for yet"
    );

    // finalize-now skips the window but queues for the slot other-node holds.
    let answer = run
        .control
        .send(Command::FinalizeNow { force: false })
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    let st = run
        .until("queued for the lock", |s| s.lock_queue_position == Some(1))
        .await;
    assert_eq!(st.state, "waiting-for-gates");
    assert!(!st.lock_held);
    assert_eq!(
        os.booted().await.unwrap(),
        rel("1"),
        "no reboot without the slot"
    );
    assert_eq!(l.holders().await, vec!["other-node".to_string()]);

    // --force skips the lock too: the host reboots while other-node holds it.
    let answer = run.control.send(Command::FinalizeNow { force: true }).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(run.finished().await, Exit::Rebooted);
    assert_eq!(os.booted().await.unwrap(), rel("2"));
    assert_eq!(l.holders().await, vec!["other-node".to_string()]);
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_over_tls_with_the_configured_ca() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let t = tempfile::tempdir().unwrap();
    let (cert, key_pem) = (t.path().join("cert.pem"), t.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key_pem, ck.key_pair.serialize_pem()).unwrap();
    let mut c = PolicyConfig::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.tls = Some(upshift_common::config::TlsSettings {
        cert,
        key: key_pem,
        client_ca: None,
    });
    let srv = upshift_policy::bind(
        &c,
        upshift_policy::store::MemoryStore::shared(),
        SystemClock::shared(),
        Metrics::new("policy-test"),
        AdminAuth::new(None, Vec::new()),
    )
    .await
    .unwrap();
    let url = format!("https://localhost:{}", srv.bound.local_addr().port());
    srv.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move { srv.bound.serve(async move { s2.cancelled().await }).await });

    // The CA comes from `[tls] ca_file` in a config fragment.
    let root = t.path().join("root");
    let conf = root.join("etc/upshift/agent.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(root.join("ca.pem"), ck.cert.pem()).unwrap();
    std::fs::write(
        conf.join("50.toml"),
        format!("[updates]\npolicy_url = \"{url}\"\n[tls]\nca_file = \"/ca.pem\"\n"),
    )
    .unwrap();
    let mut s = Settings::validate(&upshift_agent::config::load(&root).unwrap(), &root).unwrap();
    s.basearch = "x86_64".into();
    assert!(s.tls.as_ref().is_some_and(|t| t.ca_pem.is_some()));
    let os = Counting::new(&root, &[]);
    assert_eq!(
        start(&s, &os, SystemClock::shared()).finished().await,
        Exit::Rebooted
    );
    assert_eq!(os.booted().await.unwrap(), rel("2"));

    // Without the CA the stream never opens: no update.
    let other = tempfile::tempdir().unwrap();
    let mut s = settings(other.path(), &url, None);
    s.tls = None;
    let os = Counting::new(other.path(), &[]);
    let mut run = start(&s, &os, SystemClock::shared());
    let st = run
        .until("TLS failure reported", |s| {
            s.last_error
                .as_ref()
                .is_some_and(|e| e.kind == upshift_agent::status::ErrorKind::HintsUnavailable)
        })
        .await;
    assert!(!st.hint_stream_connected);
    run.stop().await;
    assert_eq!(os.deploys.load(Ordering::SeqCst), 0);
    stop.cancel();
}

/// An OCI payload: the image digest reference of version `v`.
fn oci(v: &str) -> String {
    let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
    format!("quay.io/fedora/fedora-coreos@sha256:{hex:0<64}")
}

fn oci_rel(v: &str) -> Release {
    Release {
        version: v.into(),
        payload: oci(v),
    }
}

/// Publishes 1 -> 2 for OCI hosts, and only 1 for checksum hosts.
fn publish_by_scheme(p: &Policy) {
    p.service.publish(key(), 1, graph(&["1"], &[]));
    let nodes = ["1", "2"]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut n = node(v, i as u64);
            n.payload = oci(v);
            n
        })
        .collect();
    let oci_key = upshift_policy::state::ScopeKey {
        scheme: PayloadScheme::Oci,
        ..key()
    };
    p.service
        .publish(oci_key, 1, Graph::new(nodes, vec![(0, 1)]).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_follow_the_booted_payload_scheme() {
    let p = policy(Duration::from_secs(1800)).await;
    publish_by_scheme(&p);
    // A host booted from an OCI image: its stream asks for the OCI graph.
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, None);
    let mut os = Counting::new(t.path(), &[]);
    os.inner.initial = oci_rel("1");
    assert_eq!(os.booted_scheme().await.unwrap(), PayloadScheme::Oci);
    assert_eq!(
        start(&s, &os, SystemClock::shared()).finished().await,
        Exit::Rebooted
    );
    assert_eq!(os.booted().await.unwrap(), oci_rel("2"));
    // A checksum host on the same service gets the checksum graph: no update.
    let t2 = tempfile::tempdir().unwrap();
    let s2 = settings(t2.path(), &p.url, None);
    let os2 = Counting::new(t2.path(), &[]);
    let mut run = start(&s2, &os2, SystemClock::shared());
    let st = run
        .until("idle with a hint", |s| {
            s.state == "idle" && s.hint_stream_connected && s.checks >= 1
        })
        .await;
    assert!(st.last_error.is_none(), "{:?}", st.last_error);
    run.stop().await;
    assert_eq!(os2.deploys.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cincinnati_polls_ask_for_the_booted_payload_scheme() {
    let p = policy(Duration::from_secs(1800)).await;
    publish_by_scheme(&p);
    for (booted, scheme, want) in [
        (oci_rel("1"), PayloadScheme::Oci, Hint::Update(oci_rel("2"))),
        (rel("1"), PayloadScheme::Checksum, Hint::UpToDate),
    ] {
        let t = tempfile::tempdir().unwrap();
        let mut s = settings(t.path(), &p.url, None);
        s.hint_backend = upshift_agent::settings::HintBackend::Cincinnati;
        s.cincinnati_url = Some(p.url.clone());
        let (_node_tx, node_rx) = watch::channel(upshift_agent::hints::NodeView {
            booted,
            scheme,
            denied: vec![],
        });
        let cancel = CancellationToken::new();
        let src = upshift_agent::hints::spawn(
            s,
            ident(),
            node_rx,
            watch::channel(None).1,
            SystemClock::shared(),
            Box::new(|| 0.0),
            cancel.clone(),
        );
        let mut feed = src.feed.clone();
        let f = tokio::time::timeout(WAIT, feed.wait_for(|f| f.hint.is_some() || f.errors > 0))
            .await
            .expect("a polled hint")
            .unwrap()
            .clone();
        assert_eq!(f.hint, Some(want), "{scheme:?}: {:?}", f.last_error);
        cancel.cancel();
    }
}
