//! Shared service plumbing: config, telemetry, server, clock.
//!
//! A service's `serve` entry point wires itself up like this:
//!
//! ```no_run
//! use upshift_common::{clock::SystemClock, config, server, telemetry};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     #[serde(default)]
//!     server: config::ServerSettings,
//! }
//!
//! async fn serve(args: config::ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
//!     let file: Config = match &args.config {
//!         Some(path) => config::exit_on_config_errors(config::load_toml(path)),
//!         None => Config { server: Default::default() },
//!     };
//!     let settings = config::exit_on_config_errors(
//!         args.merge_into(file.server).and_then(|s| s.validate().map(|()| s)),
//!     );
//!     let _guard = telemetry::init_tracing(&telemetry::TracingOptions {
//!         log_format: settings.log_format,
//!         otlp_endpoint: settings.otlp_endpoint.clone(),
//!         service_name: "upshift-graph".into(),
//!     })?;
//!     let metrics = telemetry::Metrics::new("upshift-graph");
//!     let readiness = server::Readiness::new();
//!     let host = server::ServiceHost::builder("graph", metrics.clone(), SystemClock::shared())
//!         .settings(&settings)
//!         .readiness(readiness.clone());
//!     let _streams_end = host.shutdown_token(); // hand to WatchGraph handlers
//!     let routes = tonic::service::Routes::default(); // .add_service(GraphServiceServer::new(svc))
//!     let bound = host
//!         .grpc(routes)
//!         .grpc_service_names(&["upshift.graph.v1.GraphService"])
//!         .http(axum::Router::new())
//!         .bind(settings.listen, settings.tls.clone())
//!         .await?;
//!     readiness.set_ready();
//!     bound.serve(server::shutdown_signal()).await?;
//!     Ok(())
//! }
//! ```

pub mod auth;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod http_error;
pub mod server;
pub mod telemetry;
pub mod testing;
pub mod window;
