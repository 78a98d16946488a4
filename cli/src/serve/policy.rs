//! `upshift serve policy`.

use std::process::ExitCode;

use clap::Args;
use upshift_common::auth::AdminAuth;
use upshift_common::clock::{SharedClock, SystemClock};
use upshift_common::config::{ConfigErrors, ServeArgs};
use upshift_common::server::BoundServer;
use upshift_common::telemetry::Metrics;
use upshift_policy::config::{DEFAULT_PORT, PolicyConfig};
use upshift_policy::store::UpshiftStore;

use super::{FileConfig, HostArgs, StoreArgs, config_failure, host, store_dir};

/// Flags of `upshift serve policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    host: HostArgs,
    /// gRPC URL of the graph service to follow (e.g. http://127.0.0.1:7401).
    #[arg(long, value_name = "URL", env = "UPSHIFT_POLICY_GRAPH")]
    graph: Option<String>,
}

/// Loads the configuration: file, then flags; every error at once.
pub fn configure(args: &PolicyArgs) -> Result<PolicyConfig, ConfigErrors> {
    let mut c = FileConfig::read(args.serve.config.as_deref(), PolicyConfig::default);
    c.merge_serve_args(&args.serve, DEFAULT_PORT, |c| &mut c.server);
    args.store.merge_into(&mut c.config.store);
    if let Some(url) = &args.graph {
        c.config.graph_url = Some(url.clone());
    }
    if c.readable {
        if c.config.graph_url.is_none() {
            c.errors.push(
                "graph_url",
                "the graph service to follow is needed (--graph URL or graph_url in the file)",
            );
        }
        let checked = c.config.validate();
        c.check(checked);
    }
    c.errors.into_result(c.config)
}

/// Runs the policy service.
pub fn run(args: PolicyArgs) -> ExitCode {
    let config = match configure(&args) {
        Ok(config) => config,
        Err(errors) => return config_failure(&errors),
    };
    let admin = match config.server.admin_auth() {
        Ok(admin) => admin,
        Err(errors) => return config_failure(&errors),
    };
    let server = config.server.clone();
    let dir = store_dir(&config.store, &server.data_dir);
    host("policy", &server, &args.host, dir, || async move {
        let store = config.store.open(&config.server.data_dir).await?;
        bind(
            &config,
            store,
            SystemClock::shared(),
            admin,
            Metrics::new("policy"),
        )
        .await
    })
}

/// Starts the policy service on `store` and binds its listener (used by
/// `serve` and `dev`).
pub async fn bind(
    config: &PolicyConfig,
    store: upshift_store::SharedStore,
    clock: SharedClock,
    admin: AdminAuth,
    metrics: Metrics,
) -> anyhow::Result<BoundServer> {
    let server =
        upshift_policy::bind(config, UpshiftStore::shared(store), clock, metrics, admin).await?;
    Ok(server.bound)
}
