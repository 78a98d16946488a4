//! Shared configuration conventions: TOML files, `[server]` section, flags and env overrides.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

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

/// Reads and deserializes a TOML file; every unknown key is reported with its path and line.
pub fn load_toml<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, ConfigErrors> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errs = ConfigErrors::new();
        errs.push("", format!("cannot read config file: {e}"));
        errs.in_file(path)
    })?;
    parse_toml(&text).map_err(|e| e.in_file(path))
}

/// Deserializes TOML text, collecting all unknown keys before reporting other errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    let mut errs = ConfigErrors::new();
    match toml::from_str::<T>(text) {
        Ok(v) => Ok(v),
        Err(e) => {
            errs.0.push(toml_error(text, &e));
            // Keep looking for further unknown keys by removing the reported one.
            collect_more_unknown::<T>(text, &mut errs);
            Err(errs)
        }
    }
}

/// Repeatedly removes the reported unknown key and re-parses, so all unknown keys show up at once.
fn collect_more_unknown<T: DeserializeOwned>(text: &str, errs: &mut ConfigErrors) {
    let mut current = text.to_string();
    for _ in 0..64 {
        let Some(last) = errs.0.last() else { return };
        if !last.message.starts_with("unknown field") {
            return;
        }
        let Some(line) = last.line else { return };
        // Blank the offending line (keys are one per line in our configs).
        let mut lines: Vec<&str> = current.lines().collect();
        if line == 0 || line > lines.len() {
            return;
        }
        lines[line - 1] = "";
        current = lines.join("\n");
        match toml::from_str::<T>(&current) {
            Ok(_) => return,
            Err(e) => {
                let next = toml_error(&current, &e);
                if next.line == Some(line) {
                    return;
                }
                errs.0.push(next);
            }
        }
    }
}

fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let key = line
        .and_then(|l| text.lines().nth(l - 1))
        .map(|l| l.split('=').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let message = e.message().trim().to_string();
    let key = if message.starts_with("unknown field") {
        section_path(text, line.unwrap_or(1), &key)
    } else {
        key
    };
    ConfigError {
        file: None,
        key,
        line,
        message,
    }
}

/// Prefixes `key` with the `[table]` header in force at `line`.
fn section_path(text: &str, line: usize, key: &str) -> String {
    let header = text
        .lines()
        .take(line.saturating_sub(1))
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .map(|s| s.trim_matches(['[', ']']).trim().to_string())
        })
        .last();
    match header {
        Some(h) if !key.starts_with('[') => format!("{h}.{key}"),
        _ => key.trim_matches(['[', ']']).to_string(),
    }
}

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
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "UPSHIFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address (gRPC and HTTP).
    #[arg(long, env = "UPSHIFT_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// State directory.
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
    #[arg(long, env = "UPSHIFT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// Overrides `file` settings with the flags and env vars given.
    pub fn merge_into(&self, mut s: ServerSettings) -> Result<ServerSettings, ConfigErrors> {
        let mut errs = ConfigErrors::new();
        if let Some(v) = self.listen {
            s.listen = v;
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
        if let Some(v) = self.log_format {
            s.log_format = v;
        }
        errs.into_result(s)
    }
}

#[cfg(test)]
mod tests;
