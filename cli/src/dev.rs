//! `upshift dev`: the mesh on the bundled metadata, for newcomers.

use std::process::ExitCode;

use clap::Args;

/// Flags of `upshift dev`.
#[derive(Debug, Args)]
pub struct DevArgs {}

/// Runs the dev mesh.
pub fn run(_args: DevArgs) -> ExitCode {
    ExitCode::SUCCESS
}
