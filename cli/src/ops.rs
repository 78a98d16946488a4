//! The operator's commands (`upshift graph|rollout|lock|fleet|status`),
//! being built: see the dev/CLI issue.

use std::process::ExitCode;

use clap::Subcommand;

/// Operator commands, flattened into the top-level command list.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {}

/// Runs an operator command.
pub fn run(command: OpsCommand) -> ExitCode {
    match command {}
}
