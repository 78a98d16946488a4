//! One listener per service: gRPC and HTTP on one port, built-in health, readiness, metrics, reflection.

mod coalesce;
mod metrics_layer;
mod readiness;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceExt;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::clock::SharedClock;
use crate::config::{ServerSettings, TlsSettings};
use crate::telemetry::Metrics;

pub use readiness::{Readiness, ReadyState};
pub use tls::PeerIdentity;

/// Name under which the gRPC health service is advertised.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Errors from binding or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// Address requested.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    /// The reflection service could not be built from the descriptor set.
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
}

/// Builder for a service's listener.
#[derive(Debug)]
pub struct ServiceHostBuilder {
    name: String,
    metrics: Metrics,
    clock: SharedClock,
    grpc: Option<tonic::service::Routes>,
    service_names: Vec<String>,
    http: Router,
    readiness: Readiness,
    shutdown: CancellationToken,
    request_timeout: Duration,
    max_request_bytes: usize,
    shutdown_grace: Duration,
}

/// Entry point: `ServiceHost::builder(...)`.
#[derive(Debug)]
pub struct ServiceHost;

impl ServiceHost {
    /// Starts building the listener of service `name`.
    pub fn builder(
        name: impl Into<String>,
        metrics: Metrics,
        clock: SharedClock,
    ) -> ServiceHostBuilder {
        let defaults = ServerSettings::default();
        ServiceHostBuilder {
            name: name.into(),
            metrics,
            clock,
            grpc: None,
            service_names: Vec::new(),
            http: Router::new(),
            readiness: Readiness::new(),
            shutdown: CancellationToken::new(),
            request_timeout: defaults.request_timeout,
            max_request_bytes: defaults.max_request_bytes,
            shutdown_grace: defaults.shutdown_grace,
        }
    }
}

impl ServiceHostBuilder {
    /// The service's gRPC services.
    pub fn grpc(mut self, routes: tonic::service::Routes) -> Self {
        self.grpc = Some(routes);
        self
    }

    /// Fully-qualified gRPC service names advertised by reflection and health.
    pub fn grpc_service_names(mut self, names: &[&str]) -> Self {
        self.service_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Service-specific HTTP routes (must not set a fallback).
    pub fn http(mut self, router: Router) -> Self {
        self.http = router;
        self
    }

    /// Readiness handle driving `/readyz` and gRPC health.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Applies timeout, body limit and drain settings from `[server]`.
    pub fn settings(mut self, s: &ServerSettings) -> Self {
        self.request_timeout = s.request_timeout;
        self.max_request_bytes = s.max_request_bytes;
        self.shutdown_grace = s.shutdown_grace;
        self
    }

    /// Token cancelled when shutdown starts; long-lived streams should end when it fires.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The clock the service was built with.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Binds the listener (port 0 picks a free port) and loads TLS material.
    pub async fn bind(
        self,
        addr: SocketAddr,
        tls: Option<TlsSettings>,
    ) -> Result<BoundServer, ServerError> {
        let acceptor = tls.as_ref().map(tls::acceptor).transpose()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let (reporter, health) = tonic_health::server::health_reporter();
        let router = self.router(health)?;
        Ok(BoundServer {
            listener,
            local_addr,
            acceptor,
            router,
            reporter,
            service_names: self.service_names,
            readiness: self.readiness,
            shutdown: self.shutdown,
            grace: self.shutdown_grace,
            name: self.name,
        })
    }

    fn router(
        &self,
        health: tonic_health::pb::health_server::HealthServer<
            impl tonic_health::pb::health_server::Health,
        >,
    ) -> Result<Router, ServerError> {
        let names = self.service_names.clone();
        let reflection = move || -> tonic_reflection::server::Builder<'static> {
            let mut b = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(upshift_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name(HEALTH_SERVICE);
            for n in &names {
                b = b.with_service_name(n.clone());
            }
            b
        };
        let v1 = reflection().build_v1().map_err(ServerError::Reflection)?;
        let v1alpha = reflection()
            .build_v1alpha()
            .map_err(ServerError::Reflection)?;
        let routes = self
            .grpc
            .clone()
            .unwrap_or_default()
            .add_service(health)
            .add_service(v1)
            .add_service(v1alpha);
        let grpc = metrics_layer::grpc_layer(routes.into_axum_router(), &self.metrics);
        let readiness = self.readiness.clone();
        let metrics = self.metrics.clone();
        let builtin = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(move || readyz(readiness.clone())))
            .route("/metrics", get(move || render_metrics(metrics.clone())));
        let http = metrics_layer::http_layer(
            self.http
                .clone()
                .merge(builtin)
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    self.request_timeout,
                ))
                .layer(RequestBodyLimitLayer::new(self.max_request_bytes))
                .layer(axum::middleware::map_response(json_limit_errors)),
            &self.metrics,
        );
        Ok(grpc.merge(http).fallback(fallback))
    }
}

/// gRPC callers get UNIMPLEMENTED, HTTP callers a JSON 404.
async fn fallback(req: http::Request<axum::body::Body>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        tonic::Status::unimplemented(format!("no such method {}", req.uri().path())).into_http()
    } else {
        crate::http_error::ApiError::new(StatusCode::NOT_FOUND, "not_found", req.uri().path())
            .into_response()
    }
}

/// The body limit and timeout layers answer in plain text (or not at all);
/// every Upshift HTTP API answers errors as JSON `{kind, value}`.
async fn json_limit_errors(resp: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let (kind, value) = match resp.status() {
        _ if is_json => return resp,
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body_too_large",
            "the request body exceeds the server's limit",
        ),
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
        _ => return resp,
    };
    crate::http_error::ApiError::new(resp.status(), kind, value).into_response()
}

async fn readyz(readiness: Readiness) -> (StatusCode, String) {
    match readiness.state() {
        ReadyState::Ready => (StatusCode::OK, "ready".to_string()),
        ReadyState::NotReady(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn render_metrics(metrics: Metrics) -> impl axum::response::IntoResponse {
    let body = tokio::task::spawn_blocking(move || metrics.render())
        .await
        .unwrap_or_default();
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}

/// A bound listener ready to serve.
pub struct BoundServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    reporter: HealthReporter,
    service_names: Vec<String>,
    readiness: Readiness,
    shutdown: CancellationToken,
    grace: Duration,
    name: String,
}

impl std::fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("name", &self.name)
            .field("local_addr", &self.local_addr)
            .field("tls", &self.acceptor.is_some())
            .finish_non_exhaustive()
    }
}

impl BoundServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Token cancelled when shutdown starts.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until `shutdown` completes, then drains connections for up to the grace period.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        let health_names: Arc<Vec<String>> = Arc::new(self.service_names.clone());
        let health_task = tokio::spawn(follow_readiness(
            self.readiness.clone(),
            self.reporter.clone(),
            health_names.clone(),
            self.shutdown.clone(),
        ));
        let graceful = GracefulShutdown::new();
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        tracing::info!(service = %self.name, addr = %self.local_addr, tls = self.acceptor.is_some(), "listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let conn = Connection {
                        router: self.router.clone(),
                        acceptor: self.acceptor.clone(),
                        builder: builder.clone(),
                        watcher: graceful.watcher(),
                    };
                    tokio::spawn(conn.run(stream, peer));
                }
            }
        }
        drop(self.listener);
        tracing::info!(service = %self.name, "shutting down");
        self.shutdown.cancel();
        let _ = health_task.await;
        set_health(&self.reporter, &health_names, ServingStatus::NotServing).await;
        if tokio::time::timeout(self.grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(service = %self.name, grace = ?self.grace, "connections still open after the grace period");
        }
        Ok(())
    }
}

/// Keeps gRPC health in step with readiness until shutdown.
async fn follow_readiness(
    readiness: Readiness,
    reporter: HealthReporter,
    names: Arc<Vec<String>>,
    shutdown: CancellationToken,
) {
    let mut rx = readiness.subscribe();
    loop {
        let status = match &*rx.borrow_and_update() {
            ReadyState::Ready => ServingStatus::Serving,
            ReadyState::NotReady(_) => ServingStatus::NotServing,
        };
        set_health(&reporter, &names, status).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

async fn set_health(reporter: &HealthReporter, names: &[String], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for n in names {
        reporter.set_service_status(n, status).await;
    }
}

/// Which accepted connection a request came over, as a request extension:
/// lets a service order work by connection (the policy service wakes the
/// hint streams of one connection together, so their frames share writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl ConnectionId {
    fn next() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// One accepted TCP connection.
struct Connection {
    router: Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Connection {
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let stream = coalesce::Coalesced::new(stream);
        match &self.acceptor {
            None => self.serve_io(TokioIo::new(stream), None).await,
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(mut tls) => {
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    tls.get_mut().0.set_batching(h2);
                    let identity = tls::peer_identity(tls.get_ref().1);
                    self.serve_io(TokioIo::new(tls), identity).await;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            },
        }
    }

    async fn serve_io<I>(self, io: TokioIo<I>, identity: Option<PeerIdentity>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let conn_id = ConnectionId::next();
        let svc = self
            .router
            .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                if let Some(id) = &identity {
                    req.extensions_mut().insert(id.clone());
                }
                req.extensions_mut().insert(conn_id);
                req.map(axum::body::Body::new)
            });
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let conn = self.builder.serve_connection_with_upgrades(io, svc);
        if let Err(e) = self.watcher.watch(conn.into_owned()).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests;
