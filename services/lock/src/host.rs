//! Hosting: binds the FleetLock HTTP routes and both gRPC services on one
//! listener through upshift-common's `ServiceHost`.

use upshift_common::auth::AdminAuth;
use upshift_common::clock::SharedClock;
use upshift_common::config::ServerSettings;
use upshift_common::server::{BoundServer, Readiness, ServerError, ServiceHost};
use upshift_common::telemetry::Metrics;

use crate::config::LockSettings;
use crate::error::LockError;
use crate::fleetlock;
use crate::grpc::{LockGrpc, SERVICE_NAMES};
use crate::metrics::LockMetrics;
use crate::service::LockService;
use upshift_store::SharedStore;

/// Errors of [`bind`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Startup reconciliation failed.
    #[error("cannot start the lock service")]
    Lock(#[from] LockError),
    /// The listener could not be set up.
    #[error("cannot set up the listener")]
    Server(#[from] ServerError),
}

/// A started lock service and its bound (not yet serving) listener.
#[derive(Debug)]
pub struct LockServer {
    /// The service core (for tests and embedding).
    pub service: LockService,
    /// The listener: call `serve(shutdown)` on it.
    pub bound: BoundServer,
}

/// Starts the service on `store` and binds `server.listen`; readiness is
/// set once the service has reconciled slots and listed the groups.
pub async fn bind(
    server: &ServerSettings,
    settings: LockSettings,
    store: SharedStore,
    clock: SharedClock,
    metrics: Metrics,
    admin: AdminAuth,
) -> Result<LockServer, HostError> {
    let readiness = Readiness::new();
    let host = ServiceHost::builder("lock", metrics.clone(), clock.clone())
        .settings(server)
        .readiness(readiness.clone());
    let lock_metrics = LockMetrics::new(metrics.meter());
    let service =
        LockService::start(settings, store, clock, lock_metrics, host.shutdown_token()).await?;
    let bound = host
        .grpc(LockGrpc::new(service.clone(), admin).routes())
        .grpc_service_names(SERVICE_NAMES)
        .http(fleetlock::router(service.clone()))
        .bind(server.listen, server.tls.clone())
        .await?;
    readiness.set_ready();
    Ok(LockServer { service, bound })
}
