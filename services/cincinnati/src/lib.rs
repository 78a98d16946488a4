//! Release metadata, graph rules and the Cincinnati JSON codec (pure logic, no I/O).

pub mod codec;
pub mod fcos;
pub mod graph;
pub mod rollout;
pub mod target;
