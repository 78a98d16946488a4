//! The conformance suite and etcd-specific behaviour against a real etcd.

use std::time::Duration;

use futures::StreamExt;
use upshift_store::conformance::{self, next_event};
use upshift_store::testing::{EtcdServer, skip_etcd};
use upshift_store::{Op, SharedStore, StoreError, Txn, WatchEvent};

/// A fresh etcd server, or `None` when etcd tests are skipped. Fails the
/// test when etcd is missing and skipping was not asked for.
async fn server() -> Option<EtcdServer> {
    if skip_etcd() {
        return None;
    }
    Some(EtcdServer::start().await.unwrap_or_else(|e| panic!("{e}")))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(server) = server().await else { return };
            let store = server.store("/conformance/").await.unwrap();
            conformance::$name(store).await;
        }
    )*};
}

conformance!(
    get_and_list_by_prefix,
    list_first_and_count,
    revisions,
    compare_and_swap,
    multi_op_atomicity,
    concurrent_cas_counter,
    watch_from_now,
    watch_from_past_revision,
    lease_expiry_deletes_keys,
    keep_alive_extends_lease,
    revoke_deletes_keys,
    unknown_lease,
);

async fn put(store: &SharedStore, key: &str, value: &str) -> u64 {
    store
        .txn(Txn::new().then(Op::put(key, value)))
        .await
        .unwrap()
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_server_restart() {
    let Some(mut server) = server().await else {
        return;
    };
    let store = server.store("/upshift/").await.unwrap();
    let mut watch = store.watch("w/", None).await.unwrap();
    let r1 = put(&store, "w/before", "1").await;
    assert_eq!(next_event(&mut watch).await.revision(), r1);

    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await.unwrap();
    // Written after the restart; the watch must re-open and deliver them.
    let mut written = Vec::new();
    for i in 0..3 {
        let rev = loop {
            match store
                .txn(Txn::new().then(Op::put(format!("w/after{i}"), "x")))
                .await
            {
                Ok(outcome) => break outcome.revision,
                Err(StoreError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        written.push((format!("w/after{i}"), rev));
    }
    for (key, rev) in written {
        let event = next_event(&mut watch).await;
        assert_eq!((event.key(), event.revision()), (key.as_str(), rev));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_compacted_revision_fails() {
    let Some(server) = server().await else { return };
    let store = server.store("").await.unwrap();
    let first = put(&store, "c/1", "a").await;
    let last = put(&store, "c/2", "b").await;
    let mut client = upshift_store::etcd::EtcdStore::connect(server.options(""))
        .await
        .unwrap()
        .client()
        .clone();
    client
        .compact(i64::try_from(last).unwrap(), None)
        .await
        .unwrap();
    match store.watch("c/", Some(first)).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (first, last))
        }
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    let mut watch = store.watch("c/", Some(last)).await.unwrap();
    assert!(matches!(watch.next().await, Some(Ok(WatchEvent::Put(kv))) if kv.key == "c/2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_isolate_stores() {
    let Some(server) = server().await else { return };
    let a = server.store("/a/").await.unwrap();
    let b = server.store("/b/").await.unwrap();
    put(&a, "k", "from a").await;
    assert!(b.get("k").await.unwrap().is_none());
    let (kvs, _) = a.list("").await.unwrap();
    assert_eq!(kvs.len(), 1);
    assert_eq!(
        (kvs[0].key.as_str(), kvs[0].value.as_slice()),
        ("k", &b"from a"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_unavailable() {
    let Some(mut server) = server().await else {
        return;
    };
    let store = server.store("").await.unwrap();
    server.stop();
    assert!(matches!(
        store.get("k").await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_handle_addresses_keys_without_the_prefix() {
    let Some(server) = server().await else { return };
    let store = server.store("/upshift/").await.unwrap();
    assert_eq!(store.key_prefix(), "/upshift/");
    let root = store.clone().root();
    assert_eq!(root.key_prefix(), "");
    put(&store, "mine", "1").await;
    put(&root, "com.coreos.airlock/groups/default/v1/semaphore", "2").await;
    assert_eq!(
        root.get("/upshift/mine").await.unwrap().unwrap().value,
        b"1"
    );
    assert!(root.get("mine").await.unwrap().is_none());
    assert!(
        store
            .get("com.coreos.airlock/groups/default/v1/semaphore")
            .await
            .unwrap()
            .is_none(),
        "the prefixed handle does not see keys outside its prefix"
    );
    // One transaction across both: the root handle spells the prefix out.
    let txn = Txn::new()
        .then(Op::put("/upshift/a", "x"))
        .then(Op::put("outside", "y"));
    assert!(root.txn(txn).await.unwrap().succeeded);
    assert_eq!(store.get("a").await.unwrap().unwrap().value, b"x");
}
