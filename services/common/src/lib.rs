//! Shared service plumbing: config, telemetry, server, clock.

pub mod auth;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod http_error;
pub mod server;
pub mod telemetry;
