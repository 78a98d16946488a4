//! The conformance suite and embedded-only behaviour (persistence, crash
//! safety, history, lagging watchers, leases across reopen).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use upshift_store::conformance::{self, next_event};
use upshift_store::embedded::{EmbeddedOptions, EmbeddedStore};
use upshift_store::{Op, SharedStore, Store, StoreError, Txn};

fn open(path: &Path) -> SharedStore {
    Arc::new(EmbeddedStore::open(path).unwrap())
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

macro_rules! conformance {
    ($flavor:meta => $($name:ident),* $(,)?) => {$(
        #[$flavor]
        async fn $name() {
            let dir = temp();
            conformance::$name(open(&dir.path().join("store.redb"))).await;
        }
    )*};
}

conformance!(tokio::test(flavor = "multi_thread", worker_threads = 2) =>
    get_and_list_by_prefix,
    list_first_and_count,
    revisions,
    compare_and_swap,
    multi_op_atomicity,
    concurrent_cas_counter,
    watch_from_now,
    watch_from_past_revision,
    revoke_deletes_keys,
    unknown_lease,
);

// Lease timing runs on paused tokio time: no real waiting.
conformance!(tokio::test(start_paused = true) =>
    lease_expiry_deletes_keys,
    keep_alive_extends_lease,
);

async fn put(store: &SharedStore, key: &str, value: &str) -> u64 {
    store
        .txn(Txn::new().then(Op::put(key, value)))
        .await
        .unwrap()
        .revision
}

#[tokio::test]
async fn data_persists_across_reopen() {
    let dir = temp();
    let path = dir.path().join("store.redb");
    let store = open(&path);
    let r1 = put(&store, "a", "1").await;
    let r2 = put(&store, "b", "2").await;
    drop(store);

    let store = open(&path);
    let (kvs, rev) = store.list("").await.unwrap();
    assert_eq!(rev, r2);
    assert_eq!(
        kvs.iter()
            .map(|kv| (kv.key.as_str(), kv.mod_revision))
            .collect::<Vec<_>>(),
        [("a", r1), ("b", r2)]
    );
    assert_eq!(
        put(&store, "c", "3").await,
        r2 + 1,
        "revisions continue after reopen"
    );
}

#[tokio::test]
async fn watch_resumes_from_old_revision_after_reopen() {
    let dir = temp();
    let path = dir.path().join("store.redb");
    let store = open(&path);
    let r1 = put(&store, "w/1", "a").await;
    let mut watch = store.watch("w/", Some(r1)).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), r1);
    let r2 = put(&store, "w/2", "b").await;
    drop(watch);
    drop(store);

    let store = open(&path);
    let mut watch = store.watch("w/", Some(r1 + 1)).await.unwrap();
    let r3 = put(&store, "w/3", "c").await;
    assert_eq!(next_event(&mut watch).await.revision(), r2);
    assert_eq!(next_event(&mut watch).await.revision(), r3);
}

#[tokio::test]
async fn old_revisions_are_compacted() {
    let dir = temp();
    let options = EmbeddedOptions {
        history_revisions: 5,
        ..EmbeddedOptions::default()
    };
    let store: SharedStore =
        Arc::new(EmbeddedStore::open_with(&dir.path().join("s.redb"), options).unwrap());
    for i in 0..10 {
        put(&store, &format!("k{i}"), "v").await;
    }
    match store.watch("", Some(5)).await {
        Err(StoreError::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (5, 6)),
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    let mut watch = store.watch("", Some(6)).await.unwrap();
    for rev in 6..=10 {
        assert_eq!(next_event(&mut watch).await.revision(), rev);
    }
}

#[tokio::test]
async fn lagging_watcher_catches_up_from_history() {
    let dir = temp();
    let options = EmbeddedOptions {
        watch_buffer: 2,
        ..EmbeddedOptions::default()
    };
    let store: SharedStore =
        Arc::new(EmbeddedStore::open_with(&dir.path().join("s.redb"), options).unwrap());
    let mut watch = store.watch("", None).await.unwrap();
    let mut revs = Vec::new();
    for i in 0..50 {
        revs.push(put(&store, &format!("k{i:02}"), "v").await);
    }
    for (i, rev) in revs.into_iter().enumerate() {
        let event = next_event(&mut watch).await;
        assert_eq!(
            (event.key(), event.revision()),
            (format!("k{i:02}").as_str(), rev)
        );
    }
}

#[tokio::test]
async fn lagging_watcher_past_the_history_gets_compacted() {
    let dir = temp();
    let options = EmbeddedOptions {
        watch_buffer: 2,
        history_revisions: 5,
    };
    let store: SharedStore =
        Arc::new(EmbeddedStore::open_with(&dir.path().join("s.redb"), options).unwrap());
    let mut watch = store.watch("", None).await.unwrap();
    for i in 0..20 {
        put(&store, &format!("k{i}"), "v").await;
    }
    let mut saw_compacted = false;
    while let Ok(Some(item)) =
        tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut watch)).await
    {
        if let Err(e) = item {
            assert!(
                matches!(
                    e,
                    StoreError::Compacted {
                        requested: 1,
                        oldest: 16
                    }
                ),
                "{e}"
            );
            saw_compacted = true;
        }
    }
    assert!(saw_compacted, "the stream ends with Compacted");
}

#[tokio::test(start_paused = true)]
async fn leases_get_a_fresh_ttl_after_reopen() {
    let dir = temp();
    let path = dir.path().join("store.redb");
    let store = open(&path);
    let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    let leased = Op::Put {
        key: "held".into(),
        value: vec![],
        lease: Some(lease),
    };
    store.txn(Txn::new().then(leased)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    drop(store);

    let store = open(&path);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        store.get("held").await.unwrap().is_some(),
        "16 s after grant, 8 s after reopen: still held"
    );
    assert_eq!(
        store.keep_alive(lease).await.unwrap(),
        Duration::from_secs(10)
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(store.get("held").await.unwrap().is_none());
    let other = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    assert_ne!(other, lease, "lease ids are not reused after reopen");
}

const CRASH_CHILD_ENV: &str = "UPSHIFT_STORE_CRASH_CHILD";

/// The child half of `acknowledged_writes_survive_kill_9`: writes keys in a
/// loop and prints each one once its commit returned.
#[tokio::test]
async fn crash_child() {
    let Ok(path) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let store = EmbeddedStore::open(Path::new(&path)).unwrap();
    for i in 0u64.. {
        store
            .txn(Txn::new().then(Op::put(format!("crash/{i:08}"), i.to_string())))
            .await
            .unwrap();
        println!("ACK crash/{i:08}");
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = temp();
    let path = dir.path().join("store.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 200 {
        let line = lines.next().expect("child exited early").unwrap();
        if let Some(key) = line.strip_prefix("ACK ") {
            acked.push(key.to_owned());
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-write.
    child.wait().unwrap();
    acked.extend(
        lines
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("ACK ").map(str::to_owned)),
    );

    let store = open(&path);
    let (kvs, _) = store.list("crash/").await.unwrap();
    let stored: std::collections::HashSet<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    let missing: Vec<_> = acked
        .iter()
        .filter(|k| !stored.contains(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged keys lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert!(kvs.len() >= acked.len());
}

#[tokio::test]
async fn watch_ends_when_the_store_closes() {
    let dir = temp();
    let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    let mut watch = store.watch("", None).await.unwrap();
    drop(store);
    let end = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut watch))
        .await
        .unwrap();
    assert!(end.is_none());
}

#[tokio::test]
async fn root_handle_is_the_same_store() {
    let dir = temp();
    let store = open(&dir.path().join("store.redb"));
    let root = store.clone().root();
    assert_eq!(root.key_prefix(), "");
    put(&root, "k", "v").await;
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v");
}
