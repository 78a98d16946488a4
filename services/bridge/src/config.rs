//! Bridge configuration, in two stages: the raw TOML file ([`BridgeConfig`],
//! every field optional, unknown keys rejected) and the validated
//! [`BridgeSettings`], with every problem collected at once.
//!
//! ```toml
//! [server]                       # upshift-common: listen, log_format, ...
//! listen = "0.0.0.0:9598"
//!
//! [defaults]                     # apply to every selector that does not set them
//! connect_timeout = "2s"
//! read_timeout = "5s"
//! total_timeout = "8s"
//! max_bytes = 16777216
//!
//! [selectors.agent]
//! kind = "uds"
//! path = "/run/upshift/agent-metrics.sock"
//!
//! [selectors.textfile]
//! kind = "file"
//! path = "/var/lib/node_exporter/textfile/upshift.prom"
//!
//! [selectors.local]
//! kind = "http"
//! url = "http://127.0.0.1:9100/metrics"
//!
//! [selectors.podman]
//! kind = "http"
//! unix_socket = "/run/exporter.sock"
//! path = "/metrics"
//!
//! [selectors.dbus]
//! kind = "dbus"
//! bus = "system"                 # "system", "session" or a D-Bus address
//! destination = "org.example.Exporter"
//! path = "/org/example/Exporter"
//! interface = "org.example.Exporter1"
//! method = "Metrics"
//! ```

mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use upshift_common::config::{ConfigErrors, ServerSettings, load_toml};

use crate::source::Source;

pub use validate::valid_selector_name;

/// Default port of the bridge.
pub const DEFAULT_PORT: u16 = 9598;

/// Default connect (or file open) timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default longest wait for the next bytes (or the D-Bus reply).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline of a whole scrape; below Prometheus' default 10 s scrape timeout.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(8);
/// Default size limit of one exposition (16 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Listener, TLS, log format, request timeout.
    #[serde(default)]
    pub server: ServerSettings,
    /// Limits applied to every selector that does not set its own.
    #[serde(default)]
    pub defaults: LimitsConfig,
    /// The sources, by selector name.
    #[serde(default)]
    pub selectors: BTreeMap<String, SelectorConfig>,
}

/// Timeouts, size limit and content type, per selector or in `[defaults]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Deadline to connect to the source (for files: to open it).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest wait for the next bytes from the source (D-Bus: for the reply).
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    /// Deadline of the whole scrape.
    #[serde(default, with = "humantime_serde")]
    pub total_timeout: Option<Duration>,
    /// Largest exposition accepted, in bytes.
    pub max_bytes: Option<u64>,
    /// `Content-Type` of the answer, overriding the detected one.
    pub content_type: Option<String>,
}

/// One `[selectors.NAME]` table as written; checked per kind by [`BridgeConfig::validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorConfig {
    /// `uds`, `file`, `http` or `dbus`.
    pub kind: Option<String>,
    /// Socket or file path (`uds`, `file`), HTTP request path (`http` with
    /// `unix_socket`) or D-Bus object path (`dbus`).
    pub path: Option<String>,
    /// `http`: URL on localhost or a loopback address.
    pub url: Option<String>,
    /// `http`: Unix socket speaking HTTP.
    pub unix_socket: Option<PathBuf>,
    /// `dbus`: `system`, `session` or a D-Bus address.
    pub bus: Option<String>,
    /// `dbus`: bus name of the service.
    pub destination: Option<String>,
    /// `dbus`: interface of the method.
    pub interface: Option<String>,
    /// `dbus`: method returning the exposition (`s` or `ay`).
    pub method: Option<String>,
    /// Deadline to connect (default from `[defaults]`).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest wait for the next bytes (default from `[defaults]`).
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    /// Deadline of the whole scrape (default from `[defaults]`).
    #[serde(default, with = "humantime_serde")]
    pub total_timeout: Option<Duration>,
    /// Largest exposition accepted (default from `[defaults]`).
    pub max_bytes: Option<u64>,
    /// `Content-Type` of the answer (default from `[defaults]`, else detected).
    pub content_type: Option<String>,
}

impl SelectorConfig {
    /// This selector's limits, each falling back to `defaults`.
    pub fn limits_over(&self, defaults: &LimitsConfig) -> LimitsConfig {
        LimitsConfig {
            connect_timeout: self.connect_timeout.or(defaults.connect_timeout),
            read_timeout: self.read_timeout.or(defaults.read_timeout),
            total_timeout: self.total_timeout.or(defaults.total_timeout),
            max_bytes: self.max_bytes.or(defaults.max_bytes),
            content_type: self
                .content_type
                .clone()
                .or_else(|| defaults.content_type.clone()),
        }
    }
}

/// Validated timeouts and size limit of one selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deadline to connect (or open).
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes.
    pub read_timeout: Duration,
    /// Deadline of the whole scrape.
    pub total_timeout: Duration,
    /// Largest exposition accepted, in bytes.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// One validated selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Its name (`?selector=NAME`).
    pub name: String,
    /// Where the exposition comes from.
    pub source: Source,
    /// Timeouts and size limit.
    pub limits: Limits,
    /// Configured `Content-Type`, overriding the detected one.
    pub content_type: Option<http::HeaderValue>,
}

/// The validated bridge settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeSettings {
    /// Selectors by name.
    pub selectors: BTreeMap<String, Selector>,
}

impl BridgeConfig {
    /// Validates the selectors and `[defaults]`, reporting every problem.
    ///
    /// `[server]` is checked separately (`ServerSettings::validate`), after
    /// flags are merged into it.
    pub fn validate(&self) -> Result<BridgeSettings, ConfigErrors> {
        validate::validate(self)
    }
}

/// Reads `path` and validates it whole (`[server]` included); every error
/// names the file and the key.
pub fn load(path: &Path) -> Result<(BridgeConfig, BridgeSettings), ConfigErrors> {
    let config: BridgeConfig = load_toml(path)?;
    let mut errors = ConfigErrors::new();
    if let Err(e) = config.server.validate() {
        errors.extend(e);
    }
    match config.validate() {
        Ok(settings) => errors.into_result((config, settings)),
        Err(e) => {
            errors.extend(e);
            Err(errors)
        }
    }
    .map_err(|e| e.in_file(path))
}

#[cfg(test)]
mod tests;
