//! Lease expiry and maintenance windows (no network: the gRPC handlers are
//! called directly): on tokio's paused clock on the in-memory and embedded
//! stores, in real time with a short lease on a real etcd.

#[path = "support/mem.rs"]
mod mem;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use upshift_common::auth::AdminAuth;
use upshift_common::clock::{ScaledClock, SharedClock, SystemClock};
use upshift_common::config::parse_toml;
use upshift_common::telemetry::Metrics;
use upshift_lock::{LockConfig, LockGrpc, LockMetrics, LockService};
use upshift_proto::lock::v1 as pb;
use upshift_proto::lock::v1::acquire_response::Event;
use upshift_proto::lock::v1::lock_service_server::LockService as _;
use upshift_store::SharedStore;
use upshift_store::embedded::EmbeddedStore;

const T0: u64 = 1_795_593_600; // 2026-11-25T08:00:00Z, a Wednesday

async fn start(cfg: &str, store: SharedStore, clock: SharedClock) -> (LockService, LockGrpc) {
    let settings = parse_toml::<LockConfig>(cfg).unwrap().validate().unwrap();
    let metrics = LockMetrics::new(Metrics::new("upshift-lock").meter());
    let svc = LockService::start(settings, store, clock, metrics, CancellationToken::new())
        .await
        .unwrap();
    let grpc = LockGrpc::new(svc.clone(), AdminAuth::new(None, vec![]));
    (svc, grpc)
}

type Acq = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::AcquireResponse, tonic::Status>> + Send>,
>;

async fn acquire(g: &LockGrpc, id: &str, ttl: Option<u64>) -> Acq {
    let req = pb::AcquireRequest {
        id: id.into(),
        group: "default".into(),
        ttl: ttl.map(|s| prost_types::Duration {
            seconds: s as i64,
            nanos: 0,
        }),
    };
    g.acquire(tonic::Request::new(req))
        .await
        .unwrap()
        .into_inner()
}

async fn next(s: &mut Acq, within: Duration) -> Option<Event> {
    tokio::time::timeout(within, s.next())
        .await
        .ok()
        .map(|e| e.unwrap().unwrap().event.unwrap())
}

/// Lease expiry and keepalive on tokio's paused clock, on `store`.
async fn lease_expiry_on_paused_time(store: SharedStore) {
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(T0), 1.0);
    let (svc, g) = start("[groups.default]\nslots = 1\n", store, clock.clone()).await;

    let mut a = acquire(&g, "a", Some(30)).await;
    let Some(Event::Granted(h)) = next(&mut a, Duration::from_secs(1)).await else {
        panic!("no grant")
    };
    let h = h.holder.unwrap();
    assert_eq!(h.ttl.unwrap().seconds, 30);
    assert_eq!(h.lease_expires_at.unwrap().seconds as u64, T0 + 30);

    let mut b = acquire(&g, "b", None).await;
    assert!(matches!(
        next(&mut b, Duration::from_secs(1)).await,
        Some(Event::Queued(_))
    ));

    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(keepalive(&g, "a").await.unwrap(), T0 + 50);

    // Still held at T0+45 (would have expired at T0+30 without the keepalive).
    assert!(next(&mut b, Duration::from_secs(25)).await.is_none());
    let Some(Event::Granted(h)) = next(&mut b, Duration::from_secs(60)).await else {
        panic!("no grant")
    };
    assert_eq!(
        h.holder.unwrap().acquired_at.unwrap().seconds as u64,
        T0 + 50,
        "granted at expiry"
    );
    assert_expired_and_b_holds(&svc, &g).await;
}

/// What both lease tests end with: `a` expired (audited), `b` holds without a lease.
async fn assert_expired_and_b_holds(svc: &LockService, g: &LockGrpc) {
    let (state, _, _) = svc.load("default").await.unwrap();
    assert_eq!(
        state
            .holders
            .iter()
            .map(|h| h.id.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    let audit = svc.audit(Some("default"), 10).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "release" && e.target == "a" && e.reason == "lease expired"),
        "{audit:?}"
    );
    let err = keepalive(g, "b").await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "b has no lease"
    );
}

async fn keepalive(g: &LockGrpc, id: &str) -> Result<u64, tonic::Status> {
    let k = g
        .keepalive(tonic::Request::new(pb::KeepaliveRequest {
            id: id.into(),
            group: "default".into(),
        }))
        .await?
        .into_inner();
    Ok(k.lease_expires_at.unwrap().seconds as u64)
}

#[tokio::test(start_paused = true)]
async fn lease_expiry_frees_a_slot_and_keepalive_extends_it_mem() {
    lease_expiry_on_paused_time(Arc::new(mem::MemStore::new())).await;
}

#[tokio::test(start_paused = true)]
async fn lease_expiry_frees_a_slot_and_keepalive_extends_it_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    lease_expiry_on_paused_time(Arc::new(store)).await;
}

/// On a real etcd, in real time: a 5 s lease (expiry has a resolution of
/// one second), renewed once after about a second; the whole test takes
/// about 7 s. The lease is long enough that a keepalive delayed by a loaded
/// machine still lands before the first expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_frees_a_slot_and_keepalive_extends_it_etcd() {
    let Some((open, _etcd)) = upshift_store::testing::etcd_opener().await else {
        return;
    };
    let clock = SystemClock::shared();
    let (svc, g) = start("[groups.default]\nslots = 1\n", open(), clock.clone()).await;
    let mut a = acquire(&g, "a", Some(5)).await;
    let Some(Event::Granted(h)) = next(&mut a, Duration::from_secs(3)).await else {
        panic!("no grant")
    };
    let first_expiry = h.holder.unwrap().lease_expires_at.unwrap().seconds as u64;
    let mut b = acquire(&g, "b", None).await;
    assert!(matches!(
        next(&mut b, Duration::from_secs(3)).await,
        Some(Event::Queued(_))
    ));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let renewed = keepalive(&g, "a").await.unwrap();
    assert!(renewed > first_expiry, "{renewed} <= {first_expiry}");
    // The renewed lease has more than a second left: no grant meanwhile.
    assert!(
        matches!(
            next(&mut b, Duration::from_millis(900)).await,
            None | Some(Event::Queued(_))
        ),
        "granted before the renewed expiry"
    );
    let granted = loop {
        match next(&mut b, Duration::from_secs(10)).await {
            Some(Event::Queued(_)) => continue,
            other => break other,
        }
    };
    let Some(Event::Granted(h)) = granted else {
        panic!("b was not granted after a's lease expired")
    };
    let acquired = h.holder.unwrap().acquired_at.unwrap().seconds as u64;
    assert!(
        acquired >= renewed,
        "granted at {acquired}, before expiry {renewed}"
    );
    assert_expired_and_b_holds(&svc, &g).await;
}

#[tokio::test(start_paused = true)]
async fn waiter_is_granted_at_the_exact_window_opening() {
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(T0), 1.0);
    let store: SharedStore = Arc::new(mem::MemStore::new());
    let cfg = "[groups.default]\nslots = 1\n[[groups.default.windows]]\ndays = [\"Wed\"]\nstart = \"09:30\"\nlength = \"1h\"\ntime_zone = \"Europe/Berlin\"\n";
    // 09:30 Berlin (CET) = 08:30 UTC = T0 + 1800.
    let (_svc, g) = start(cfg, store, clock).await;
    let mut a = acquire(&g, "a", None).await;
    let Some(Event::Queued(q)) = next(&mut a, Duration::from_secs(1)).await else {
        panic!("not queued")
    };
    assert_eq!(q.reason, "outside-window");
    let Some(Event::Granted(h)) = next(&mut a, Duration::from_secs(3600)).await else {
        panic!("no grant")
    };
    assert_eq!(
        h.holder.unwrap().acquired_at.unwrap().seconds as u64,
        T0 + 1800
    );
}

/// The audit log keeps the newest `keep` entries, trimmed in the background
/// after the writes, and drops entries older than `max_age`.
#[tokio::test(start_paused = true)]
async fn the_audit_log_is_trimmed_to_its_retention() {
    use upshift_lock::semaphore::{LockRequest, Method};
    let clock = ScaledClock::shared(UNIX_EPOCH + Duration::from_secs(T0), 1.0);
    let store: SharedStore = Arc::new(mem::MemStore::new());
    let cfg = "[audit]\nkeep = 5\nmax_age = \"2h\"\n[groups.default]\nslots = 1\n";
    let (svc, _g) = start(cfg, store, clock).await;
    for i in 0..6 {
        let id = format!("host-{i}");
        let req = LockRequest {
            id: id.clone(),
            method: Method::Fleetlock,
            ttl_secs: None,
        };
        svc.lock("default", req, "client").await.unwrap();
        svc.unlock("default", &id, "client", "release", "done")
            .await
            .unwrap();
    }
    // 12 entries written; the trimmer runs as soon as the writers yield.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let kept: Vec<_> = svc
        .audit(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.action, e.target))
        .collect();
    assert_eq!(
        kept,
        [
            "release host-5",
            "grant host-5",
            "release host-4",
            "grant host-4",
            "release host-3"
        ]
    );
    // Three hours on, the hourly check has removed what is over two hours old.
    tokio::time::sleep(Duration::from_secs(3 * 3600 + 1)).await;
    assert!(svc.audit(None, 100).await.unwrap().is_empty());
}
