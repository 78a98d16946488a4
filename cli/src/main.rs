//! `upshift`: one binary for every Upshift service and the operator's tools.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod bridge;
mod dev;
mod ops;
mod serve;

/// Fleet-wide, automatic and safe OS updates for image-based Linux hosts.
#[derive(Debug, Parser)]
#[command(name = "upshift", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size difference between variants is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run one of the services.
    #[command(subcommand)]
    Serve(serve::ServeCommand),
    /// Run the whole mesh locally on the bundled Fedora CoreOS metadata.
    Dev(dev::DevArgs),
    /// Serve host-local Prometheus expositions over HTTP (default port 9598).
    Bridge(bridge::BridgeArgs),
    #[command(flatten)]
    Ops(ops::OpsCommand),
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    match cli.command {
        Command::Serve(command) => serve::run(command),
        Command::Dev(args) => dev::run(args),
        Command::Bridge(args) => bridge::run(args),
        Command::Ops(command) => ops::run(command),
        Command::Completions { shell } => completions(shell),
    }
}

/// Prints clap's message; `--help` and `--version` exit 0, usage errors
/// exit 64 (`EX_USAGE`) like every other configuration error.
fn usage_error(err: &clap::Error) -> ExitCode {
    let _ = err.print();
    if err.use_stderr() {
        ExitCode::from(upshift_common::config::EX_USAGE as u8)
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints the completion script. It is rendered into memory first: clap's
/// generator panics when stdout fails (`upshift completions zsh | head`).
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "upshift", &mut script);
    match std::io::stdout().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader stopped early (head, a closed pager): nothing to say.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upshift: cannot write the completions: {e}");
            ExitCode::FAILURE
        }
    }
}
