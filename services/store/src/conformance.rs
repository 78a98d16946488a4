//! The conformance suite every [`Store`](crate::Store) implementation must
//! pass. Each function takes a fresh, empty store and panics on a violation;
//! backends run them from their integration tests (see
//! `tests/embedded.rs` and `tests/etcd.rs`), other crates may reuse them.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;

use crate::{KeyValue, Op, SharedStore, StoreError, Txn, WatchEvent, WatchStream};

/// How long a watch may take to deliver an expected event.
const EVENT_WAIT: Duration = Duration::from_secs(15);

async fn put(store: &SharedStore, key: &str, value: &str) -> u64 {
    let outcome = store
        .txn(Txn::new().then(Op::put(key, value)))
        .await
        .expect("put");
    assert!(outcome.succeeded);
    outcome.revision
}

async fn delete(store: &SharedStore, key: &str) -> u64 {
    store
        .txn(Txn::new().then(Op::delete(key)))
        .await
        .expect("delete")
        .revision
}

/// The next event of `stream`, failing the test after a while.
pub async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_WAIT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_WAIT:?}"),
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

fn put_event(event: &WatchEvent) -> (&str, &[u8], u64) {
    match event {
        WatchEvent::Put(kv) => (&kv.key, &kv.value, kv.mod_revision),
        other => panic!("expected a put, got {other:?}"),
    }
}

/// Point reads and prefix listings: key order, prefix boundaries.
pub async fn get_and_list_by_prefix(store: SharedStore) {
    for key in ["a/2", "a/10", "ab/1", "a/1", "b", "a"] {
        put(&store, key, &format!("v-{key}")).await;
    }
    let (a, _) = store.list("a/").await.unwrap();
    assert_eq!(keys(&a), ["a/1", "a/10", "a/2"]);
    assert_eq!(a[0].value, b"v-a/1");
    let (all_a, _) = store.list("a").await.unwrap();
    assert_eq!(keys(&all_a), ["a", "a/1", "a/10", "a/2", "ab/1"]);
    assert_eq!(keys(&store.list("ab").await.unwrap().0), ["ab/1"]);
    assert!(store.list("c").await.unwrap().0.is_empty());
    assert_eq!(
        keys(&store.list("").await.unwrap().0),
        ["a", "a/1", "a/10", "a/2", "ab/1", "b"]
    );
    assert_eq!(store.get("b").await.unwrap().unwrap().value, b"v-b");
    assert!(store.get("a/").await.unwrap().is_none());
    assert!(store.get("zzz").await.unwrap().is_none());
}

/// The first keys of a prefix and the count of all of them.
pub async fn list_first_and_count(store: SharedStore) {
    for key in ["log/3", "log/1", "log/2", "logs", "m"] {
        put(&store, key, &format!("v-{key}")).await;
    }
    let (first, total) = store.list_first("log/", 2).await.unwrap();
    assert_eq!((keys(&first), total), (vec!["log/1", "log/2"], 3));
    assert_eq!(first[1].value, b"v-log/2");
    let (none, total) = store.list_first("log/", 0).await.unwrap();
    assert_eq!((none.len(), total), (0, 3));
    let (all, total) = store.list_first("log", 10).await.unwrap();
    assert_eq!(
        (keys(&all), total),
        (vec!["log/1", "log/2", "log/3", "logs"], 4)
    );
    assert_eq!(store.list_first("n", 5).await.unwrap(), (Vec::new(), 0));
}

/// Create and mod revisions; the store revision moves once per write txn.
pub async fn revisions(store: SharedStore) {
    let r1 = put(&store, "k", "1").await;
    let kv = store.get("k").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.lease),
        (r1, r1, None)
    );
    let r2 = put(&store, "k", "2").await;
    assert_eq!(r2, r1 + 1);
    let kv = store.get("k").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));

    let failed = store
        .txn(
            Txn::new()
                .when_mod_revision("k", r1)
                .then(Op::put("k", "x")),
        )
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(
        failed.revision, r2,
        "a failed txn does not bump the revision"
    );
    assert_eq!(store.list("").await.unwrap().1, r2);

    let both = store
        .txn(Txn::new().then(Op::put("m", "1")).then(Op::put("n", "1")))
        .await
        .unwrap();
    assert_eq!(both.revision, r2 + 1, "one revision per transaction");
    let m = store.get("m").await.unwrap().unwrap();
    let n = store.get("n").await.unwrap().unwrap();
    assert_eq!(
        (m.mod_revision, n.mod_revision),
        (both.revision, both.revision)
    );

    let r4 = delete(&store, "k").await;
    assert_eq!(r4, both.revision + 1);
    assert!(store.get("k").await.unwrap().is_none());
    let r5 = put(&store, "k", "again").await;
    assert_eq!(
        store.get("k").await.unwrap().unwrap().create_revision,
        r5,
        "re-created key starts over"
    );
    assert_eq!(store.list("").await.unwrap().1, r5);
}

/// Compare-and-swap on `mod_revision`, 0 meaning absent.
pub async fn compare_and_swap(store: SharedStore) {
    let create = Txn::new()
        .when_mod_revision("cas", 0)
        .then(Op::put("cas", "first"));
    let created = store.txn(create.clone()).await.unwrap();
    assert!(created.succeeded);
    assert!(
        !store.txn(create).await.unwrap().succeeded,
        "key exists: compare with 0 fails"
    );
    let stale = Txn::new()
        .when_mod_revision("cas", created.revision + 100)
        .then(Op::put("cas", "x"));
    assert!(!store.txn(stale).await.unwrap().succeeded);
    let update = Txn::new()
        .when_mod_revision("cas", created.revision)
        .then(Op::put("cas", "second"));
    assert!(store.txn(update).await.unwrap().succeeded);
    assert_eq!(store.get("cas").await.unwrap().unwrap().value, b"second");
    let rev = store.get("cas").await.unwrap().unwrap().mod_revision;
    assert!(
        store
            .txn(
                Txn::new()
                    .when_mod_revision("cas", rev)
                    .then(Op::delete("cas"))
            )
            .await
            .unwrap()
            .succeeded
    );
    let recreate = Txn::new()
        .when_mod_revision("cas", 0)
        .then(Op::put("cas", "third"));
    assert!(
        store.txn(recreate).await.unwrap().succeeded,
        "deleted key compares as absent"
    );
}

/// All compares gate all ops; all ops land together.
pub async fn multi_op_atomicity(store: SharedStore) {
    let ra = put(&store, "x/a", "a0").await;
    let rc = put(&store, "x/c", "c0").await;
    let wrong = Txn::new()
        .when_mod_revision("x/a", ra)
        .when_mod_revision("x/b", 7)
        .then(Op::put("x/a", "a1"))
        .then(Op::put("x/b", "b1"))
        .then(Op::delete("x/c"));
    let outcome = store.txn(wrong.clone()).await.unwrap();
    assert!(!outcome.succeeded);
    let (kvs, rev) = store.list("x/").await.unwrap();
    assert_eq!(rev, rc);
    assert_eq!(
        kvs.iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
            .collect::<Vec<_>>(),
        [("x/a", &b"a0"[..]), ("x/c", b"c0")]
    );

    let mut right = wrong;
    right.compares[1] = crate::Compare::ModRevision("x/b".into(), 0);
    let outcome = store.txn(right).await.unwrap();
    assert!(outcome.succeeded);
    let (kvs, rev) = store.list("x/").await.unwrap();
    assert_eq!(rev, outcome.revision);
    assert_eq!(keys(&kvs), ["x/a", "x/b"]);
    assert!(kvs.iter().all(|kv| kv.mod_revision == outcome.revision));
}

/// 32 tasks x 20 CAS increments of one counter: none lost.
pub async fn concurrent_cas_counter(store: SharedStore) {
    const TASKS: u64 = 32;
    const INCREMENTS: u64 = 20;
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    loop {
                        let current = store.get("counter").await.unwrap();
                        let (value, rev) = current.map_or((0, 0), |kv| {
                            (
                                String::from_utf8(kv.value).unwrap().parse::<u64>().unwrap(),
                                kv.mod_revision,
                            )
                        });
                        let txn = Txn::new()
                            .when_mod_revision("counter", rev)
                            .then(Op::put("counter", (value + 1).to_string()));
                        if store.txn(txn).await.unwrap().succeeded {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let kv = store.get("counter").await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(kv.value).unwrap(),
        (TASKS * INCREMENTS).to_string()
    );
}

/// A watch from now sees later writes under its prefix, in order.
pub async fn watch_from_now(store: SharedStore) {
    put(&store, "w/before", "x").await;
    let mut watch = store.watch("w/", None).await.unwrap();
    let r1 = put(&store, "w/a", "1").await;
    put(&store, "wx", "outside the prefix").await;
    let r3 = delete(&store, "w/a").await;
    let r4 = store
        .txn(
            Txn::new()
                .then(Op::put("w/b", "2"))
                .then(Op::put("w/c", "3")),
        )
        .await
        .unwrap()
        .revision;
    assert_eq!(
        put_event(&next_event(&mut watch).await),
        ("w/a", &b"1"[..], r1)
    );
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Delete {
            key: "w/a".into(),
            revision: r3
        }
    );
    assert_eq!(
        put_event(&next_event(&mut watch).await),
        ("w/b", &b"2"[..], r4)
    );
    assert_eq!(
        put_event(&next_event(&mut watch).await),
        ("w/c", &b"3"[..], r4)
    );
}

/// A watch from a past revision replays, then follows live writes.
pub async fn watch_from_past_revision(store: SharedStore) {
    let r1 = put(&store, "p/1", "a").await;
    let r2 = put(&store, "p/2", "b").await;
    put(&store, "q/1", "other").await;
    let r4 = delete(&store, "p/1").await;
    let (_, listed) = store.list("p/").await.unwrap();

    let mut from_start = store.watch("p/", Some(r1)).await.unwrap();
    let mut from_second = store.watch("p/", Some(r2)).await.unwrap();
    let mut from_listing = store.watch("p/", Some(listed + 1)).await.unwrap();
    let r5 = put(&store, "p/3", "live").await;

    assert_eq!(
        put_event(&next_event(&mut from_start).await),
        ("p/1", &b"a"[..], r1)
    );
    assert_eq!(
        put_event(&next_event(&mut from_start).await),
        ("p/2", &b"b"[..], r2)
    );
    assert_eq!(
        next_event(&mut from_start).await,
        WatchEvent::Delete {
            key: "p/1".into(),
            revision: r4
        }
    );
    assert_eq!(
        put_event(&next_event(&mut from_start).await),
        ("p/3", &b"live"[..], r5)
    );
    assert_eq!(put_event(&next_event(&mut from_second).await).2, r2);
    assert_eq!(next_event(&mut from_second).await.revision(), r4);
    assert_eq!(next_event(&mut from_second).await.revision(), r5);
    assert_eq!(
        put_event(&next_event(&mut from_listing).await),
        ("p/3", &b"live"[..], r5)
    );
}

/// An expired lease deletes its keys with Delete events.
pub async fn lease_expiry_deletes_keys(store: SharedStore) {
    let lease = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    let leased = Op::Put {
        key: "l/held".into(),
        value: b"x".to_vec(),
        lease: Some(lease),
    };
    let put_rev = store.txn(Txn::new().then(leased)).await.unwrap().revision;
    put(&store, "l/kept", "y").await;
    assert_eq!(
        store.get("l/held").await.unwrap().unwrap().lease,
        Some(lease)
    );
    let mut watch = store.watch("l/", Some(put_rev + 1)).await.unwrap();
    assert_eq!(next_event(&mut watch).await.key(), "l/kept");
    match next_event(&mut watch).await {
        WatchEvent::Delete { key, revision } => assert!(key == "l/held" && revision > put_rev),
        other => panic!("expected the lease's delete, got {other:?}"),
    }
    assert!(store.get("l/held").await.unwrap().is_none());
    assert!(store.get("l/kept").await.unwrap().is_some());
    assert!(
        matches!(store.keep_alive(lease).await, Err(StoreError::LeaseNotFound(id)) if id == lease)
    );
}

/// Keep-alives hold a lease well past its TTL.
pub async fn keep_alive_extends_lease(store: SharedStore) {
    let lease = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    let leased = Op::Put {
        key: "ka".into(),
        value: b"x".to_vec(),
        lease: Some(lease),
    };
    store.txn(Txn::new().then(leased)).await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let ttl = store.keep_alive(lease).await.unwrap();
        assert!(ttl >= Duration::from_secs(2), "ttl {ttl:?}");
    }
    assert!(
        store.get("ka").await.unwrap().is_some(),
        "kept alive for twice its TTL"
    );
    store.revoke_lease(lease).await.unwrap();
}

/// Revoking deletes the lease's keys (and only those); the lease is gone.
pub async fn revoke_deletes_keys(store: SharedStore) {
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let txn = Txn::new()
        .then(Op::Put {
            key: "r/1".into(),
            value: b"1".to_vec(),
            lease: Some(lease),
        })
        .then(Op::Put {
            key: "r/2".into(),
            value: b"2".to_vec(),
            lease: Some(lease),
        })
        .then(Op::put("r/3", "3"));
    let rev = store.txn(txn).await.unwrap().revision;
    let mut watch = store.watch("r/", Some(rev + 1)).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    let deleted: HashSet<String> = [next_event(&mut watch).await, next_event(&mut watch).await]
        .into_iter()
        .map(|e| match e {
            WatchEvent::Delete { key, revision } if revision > rev => key,
            other => panic!("expected a delete, got {other:?}"),
        })
        .collect();
    assert_eq!(deleted, HashSet::from(["r/1".to_owned(), "r/2".to_owned()]));
    assert_eq!(keys(&store.list("r/").await.unwrap().0), ["r/3"]);
    assert!(
        matches!(store.revoke_lease(lease).await, Err(StoreError::LeaseNotFound(id)) if id == lease)
    );
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    let late = Op::Put {
        key: "r/4".into(),
        value: vec![],
        lease: Some(lease),
    };
    assert!(
        matches!(store.txn(Txn::new().then(late)).await, Err(StoreError::LeaseNotFound(id)) if id == lease)
    );
}

/// Unknown lease ids are `LeaseNotFound` everywhere.
pub async fn unknown_lease(store: SharedStore) {
    let id = 424_242;
    assert!(matches!(store.keep_alive(id).await, Err(StoreError::LeaseNotFound(x)) if x == id));
    assert!(matches!(store.revoke_lease(id).await, Err(StoreError::LeaseNotFound(x)) if x == id));
    let put = Op::Put {
        key: "u".into(),
        value: vec![],
        lease: Some(id),
    };
    assert!(
        matches!(store.txn(Txn::new().then(put)).await, Err(StoreError::LeaseNotFound(x)) if x == id)
    );
    assert!(store.get("u").await.unwrap().is_none());
}
