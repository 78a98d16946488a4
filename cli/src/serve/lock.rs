//! `upshift serve lock`.

use std::process::ExitCode;

use clap::Args;
use upshift_common::clock::{SharedClock, SystemClock};
use upshift_common::config::{ConfigErrors, ServeArgs, load_toml};
use upshift_common::server::BoundServer;
use upshift_common::telemetry::Metrics;
use upshift_lock::config::DEFAULT_PORT;
use upshift_lock::{LockConfig, LockSettings};

use super::{HostArgs, StoreArgs, apply_default_port, config_failure, host};

/// Flags of `upshift serve lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    host: HostArgs,
}

/// Loads the configuration: file, then flags; every error at once.
pub fn configure(args: &LockArgs) -> Result<(LockConfig, LockSettings), ConfigErrors> {
    let mut errors = ConfigErrors::new();
    let mut config = match &args.serve.config {
        Some(path) => load_toml::<LockConfig>(path)?,
        // Without a file, every valid group name gets one slot.
        None => LockConfig {
            default: Some(upshift_lock::config::GroupConfig {
                slots: 1,
                ..Default::default()
            }),
            ..Default::default()
        },
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
    if let Err(e) = config.server.validate() {
        errors.extend(e);
    }
    let settings = match config.validate() {
        Ok(settings) => Some(settings),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    match (errors.into_result(()), settings) {
        (Ok(()), Some(settings)) => Ok((config, settings)),
        (Err(errors), _) => Err(errors),
        (Ok(()), None) => unreachable!("validation failed without errors"),
    }
}

/// Runs the lock service.
pub fn run(args: LockArgs) -> ExitCode {
    let (config, settings) = match configure(&args) {
        Ok(configured) => configured,
        Err(errors) => return config_failure(&errors),
    };
    let admin = match config.server.admin_auth() {
        Ok(admin) => admin,
        Err(errors) => return config_failure(&errors),
    };
    let server = config.server.clone();
    host("lock", &server, &args.host, || async move {
        let store = config.store.open(&config.server.data_dir).await?;
        bind(
            &config,
            settings,
            store,
            SystemClock::shared(),
            admin,
            Metrics::new("lock"),
        )
        .await
    })
}

/// Starts the lock service on `store` and binds its listener (used by
/// `serve` and `dev`).
pub async fn bind(
    config: &LockConfig,
    settings: LockSettings,
    store: upshift_store::SharedStore,
    clock: SharedClock,
    admin: upshift_common::auth::AdminAuth,
    metrics: Metrics,
) -> anyhow::Result<BoundServer> {
    let server = upshift_lock::bind(&config.server, settings, store, clock, metrics, admin).await?;
    Ok(server.bound)
}
