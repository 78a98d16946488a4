//! `upshift serve telemetry` (being built: see the telemetry issue).

use std::process::ExitCode;

use clap::Args;

/// Flags of `upshift serve telemetry`.
#[derive(Debug, Args)]
pub struct TelemetryArgs {}

/// Runs the telemetry service.
pub fn run(_args: TelemetryArgs) -> ExitCode {
    eprintln!("upshift serve telemetry: not built yet");
    ExitCode::FAILURE
}
