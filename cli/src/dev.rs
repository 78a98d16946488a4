//! `upshift dev`: the mesh in one process on an editable copy of the bundled
//! Fedora CoreOS metadata, for newcomers and demos.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use upshift_common::clock::SystemClock;
use upshift_common::config::ServerSettings;
use upshift_common::server::shutdown_signal;
use upshift_common::telemetry::{Metrics, TracingOptions, init_tracing};
use upshift_graph::config::{GraphConfig, StreamSource};

use crate::serve::graph;

/// Flags of `upshift dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Working directory holding the editable metadata and service state.
    #[arg(long, default_value = "target/dev")]
    workdir: PathBuf,
    /// The shared fixtures directory (`shared/fixtures`).
    #[arg(long, env = "UPSHIFT_FIXTURES", default_value = "../shared/fixtures")]
    fixtures: PathBuf,
    /// Address the services listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of the graph service.
    #[arg(long, default_value_t = upshift_graph::config::DEFAULT_PORT)]
    graph_port: u16,
}

/// Runs the dev mesh until Ctrl-C.
pub fn run(args: DevArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("upshift dev: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mesh(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("upshift dev: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn mesh(args: DevArgs) -> anyhow::Result<()> {
    let _tracing = init_tracing(&TracingOptions {
        log_format: Default::default(),
        otlp_endpoint: None,
        service_name: "upshift-dev".into(),
    })?;
    let metadata = prepare_metadata(&args.workdir, &args.fixtures)?;
    let clock = SystemClock::shared();

    let mut graph_config = GraphConfig {
        server: ServerSettings {
            listen: SocketAddr::new(args.host, args.graph_port),
            data_dir: args.workdir.join("graph"),
            ..ServerSettings::default()
        },
        ..GraphConfig::default()
    };
    graph_config.streams.insert(
        "stable".into(),
        StreamSource {
            dir: Some(metadata.clone()),
            ..StreamSource::default()
        },
    );
    let streams = graph_config
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let graph = graph::bind(graph_config, streams, clock.clone(), Metrics::new("graph")).await?;
    let graph_addr = graph.local_addr();

    print_guide(graph_addr, &metadata);
    graph.serve(shutdown_signal()).await?;
    Ok(())
}

/// Copies the stable stream's metadata into the working directory unless a
/// copy (possibly edited by the user) is already there.
fn prepare_metadata(workdir: &Path, fixtures: &Path) -> anyhow::Result<PathBuf> {
    let stream = workdir.join("metadata").join("stable");
    if stream.join("releases.json").is_file() && stream.join("updates.json").is_file() {
        return Ok(stream);
    }
    let source = fixtures.join("fcos/stable");
    if !source.join("releases.json").is_file() {
        bail!(
            "fixtures not found at {} (pass --fixtures DIR or set UPSHIFT_FIXTURES)",
            fixtures.display()
        );
    }
    std::fs::create_dir_all(&stream)?;
    std::fs::copy(source.join("releases.json"), stream.join("releases.json"))
        .context("copying releases.json")?;
    std::fs::copy(
        source.join("updates-history/058.json"),
        stream.join("updates.json"),
    )
    .context("copying updates.json")?;
    Ok(stream)
}

fn print_guide(graph: SocketAddr, metadata: &Path) {
    println!(
        "\nUpshift dev mesh is running. Ctrl-C stops it.\n\n\
         graph service      {graph}  (gRPC + HTTP)\n\
         metadata (edit me) {meta}/updates.json\n\n\
         Try:\n  \
         curl -s 'http://{graph}/v1/graph?basearch=x86_64&stream=stable' | head -c 400\n  \
         grpcurl -plaintext {graph} list\n  \
         grpcurl -plaintext -d '{{\"scope\":{{\"stream\":\"stable\",\"basearch\":\"x86_64\"}}}}' {graph} upshift.graph.v1.GraphService/GetGraph\n  \
         grpcurl -plaintext -d '{{}}' {graph} upshift.graph.v1.GraphService/WatchGraph   # then edit updates.json\n  \
         grpcurl -plaintext {graph} upshift.graph.v1.GraphService/GetSourceStatus\n  \
         curl -s http://{graph}/metrics | grep upshift_graph\n",
        meta = metadata.display()
    );
}
