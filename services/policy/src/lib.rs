//! Upshift policy service: per-node update decisions over the graphs of the
//! graph service, served as Cincinnati `/v1/graph`, unary `GetUpdateHint`
//! and pushed `WatchUpdateHints` streams, with runtime rollout control.
//!
//! Hosting: [`PolicyService::start`] returns the gRPC routes, the axum
//! router and the readiness for upshift-common's `ServiceHost`; [`bind`]
//! does that wiring.

pub mod config;
pub mod control;
pub mod decide;
pub mod follower;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod overrides;
pub mod state;
pub mod store;

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use upshift_common::auth::AdminAuth;
use upshift_common::clock::SharedClock;
use upshift_common::server::{BoundServer, Readiness, ServerError, ServiceHost};
use upshift_common::telemetry::Metrics;

pub use config::PolicyConfig;

use crate::control::Control;
use crate::grpc::PolicyGrpc;
use crate::hub::Hub;
use crate::metrics::PolicyMetrics;
use crate::state::PolicyState;
use crate::store::SharedKv;

/// A started policy service: its parts, ready to be hosted.
#[derive(Debug, Clone)]
pub struct PolicyService {
    /// Graph state publisher (the follower writes it; tests may too).
    pub state: watch::Sender<Arc<PolicyState>>,
    /// Rollout overrides.
    pub control: Control,
    /// Push hub.
    pub hub: Hub,
    /// Ready once a graph is held.
    pub readiness: Readiness,
    grpc: PolicyGrpc,
    http: http::HttpState,
}

impl PolicyService {
    /// Starts the graph follower (when `config.graph_url` is set), the
    /// override follower and the push hub; all end with `shutdown`.
    pub fn start(
        config: &PolicyConfig,
        store: SharedKv,
        clock: SharedClock,
        metrics: &Metrics,
        admin: AdminAuth,
        shutdown: CancellationToken,
    ) -> Self {
        let readiness = Readiness::new();
        readiness.set_not_ready("no graph received yet");
        let metrics = PolicyMetrics::new(metrics.meter());
        let (state, state_rx) = watch::channel(Arc::new(PolicyState::default()));
        if let Some(url) = &config.graph_url {
            tokio::spawn(follower::follow(
                url.clone(),
                state.clone(),
                readiness.clone(),
                shutdown.clone(),
            ));
        }
        let control = Control::start(store, clock.clone(), shutdown.clone());
        metrics.observe(state_rx.clone(), control.subscribe(), clock.clone());
        let hub = Hub::start(
            state_rx.clone(),
            control.subscribe(),
            clock.clone(),
            config.hub(),
            metrics.clone(),
            shutdown,
        );
        let grpc = PolicyGrpc {
            state: state_rx.clone(),
            control: control.clone(),
            hub: hub.clone(),
            clock: clock.clone(),
            admin,
            metrics: metrics.clone(),
        };
        let http = http::HttpState {
            state: state_rx,
            overrides: control.subscribe(),
            clock,
            metrics,
        };
        Self {
            state,
            control,
            hub,
            readiness,
            grpc,
            http,
        }
    }

    /// The tonic routes of `PolicyService` and `RolloutAdminService`.
    pub fn grpc_routes(&self) -> tonic::service::Routes {
        self.grpc.clone().routes()
    }

    /// The HTTP routes (`/v1/graph`).
    pub fn router(&self) -> axum::Router {
        http::router(self.http.clone())
    }

    /// Publishes a graph directly (tests and embedding without a follower).
    pub fn publish(
        &self,
        key: state::ScopeKey,
        revision: u64,
        graph: upshift_cincinnati::graph::Graph,
    ) {
        follower::publish(&self.state, key, revision, graph);
        self.readiness.set_ready();
    }
}

/// A started service and its bound (not yet serving) listener.
#[derive(Debug)]
pub struct PolicyServer {
    /// The service parts.
    pub service: PolicyService,
    /// The listener: call `serve(shutdown)` on it.
    pub bound: BoundServer,
}

/// Starts the service and binds `config.server.listen` through `ServiceHost`.
pub async fn bind(
    config: &PolicyConfig,
    store: SharedKv,
    clock: SharedClock,
    metrics: Metrics,
    admin: AdminAuth,
) -> Result<PolicyServer, ServerError> {
    let host =
        ServiceHost::builder("policy", metrics.clone(), clock.clone()).settings(&config.server);
    let service =
        PolicyService::start(config, store, clock, &metrics, admin, host.shutdown_token());
    let bound = host
        .readiness(service.readiness.clone())
        .grpc(service.grpc_routes())
        .grpc_service_names(grpc::SERVICE_NAMES)
        .http(service.router())
        .bind(config.server.listen, config.server.tls.clone())
        .await?;
    Ok(PolicyServer { service, bound })
}
