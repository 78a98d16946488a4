//! The stores the service tests run on, and a macro running one test body on each.
#![allow(dead_code)]

use std::sync::Arc;

use upshift_lock::store::SharedStore;

/// Opens the test's store; every call reaches the same data (a reopen).
pub type Opener = Arc<dyn Fn() -> SharedStore + Send + Sync>;

/// The in-memory test store.
pub fn mem() -> Opener {
    let store = super::harness::mem_store();
    Arc::new(move || store.clone())
}

/// Generates `mod $name { mem, ... }`, one `#[tokio::test]` per store, each
/// calling `$body(opener)`.
macro_rules! on_each_store {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mem() {
                super::$body(crate::stores::mem()).await;
            }
        }
    };
}
pub(crate) use on_each_store;
