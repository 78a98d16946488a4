//! The stores the service tests run on.
#![allow(dead_code)]

use upshift_lock::store::SharedStore;

/// The embedded store in a temp dir (until it lands: the in-memory test store).
pub fn embedded() -> (SharedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (super::harness::mem_store(), dir)
}
