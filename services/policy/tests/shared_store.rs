//! Overrides shared by two instances through the workspace store.

mod support;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use upshift_common::clock::SystemClock;
use upshift_policy::store::{SharedKv, UpshiftStore};

use support::*;

async fn pause_is_shared(store: SharedKv) {
    let c = config(Duration::from_secs(30), Duration::from_secs(600));
    let a = start(
        &c,
        store.clone(),
        SystemClock::shared(),
        CancellationToken::new(),
    );
    let b = start(&c, store, SystemClock::shared(), CancellationToken::new());
    a.control
        .pause("stable", "2.0", false, "canary failures", "ops")
        .await
        .unwrap();
    let mut seen = b.control.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        seen.wait_for(|o| o.pause("stable", "2.0").is_some()),
    )
    .await
    .unwrap()
    .unwrap();
    b.control
        .resume("stable", "2.0", "fixed", "ops")
        .await
        .unwrap();
    let mut seen = a.control.subscribe();
    let o = tokio::time::timeout(
        Duration::from_secs(10),
        seen.wait_for(|o| {
            o.rollout("stable", "2.0")
                .is_some_and(|r| r.paused.is_none())
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert!(o.rollout("stable", "2.0").unwrap().paused_total >= 0.0);
}

/// A replica that has not seen another's pause yet still resumes it: the
/// change is compare-and-swapped on the stored record, not on the copy.
async fn changes_read_the_store_not_the_local_copy(store: SharedKv) {
    let c = config(Duration::from_secs(30), Duration::from_secs(600));
    let a = start(
        &c,
        store.clone(),
        SystemClock::shared(),
        CancellationToken::new(),
    );
    let b = start(
        &c,
        store.clone(),
        SystemClock::shared(),
        CancellationToken::new(),
    );
    a.control
        .pause("stable", "3.0", true, "first", "ops")
        .await
        .unwrap();
    let resumed = b
        .control
        .resume("stable", "3.0", "right away", "ops")
        .await
        .unwrap();
    assert!(resumed.paused.is_none(), "{resumed:?}");
    assert!(!resumed.withdrawn);
    assert_eq!(
        resumed.resumed.as_ref().map(|m| m.reason.as_str()),
        Some("right away")
    );
    // Two replicas pausing at once: one pause, kept with its first reason.
    let (x, y) = tokio::join!(
        a.control.pause("stable", "4.0", false, "from a", "ops"),
        b.control.pause("stable", "4.0", false, "from b", "ops"),
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let (px, py) = (x.paused.unwrap(), y.paused.unwrap());
    assert_eq!(
        px.reason, py.reason,
        "both answer with the one stored pause"
    );
    assert!((px.at - py.at).abs() < 1e-3);
    let (audit, _) = store.list(upshift_policy::overrides::AUDIT).await.unwrap();
    let pauses = audit
        .iter()
        .filter(|(_, v)| String::from_utf8_lossy(v).contains("\"version\":\"4.0\""))
        .count();
    assert_eq!(pauses, 1, "one audited pause");
}

#[tokio::test]
async fn memory_store_changes_are_compare_and_swapped() {
    changes_read_the_store_not_the_local_copy(upshift_policy::store::MemoryStore::shared()).await;
}

#[tokio::test]
async fn embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        upshift_store::embedded::EmbeddedStore::open(&dir.path().join("policy.redb")).unwrap();
    let store = UpshiftStore::shared(std::sync::Arc::new(store));
    pause_is_shared(store.clone()).await;
    changes_read_the_store_not_the_local_copy(store).await;
}

#[tokio::test]
async fn etcd_store() {
    let server = match upshift_store::testing::EtcdServer::start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "!!!!!!!! etcd unavailable ({e}): SKIPPING the etcd shared-store test !!!!!!!!"
            );
            return;
        }
    };
    let store = upshift_store::etcd::EtcdStore::connect(server.options("/policy-test/"))
        .await
        .unwrap();
    let store = UpshiftStore::shared(std::sync::Arc::new(store));
    pause_is_shared(store.clone()).await;
    changes_read_the_store_not_the_local_copy(store).await;
}
