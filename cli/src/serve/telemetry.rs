//! `upshift serve telemetry`.

use std::process::ExitCode;

use clap::Args;
use upshift_common::clock::{SharedClock, SystemClock};
use upshift_common::config::{ConfigErrors, ServeArgs, load_toml};
use upshift_common::server::BoundServer;
use upshift_common::telemetry::Metrics;
use upshift_telemetry::config::DEFAULT_PORT;
use upshift_telemetry::{TelemetryConfig, TelemetrySettings};

use super::{HostArgs, StoreArgs, apply_default_port, config_failure, host};

/// Flags of `upshift serve telemetry`.
#[derive(Debug, Args)]
pub struct TelemetryArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    host: HostArgs,
    /// gRPC URL of the policy service that automatic halts pause
    /// (e.g. http://127.0.0.1:7402); without it (or `[policy] url`) halts are off.
    #[arg(long, value_name = "URL", env = "UPSHIFT_TELEMETRY_POLICY")]
    policy: Option<String>,
}

/// Loads the configuration: file, then flags; every error at once.
pub fn configure(
    args: &TelemetryArgs,
) -> Result<(TelemetryConfig, TelemetrySettings), ConfigErrors> {
    let mut errors = ConfigErrors::new();
    let mut config = match &args.serve.config {
        Some(path) => load_toml::<TelemetryConfig>(path)?,
        None => TelemetryConfig::default(),
    };
    apply_default_port(
        &mut config.server,
        args.serve.config.as_deref(),
        DEFAULT_PORT,
    );
    match args.serve.merge_into(config.server.clone()) {
        Ok(server) => config.server = server,
        Err(e) => errors.extend(e),
    }
    args.store.merge_into(&mut config.store);
    if let Some(url) = &args.policy {
        config.policy.url = Some(url.clone());
    }
    if let Err(e) = config.server.validate() {
        errors.extend(e);
    }
    match config.validate() {
        Ok(settings) => errors.into_result((config, settings)),
        Err(e) => {
            errors.extend(e);
            Err(errors)
        }
    }
}

/// Runs the telemetry service.
pub fn run(args: TelemetryArgs) -> ExitCode {
    let (config, settings) = match configure(&args) {
        Ok(configured) => configured,
        Err(errors) => return config_failure(&errors),
    };
    let server = config.server.clone();
    host("telemetry", &server, &args.host, || async move {
        let store = config.store.open(&config.server.data_dir).await?;
        bind(
            &config,
            settings,
            store,
            SystemClock::shared(),
            Metrics::new("telemetry"),
        )
        .await
    })
}

/// Starts the telemetry service on `store` and binds its listener (used by
/// `serve` and `dev`).
pub async fn bind(
    config: &TelemetryConfig,
    settings: TelemetrySettings,
    store: upshift_store::SharedStore,
    clock: SharedClock,
    metrics: Metrics,
) -> anyhow::Result<BoundServer> {
    let server = upshift_telemetry::bind(&config.server, settings, store, clock, metrics).await?;
    Ok(server.bound)
}
