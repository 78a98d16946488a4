//! Shared configuration conventions: TOML files, `[server]` section, flags and env overrides.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod parse;

pub use parse::{Loaded, load_toml, load_toml_partial, parse_toml, parse_toml_partial};

/// Exit code for configuration and usage errors (sysexits `EX_USAGE`).
pub const EX_USAGE: i32 = 64;

/// One configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File the problem was found in, if any.
    pub file: Option<PathBuf>,
    /// Dotted key path (`server.tls.cert`), or empty when not tied to a key.
    pub key: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            f.write_str(": ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every configuration problem found, reported together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem with `key`.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            file: None,
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    /// Appends all errors of `other`.
    pub fn extend(&mut self, other: ConfigErrors) {
        self.0.extend(other.0);
    }

    /// True when no problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The recorded problems.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// `Ok(value)` when empty, else `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Sets `file` on every error that has none.
    pub fn in_file(mut self, file: &Path) -> Self {
        for e in &mut self.0 {
            e.file.get_or_insert_with(|| file.to_path_buf());
        }
        self
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Prints every error to stderr and exits with [`EX_USAGE`]; for binaries only.
pub fn exit_on_config_errors<T>(result: Result<T, ConfigErrors>) -> T {
    match result {
        Ok(v) => v,
        Err(errs) => {
            for e in errs.errors() {
                eprintln!("config error: {e}");
            }
            std::process::exit(EX_USAGE)
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[server.tls]`: certificate, key and optional client CA for mTLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle used to verify (optional) client certificates.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The `[server]` section every service config has.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address of the single gRPC + HTTP listener.
    pub listen: SocketAddr,
    /// Directory for service state.
    pub data_dir: PathBuf,
    /// TLS; plaintext when absent.
    pub tls: Option<TlsSettings>,
    /// File holding the admin bearer token.
    pub admin_token_file: Option<PathBuf>,
    /// Admin bearer token given inline (prefer `admin_token_file`).
    pub admin_token: Option<String>,
    /// Client certificate subject CNs granted admin rights.
    pub admin_cert_names: Vec<String>,
    /// OTLP gRPC endpoint for trace export.
    pub otlp_endpoint: Option<String>,
    /// Log output format.
    pub log_format: LogFormat,
    /// Timeout for unary requests.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest accepted request body.
    pub max_request_bytes: usize,
    /// How long shutdown waits for connections to drain.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            data_dir: PathBuf::from("/var/lib/upshift"),
            tls: None,
            admin_token_file: None,
            admin_token: None,
            admin_cert_names: Vec::new(),
            otlp_endpoint: None,
            log_format: LogFormat::Text,
            request_timeout: Duration::from_secs(30),
            max_request_bytes: 4 << 20,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServerSettings {
    /// The admin credentials these settings configure: the token (inline or
    /// read from `admin_token_file`, surrounding whitespace trimmed) and the
    /// admin certificate names. Without either, admin calls are refused.
    pub fn admin_auth(&self) -> Result<crate::auth::AdminAuth, ConfigErrors> {
        let token = match (&self.admin_token, &self.admin_token_file) {
            (Some(token), _) => Some(token.trim().to_string()),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) if text.trim().len() >= 16 => Some(text.trim().to_string()),
                Ok(_) => {
                    let mut errs = ConfigErrors::new();
                    errs.push(
                        "server.admin_token_file",
                        format!("{}: token must be at least 16 characters", path.display()),
                    );
                    return Err(errs);
                }
                Err(e) => {
                    let mut errs = ConfigErrors::new();
                    errs.push(
                        "server.admin_token_file",
                        format!("{}: {e}", path.display()),
                    );
                    return Err(errs);
                }
            },
            (None, None) => None,
        };
        Ok(crate::auth::AdminAuth::new(
            token,
            self.admin_cert_names.clone(),
        ))
    }

    /// Checks the settings, returning every problem found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = ConfigErrors::new();
        if self.admin_token.is_some() && self.admin_token_file.is_some() {
            errs.push(
                "server.admin_token",
                "set either admin_token or admin_token_file, not both",
            );
        }
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.trim().len() < 16)
        {
            errs.push("server.admin_token", "token must be at least 16 characters");
        }
        if self.request_timeout.is_zero() {
            errs.push("server.request_timeout", "must be greater than zero");
        }
        if self.max_request_bytes == 0 {
            errs.push("server.max_request_bytes", "must be greater than zero");
        }
        if let Some(ep) = &self.otlp_endpoint
            && !(ep.starts_with("http://") || ep.starts_with("https://"))
        {
            errs.push(
                "server.otlp_endpoint",
                format!("`{ep}` must be an http:// or https:// URL"),
            );
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("cert", Some(&tls.cert)),
                ("key", Some(&tls.key)),
                ("client_ca", tls.client_ca.as_ref()),
            ] {
                if let Some(p) = path
                    && !p.is_file()
                {
                    errs.push(
                        format!("server.tls.{key}"),
                        format!("file {} not found", p.display()),
                    );
                }
            }
        }
        if let Some(p) = &self.admin_token_file
            && !p.is_file()
        {
            errs.push(
                "server.admin_token_file",
                format!("file {} not found", p.display()),
            );
        }
        errs.into_result(())
    }

    /// Reads the admin token from `admin_token` or `admin_token_file`.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigErrors> {
        if let Some(t) = &self.admin_token {
            return Ok(Some(t.trim().to_string()));
        }
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Some(t.trim().to_string())),
            Err(e) => {
                let mut errs = ConfigErrors::new();
                errs.push(
                    "server.admin_token_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                Err(errs)
            }
        }
    }
}

/// Common `serve` flags; each also readable from an `UPSHIFT_*` env var.
/// Values are checked by [`ServeArgs::merge_into`], not by clap, so a bad
/// one is reported together with every other configuration error.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "UPSHIFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address (gRPC and HTTP).
    #[arg(long, env = "UPSHIFT_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// State directory (default: `$STATE_DIRECTORY` under systemd, else
    /// /var/lib/upshift).
    #[arg(long, env = "UPSHIFT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain (enables TLS with --tls-key).
    #[arg(long, env = "UPSHIFT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "UPSHIFT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates (mTLS).
    #[arg(long, env = "UPSHIFT_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// File holding the admin bearer token.
    #[arg(long, env = "UPSHIFT_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// OTLP gRPC endpoint for traces.
    #[arg(long, env = "UPSHIFT_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Log format.
    #[arg(long, env = "UPSHIFT_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<String>,
}

impl ServeArgs {
    /// Overrides `file` settings with the flags and env vars given.
    pub fn merge_into(&self, mut s: ServerSettings) -> Result<ServerSettings, ConfigErrors> {
        let mut errs = ConfigErrors::new();
        if let Some(v) = &self.listen {
            match v.parse() {
                Ok(addr) => s.listen = addr,
                Err(_) => errs.push(
                    "--listen",
                    format!("{v:?} is not an address like 0.0.0.0:7401 or [::]:7401"),
                ),
            }
        }
        if let Some(v) = &self.data_dir {
            s.data_dir = v.clone();
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let client_ca = s.tls.as_ref().and_then(|t| t.client_ca.clone());
                s.tls = Some(TlsSettings {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca,
                });
            }
            (Some(_), None) | (None, Some(_)) => {
                errs.push("--tls-cert/--tls-key", "both must be given together");
            }
            (None, None) => {}
        }
        if let Some(ca) = &self.tls_client_ca {
            match &mut s.tls {
                Some(t) => t.client_ca = Some(ca.clone()),
                None => errs.push("--tls-client-ca", "requires TLS (--tls-cert and --tls-key)"),
            }
        }
        if let Some(v) = &self.admin_token_file {
            s.admin_token_file = Some(v.clone());
            s.admin_token = None;
        }
        if let Some(v) = &self.otlp_endpoint {
            s.otlp_endpoint = Some(v.clone());
        }
        if let Some(v) = &self.log_format {
            match <LogFormat as clap::ValueEnum>::from_str(v, true) {
                Ok(format) => s.log_format = format,
                Err(_) => errs.push("--log-format", format!("{v:?} is not `text` or `json`")),
            }
        }
        errs.into_result(s)
    }
}

#[cfg(test)]
mod tests;
