//! The rpm-ostree/logind backend over real D-Bus: a private `dbus-daemon`
//! with test doubles of both services (see `support/dbus_doubles.rs`).

#[path = "support/dbus_daemon.rs"]
mod dbus_daemon;
#[path = "support/dbus_doubles.rs"]
mod dbus_doubles;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbus_daemon::DbusDaemon;
use dbus_doubles::{
    FakeDeployment, FakeSession, LoginState, LogindDouble, RpmOstreeDouble, RpmState,
};
use upshift_agent::os::dbus::{Bus, Timeouts};
use upshift_agent::os::rpm_ostree::{RpmOstree, RpmOstreeOptions};
use upshift_agent::os::wall::Wall;
use upshift_agent::os::{Op, OsBackend, OsError, PayloadScheme, Release};

const IMAGE: &str = "quay.io/fedora/fedora-coreos";

fn sum(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn rel(version: &str, c: char) -> Release {
    Release {
        version: version.into(),
        payload: sum(c),
    }
}

/// Booted 41.1 (`aaa…`); the remote also has 41.2 (`bbb…`).
fn host() -> RpmState {
    RpmState {
        deployments: vec![FakeDeployment {
            version: "41.1".into(),
            checksum: sum('a'),
            booted: true,
            staged: false,
            finalization_locked: false,
            image: None,
        }],
        remote: HashMap::from([(sum('a'), "41.1".into()), (sum('b'), "41.2".into())]),
        images: HashMap::from([(
            format!("{IMAGE}@sha256:{}", sum('d')),
            ("42.1".to_string(), sum('e')),
        )]),
        ..RpmState::default()
    }
}

fn session(id: &str, class: &str, kind: &str, tty: &str) -> FakeSession {
    FakeSession {
        id: id.into(),
        uid: 1000,
        user: "core".into(),
        class: class.into(),
        kind: kind.into(),
        remote: kind == "tty",
        tty: tty.into(),
    }
}

/// One ssh login on pts/0, one cron job, one user manager.
fn logins() -> LoginState {
    LoginState {
        sessions: vec![
            session("3", "user", "tty", "pts/0"),
            session("c1", "background", "unspecified", ""),
            session("4", "manager", "unspecified", ""),
        ],
        ended: vec![],
        reboots: vec![],
    }
}

fn opts(call: Duration, transaction: Duration) -> RpmOstreeOptions {
    RpmOstreeOptions {
        timeouts: Timeouts { call, transaction },
        ..RpmOstreeOptions::default()
    }
}

/// Cincinnati graph: 41.1 (`aaa…`) -> 41.2 (`bbb…`).
fn graph_json() -> String {
    format!(
        r#"{{"nodes":[
 {{"version":"41.1","payload":"{a}","metadata":{{"org.fedoraproject.coreos.releases.age_index":"0"}}}},
 {{"version":"41.2","payload":"{b}","metadata":{{"org.fedoraproject.coreos.releases.age_index":"1"}}}}],
 "edges":[[0,1]]}}"#,
        a = sum('a'),
        b = sum('b')
    )
}

/// Serves `app` on a free local port; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn bus(d: &DbusDaemon) -> Bus {
    Bus::Address(d.address.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_sessions_finalize_reboot_over_dbus() {
    let daemon = DbusDaemon::start();
    let rpm = RpmOstreeDouble::start(&daemon.address, host()).await;
    let login = LogindDouble::start(&daemon.address, logins()).await;
    let dev = tempfile::tempdir().unwrap();
    std::fs::create_dir(dev.path().join("pts")).unwrap();
    std::fs::write(dev.path().join("pts/0"), "").unwrap();

    let os = RpmOstree::connect(&bus(&daemon), RpmOstreeOptions::default())
        .await
        .unwrap()
        .with_wall(Wall {
            dev_dir: dev.path().into(),
            ..Wall::default()
        });
    assert_eq!(rpm.state().clients, vec!["upshift-agent".to_string()]);
    os.register_driver().await.unwrap();
    assert_eq!(rpm.state().drivers, vec!["upshift-agent".to_string()]);
    assert_eq!(
        rpm.state().deployments.len(),
        1,
        "registering changed nothing"
    );

    assert_eq!(os.booted().await.unwrap(), rel("41.1", 'a'));
    assert_eq!(os.staged().await.unwrap(), None);

    os.stage(&rel("41.2", 'b')).await.unwrap();
    {
        let s = rpm.state();
        let call = s.deploys.last().unwrap();
        assert_eq!(
            call.revision.as_deref(),
            Some(&*format!("revision={}", sum('b')))
        );
        assert_eq!(call.lock_finalization, Some(true));
        assert_eq!(call.allow_downgrade, Some(false));
        assert!(s.deployments[0].staged && s.deployments[0].finalization_locked);
    }
    assert_eq!(os.staged().await.unwrap(), Some(rel("41.2", 'b')));
    assert_eq!(os.booted().await.unwrap(), rel("41.1", 'a'));

    assert_eq!(os.active_sessions().await.unwrap(), 1);
    assert_eq!(os.message_sessions("rebooting soon").await.unwrap(), 1);
    let tty = std::fs::read_to_string(dev.path().join("pts/0")).unwrap();
    assert!(tty.contains("rebooting soon"), "{tty:?}");

    os.finalize().await.unwrap();
    assert_eq!(rpm.state().finalized, vec![sum('b')]);
    assert!(!rpm.state().deployments[0].finalization_locked);

    assert!(login.state().reboots.is_empty());
    os.reboot().await.unwrap();
    assert_eq!(login.state().reboots, vec![false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deploy_is_a_typed_error_and_cleanup_unstages() {
    let daemon = DbusDaemon::start();
    let rpm = RpmOstreeDouble::start(&daemon.address, host()).await;
    let os = RpmOstree::connect(&bus(&daemon), RpmOstreeOptions::default())
        .await
        .unwrap();

    // A commit the remote does not have.
    match os.stage(&rel("41.3", 'c')).await {
        Err(OsError::TransactionFailed {
            op: Op::Deploy,
            message,
        }) => {
            assert!(message.contains("No such commit"), "{message}")
        }
        other => panic!("expected a failed deploy transaction, got {other:?}"),
    }
    rpm.state().fail_deploy = Some("error: Writing content object: No space left on device".into());
    let err = os.stage(&rel("41.2", 'b')).await.unwrap_err();
    assert!(
        matches!(&err, OsError::TransactionFailed { op: Op::Deploy, message } if message.contains("No space")),
        "{err:?}"
    );
    assert_eq!(err.kind(), "transaction_failed");
    assert_eq!(os.staged().await.unwrap(), None);
    assert!(matches!(os.finalize().await, Err(OsError::NothingStaged)));

    // Payloads that are neither checksums nor image digests are refused locally.
    let before = rpm.state().deploys.len();
    assert!(matches!(
        os.stage(&Release {
            version: "41.2".into(),
            payload: "latest".into()
        })
        .await,
        Err(OsError::UnsupportedPayload(_))
    ));
    assert_eq!(rpm.state().deploys.len(), before);

    rpm.state().fail_deploy = None;
    os.stage(&rel("41.2", 'b')).await.unwrap();
    assert!(os.staged().await.unwrap().is_some());
    os.cleanup().await.unwrap();
    assert_eq!(os.staged().await.unwrap(), None);
    assert_eq!(
        rpm.state().cleanups,
        vec![vec!["pending-deploy".to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_services_fail_fast_with_a_typed_error() {
    let daemon = DbusDaemon::start();
    // Nothing owns the rpm-ostree or logind names on this bus.
    let err = RpmOstree::connect(
        &bus(&daemon),
        opts(Duration::from_secs(30), Duration::from_secs(30)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            OsError::ServiceUnavailable {
                op: Op::RegisterClient,
                service: "org.projectatomic.rpmostree1",
                ..
            }
        ),
        "{err:?}"
    );
    let conn = zbus::connection::Builder::address(daemon.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let os = RpmOstree::with_connection(conn, RpmOstreeOptions::default());
    assert!(matches!(
        os.active_sessions().await,
        Err(OsError::ServiceUnavailable {
            op: Op::ListSessions,
            service: "org.freedesktop.login1",
            ..
        })
    ));
    assert!(matches!(
        os.reboot().await,
        Err(OsError::ServiceUnavailable { op: Op::Reboot, .. })
    ));
    // No bus at all.
    let err = RpmOstree::connect(
        &Bus::Address("unix:path=/nonexistent/upshift-test-bus".into()),
        RpmOstreeOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            OsError::Dbus {
                op: Op::Connect,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_daemon_and_stuck_transaction_time_out() {
    let daemon = DbusDaemon::start();
    let rpm = RpmOstreeDouble::start(&daemon.address, host()).await;
    let conn = zbus::connection::Builder::address(daemon.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let (short, long) = (Duration::from_millis(300), Duration::from_secs(30));

    rpm.state().hang_calls = true;
    let os = RpmOstree::with_connection(conn.clone(), opts(short, long));
    let err = os.booted().await.unwrap_err();
    assert!(
        matches!(err, OsError::Timeout { op: Op::ReadDeployments, after } if after == short),
        "{err:?}"
    );

    rpm.state().hang_calls = false;
    rpm.state().hang_transactions = true;
    let os = RpmOstree::with_connection(conn, opts(long, short));
    let err = os.stage(&rel("41.2", 'b')).await.unwrap_err();
    assert!(
        matches!(err, OsError::Timeout { op: Op::Deploy, after } if after == short),
        "{err:?}"
    );
    assert_eq!(err.kind(), "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_payload_is_rebased_by_image_digest() {
    let daemon = DbusDaemon::start();
    let rpm = RpmOstreeDouble::start(&daemon.address, host()).await;
    let os = RpmOstree::connect(&bus(&daemon), RpmOstreeOptions::default())
        .await
        .unwrap();
    let target = Release {
        version: "42.1".into(),
        payload: format!("{IMAGE}@sha256:{}", sum('d')),
    };
    os.stage(&target).await.unwrap();
    {
        let s = rpm.state();
        let call = s.deploys.last().unwrap();
        assert_eq!(call.revision, None);
        assert_eq!(
            call.refspec.as_deref(),
            Some(&*format!("ostree-unverified-registry:{}", target.payload))
        );
        assert_eq!(call.lock_finalization, Some(true));
    }
    // The staged image deployment reads back as the same release.
    assert_eq!(os.staged().await.unwrap(), Some(target));
    // An image the registry does not have fails the transaction.
    let missing = Release {
        version: "42.2".into(),
        payload: format!("{IMAGE}@sha256:{}", sum('f')),
    };
    assert!(matches!(
        os.stage(&missing).await,
        Err(OsError::TransactionFailed { op: Op::Deploy, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booted_scheme_follows_the_container_image_reference() {
    let daemon = DbusDaemon::start();
    let _rpm = RpmOstreeDouble::start(&daemon.address, host()).await;
    let os = RpmOstree::connect(&bus(&daemon), RpmOstreeOptions::default())
        .await
        .unwrap();
    assert_eq!(os.booted_scheme().await.unwrap(), PayloadScheme::Checksum);

    // A host booted from an image (`rpm-ostree rebase ostree-...:IMAGE`).
    let daemon = DbusDaemon::start();
    let mut state = host();
    state.deployments[0].image = Some(format!(
        "ostree-remote-registry:fedora:{IMAGE}@sha256:{}",
        sum('d')
    ));
    let _rpm = RpmOstreeDouble::start(&daemon.address, state).await;
    let os = RpmOstree::connect(&bus(&daemon), RpmOstreeOptions::default())
        .await
        .unwrap();
    assert_eq!(os.booted_scheme().await.unwrap(), PayloadScheme::Oci);
    assert_eq!(
        os.booted().await.unwrap().payload,
        format!("{IMAGE}@sha256:{}", sum('d'))
    );
}

/// The agent's own run loop against the doubles: Cincinnati graph and a
/// FleetLock server over HTTP, the sessions gate reading logind; the agent
/// stages, is refused the lock, gets it, finalizes and reboots, all through
/// real D-Bus calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_driver_updates_the_host_over_dbus() {
    use upshift_agent::config::MergedInputs;
    use upshift_agent::driver::{Exit, Ident, run};
    use upshift_agent::settings::{HintBackend, LockKind, Settings};

    let daemon = DbusDaemon::start();
    let rpm = RpmOstreeDouble::start(&daemon.address, host()).await;
    // Nobody at a terminal: a cron job and a user manager only.
    let mut idle = logins();
    idle.sessions.remove(0);
    let login = LogindDouble::start(&daemon.address, idle).await;

    let graph = graph_json();
    // FleetLock: the first pre-reboot is refused (another node holds the
    // slot). Each attempt records what the host looked like at that moment.
    let seen: Arc<Mutex<Vec<(bool, usize)>>> = Arc::default();
    let (seen2, host_state) = (seen.clone(), rpm.state.clone());
    let app = axum::Router::new()
        .route(
            "/v1/graph",
            axum::routing::get(move || {
                let g = graph.clone();
                async move { g }
            }),
        )
        .route(
            "/v1/pre-reboot",
            axum::routing::post(move || {
                let (seen, host) = (seen2.clone(), host_state.clone());
                async move {
                    let h = host.lock().unwrap();
                    let staged = h.deployments.iter().any(|d| d.staged);
                    let mut seen = seen.lock().unwrap();
                    seen.push((staged, h.finalized.len()));
                    if seen.len() == 1 {
                        axum::http::StatusCode::CONFLICT
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        );
    let base = serve(app).await;

    let t = tempfile::tempdir().unwrap();
    let mut s = Settings::validate(&MergedInputs::default(), t.path()).unwrap();
    s.hint_backend = HintBackend::Cincinnati;
    s.cincinnati_url = Some(base.clone());
    s.lock_kind = LockKind::Fleetlock;
    s.lock_url = Some(base);
    s.poll_interval = Duration::from_millis(50);
    let ident = Ident {
        node_uuid: "u1".into(),
        platform: "qemu".into(),
        motd_path: None,
    };
    let os = RpmOstree::start(&bus(&daemon), RpmOstreeOptions::default())
        .await
        .unwrap();
    let exit = tokio::time::timeout(
        Duration::from_secs(60),
        run(&s, &ident, &os, &upshift_common::clock::SystemClock),
    )
    .await
    .expect("the agent finishes its update")
    .unwrap();
    assert_eq!(exit, Exit::Rebooted);

    let st = rpm.state();
    let deploys: Vec<_> = st.deploys.iter().filter(|c| c.revision.is_some()).collect();
    assert_eq!(deploys.len(), 1, "staged exactly once: {:?}", st.deploys);
    assert_eq!(
        deploys[0].revision.as_deref(),
        Some(&*format!("revision={}", sum('b')))
    );
    assert_eq!(deploys[0].lock_finalization, Some(true));
    assert_eq!(st.finalized, vec![sum('b')]);
    assert_eq!(login.state().reboots, vec![false]);
    // Staged before asking for the lock, finalized only after getting it.
    assert_eq!(*seen.lock().unwrap(), vec![(true, 0), (true, 0)]);
}

/// The shipped D-Bus policy parses: dbus-daemon refuses to start with a
/// malformed included file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dist_dbus_policy_is_accepted_by_dbus_daemon() {
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist/dbus/usr/share/dbus-1/system.d/upshift-agent.conf");
    assert!(policy.exists(), "{} is missing", policy.display());
    let daemon = DbusDaemon::start_with_includes(&[&policy]);
    let conn = zbus::connection::Builder::address(daemon.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    assert!(conn.unique_name().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booted_deployment_without_version_is_a_bad_reply() {
    let daemon = DbusDaemon::start();
    let mut state = host();
    state.deployments[0].version = String::new();
    let _rpm = RpmOstreeDouble::start(&daemon.address, state).await;
    let os = RpmOstree::connect(&bus(&daemon), RpmOstreeOptions::default())
        .await
        .unwrap();
    let err = os.booted().await.unwrap_err();
    assert!(
        matches!(&err, OsError::BadReply { op: Op::ReadDeployments, detail } if detail.contains("no version")),
        "{err:?}"
    );
    // The deployment itself is still readable.
    assert_eq!(os.booted_deployment().await.unwrap().checksum, sum('a'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_and_ended_sessions() {
    let daemon = DbusDaemon::start();
    let _rpm = RpmOstreeDouble::start(
        &daemon.address,
        RpmState {
            deny_clients: true,
            ..host()
        },
    )
    .await;
    let mut state = logins();
    // Listed, but gone before its properties are read.
    state.ended.push(session("9", "user", "tty", "pts/9"));
    let login = LogindDouble::start(&daemon.address, state).await;

    let err = RpmOstree::connect(&bus(&daemon), RpmOstreeOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OsError::Denied {
                op: Op::RegisterClient,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), "denied");

    let conn = zbus::connection::Builder::address(daemon.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let os = RpmOstree::with_connection(conn, RpmOstreeOptions::default());
    let all = os.logind().sessions().await.unwrap();
    assert_eq!(
        all.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec!["3", "c1", "4"]
    );
    assert_eq!(all[0].tty, "pts/0");
    assert!(all[0].remote);
    assert_eq!(os.active_sessions().await.unwrap(), 1);
    drop(login);
}

/// A user logged in on pts/0: the run loop postpones, messages the terminal
/// through logind + wall, and proceeds once `max_postpone` has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_driver_messages_logged_in_users_before_rebooting() {
    use upshift_agent::config::MergedInputs;
    use upshift_agent::driver::{Exit, Ident, run};
    use upshift_agent::settings::{HintBackend, LockKind, Settings};

    let daemon = DbusDaemon::start();
    let rpm = RpmOstreeDouble::start(&daemon.address, host()).await;
    let login = LogindDouble::start(&daemon.address, logins()).await;
    let dev = tempfile::tempdir().unwrap();
    std::fs::create_dir(dev.path().join("pts")).unwrap();
    std::fs::write(dev.path().join("pts/0"), "").unwrap();

    let graph = graph_json();
    let app = axum::Router::new().route(
        "/v1/graph",
        axum::routing::get(move || {
            let g = graph.clone();
            async move { g }
        }),
    );
    let base = serve(app).await;

    let t = tempfile::tempdir().unwrap();
    let mut s = Settings::validate(&MergedInputs::default(), t.path()).unwrap();
    s.hint_backend = HintBackend::Cincinnati;
    s.cincinnati_url = Some(base);
    s.lock_kind = LockKind::Immediate;
    s.poll_interval = Duration::from_millis(50);
    s.max_postpone = Duration::from_millis(200);
    s.session_message = "upshift: rebooting into 41.2 shortly".into();
    let ident = Ident {
        node_uuid: "u1".into(),
        platform: "qemu".into(),
        motd_path: None,
    };
    let os = RpmOstree::start(&bus(&daemon), RpmOstreeOptions::default())
        .await
        .unwrap()
        .with_wall(Wall {
            dev_dir: dev.path().into(),
            ..Wall::default()
        });
    let exit = tokio::time::timeout(
        Duration::from_secs(60),
        run(&s, &ident, &os, &upshift_common::clock::SystemClock),
    )
    .await
    .expect("the agent finishes its update")
    .unwrap();
    assert_eq!(exit, Exit::Rebooted);
    let tty = std::fs::read_to_string(dev.path().join("pts/0")).unwrap();
    assert!(tty.contains("rebooting into 41.2 shortly"), "{tty:?}");
    assert_eq!(rpm.state().finalized, vec![sum('b')]);
    assert_eq!(login.state().reboots, vec![false]);
}
