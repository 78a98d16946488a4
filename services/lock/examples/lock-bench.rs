//! Lock benchmark: grant+release cycles per second through the service core
//! on the embedded store and on a real etcd, next to the raw etcd
//! single-key transaction rate measured in the same run.
//!
//! Every worker owns one group (one slot), so no two workers contend: the
//! figure is the store path's throughput, not queueing. A cycle is one grant
//! and one release, i.e. two store transactions (each with its audit record),
//! so the comparable figure is operations per second against raw
//! transactions per second.
//!
//! The raw figure of DESIGN.md section 8 is a compare-and-swap on one key
//! (one put of one byte). A second raw figure has the shape of the service's
//! own transactions: the same compare on one key, putting a record of the
//! service's encoding and a new audit entry of its encoding and key form,
//! without the service. It tells the store's price for the audited shape
//! apart from the service's own overhead; the audit log's retention also
//! deletes one entry per entry written once it is full (batched, 100 a
//! transaction), which neither raw figure includes.
//!
//! ```text
//! cargo run --release -p upshift-lock --example lock-bench -- [--workers 16] [--secs 5]
//! ```
//! Prints JSON on stdout (`cargo xtask bench lock` saves it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use upshift_common::clock::SystemClock;
use upshift_common::telemetry::Metrics;
use upshift_lock::config::GroupConfig;
use upshift_lock::layout::{AuditRecord, Keys};
use upshift_lock::semaphore::{LockRequest, Method, SemaphoreState};
use upshift_lock::{LockConfig, LockMetrics, LockService, StoreLayout};
use upshift_store::embedded::EmbeddedStore;
use upshift_store::testing::EtcdServer;
use upshift_store::{Op, SharedStore, Txn};

struct Args {
    workers: usize,
    secs: u64,
}

fn args() -> Result<Args> {
    let mut parsed = Args {
        workers: 16,
        secs: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().context("flag without value")?;
        match flag.as_str() {
            "--workers" => parsed.workers = value.parse()?,
            "--secs" => parsed.secs = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(parsed)
}

/// Runs `workers` loops of `body(worker)` for `secs`; returns completed
/// iterations per second.
async fn rate<F, Fut>(workers: usize, secs: u64, body: F) -> Result<f64>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let body = Arc::new(body);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (body, done) = (body.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                body(worker).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

async fn lock_cycles(store: SharedStore, workers: usize, secs: u64) -> Result<f64> {
    let config = LockConfig {
        groups: (0..workers)
            .map(|w| {
                (
                    format!("bench-{w}"),
                    GroupConfig {
                        slots: 1,
                        ..Default::default()
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };
    let settings = config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let metrics = LockMetrics::new(Metrics::new("lock-bench").meter());
    let service = LockService::start(
        settings,
        store,
        SystemClock::shared(),
        metrics,
        CancellationToken::new(),
    )
    .await?;
    rate(workers, secs, move |w| {
        let service = service.clone();
        async move {
            let group = format!("bench-{w}");
            let request = LockRequest {
                id: format!("node-{w}"),
                method: Method::Fleetlock,
                ttl_secs: None,
            };
            service.lock(&group, request, "bench").await?;
            service
                .unlock(&group, &format!("node-{w}"), "bench", "release", "")
                .await?;
            Ok(())
        }
    })
    .await
}

/// Raw etcd: each worker compare-and-swaps its own key on its last revision.
async fn raw_txns(store: SharedStore, workers: usize, secs: u64) -> Result<f64> {
    let revisions: Arc<Vec<AtomicU64>> =
        Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect());
    rate(workers, secs, move |w| {
        let (store, revisions) = (store.clone(), revisions.clone());
        async move {
            let key = format!("raw/{w}");
            let last = revisions[w].load(Ordering::Relaxed);
            let outcome = store
                .txn(
                    Txn::new()
                        .when_mod_revision(key.clone(), last)
                        .then(Op::put(key, b"x".to_vec())),
                )
                .await?;
            anyhow::ensure!(outcome.succeeded, "uncontended CAS failed");
            revisions[w].store(outcome.revision, Ordering::Relaxed);
            Ok(())
        }
    })
    .await
}

/// Raw etcd in the service's shape: each worker compare-and-swaps its own
/// record key on its last revision, alternately putting a record with and
/// without a holder, with a new audit entry in the same transaction.
async fn raw_audited_txns(store: SharedStore, workers: usize, secs: u64) -> Result<f64> {
    let revisions: Arc<Vec<AtomicU64>> =
        Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect());
    // The handle adds its prefix, as the service's root handle spells it out.
    let keys = Keys::new(StoreLayout::Upshift, "");
    let clock = SystemClock::shared();
    rate(workers, secs, move |w| {
        let (store, revisions, keys) = (store.clone(), revisions.clone(), keys.clone());
        let now = clock.now();
        async move {
            let (group, id) = (format!("bench-{w}"), format!("node-{w}"));
            let key = keys.group_key(&group);
            let last = revisions[w].load(Ordering::Relaxed);
            let at_ms = u64::try_from(now.duration_since(std::time::UNIX_EPOCH)?.as_millis())?;
            let mut state = SemaphoreState::new(1);
            let grant = last % 2 == 0;
            if grant {
                let request = LockRequest {
                    id: id.clone(),
                    method: Method::Fleetlock,
                    ttl_secs: None,
                };
                let _ = state.lock(&request, at_ms / 1000, true);
            }
            let entry = AuditRecord {
                at_ms,
                actor: "bench".into(),
                action: if grant { "grant" } else { "release" }.into(),
                group,
                target: id,
                reason: if grant { "fleetlock" } else { "" }.into(),
                outcome: String::new(),
            };
            let outcome = store
                .txn(
                    Txn::new()
                        .when_mod_revision(key.clone(), last)
                        .then(Op::put(key, StoreLayout::Upshift.encode(&state, None)))
                        .then(Op::put(keys.audit_key(at_ms), serde_json::to_vec(&entry)?)),
                )
                .await?;
            anyhow::ensure!(outcome.succeeded, "uncontended CAS failed");
            revisions[w].store(outcome.revision, Ordering::Relaxed);
            Ok(())
        }
    })
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let dir = tempfile::tempdir()?;
    let embedded: SharedStore = Arc::new(EmbeddedStore::open(&dir.path().join("bench.redb"))?);
    let embedded_cycles = lock_cycles(embedded, args.workers, args.secs).await?;

    let etcd = EtcdServer::start().await.context("starting etcd")?;
    let raw = raw_txns(etcd.store("/raw/").await?, args.workers, args.secs).await?;
    let raw_audited =
        raw_audited_txns(etcd.store("/audited/").await?, args.workers, args.secs).await?;
    let etcd_cycles = lock_cycles(etcd.store("/lock/").await?, args.workers, args.secs).await?;

    let report = json!({
        "workers": args.workers,
        "seconds_per_run": args.secs,
        "embedded": {
            "cycles_per_sec": embedded_cycles,
            "ops_per_sec": embedded_cycles * 2.0,
        },
        "etcd": {
            "cycles_per_sec": etcd_cycles,
            "ops_per_sec": etcd_cycles * 2.0,
            "raw_txn_per_sec": raw,
            "ops_vs_raw_txn": etcd_cycles * 2.0 / raw,
            "raw_audited_txn_per_sec": raw_audited,
            "ops_vs_raw_audited_txn": etcd_cycles * 2.0 / raw_audited,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
