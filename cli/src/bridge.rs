//! `upshift bridge`: the host metrics bridge (see `../shared/DESIGN.md`
//! section 6 and `services/bridge/README.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use upshift_bridge::config::DEFAULT_PORT;
use upshift_bridge::{BridgeConfig, BridgeSettings};
use upshift_common::clock::SystemClock;
use upshift_common::config::{ConfigErrors, LogFormat};
use upshift_common::telemetry::Metrics;

use crate::serve::{HostArgs, apply_default_port, config_failure, host};

/// Flags of `upshift bridge`.
#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// TOML file with the `[selectors.NAME]` to serve.
    #[arg(long, env = "UPSHIFT_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Listen address (default 0.0.0.0:9598, or `[server] listen`).
    #[arg(long, env = "UPSHIFT_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "UPSHIFT_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    host: HostArgs,
}

/// Loads and validates the configuration file, then applies the flags.
fn configure(args: &BridgeArgs) -> Result<(BridgeConfig, BridgeSettings), ConfigErrors> {
    let (mut config, settings) = upshift_bridge::config::load(&args.config)?;
    apply_default_port(&mut config.server, Some(&args.config), DEFAULT_PORT);
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(format) = args.log_format {
        config.server.log_format = format;
    }
    Ok((config, settings))
}

/// Runs the bridge until SIGINT/SIGTERM; exit 64 on an invalid configuration.
pub fn run(args: BridgeArgs) -> ExitCode {
    let (config, settings) = match configure(&args) {
        Ok(configured) => configured,
        Err(errors) => return config_failure(&errors),
    };
    let server = config.server.clone();
    host("bridge", &server, &args.host, None, || async move {
        let bound = upshift_bridge::bind(
            &config.server,
            settings,
            Metrics::new("bridge"),
            SystemClock::shared(),
        )
        .await?;
        Ok(bound)
    })
}
