//! The operator's commands: `upshift graph|rollout|lock|fleet|status|health`.
//!
//! Each command talks gRPC to one service (or, for `status`, to all four),
//! prints a table (default) or JSON (`--output json`), and exits with a code
//! scripts can rely on (see [`EXIT_CODES`]). The JSON field names are part
//! of the interface and documented in `cli/OPERATOR.md`.

use std::process::ExitCode;

use clap::Subcommand;

mod client;
mod fleet;
mod graph;
mod lock;
mod render;
mod rollout;
mod status;

use client::Exit;

/// Exit codes of every operator command, shown in their `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (health: the service is SERVING)
  1  the call failed: server error, not found, invalid argument, permission denied
  2  usage: bad flags or arguments, unreadable token/CA/certificate file
  3  a service is unreachable, not serving, or did not answer within --timeout

Admin calls send `authorization: Bearer <token>` read from --admin-token-file
(env UPSHIFT_ADMIN_TOKEN_FILE) or, without it, the env variable UPSHIFT_ADMIN_TOKEN.";

/// Operator commands, flattened into the top-level command list.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Show update graphs and their sources (graph service, default port 7401).
    #[command(after_help = EXIT_CODES)]
    Graph(graph::GraphArgs),
    /// List and steer rollouts: pause, resume, freeze (policy service, 7402).
    #[command(after_help = EXIT_CODES)]
    Rollout(rollout::RolloutArgs),
    /// Reboot lock groups: holders, queue, force-release, slots, pause
    /// (lock service, 7403).
    #[command(after_help = EXIT_CODES)]
    Lock(lock::LockArgs),
    /// The fleet view: summary and hosts (telemetry service, 7404).
    #[command(after_help = EXIT_CODES)]
    Fleet(fleet::FleetArgs),
    /// Health and revision of every service.
    #[command(after_help = EXIT_CODES)]
    Status(status::StatusArgs),
    /// One gRPC health check; exits 0 only when the service is SERVING
    /// (for container health checks).
    #[command(after_help = EXIT_CODES)]
    Health(status::HealthArgs),
}

/// Runs an operator command and maps its outcome to the exit code.
pub fn run(command: OpsCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("upshift: cannot start the runtime: {err}");
            return ExitCode::from(Exit::Failed as u8);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            OpsCommand::Graph(args) => graph::run(args).await,
            OpsCommand::Rollout(args) => rollout::run(args).await,
            OpsCommand::Lock(args) => lock::run(args).await,
            OpsCommand::Fleet(args) => fleet::run(args).await,
            OpsCommand::Status(args) => status::run_status(args).await,
            OpsCommand::Health(args) => status::run_health(args).await,
        }
    });
    let exit = match result {
        Ok(exit) => exit,
        Err(err) => {
            eprintln!("upshift: {err}");
            err.exit()
        }
    };
    ExitCode::from(exit as u8)
}
