//! The in-memory test store (`upshift_store::memory`).
#![allow(unused_imports)]

pub use upshift_store::memory::MemStore;
