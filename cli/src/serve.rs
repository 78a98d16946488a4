//! `upshift serve <service>`: loads configuration (file, then flags and
//! env), reports every problem at once (exit 64), then hosts the service on
//! one listener until SIGINT/SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use upshift_common::config::{ConfigErrors, EX_USAGE, Loaded, ServerSettings, load_toml_partial};
use upshift_common::server::{BoundServer, shutdown_signal};
use upshift_common::telemetry::{TracingOptions, init_tracing};

pub mod graph;
pub mod lock;
pub mod policy;
pub mod telemetry;

/// The services.
#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// The graph service (default port 7401).
    Graph(graph::GraphArgs),
    /// The policy service: Cincinnati /v1/graph and pushed update hints
    /// (default port 7402).
    Policy(policy::PolicyArgs),
    /// The reboot lock service: FleetLock and gRPC (default port 7403).
    Lock(lock::LockArgs),
    /// The telemetry service: fleet view and automatic rollout halt
    /// (default port 7404).
    Telemetry(telemetry::TelemetryArgs),
}

/// Store flags of the stateful services (they override `[store]`).
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// Run on etcd at these endpoints (comma-separated URLs) instead of the
    /// embedded store in the data directory.
    #[arg(
        long,
        value_name = "URL,...",
        env = "UPSHIFT_ETCD",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
}

impl StoreArgs {
    /// Applies the flags to the file's `[store]` settings.
    pub fn merge_into(&self, store: &mut upshift_store::settings::StoreSettings) {
        if !self.etcd.is_empty() {
            store.use_etcd(self.etcd.clone());
        }
    }
}

/// Flags every `serve` subcommand has besides the common ones.
#[derive(Debug, Clone, Default, Args)]
pub struct HostArgs {
    /// Write the bound listen address to this file once listening (for
    /// harnesses using port 0).
    #[arg(long, value_name = "FILE")]
    pub addr_file: Option<PathBuf>,
    /// Load and validate the configuration (file, flags, env), print
    /// "configuration OK" with the listen address and exit 0 without
    /// starting (exit 64 when invalid).
    #[arg(long)]
    pub check_config: bool,
}

/// Runs a `serve` subcommand.
pub fn run(command: ServeCommand) -> ExitCode {
    match command {
        ServeCommand::Graph(args) => graph::run(args),
        ServeCommand::Policy(args) => policy::run(args),
        ServeCommand::Lock(args) => lock::run(args),
        ServeCommand::Telemetry(args) => telemetry::run(args),
    }
}

/// A `serve` subcommand's configuration being put together: the file (or
/// the defaults), then flags and checks, every error kept for the end.
#[derive(Debug)]
pub struct FileConfig<T> {
    /// The file's content without the keys it got wrong, or the defaults.
    pub config: T,
    /// Every problem so far.
    pub errors: ConfigErrors,
    /// Whether the file could be read at all; when it could not, checking
    /// the defaults in its place would only add noise.
    pub readable: bool,
    file: Loaded<T>,
}

impl<T: DeserializeOwned> FileConfig<T> {
    /// Reads `path` when given (every problem at once), else starts from
    /// `default()`.
    pub fn read(path: Option<&Path>, default: impl Fn() -> T) -> Self {
        let mut file = match path {
            Some(path) => load_toml_partial(path),
            None => Loaded::of(default()),
        };
        let errors = std::mem::take(&mut file.errors);
        let value = file.value.take();
        Self {
            readable: value.is_some(),
            config: value.unwrap_or_else(default),
            errors,
            file,
        }
    }

    /// Keeps the errors of a check, except those that only repeat a value
    /// the file got wrong (it was left out, so the check saw it missing)
    /// and those already recorded.
    pub fn check<R>(&mut self, result: Result<R, ConfigErrors>) -> Option<R> {
        match result {
            Ok(value) => Some(value),
            Err(errors) => {
                // Checks may overlap (a service's own check may cover [server] too).
                for error in self.file.validation_errors(errors).0 {
                    if !self.errors.0.contains(&error) {
                        self.errors.0.push(error);
                    }
                }
                None
            }
        }
    }

    /// Applies the common flags (`--listen`, `--data-dir`, ...) over the
    /// file's `[server]`, after the service's default port.
    pub fn merge_serve_args(
        &mut self,
        args: &upshift_common::config::ServeArgs,
        port: u16,
        server: impl Fn(&mut T) -> &mut ServerSettings,
    ) {
        apply_default_port(server(&mut self.config), args.config.as_deref(), port);
        apply_default_data_dir(
            server(&mut self.config),
            args.config.as_deref(),
            std::env::var_os("STATE_DIRECTORY"),
        );
        let merged = args.merge_into(server(&mut self.config).clone());
        if let Some(merged) = self.check(merged) {
            *server(&mut self.config) = merged;
        }
        let checked = server(&mut self.config).validate();
        self.check(checked);
    }
}

/// Prints configuration errors and returns the usage exit code.
pub fn config_failure(errors: &ConfigErrors) -> ExitCode {
    eprintln!("upshift: invalid configuration:");
    for error in errors.errors() {
        eprintln!("  {error}");
    }
    ExitCode::from(EX_USAGE as u8)
}

/// Uses the service's default port unless the config file sets
/// `[server] listen` (flags are merged afterwards and win over both).
pub fn apply_default_port(settings: &mut ServerSettings, config: Option<&Path>, port: u16) {
    if !file_sets_server_key(config, "listen") {
        settings.listen = SocketAddr::from(([0, 0, 0, 0], port));
    }
}

/// Whether the config file at `config` sets `[server] key`.
fn file_sets_server_key(config: Option<&Path>, key: &str) -> bool {
    config
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|table| table.get("server").and_then(|s| s.get(key)).is_some())
}

/// Uses systemd's `$STATE_DIRECTORY` (the first one, as set by
/// `StateDirectory=`) as the data directory unless the config file sets
/// `[server] data_dir` (flags are merged afterwards and win over both).
pub fn apply_default_data_dir(
    settings: &mut ServerSettings,
    config: Option<&Path>,
    state_directory: Option<std::ffi::OsString>,
) {
    let from_systemd = state_directory
        .as_deref()
        .and_then(|dirs| std::env::split_paths(dirs).next())
        .filter(|dir| !dir.as_os_str().is_empty());
    if let Some(dir) = from_systemd
        && !file_sets_server_key(config, "data_dir")
    {
        settings.data_dir = dir;
    }
}

/// Creates `dir` if needed and checks this user can write in it, so that a
/// run as an ordinary user without `--data-dir` says what to do instead of
/// failing later with a bare "Permission denied". `key` names the setting.
pub fn data_dir_ready(dir: &Path, key: &str) -> Result<(), ConfigErrors> {
    let probe = dir.join(format!(".upshift-write-check-{}", std::process::id()));
    let result = std::fs::create_dir_all(dir)
        .map_err(|e| ("cannot create the directory", e))
        .and_then(|()| {
            std::fs::write(&probe, b"").map_err(|e| ("cannot write in the directory", e))
        });
    let _ = std::fs::remove_file(&probe);
    let mut errors = ConfigErrors::new();
    if let Err((what, e)) = result {
        errors.push(
            key,
            format!(
                "{}: {what}: {e}; give a directory this user can write with \
                 --data-dir DIR (or [server] data_dir, UPSHIFT_DATA_DIR)",
                dir.display()
            ),
        );
    }
    errors.into_result(())
}

/// The directory the embedded store needs, and the setting that names it;
/// none on etcd.
pub fn store_dir(
    store: &upshift_store::settings::StoreSettings,
    data_dir: &Path,
) -> Option<(PathBuf, &'static str)> {
    use upshift_store::settings::Backend;
    if store.backend != Backend::Embedded {
        return None;
    }
    let key = if store.path.is_some() {
        "store.path"
    } else {
        "server.data_dir"
    };
    let path = store.embedded_path(data_dir);
    Some((path.parent().unwrap_or(data_dir).to_path_buf(), key))
}

/// Builds the runtime, sets up tracing, runs `body` (which binds and returns
/// the server) and serves until a shutdown signal. `dir` is the directory
/// the service writes to, checked first (not by `--check-config`, which
/// touches no disk): exit 64 when it is unusable.
pub fn host<F, Fut>(
    service: &str,
    settings: &ServerSettings,
    host: &HostArgs,
    dir: Option<(PathBuf, &str)>,
    body: F,
) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<BoundServer>>,
{
    if host.check_config {
        println!(
            "configuration OK: {service} would listen on {}",
            settings.listen
        );
        return ExitCode::SUCCESS;
    }
    if let Some((dir, key)) = dir
        && let Err(errors) = data_dir_ready(&dir, key)
    {
        return config_failure(&errors);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("upshift: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _tracing = init_tracing(&TracingOptions {
            log_format: settings.log_format,
            otlp_endpoint: settings.otlp_endpoint.clone(),
            service_name: format!("upshift-{service}"),
        })?;
        let server = body().await?;
        let addr = server.local_addr();
        tracing::info!(service, %addr, "listening (gRPC and HTTP)");
        if let Some(path) = &host.addr_file {
            std::fs::write(path, addr.to_string())?;
        }
        server.serve(shutdown_signal()).await?;
        tracing::info!(service, "stopped");
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("upshift serve {service}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests;
