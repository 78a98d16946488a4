//! `upshift dev`: the whole control plane (graph, policy, lock, telemetry) in
//! one process on one embedded store, an editable copy of the bundled Fedora
//! CoreOS metadata as its GitOps source, and a simulated fleet of in-process
//! agents, all on one clock that can run faster than real time.
//!
//! On a fresh working directory the newest release's rollout is re-dated to
//! start now (48 hours long), and the fleet boots the release before it, so
//! the rollout, the reboot slots and the telemetry can be watched at once.

mod fleet;
mod view;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;
use upshift_common::auth::AdminAuth;
use upshift_common::clock::{Clock, ScaledClock, SharedClock, SystemClock};
use upshift_common::config::{ServerSettings, parse_toml};
use upshift_common::server::{BoundServer, shutdown_signal};
use upshift_common::telemetry::{Metrics, TracingOptions, init_tracing};
use upshift_graph::config::{GraphConfig, StreamSource};
use upshift_lock::LockConfig;
use upshift_policy::config::PolicyConfig;
use upshift_store::SharedStore;
use upshift_store::embedded::EmbeddedStore;
use upshift_telemetry::TelemetryConfig;

use crate::serve;

/// Flags of `upshift dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Working directory: the editable metadata (`metadata/stable/`) and the
    /// mesh's state (`state/`, wiped at every start).
    #[arg(long, default_value = "target/dev")]
    workdir: PathBuf,
    /// The shared fixtures directory (`shared/fixtures`).
    #[arg(long, env = "UPSHIFT_FIXTURES", default_value = "../shared/fixtures")]
    fixtures: PathBuf,
    /// Address the services listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of the graph service; policy, lock and telemetry use the next
    /// three. 0 lets the OS choose every port.
    #[arg(long, default_value_t = upshift_graph::config::DEFAULT_PORT)]
    base_port: u16,
    /// Simulated agents in the fleet.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=20_000))]
    agents: u32,
    /// Clock speed: simulated seconds per real second (2880 plays a 48-hour
    /// rollout in a minute).
    #[arg(long, default_value_t = 600.0)]
    speed: f64,
    /// Reboot slots of the fleet's lock group.
    #[arg(long, default_value_t = 10)]
    slots: u32,
    /// Failure scenario: VERSION:PERCENT makes that share of the hosts fail
    /// to stage VERSION (watch the automatic halt).
    #[arg(long, value_name = "VERSION:PERCENT")]
    fail: Option<FailSpec>,
    /// Log lines instead of the live view (also when stdout is no terminal).
    #[arg(long)]
    no_ui: bool,
    /// Stop after this much real time and print the final view (for demos
    /// and tests), e.g. "90s".
    #[arg(long, value_name = "DURATION")]
    run_for: Option<humantime::Duration>,
    /// Stop as soon as this happens (exit 0), or fail (exit 1) when
    /// `--run-for` runs out first: `converged` (every host on the newest
    /// release and idle) or `halted` (an automatic halt is in force).
    #[arg(long, value_enum, requires = "run_for")]
    until: Option<Until>,
    /// Start again from the bundled metadata (discarding edits).
    #[arg(long)]
    reset: bool,
}

/// `--until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    /// Every host runs the newest release and is idle.
    Converged,
    /// The telemetry service halted a rollout.
    Halted,
}

/// `--fail VERSION:PERCENT`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailSpec {
    version: String,
    percent: f64,
}

impl std::str::FromStr for FailSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (version, percent) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected VERSION:PERCENT"))?;
        let percent: f64 = percent
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("{percent:?} is not a percentage"))?;
        if version.is_empty() || !(0.0..=100.0).contains(&percent) {
            return Err(format!("{s:?}: need a version and a percentage in 0..=100"));
        }
        Ok(Self {
            version: version.to_string(),
            percent,
        })
    }
}

/// Runs the dev mesh until Ctrl-C (or `--run-for`).
pub fn run(args: DevArgs) -> ExitCode {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        eprintln!("upshift dev: --speed must be a positive number");
        // A usage error, like every other bad flag of `upshift`.
        return ExitCode::from(upshift_common::config::EX_USAGE as u8);
    }
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

/// The addresses of the running mesh.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub bridge: SocketAddr,
    pub graph: SocketAddr,
    pub policy: SocketAddr,
    pub lock: SocketAddr,
    pub telemetry: SocketAddr,
}

async fn mesh(args: DevArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let ui = !args.no_ui && std::io::stdout().is_terminal();
    // The live view owns the terminal; logs only without it.
    let _tracing = if ui {
        None
    } else {
        Some(init_tracing(&TracingOptions {
            log_format: Default::default(),
            otlp_endpoint: None,
            service_name: "upshift-dev".into(),
        })?)
    };

    // The scaled clock starts from the real clock's reading.
    let start = SystemClock.now();
    let metadata = prepare_metadata(&args.workdir, &args.fixtures, args.reset, start)?;
    let initial = fleet::initial_release(&metadata)?;
    let newest = fleet::newest_release(&metadata)?;
    let state = args.workdir.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("clearing {}", state.display()))?;
    }
    std::fs::create_dir_all(&state)?;
    let token = admin_token(&state)?;

    let clock = ScaledClock::shared(start, args.speed);
    let store: SharedStore = std::sync::Arc::new(
        EmbeddedStore::open(&state.join("store.redb")).context("opening the embedded store")?,
    );
    let shutdown = CancellationToken::new();
    let port = |offset: u16| {
        let port = if args.base_port == 0 {
            0
        } else {
            args.base_port + offset
        };
        SocketAddr::new(args.host, port)
    };
    let settings = |listen: SocketAddr, name: &str| ServerSettings {
        listen,
        data_dir: state.join(name),
        admin_token: Some(token.clone()),
        ..ServerSettings::default()
    };

    let graph = start_graph(&metadata, settings(port(0), "graph"), clock.clone()).await?;
    let graph_addr = graph.local_addr();
    let policy = start_policy(
        graph_addr,
        settings(port(1), "policy"),
        &token,
        store.clone(),
        clock.clone(),
    )
    .await?;
    let policy_addr = policy.local_addr();
    let lock = start_lock(
        args.slots,
        settings(port(2), "lock"),
        &token,
        store.clone(),
        clock.clone(),
    )
    .await?;
    let lock_addr = lock.local_addr();
    let heartbeat = fleet::heartbeat(args.speed);
    let telemetry = start_telemetry(
        policy_addr,
        heartbeat,
        settings(port(3), "telemetry"),
        &token,
        store.clone(),
        clock.clone(),
    )
    .await?;
    // The bridge serves the first simulated host's metrics socket, as it
    // would on a real host.
    let bridge_listen = SocketAddr::new(
        args.host,
        if args.base_port == 0 {
            0
        } else {
            upshift_bridge::config::DEFAULT_PORT
        },
    );
    let agent_socket = state
        .join("fleet")
        .join(fleet::member_dir(0))
        .join("run/upshift")
        .join(upshift_agent::local::METRICS_SOCKET);
    let bridge = start_bridge(bridge_listen, &agent_socket, clock.clone()).await?;
    let addresses = Addresses {
        bridge: bridge.local_addr(),
        graph: graph_addr,
        policy: policy_addr,
        lock: lock_addr,
        telemetry: telemetry.local_addr(),
    };
    let mut servers = Vec::new();
    for server in [graph, policy, lock, telemetry, bridge] {
        let stop = shutdown.clone();
        servers.push(tokio::spawn(async move {
            server.serve(stop.cancelled_owned()).await
        }));
    }

    let fleet = fleet::Fleet::spawn(&fleet::FleetOptions {
        agents: args.agents,
        dir: state.join("fleet"),
        addresses: addresses.clone(),
        initial,
        fail: args.fail.clone(),
        heartbeat,
        clock: clock.clone(),
        cancel: shutdown.clone(),
    })?;

    let guide = view::guide(&addresses, &metadata, &state.join("admin-token"), &args);
    if !ui {
        println!("{guide}");
    }
    let mut viewer = view::Viewer::connect(&addresses, &token).await?;
    let deadline = args
        .run_for
        .map(|d| tokio::time::Instant::now() + Duration::from(d));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_log = tokio::time::Instant::now();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut outcome = Ok(());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let snapshot = viewer.snapshot(&fleet, clock.as_ref()).await;
        if ui {
            print!("\x1b[H\x1b[2J{guide}\n{}", view::render(&snapshot));
            use std::io::Write;
            std::io::stdout().flush().ok();
        } else if last_log.elapsed() >= Duration::from_secs(10) {
            println!("{}", view::summary_line(&snapshot));
            last_log = tokio::time::Instant::now();
        }
        let reached = match args.until {
            Some(Until::Converged) => snapshot.converged_on(&newest),
            Some(Until::Halted) => snapshot.halted(),
            None => false,
        };
        let timed_out = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        if reached || timed_out {
            if !ui {
                println!("{}", view::render(&snapshot));
            }
            if let (Some(until), false) = (args.until, reached) {
                outcome = Err(anyhow::anyhow!("not {until:?} within --run-for"));
            }
            break;
        }
    }
    shutdown.cancel();
    fleet.stop().await;
    for server in servers {
        server.await??;
    }
    outcome
}

async fn start_graph(
    metadata: &Path,
    server: ServerSettings,
    clock: SharedClock,
) -> anyhow::Result<BoundServer> {
    let mut config = GraphConfig {
        server,
        // Short: a newcomer editing updates.json sees the fleet react at once.
        debounce: Duration::from_millis(50),
        ..GraphConfig::default()
    };
    config.streams.insert(
        "stable".into(),
        StreamSource {
            dir: Some(metadata.to_path_buf()),
            ..StreamSource::default()
        },
    );
    let streams = config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    serve::graph::bind(config, streams, clock, Metrics::new("graph")).await
}

async fn start_policy(
    graph: SocketAddr,
    server: ServerSettings,
    token: &str,
    store: SharedStore,
    clock: SharedClock,
) -> anyhow::Result<BoundServer> {
    let config = PolicyConfig {
        graph_url: Some(format!("http://{graph}")),
        server,
        ..PolicyConfig::default()
    };
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let admin = AdminAuth::new(Some(token.to_string()), Vec::new());
    serve::policy::bind(&config, store, clock, admin, Metrics::new("policy")).await
}

async fn start_lock(
    slots: u32,
    server: ServerSettings,
    token: &str,
    store: SharedStore,
    clock: SharedClock,
) -> anyhow::Result<BoundServer> {
    let mut config: LockConfig =
        parse_toml(&format!("[default]\nslots = {slots}\n")).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.server = server;
    let settings = config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let admin = AdminAuth::new(Some(token.to_string()), Vec::new());
    serve::lock::bind(&config, settings, store, clock, admin, Metrics::new("lock")).await
}

async fn start_telemetry(
    policy: SocketAddr,
    heartbeat: Duration,
    server: ServerSettings,
    token: &str,
    store: SharedStore,
    clock: SharedClock,
) -> anyhow::Result<BoundServer> {
    // A host that has not reported for 30 simulated minutes (or five
    // heartbeats, when they are further apart) is stale; a release halts
    // when over 20% of at least 5 attempting hosts failed.
    let stale_after = (heartbeat * 5).max(Duration::from_secs(1800)).as_secs();
    let mut config: TelemetryConfig = parse_toml(&format!(
        "stale_after = \"{stale_after}s\"\n\
         [policy]\nurl = \"http://{policy}\"\nadmin_token = \"{token}\"\n\
         [halt.default]\nmax_failure_ratio = 0.2\nmin_attempts = 5\n"
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.server = server;
    let settings = config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    serve::telemetry::bind(&config, settings, store, clock, Metrics::new("telemetry")).await
}

async fn start_bridge(
    listen: SocketAddr,
    agent_socket: &Path,
    clock: SharedClock,
) -> anyhow::Result<BoundServer> {
    let mut config: upshift_bridge::BridgeConfig = parse_toml(&format!(
        "[selectors.agent]\nkind = \"uds\"\npath = {:?}\n",
        agent_socket.display().to_string()
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.server.listen = listen;
    let settings = config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(upshift_bridge::bind(&config.server, settings, Metrics::new("bridge"), clock).await?)
}

/// A fresh random admin token, written to `state/admin-token` for grpcurl
/// and the operator CLI.
fn admin_token(state: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let seed = format!(
        "{:?}-{}-{:?}",
        SystemClock.now(),
        std::process::id(),
        std::thread::current().id()
    );
    let token = hex::encode(Sha256::digest(seed.as_bytes()));
    std::fs::write(state.join("admin-token"), format!("{token}\n"))?;
    Ok(token)
}

/// Copies the stable stream's metadata into the working directory unless a
/// copy (possibly edited by the user) is already there. A fresh copy gets
/// its newest rollout re-dated to start at `now` and last 48 hours.
fn prepare_metadata(
    workdir: &Path,
    fixtures: &Path,
    reset: bool,
    now: SystemTime,
) -> anyhow::Result<PathBuf> {
    let stream = workdir.join("metadata").join("stable");
    if !reset && stream.join("releases.json").is_file() && stream.join("updates.json").is_file() {
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
    let updates = std::fs::read_to_string(source.join("updates-history/058.json"))
        .context("reading updates-history/058.json")?;
    let start = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let updates = redate_last_rollout(&updates, start)?;
    std::fs::write(stream.join("updates.json"), updates).context("writing updates.json")?;
    Ok(stream)
}

/// Moves the newest rollout of an `updates.json` to start at `start_epoch`,
/// from 0% over 48 hours.
fn redate_last_rollout(updates: &str, start_epoch: u64) -> anyhow::Result<String> {
    let mut doc: serde_json::Value = serde_json::from_str(updates)?;
    let releases = doc["releases"]
        .as_array_mut()
        .context("updates.json has no releases")?;
    if let Some(rollout) = releases
        .iter_mut()
        .rev()
        .find_map(|r| r["metadata"].get_mut("rollout"))
    {
        *rollout = serde_json::json!({
            "start_epoch": start_epoch,
            "start_percentage": 0.0,
            "duration_minutes": 2880,
        });
    }
    Ok(serde_json::to_string_pretty(&doc)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_spec_parses_and_rejects() {
        assert_eq!(
            "34.20211016.3.0:30".parse::<FailSpec>().unwrap(),
            FailSpec {
                version: "34.20211016.3.0".into(),
                percent: 30.0
            }
        );
        assert_eq!("v:12.5%".parse::<FailSpec>().unwrap().percent, 12.5);
        for bad in ["34.20211016.3.0", ":30", "v:150", "v:x"] {
            assert!(bad.parse::<FailSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_newest_rollout_is_redated() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/fcos/stable/updates-history/058.json");
        let text = std::fs::read_to_string(fixtures).unwrap();
        let out = redate_last_rollout(&text, 1_800_000_000).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rollouts: Vec<_> = doc["releases"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| {
                r["metadata"]
                    .get("rollout")
                    .map(|o| (r["version"].clone(), o.clone()))
            })
            .collect();
        let (version, last) = rollouts.last().unwrap();
        assert_eq!(version, "34.20211016.3.0");
        assert_eq!(last["start_epoch"], 1_800_000_000u64);
        assert_eq!(last["duration_minutes"], 2880);
        // Earlier rollouts are untouched.
        assert_eq!(rollouts[0].1["start_percentage"], 1.0);
    }
}
