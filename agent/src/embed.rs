//! Running agents in process, for the dev mesh's simulated fleet and tests.
//!
//! [`spawn`] runs one agent on the [`Simulated`] backend with the given
//! settings and clock (a `ScaledClock` speeds its timers up) until the
//! cancellation token fires. A simulated reboot does not exit: the run loop
//! starts again with the new version booted, exactly as the restarted
//! process would.

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use upshift_common::clock::SharedClock;

use crate::driver::{Control, DriverError, Exit, Ident, Runtime, run_with};
use crate::os::{Release, Simulated};
use crate::settings::Settings;
use crate::status::Status;

/// Options of an embedded agent.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// Booted release when the simulated state file does not exist yet.
    pub initial: Release,
    /// Serve the metrics and control sockets under `settings.run_dir`.
    pub sockets: bool,
}

/// A running embedded agent.
#[derive(Debug)]
pub struct EmbeddedAgent {
    /// Live status.
    pub status: watch::Receiver<Status>,
    /// Local control (the same commands as the control socket).
    pub control: Control,
    /// Ends with the number of simulated reboots, or the error that
    /// stopped the agent.
    pub task: JoinHandle<Result<u64, DriverError>>,
}

/// Starts one agent in process.
pub fn spawn(
    settings: Settings,
    ident: Ident,
    clock: SharedClock,
    cancel: CancellationToken,
    options: EmbedOptions,
) -> std::io::Result<EmbeddedAgent> {
    let (mut rt, control) = Runtime::new(clock.clone(), cancel.clone());
    let status = rt.status.subscribe();
    if options.sockets {
        crate::local::serve(
            &settings.run_dir,
            status.clone(),
            control.clone(),
            cancel.clone(),
        )?;
    }
    crate::telemetry::spawn(
        &settings,
        &ident,
        status.clone(),
        clock,
        crate::net::thread_rng(),
        cancel,
    );
    let os = Simulated {
        file: settings.simulated_state_file.clone(),
        fail_versions: settings.fail_versions.clone(),
        fail_boot_versions: settings.fail_boot_versions.clone(),
        initial: options.initial,
    };
    let task = tokio::spawn(async move {
        let mut reboots = 0;
        loop {
            match run_with(&settings, &ident, &os, &mut rt).await? {
                Exit::Rebooted => {
                    reboots += 1;
                    tracing::info!(node = %ident.node_uuid, reboots, "simulated reboot");
                }
                Exit::Cancelled => return Ok(reboots),
            }
        }
    });
    Ok(EmbeddedAgent {
        status,
        control,
        task,
    })
}
