//! `upshift bridge` (being built: see the telemetry and bridge issue).

use std::process::ExitCode;

use clap::Args;

/// Flags of `upshift bridge`.
#[derive(Debug, Args)]
pub struct BridgeArgs {}

/// Runs the bridge.
pub fn run(_args: BridgeArgs) -> ExitCode {
    eprintln!("upshift bridge: not built yet");
    ExitCode::FAILURE
}
