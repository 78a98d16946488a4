//! The stores the service tests run on.
#![allow(dead_code)]

use upshift_lock::store::SharedStore;

/// The embedded store in a temp dir (until it lands: the in-memory test store).
pub fn embedded() -> (SharedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (super::harness::mem_store(), dir)
}

/// An opener of the embedded store at `dir` (each call reopens the same file).
pub fn embedded_at(_dir: &std::path::Path) -> (impl Fn() -> SharedStore, ()) {
    let store = super::harness::mem_store();
    (move || store.clone(), ())
}
