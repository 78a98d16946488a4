//! `upshift serve lock`.

use std::process::ExitCode;

use clap::Args;
use upshift_common::clock::{SharedClock, SystemClock};
use upshift_common::config::{ConfigErrors, ServeArgs};
use upshift_common::server::BoundServer;
use upshift_common::telemetry::Metrics;
use upshift_lock::config::DEFAULT_PORT;
use upshift_lock::{LockConfig, LockSettings};

use super::{FileConfig, HostArgs, StoreArgs, config_failure, host, store_dir};

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
    let mut c = FileConfig::read(args.serve.config.as_deref(), || LockConfig {
        // Without a file, every valid group name gets one slot.
        default: Some(upshift_lock::config::GroupConfig {
            slots: 1,
            ..Default::default()
        }),
        ..Default::default()
    });
    c.merge_serve_args(&args.serve, DEFAULT_PORT, |c| &mut c.server);
    args.store.merge_into(&mut c.config.store);
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
    let dir = store_dir(&config.store, &server.data_dir);
    host("lock", &server, &args.host, dir, || async move {
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
