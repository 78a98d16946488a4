//! The lock service: FleetLock-compatible reboot slots.
//!
//! Hosting it (what `upshift serve lock` does):
//!
//! ```ignore
//! let file: LockConfig = config::load_toml(path)?;          // [server] + lock keys
//! let settings = file.validate()?;                           // every error at once
//! let server = upshift_lock::bind(&server_settings, settings, store, clock, metrics, admin_auth).await?;
//! server.bound.serve(shutdown_signal()).await?;
//! ```
//!
//! [`bind`] starts the [`LockService`] (slot reconciliation, store follower,
//! lease reaper) and binds FleetLock HTTP plus `upshift.lock.v1` gRPC on one
//! listener; [`fleetlock::router`] and [`LockGrpc::routes`] are there for
//! hosting the pieces elsewhere.

pub mod config;
pub mod error;
pub mod fleetlock;
pub mod grpc;
pub mod host;
pub mod layout;
pub mod metrics;
pub mod semaphore;
pub mod service;

pub use config::{LockConfig, LockSettings, StoreLayout};
pub use error::LockError;
pub use grpc::{LockGrpc, SERVICE_NAMES};
pub use host::{HostError, LockServer, bind};
pub use metrics::LockMetrics;
pub use service::LockService;
