//! The stores the service tests run on, and a macro running one test body on each.
#![allow(dead_code)]

use std::sync::Arc;

use upshift_store::SharedStore;

/// Opens the test's store; every call reaches the same data (a reopen).
pub type Opener = Arc<dyn Fn() -> SharedStore + Send + Sync>;

/// The in-memory test store.
pub fn mem() -> Opener {
    let store = super::harness::mem_store();
    Arc::new(move || store.clone())
}

/// The embedded (redb) store in a temporary directory, kept alive by the
/// returned guard.
pub fn embedded() -> (Opener, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(
        upshift_store::embedded::EmbeddedStore::open(&dir.path().join("store.redb")).unwrap(),
    );
    (Arc::new(move || store.clone()), dir)
}

/// A real etcd on loopback (the store under a test-specific key prefix),
/// kept running by the returned guard; `None` when etcd tests are skipped.
pub async fn etcd() -> Option<(Opener, upshift_store::testing::EtcdServer)> {
    if upshift_store::testing::skip_etcd() {
        return None;
    }
    let server = upshift_store::testing::EtcdServer::start()
        .await
        .expect("etcd must be installed (cargo xtask test installs it)");
    let store = server.store("/telemetry-test/").await.unwrap();
    Some((Arc::new(move || store.clone()), server))
}

/// Generates `mod $name { mem, embedded, etcd }`, one `#[tokio::test]` per
/// store, each calling `$body(opener)`.
macro_rules! on_each_store {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mem() {
                super::$body(crate::stores::mem()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let (opener, _dir) = crate::stores::embedded();
                super::$body(opener).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                let Some((opener, _etcd)) = crate::stores::etcd().await else {
                    return;
                };
                super::$body(opener).await;
            }
        }
    };
}
pub(crate) use on_each_store;
