//! What the `upshift-agent` binary does, as library functions: loading the
//! settings and identity under a root, running the agent with its sockets
//! and telemetry, and the control subcommands.

use std::path::Path;

use tokio_util::sync::CancellationToken;
use upshift_common::clock::SystemClock;

use crate::config::ConfigError;
use crate::driver::{DriverError, Exit, Ident, Runtime, run_with};
use crate::notify::Notifier;
use crate::os::OsBackend;
use crate::settings::Settings;
use crate::{config, identity, local};

/// Exit codes of the `upshift-agent` binary (sysexits where one fits).
pub mod exit {
    /// Stopped on SIGTERM/SIGINT, or the host is rebooting (rpm-ostree);
    /// a control command done.
    pub const OK: u8 = 0;
    /// A control command the agent refused.
    pub const REFUSED: u8 = 1;
    /// Bad usage or configuration (`EX_USAGE`; the unit does not restart).
    pub const USAGE: u8 = 64;
    /// `run`: the OS backend is unavailable or failed (rpm-ostree or logind
    /// not on the bus, refused, no answer); control: the agent is not
    /// reachable (`EX_UNAVAILABLE`; the unit restarts `run`).
    pub const UNAVAILABLE: u8 = 69;
    /// Any other runtime failure: state file, lock, tracing (`EX_SOFTWARE`).
    pub const SOFTWARE: u8 = 70;
    /// No usable identity: `/etc/machine-id` missing or malformed and no
    /// `identity.node_uuid` (`EX_CONFIG`; the unit does not restart).
    pub const CONFIG: u8 = 78;
    /// The simulated backend "rebooted": a supervisor restarts the agent.
    pub const SIMULATED_REBOOT: u8 = crate::os::EXIT_SIMULATED_REBOOT;
}

/// The exit code of a run that ended with `e`.
pub fn exit_code_of(e: &DriverError) -> u8 {
    match e {
        DriverError::Os(_) => exit::UNAVAILABLE,
        DriverError::Persist(_) | DriverError::Transition(_) | DriverError::Lock(_) => {
            exit::SOFTWARE
        }
    }
}

/// Loads and validates the configuration under `root`.
pub fn load_settings(root: &Path) -> Result<Settings, Vec<ConfigError>> {
    config::load(root).and_then(|m| Settings::validate(&m, root))
}

/// The node identity: `identity.node_uuid`, else the app-specific id of
/// `<root>/etc/machine-id`; the platform from settings or the kernel
/// command line (`metal` when absent).
pub fn load_ident(root: &Path, s: &Settings) -> Result<Ident, String> {
    let node_uuid = match &s.node_uuid {
        Some(u) => u.clone(),
        None => {
            let mid = std::fs::read_to_string(root.join("etc/machine-id")).unwrap_or_default();
            identity::app_specific_id(&mid, identity::ZINCATI_APP_ID)
                .map_err(|e| format!("identity: {e} (from {}/etc/machine-id)", root.display()))?
        }
    };
    let platform = s.platform.clone().unwrap_or_else(|| {
        std::fs::read_to_string(root.join("proc/cmdline"))
            .ok()
            .and_then(|c| identity::platform_from_cmdline(&c))
            .unwrap_or_else(|| "metal".into())
    });
    Ok(Ident {
        node_uuid,
        platform,
        motd_path: Some(root.join("run/motd.d/85-upshift-deadend.motd")),
    })
}

/// Runs the agent on the real clock until a reboot or `cancel`: metrics
/// and control sockets under `settings.run_dir`, telemetry reports when
/// configured, and `STATUS=` lines to `notify` as the state changes.
pub async fn run_agent<O: OsBackend>(
    settings: &Settings,
    ident: &Ident,
    os: &O,
    cancel: CancellationToken,
    notify: Option<Notifier>,
) -> Result<Exit, DriverError> {
    let _stop = cancel.clone().drop_guard();
    let (mut rt, control) = Runtime::new(SystemClock::shared(), cancel.clone());
    let status = rt.status.subscribe();
    if let Err(e) = local::serve(&settings.run_dir, status.clone(), control, cancel.clone()) {
        tracing::warn!(error = %e, dir = %settings.run_dir.display(), "local sockets unavailable");
    }
    if let Some(n) = notify {
        n.follow(status.clone(), cancel.clone());
    }
    crate::telemetry::spawn(
        settings,
        ident,
        status,
        SystemClock::shared(),
        crate::net::thread_rng(),
        cancel,
    );
    run_with(settings, ident, os, &mut rt).await
}

/// Sends a control request line (`status`, `pause`, ...) to the running
/// agent and prints the answer; the exit code is [`exit::OK`],
/// [`exit::REFUSED`], or [`exit::UNAVAILABLE`] when it cannot be reached.
pub async fn control(settings: &Settings, line: &str) -> u8 {
    let (_, socket) = local::paths(&settings.run_dir);
    match local::request(&socket, line).await {
        Ok(a) => {
            if line == "status" {
                if let Some(s) = &a.status {
                    print!("{}", local::format_status(s));
                }
            } else if a.ok {
                println!("{}", a.message);
            }
            if a.ok {
                exit::OK
            } else {
                eprintln!("upshift-agent: {}", a.message);
                exit::REFUSED
            }
        }
        Err(e) => {
            eprintln!(
                "upshift-agent: cannot reach the agent at {}: {e}",
                socket.display()
            );
            exit::UNAVAILABLE
        }
    }
}
