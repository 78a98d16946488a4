//! The telemetry service: the fleet view from agent reports, fleet metrics
//! on `/metrics`, and automatic rollout halts (see `../shared/DESIGN.md`
//! sections 1 and 6, and this crate's README).
//!
//! Hosting it (what `upshift serve telemetry` does):
//!
//! ```ignore
//! let file: TelemetryConfig = config::load_toml(path)?;   // [server] + telemetry keys
//! let settings = file.validate()?;                          // every error at once
//! let server = upshift_telemetry::bind(&file.server, settings, store, clock, metrics).await?;
//! server.bound.serve(shutdown_signal()).await?;
//! ```

pub mod config;
pub mod error;
pub mod fleet;
pub mod grpc;
pub mod halt;
pub mod host;
pub mod metrics;
pub mod record;
pub mod service;
pub mod writer;

pub use config::{TelemetryConfig, TelemetrySettings};
pub use error::TelemetryError;
pub use grpc::{SERVICE_NAMES, TelemetryGrpc};
pub use host::{HostError, TelemetryServer, bind};
pub use metrics::TelemetryMetrics;
pub use service::TelemetryService;
