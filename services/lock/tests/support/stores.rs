//! The stores the service tests run on, and the macro running one test body
//! on each (from `upshift_store::testing`).
#![allow(unused_imports)]

pub(crate) use upshift_store::on_each_store;
pub use upshift_store::testing::Opener;
