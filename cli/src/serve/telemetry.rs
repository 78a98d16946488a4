//! `upshift serve telemetry`.

use std::process::ExitCode;

use clap::Args;
use upshift_common::clock::{SharedClock, SystemClock};
use upshift_common::config::{ConfigErrors, ServeArgs};
use upshift_common::server::BoundServer;
use upshift_common::telemetry::Metrics;
use upshift_telemetry::config::DEFAULT_PORT;
use upshift_telemetry::{TelemetryConfig, TelemetrySettings};

use super::{FileConfig, HostArgs, StoreArgs, config_failure, host, store_dir};

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
    let mut c = FileConfig::read(args.serve.config.as_deref(), TelemetryConfig::default);
    c.merge_serve_args(&args.serve, DEFAULT_PORT, |c| &mut c.server);
    args.store.merge_into(&mut c.config.store);
    if let Some(url) = &args.policy {
        c.config.policy.url = Some(url.clone());
    }
    let settings = match c.readable {
        true => {
            let checked = c.config.validate();
            c.check(checked)
        }
        false => None,
    };
    match settings {
        Some(settings) if c.errors.is_empty() => Ok((c.config, settings)),
        _ => Err(c.errors),
    }
}

/// Runs the telemetry service.
pub fn run(args: TelemetryArgs) -> ExitCode {
    let (config, settings) = match configure(&args) {
        Ok(configured) => configured,
        Err(errors) => return config_failure(&errors),
    };
    let server = config.server.clone();
    let dir = store_dir(&config.store, &server.data_dir);
    host("telemetry", &server, &args.host, dir, || async move {
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
