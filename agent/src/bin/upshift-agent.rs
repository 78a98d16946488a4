//! `upshift-agent` binary: `[--root DIR] config show | run | status |
//! check-now | pause | resume | finalize-now [--force]`. Exit codes:
//! [`upshift_agent::app::exit`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use upshift_agent::app::exit;
use upshift_agent::notify::Notifier;
use upshift_agent::{app, driver, os, settings, trace};

const USAGE: &str = "usage: upshift-agent [--root DIR] (config show | run | status | check-now | pause | resume | finalize-now [--force])";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut root = PathBuf::from("/");
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        if a == "--root" {
            match args.next() {
                Some(d) => root = PathBuf::from(d),
                None => return usage(),
            }
        } else {
            rest.push(a);
        }
    }
    let words: Vec<&str> = rest.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["config", "show"] => match upshift_agent::config::load(&root)
            .and_then(|m| settings::Settings::validate(&m, &root).map(|_| m))
        {
            Ok(m) => {
                print!("{}", m.show());
                ExitCode::SUCCESS
            }
            Err(errs) => config_errors(errs),
        },
        ["run"] => run(&root),
        ["status"]
        | ["check-now"]
        | ["pause"]
        | ["resume"]
        | ["finalize-now"]
        | ["finalize-now", "--force"] => control(&root, &words.join(" ")),
        _ => usage(),
    }
}

fn config_errors(errs: Vec<upshift_agent::config::ConfigError>) -> ExitCode {
    for e in errs {
        eprintln!("config error: {e}");
    }
    ExitCode::from(exit::USAGE)
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("runtime: {e}");
            None
        }
    }
}

fn control(root: &Path, line: &str) -> ExitCode {
    let s = match app::load_settings(root) {
        Ok(s) => s,
        Err(errs) => return config_errors(errs),
    };
    match runtime() {
        Some(rt) => ExitCode::from(rt.block_on(app::control(&s, line))),
        None => ExitCode::from(exit::SOFTWARE),
    }
}

fn run(root: &Path) -> ExitCode {
    let s = match app::load_settings(root) {
        Ok(s) => s,
        Err(errs) => return config_errors(errs),
    };
    let ident = match app::load_ident(root, &s) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let Some(rt) = runtime() else {
        return ExitCode::from(exit::SOFTWARE);
    };
    // The OTLP exporter (only with `telemetry.otlp_endpoint`) lives on this runtime.
    let guard = match rt.block_on(async { trace::init(s.otlp_endpoint.as_deref()) }) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("tracing: {}", driver::error_chain(&e));
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let result = rt.block_on(serve(&s, &ident));
    // Spans still batched (the update's, before a reboot) go out now: the
    // flush blocks, so off the runtime's thread while the runtime runs.
    if guard.exporting() {
        let _ = rt.block_on(async { tokio::task::spawn_blocking(move || drop(guard)).await });
    }
    match result {
        Ok(driver::Exit::Rebooted) => {
            sd_notify("STOPPING=1\nSTATUS=rebooting");
            match s.os_backend {
                settings::OsBackend::Simulated => ExitCode::from(exit::SIMULATED_REBOOT),
                // logind is taking the host down.
                settings::OsBackend::RpmOstree => ExitCode::SUCCESS,
            }
        }
        Ok(driver::Exit::Cancelled) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {}", driver::error_chain(&e));
            ExitCode::from(app::exit_code_of(&e))
        }
    }
}

/// Starts the OS backend, says READY, and runs the agent until a reboot or
/// SIGTERM/SIGINT.
async fn serve(
    s: &settings::Settings,
    ident: &driver::Ident,
) -> Result<driver::Exit, driver::DriverError> {
    let cancel = CancellationToken::new();
    if let Err(e) = stop_on_signals(cancel.clone()) {
        tracing::warn!(error = %e, "no graceful stop on SIGTERM");
    }
    let notifier = Notifier::from_env;
    match s.os_backend {
        settings::OsBackend::Simulated => {
            let sim = os::Simulated {
                file: s.simulated_state_file.clone(),
                fail_versions: s.fail_versions.clone(),
                fail_boot_versions: s.fail_boot_versions.clone(),
                initial: os::Release {
                    version: "0".into(),
                    payload: "0".into(),
                },
            };
            sd_notify("READY=1");
            app::run_agent(s, ident, &sim, cancel, notifier()).await
        }
        settings::OsBackend::RpmOstree => {
            let opts = os::rpm_ostree::RpmOstreeOptions {
                allow_downgrade: s.allow_downgrade,
                ..Default::default()
            };
            let host = tokio::select! {
                r = os::rpm_ostree::RpmOstree::start(&os::dbus::Bus::System, opts) => r?,
                _ = cancel.cancelled() => return Ok(driver::Exit::Cancelled),
            };
            sd_notify("READY=1");
            app::run_agent(s, ident, &host, cancel, notifier()).await
        }
    }
}

/// On SIGTERM or SIGINT: `STOPPING=1`, then cancel the run. State is saved
/// as it changes, so nothing is lost; a held reboot lock stays held (the
/// next start resumes with it), a queued `Acquire` leaves the queue.
fn stop_on_signals(cancel: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping on a signal");
        sd_notify("STOPPING=1\nSTATUS=stopping");
        cancel.cancel();
    });
    Ok(())
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(exit::USAGE)
}

/// Sends an sd_notify message to `$NOTIFY_SOCKET`, if set.
fn sd_notify(msg: &str) {
    if let Some(n) = Notifier::from_env() {
        n.send(msg);
    }
}
