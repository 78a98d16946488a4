//! `upshift-agent` binary: `[--root DIR] config show | run`.

use std::path::PathBuf;
use std::process::ExitCode;

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
    match rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["config", "show"] => match upshift_agent::config::load(&root)
            .and_then(|m| upshift_agent::settings::Settings::validate(&m, &root).map(|_| m))
        {
            Ok(m) => {
                print!("{}", m.show());
                ExitCode::SUCCESS
            }
            Err(errs) => {
                for e in errs {
                    eprintln!("config error: {e}");
                }
                ExitCode::from(64)
            }
        },
        ["run"] => run(&root),
        _ => usage(),
    }
}

fn run(root: &std::path::Path) -> ExitCode {
    use upshift_agent::{config, identity, os, settings};
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let s = match config::load(root).and_then(|m| settings::Settings::validate(&m, root)) {
        Ok(s) => s,
        Err(errs) => {
            for e in errs {
                eprintln!("config error: {e}");
            }
            return ExitCode::from(64);
        }
    };
    let node_uuid = match &s.node_uuid {
        Some(u) => u.clone(),
        None => {
            let mid = std::fs::read_to_string(root.join("etc/machine-id")).unwrap_or_default();
            match identity::app_specific_id(&mid, identity::ZINCATI_APP_ID) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("identity: {e} (from {}/etc/machine-id)", root.display());
                    return ExitCode::from(78);
                }
            }
        }
    };
    let platform = s.platform.clone().unwrap_or_else(|| {
        std::fs::read_to_string(root.join("proc/cmdline"))
            .ok()
            .and_then(|c| identity::platform_from_cmdline(&c))
            .unwrap_or_else(|| "metal".into())
    });
    if s.os_backend != settings::OsBackend::Simulated {
        eprintln!("os.backend = \"rpm-ostree\" is not implemented yet; use \"simulated\"");
        return ExitCode::from(78);
    }
    let sim = os::Simulated {
        file: s.simulated_state_file.clone(),
        fail_versions: s.fail_versions.clone(),
        initial: os::Release {
            version: "0".into(),
            payload: "0".into(),
        },
    };
    let ident = upshift_agent::driver::Ident {
        node_uuid,
        platform,
        motd_path: Some(root.join("run/motd.d/85-upshift-deadend.motd")),
    };
    sd_notify("READY=1\nSTATUS=running");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match rt.block_on(upshift_agent::driver::run(
        &s,
        &ident,
        &sim,
        &upshift_common::clock::SystemClock,
    )) {
        Ok(upshift_agent::driver::Exit::Rebooted) => {
            sd_notify("STOPPING=1\nSTATUS=rebooting");
            ExitCode::from(os::EXIT_SIMULATED_REBOOT)
        }
        Err(e) => {
            eprintln!("agent: {e}");
            ExitCode::from(70)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: upshift-agent [--root DIR] (config show | run)");
    ExitCode::from(64)
}

/// Sends an sd_notify message to `$NOTIFY_SOCKET` (path or `@abstract`).
fn sd_notify(msg: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    if let (Ok(sock), Ok(addr)) = (UnixDatagram::unbound(), addr) {
        let _ = sock.send_to_addr(msg.as_bytes(), &addr);
    }
}
