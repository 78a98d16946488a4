//! `upshift serve <service>`: loads configuration (file, then flags and
//! env), reports every problem at once (exit 64), then hosts the service on
//! one listener until SIGINT/SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use upshift_common::config::{ConfigErrors, EX_USAGE, ServerSettings};
use upshift_common::server::{BoundServer, shutdown_signal};
use upshift_common::telemetry::{TracingOptions, init_tracing};

pub mod graph;
pub mod lock;
pub mod policy;
pub mod telemetry;

/// The services.
#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// The graph service (default port 7401).
    Graph(graph::GraphArgs),
    /// The policy service: Cincinnati /v1/graph and pushed update hints
    /// (default port 7402).
    Policy(policy::PolicyArgs),
    /// The reboot lock service: FleetLock and gRPC (default port 7403).
    Lock(lock::LockArgs),
    /// The telemetry service: fleet view and automatic rollout halt
    /// (default port 7404).
    Telemetry(telemetry::TelemetryArgs),
}

/// Store flags of the stateful services (they override `[store]`).
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// Run on etcd at these endpoints (comma-separated URLs) instead of the
    /// embedded store in the data directory.
    #[arg(
        long,
        value_name = "URL,...",
        env = "UPSHIFT_ETCD",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
}

impl StoreArgs {
    /// Applies the flags to the file's `[store]` settings.
    pub fn merge_into(&self, store: &mut upshift_store::settings::StoreSettings) {
        if !self.etcd.is_empty() {
            store.use_etcd(self.etcd.clone());
        }
    }
}

/// Flags every `serve` subcommand has besides the common ones.
#[derive(Debug, Clone, Default, Args)]
pub struct HostArgs {
    /// Write the bound listen address to this file once listening (for
    /// harnesses using port 0).
    #[arg(long, value_name = "FILE")]
    pub addr_file: Option<PathBuf>,
    /// Load and validate the configuration (file, flags, env), print
    /// "configuration OK" and exit 0 without starting (exit 64 when invalid).
    #[arg(long)]
    pub check_config: bool,
}

/// Runs a `serve` subcommand.
pub fn run(command: ServeCommand) -> ExitCode {
    match command {
        ServeCommand::Graph(args) => graph::run(args),
        ServeCommand::Policy(args) => policy::run(args),
        ServeCommand::Lock(args) => lock::run(args),
        ServeCommand::Telemetry(args) => telemetry::run(args),
    }
}

/// Prints configuration errors and returns the usage exit code.
pub fn config_failure(errors: &ConfigErrors) -> ExitCode {
    eprintln!("upshift: invalid configuration:");
    for error in errors.errors() {
        eprintln!("  {error}");
    }
    ExitCode::from(EX_USAGE as u8)
}

/// Uses the service's default port unless the config file sets
/// `[server] listen` (flags are merged afterwards and win over both).
pub fn apply_default_port(settings: &mut ServerSettings, config: Option<&Path>, port: u16) {
    let file_sets_listen = config
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|table| table.get("server").and_then(|s| s.get("listen")).is_some());
    if !file_sets_listen {
        settings.listen = SocketAddr::from(([0, 0, 0, 0], port));
    }
}

/// Builds the runtime, sets up tracing, runs `body` (which binds and returns
/// the server) and serves until a shutdown signal.
pub fn host<F, Fut>(service: &str, settings: &ServerSettings, host: &HostArgs, body: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<BoundServer>>,
{
    if host.check_config {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("upshift: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _tracing = init_tracing(&TracingOptions {
            log_format: settings.log_format,
            otlp_endpoint: settings.otlp_endpoint.clone(),
            service_name: format!("upshift-{service}"),
        })?;
        let server = body().await?;
        let addr = server.local_addr();
        tracing::info!(service, %addr, "listening (gRPC and HTTP)");
        if let Some(path) = &host.addr_file {
            std::fs::write(path, addr.to_string())?;
        }
        server.serve(shutdown_signal()).await?;
        tracing::info!(service, "stopped");
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("upshift serve {service}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
