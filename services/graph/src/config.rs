//! Graph service configuration: where each stream's metadata comes from.
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:7401"
//!
//! [streams.stable]
//! dir = "/srv/fedora-coreos-streams/stable"   # holds releases.json + updates.json
//! architectures = ["x86_64", "aarch64"]          # default: every one in the index
//!
//! [streams.testing]
//! releases = "https://example.org/testing/releases.json"
//! updates = "https://example.org/testing/updates.json"
//! poll_interval = "2m"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use upshift_common::config::{ConfigErrors, ServerSettings};

/// Default port of the graph service.
pub const DEFAULT_PORT: u16 = 7401;

/// The whole graph service configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// Listener, TLS, telemetry.
    #[serde(default)]
    pub server: ServerSettings,
    /// Sources by stream name.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamSource>,
    /// Quiet time after a file change before reloading.
    #[serde(default = "default_debounce", with = "humantime_serde")]
    pub debounce: Duration,
}

/// Where one stream's `releases.json` and `updates.json` come from.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamSource {
    /// A directory holding `releases.json` and `updates.json` (watched).
    pub dir: Option<PathBuf>,
    /// URL of `releases.json` (polled).
    pub releases: Option<String>,
    /// URL of `updates.json` (polled).
    pub updates: Option<String>,
    /// Architectures to build graphs for; empty means every one in the index.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Poll interval of URL sources.
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
}

fn default_debounce() -> Duration {
    Duration::from_millis(250)
}

/// Default poll interval of URL sources.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// A validated source location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A watched directory.
    Dir(PathBuf),
    /// Polled URLs.
    Http {
        /// `releases.json` URL.
        releases: url::Url,
        /// `updates.json` URL.
        updates: url::Url,
        /// Poll interval.
        interval: Duration,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(dir) => write!(f, "{}", dir.display()),
            Location::Http {
                releases, updates, ..
            } => write!(f, "{releases} + {updates}"),
        }
    }
}

/// A validated stream source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidStream {
    /// Stream name.
    pub name: String,
    /// Where its metadata is.
    pub location: Location,
    /// Architectures to build (empty: all in the index).
    pub architectures: Vec<String>,
}

impl GraphConfig {
    /// Checks every stream, reporting all problems at once.
    pub fn validate(&self) -> Result<Vec<ValidStream>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut streams = Vec::new();
        if self.streams.is_empty() {
            errors.push(
                "streams",
                "no stream configured: add [streams.NAME] or pass --metadata",
            );
        }
        for (name, source) in &self.streams {
            match validate_stream(name, source) {
                Ok(stream) => streams.push(stream),
                Err(msg) => errors.push(format!("streams.{name}"), msg),
            }
        }
        errors.into_result(streams)
    }

    /// Adds the streams named by a `--metadata DIR|URL` flag: a directory
    /// holding one subdirectory per stream, or a base URL under which
    /// `<stream>/releases.json` and `<stream>/updates.json` live for each of
    /// `url_streams`.
    pub fn add_metadata_flag(&mut self, value: &str, url_streams: &[String]) -> Result<(), String> {
        if value.starts_with("http://") || value.starts_with("https://") {
            let base = if value.ends_with('/') {
                value.to_string()
            } else {
                format!("{value}/")
            };
            for stream in url_streams {
                self.streams.insert(
                    stream.clone(),
                    StreamSource {
                        releases: Some(format!("{base}{stream}/releases.json")),
                        updates: Some(format!("{base}{stream}/updates.json")),
                        ..StreamSource::default()
                    },
                );
            }
            return Ok(());
        }
        let dir = Path::new(value);
        let found = discover_stream_dirs(dir)?;
        if found.is_empty() {
            return Err(format!(
                "{value}: no subdirectory holds both releases.json and updates.json"
            ));
        }
        for (stream, path) in found {
            self.streams.insert(
                stream,
                StreamSource {
                    dir: Some(path),
                    ..StreamSource::default()
                },
            );
        }
        Ok(())
    }
}

/// Lists `(stream, dir)` for each subdirectory of `root` holding both files.
pub fn discover_stream_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(root)
        .map_err(|e| format!("{}: cannot read directory: {e}", root.display()))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.join("releases.json").is_file()
            && path.join("updates.json").is_file()
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            found.push((name.to_string(), path));
        }
    }
    found.sort();
    Ok(found)
}

fn validate_stream(name: &str, source: &StreamSource) -> Result<ValidStream, String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!("invalid stream name {name:?}"));
    }
    let location = match (&source.dir, &source.releases, &source.updates) {
        (Some(dir), None, None) => Location::Dir(dir.clone()),
        (None, Some(releases), Some(updates)) => Location::Http {
            releases: parse_url(releases)?,
            updates: parse_url(updates)?,
            interval: source.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL),
        },
        (None, None, None) => {
            return Err("set either `dir` or both `releases` and `updates`".into());
        }
        (Some(_), _, _) => return Err("`dir` and URLs are mutually exclusive".into()),
        _ => return Err("URL sources need both `releases` and `updates`".into()),
    };
    if let Location::Http { interval, .. } = &location
        && interval.is_zero()
    {
        return Err("poll_interval must be positive".into());
    }
    Ok(ValidStream {
        name: name.to_string(),
        location,
        architectures: source.architectures.clone(),
    })
}

fn parse_url(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("invalid URL {raw:?}: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("unsupported URL scheme {other:?} in {raw:?}")),
    }
}
