//! `upshift serve graph`.

use std::process::ExitCode;

use clap::Args;
use upshift_common::clock::{SharedClock, SystemClock};
use upshift_common::config::{ConfigErrors, ServeArgs};
use upshift_common::server::{BoundServer, Readiness, ServiceHost};
use upshift_common::telemetry::Metrics;
use upshift_graph::GraphService;
use upshift_graph::config::{DEFAULT_PORT, GraphConfig, ValidStream};

use super::{FileConfig, HostArgs, config_failure, host};

/// Flags of `upshift serve graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    host: HostArgs,
    /// Metadata source (repeatable): a directory holding one subdirectory per
    /// stream (each with releases.json and updates.json), or a base URL under
    /// which `<stream>/releases.json` and `<stream>/updates.json` live.
    #[arg(
        long,
        value_name = "DIR|URL",
        env = "UPSHIFT_GRAPH_METADATA",
        value_delimiter = ','
    )]
    metadata: Vec<String>,
    /// Streams to fetch under a base URL given with --metadata.
    #[arg(long = "stream", value_name = "NAME", default_values_t = ["stable".to_string()])]
    streams: Vec<String>,
}

/// Loads the configuration: file, then flags; every error at once.
pub fn configure(args: &GraphArgs) -> Result<(GraphConfig, Vec<ValidStream>), ConfigErrors> {
    let mut c = FileConfig::read(args.serve.config.as_deref(), GraphConfig::default);
    c.merge_serve_args(&args.serve, DEFAULT_PORT, |c| &mut c.server);
    for value in &args.metadata {
        if let Err(message) = c.config.add_metadata_flag(value, &args.streams) {
            c.errors.push("--metadata", message);
        }
    }
    let streams = match c.readable {
        true => {
            let checked = c.config.validate();
            c.check(checked).unwrap_or_default()
        }
        false => Vec::new(),
    };
    c.errors.into_result((c.config, streams))
}

/// Runs the graph service.
pub fn run(args: GraphArgs) -> ExitCode {
    let (config, streams) = match configure(&args) {
        Ok(configured) => configured,
        Err(errors) => return config_failure(&errors),
    };
    let settings = config.server.clone();
    let dir = Some((settings.data_dir.clone(), "server.data_dir"));
    host("graph", &settings, &args.host, dir, || async move {
        bind(
            config,
            streams,
            SystemClock::shared(),
            Metrics::new("graph"),
        )
        .await
    })
}

/// Starts the graph service and binds its listener (used by `serve` and `dev`).
pub async fn bind(
    config: GraphConfig,
    streams: Vec<ValidStream>,
    clock: SharedClock,
    metrics: Metrics,
) -> anyhow::Result<BoundServer> {
    let settings = config.server;
    let readiness = Readiness::new();
    let builder = ServiceHost::builder("graph", metrics.clone(), clock.clone())
        .settings(&settings)
        .readiness(readiness.clone())
        .grpc_service_names(upshift_graph::GRPC_SERVICES);
    std::fs::create_dir_all(&settings.data_dir)?;
    let service = GraphService::start(
        streams,
        config.debounce,
        Some(&settings.data_dir),
        clock,
        &metrics.meter(),
        readiness,
        builder.shutdown_token(),
    );
    let routes = tonic::service::Routes::new(service.grpc());
    let server = builder
        .grpc(routes)
        .http(service.http())
        .bind(settings.listen, settings.tls.clone())
        .await?;
    Ok(server)
}
