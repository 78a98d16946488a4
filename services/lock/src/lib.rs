//! The lock service: FleetLock-compatible reboot slots.
//!
//! Hosting it (the CLI's `upshift serve lock` does this):
//!
//! ```ignore
//! let settings = config.validate()?;
//! let metrics = LockMetrics::new(common_metrics.meter());
//! let svc = LockService::start(settings, store, clock, metrics, host.shutdown_token()).await?;
//! let routes = LockGrpc::new(svc.clone(), admin_auth).routes();
//! host.grpc(routes).grpc_service_names(SERVICE_NAMES).http(fleetlock::router(svc))
//! ```

pub mod config;
pub mod error;
pub mod fleetlock;
pub mod grpc;
pub mod host;
pub mod layout;
pub mod metrics;
pub mod semaphore;
pub mod service;
pub mod store;
pub mod window;

pub use config::{LockConfig, LockSettings, StoreLayout};
pub use error::LockError;
pub use grpc::{LockGrpc, SERVICE_NAMES};
pub use host::{HostError, LockServer, bind};
pub use metrics::LockMetrics;
pub use service::LockService;
