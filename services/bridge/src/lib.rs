//! The host metrics bridge (local_exporter's role, `../shared/DESIGN.md`
//! section 6): `GET /bridge?selector=NAME` answers with the Prometheus
//! exposition read from a Unix socket, a file, a local HTTP endpoint or a
//! D-Bus method, passed through unchanged.
//!
//! Every source is read whole, within the selector's connect, read and total
//! timeouts and size limit, before anything is answered: a source that fails
//! half-way yields 502 (or 504 when it stalls), never a truncated 200.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use upshift_common::clock::SystemClock;
//! use upshift_common::telemetry::Metrics;
//!
//! let (config, settings) = upshift_bridge::config::load("bridge.toml".as_ref())?;
//! let bound = upshift_bridge::bind(&config.server, settings, Metrics::new("bridge"), SystemClock::shared()).await?;
//! bound.serve(upshift_common::server::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod source;

use std::sync::Arc;

use upshift_common::clock::SharedClock;
use upshift_common::config::ServerSettings;
use upshift_common::server::{BoundServer, Readiness, ServerError, ServiceHost};
use upshift_common::telemetry::Metrics;

pub use config::{BridgeConfig, BridgeSettings, Selector};
pub use error::SourceError;
pub use metrics::BridgeMetrics;

/// Binds the bridge's listener (`/bridge`, `/metrics`, `/healthz`, `/readyz`
/// and gRPC health) on `server.listen`; ready as soon as it is bound.
pub async fn bind(
    server: &ServerSettings,
    settings: BridgeSettings,
    metrics: Metrics,
    clock: SharedClock,
) -> Result<BoundServer, ServerError> {
    let bridge_metrics = BridgeMetrics::new(
        &metrics.meter(),
        settings.selectors.keys().map(String::as_str),
    );
    let readiness = Readiness::new();
    let bound = ServiceHost::builder("bridge", metrics, clock)
        .settings(server)
        .readiness(readiness.clone())
        .http(http::router(Arc::new(settings), bridge_metrics))
        .bind(server.listen, server.tls.clone())
        .await?;
    readiness.set_ready();
    Ok(bound)
}
