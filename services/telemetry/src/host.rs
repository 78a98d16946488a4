//! Hosting: binds the telemetry gRPC service on one listener through
//! upshift-common's `ServiceHost`.

use upshift_common::clock::SharedClock;
use upshift_common::config::ServerSettings;
use upshift_common::server::{BoundServer, Readiness, ServerError, ServiceHost};
use upshift_common::telemetry::Metrics;
use upshift_store::SharedStore;

use crate::config::TelemetrySettings;
use crate::error::TelemetryError;
use crate::grpc::{SERVICE_NAMES, TelemetryGrpc};
use crate::metrics::TelemetryMetrics;
use crate::service::TelemetryService;

/// Errors of [`bind`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The service could not start.
    #[error("cannot start the telemetry service")]
    Telemetry(#[from] TelemetryError),
    /// The listener could not be set up.
    #[error("cannot set up the listener")]
    Server(#[from] ServerError),
}

/// A started telemetry service and its bound (not yet serving) listener.
#[derive(Debug)]
pub struct TelemetryServer {
    /// The service core (for tests and embedding).
    pub service: TelemetryService,
    /// The listener: call `serve(shutdown)` on it.
    pub bound: BoundServer,
}

/// Starts the service on `store` and binds `server.listen`; readiness is set
/// once the fleet view is loaded from the store.
pub async fn bind(
    server: &ServerSettings,
    settings: TelemetrySettings,
    store: SharedStore,
    clock: SharedClock,
    metrics: Metrics,
) -> Result<TelemetryServer, HostError> {
    let readiness = Readiness::new();
    let host = ServiceHost::builder("telemetry", metrics.clone(), clock.clone())
        .settings(server)
        .readiness(readiness.clone());
    let telemetry_metrics = TelemetryMetrics::new(metrics.meter(), settings.max_label_values);
    let service = TelemetryService::start(
        settings,
        store,
        clock,
        telemetry_metrics,
        host.shutdown_token(),
    )
    .await?;
    let bound = host
        .grpc(TelemetryGrpc::new(service.clone()).routes())
        .grpc_service_names(SERVICE_NAMES)
        .bind(server.listen, server.tls.clone())
        .await?;
    readiness.set_ready();
    Ok(TelemetryServer { service, bound })
}
