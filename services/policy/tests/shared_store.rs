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

#[tokio::test]
async fn embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        upshift_store::embedded::EmbeddedStore::open(&dir.path().join("policy.redb")).unwrap();
    pause_is_shared(UpshiftStore::shared(std::sync::Arc::new(store))).await;
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
    pause_is_shared(UpshiftStore::shared(std::sync::Arc::new(store))).await;
}
