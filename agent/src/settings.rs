//! Stage 3: validated, typed settings from [`MergedInputs`].

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use upshift_common::window::{Window, WindowConfig};

use crate::config::{ConfigError, MergedInputs};
use crate::identity;

/// Where hints come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintBackend {
    Stream,
    Cincinnati,
}

/// Reboot lock strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Grpc,
    Fleetlock,
    Immediate,
}

/// OS backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsBackend {
    RpmOstree,
    Simulated,
}

/// Validated agent settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub group: String,
    pub rollout_wariness: Option<f64>,
    pub stream: String,
    pub basearch: String,
    pub platform: Option<String>,
    pub node_uuid: Option<String>,
    pub hint_backend: HintBackend,
    pub policy_url: Option<String>,
    pub cincinnati_url: Option<String>,
    pub poll_interval: Duration,
    pub allow_downgrade: bool,
    pub lock_kind: LockKind,
    pub lock_url: Option<String>,
    pub lock_ttl: Duration,
    /// Maintenance windows (`[[updates.windows]]`); empty: reboot any time.
    pub windows: Vec<Window>,
    pub max_postpone: Duration,
    /// Text written to logged-in users' terminals while a reboot is postponed.
    pub session_message: String,
    pub telemetry_url: Option<String>,
    /// TLS material for `https://` service URLs (`[tls]`).
    pub tls: Option<crate::net::ClientTls>,
    /// Heartbeat of telemetry reports when nothing changes.
    pub telemetry_interval: Duration,
    /// OTLP gRPC collector for the agent's spans; no export when unset.
    pub otlp_endpoint: Option<String>,
    pub state_dir: PathBuf,
    /// Directory of the metrics and control sockets (default `<root>/run/upshift`).
    pub run_dir: PathBuf,
    pub os_backend: OsBackend,
    pub simulated_state_file: PathBuf,
    pub fail_versions: Vec<String>,
    /// Simulated backend: versions whose boot fails (the reboot rolls back).
    pub fail_boot_versions: Vec<String>,
    /// Poll interval in whole seconds, never zero.
    pub poll_secs: NonZeroU64,
}

struct V<'a> {
    m: &'a MergedInputs,
    root: &'a Path,
    errors: Vec<ConfigError>,
}

impl V<'_> {
    /// A bad value: names the fragment that set `key` (none when unset).
    fn err(&mut self, key: &str, msg: impl Into<String>) {
        let file = self.m.values.get(key).map(|s| s.source.clone());
        self.errors.push(ConfigError {
            file,
            key: Some(key.into()),
            message: msg.into(),
        });
    }
    /// `key` is unset but `because` (a key set to `value`) needs it: says
    /// where `because` comes from and where to set `key`, with an example.
    fn required(&mut self, key: &str, because: &str, value: &str, example: &str) {
        let from = match self.m.values.get(because) {
            Some(s) => format!(" (set in {})", s.source.display()),
            None => " (the default)".into(),
        };
        let (section, name) = key.split_once('.').unwrap_or(("", key));
        let dir = self.root.join(crate::config::FRAGMENT_DIRS[1]);
        let message = format!(
            "not set; required because {because} = \"{value}\"{from}. Set it in a \
             fragment in {dir}/, e.g. {dir}/50-{section}.toml containing:\n  [{section}]\n  \
             {name} = \"{example}\"",
            dir = dir.display(),
        );
        self.errors.push(ConfigError {
            file: None,
            key: Some(key.into()),
            message,
        });
    }
    fn str(&mut self, key: &str) -> Option<String> {
        let v = self.m.values.get(key)?;
        match v.value.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.err(key, "expected a string");
                None
            }
        }
    }
    fn dur(&mut self, key: &str, default: Duration) -> Duration {
        match self.str(key) {
            None => default,
            Some(s) => humantime::parse_duration(&s).unwrap_or_else(|e| {
                self.err(key, format!("bad duration {s:?}: {e}"));
                default
            }),
        }
    }
    /// Reads a PEM file named by `key` (under `root`).
    fn pem(&mut self, key: &str, root: &Path) -> Option<String> {
        let p = self.str(key)?;
        let path = root.join(p.trim_start_matches('/'));
        match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }
    fn tls(&mut self, root: &Path) -> Option<crate::net::ClientTls> {
        let ca_pem = self.pem("tls.ca_file", root);
        let cert = self.pem("tls.cert_file", root);
        let key = self.pem("tls.key_file", root);
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                self.err(
                    "tls.cert_file",
                    "tls.cert_file and tls.key_file go together",
                );
                None
            }
        };
        (ca_pem.is_some() || identity.is_some())
            .then_some(crate::net::ClientTls { ca_pem, identity })
    }
    fn windows(&mut self, key: &str) -> Vec<Window> {
        let Some(v) = self.m.values.get(key) else {
            return Vec::new();
        };
        let Some(items) = v.value.as_array() else {
            self.err(key, "expected an array of tables ([[updates.windows]])");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let name = format!("{key}[{i}]");
            let parsed: Result<WindowConfig, _> = item.clone().try_into();
            match parsed {
                Err(e) => self.err(key, format!("{name}: {}", e.message())),
                Ok(c) => {
                    let mut errs = upshift_common::config::ConfigErrors::new();
                    match c.validate(&name, &mut errs) {
                        Some(w) => out.push(w),
                        None => {
                            for e in errs.errors() {
                                self.err(key, format!("{}: {}", e.key, e.message));
                            }
                        }
                    }
                }
            }
        }
        out
    }
    /// An `http://` or `https://` collector URL, as the services take it.
    fn otlp_endpoint(&mut self, key: &str) -> Option<String> {
        let url = self.str(key)?;
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok || tonic::transport::Endpoint::from_shared(url.clone()).is_err() {
            self.err(key, format!("{url:?} must be an http:// or https:// URL"));
            return None;
        }
        Some(url)
    }
    fn strings(&mut self, key: &str) -> Vec<String> {
        let Some(s) = self.m.values.get(key) else {
            return Vec::new();
        };
        match s.value.as_array() {
            Some(a) if a.iter().all(|x| x.is_str()) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => {
                self.err(key, "expected an array of strings");
                Vec::new()
            }
        }
    }
    /// The service URLs the chosen backends need (the hint source's only
    /// when `updates.backend` was set: else it follows the URLs given).
    fn required_urls(&mut self, s: &Settings, explicit_backend: bool) {
        match s.hint_backend {
            _ if !explicit_backend => {}
            HintBackend::Stream if s.policy_url.is_none() => self.required(
                "updates.policy_url",
                "updates.backend",
                "stream",
                "http://policy.example.com:7402",
            ),
            HintBackend::Cincinnati if s.cincinnati_url.is_none() => self.required(
                "updates.cincinnati_url",
                "updates.backend",
                "cincinnati",
                "https://updates.coreos.fedoraproject.org",
            ),
            _ => {}
        }
        let kind = match s.lock_kind {
            LockKind::Grpc => "grpc",
            LockKind::Fleetlock => "fleetlock",
            LockKind::Immediate => return,
        };
        if s.lock_url.is_none() {
            self.required(
                "lock.url",
                "lock.kind",
                kind,
                "http://lock.example.com:7403",
            );
        }
    }
    fn choice<T: Copy>(&mut self, key: &str, opts: &[(&str, T)], default: T) -> T {
        match self.str(key) {
            None => default,
            Some(s) => match opts.iter().find(|(n, _)| *n == s) {
                Some((_, t)) => *t,
                None => {
                    let names: Vec<_> = opts.iter().map(|(n, _)| *n).collect();
                    self.err(key, format!("{s:?} is not one of {names:?}"));
                    default
                }
            },
        }
    }
}

impl Settings {
    /// Validates merged inputs; every problem is reported.
    pub fn validate(m: &MergedInputs, root: &Path) -> Result<Settings, Vec<ConfigError>> {
        let mut v = V {
            m,
            root,
            errors: Vec::new(),
        };
        let group = v.str("identity.group").unwrap_or_else(|| "default".into());
        if identity::validate_group(&group).is_err() {
            v.err("identity.group", "must match ^[a-zA-Z0-9.-]+$");
        }
        let rollout_wariness = match m.values.get("identity.rollout_wariness") {
            None => None,
            Some(s) => match s.value.as_float() {
                Some(f) if (0.0..=1.0).contains(&f) => Some(f),
                _ => {
                    v.err(
                        "identity.rollout_wariness",
                        "expected a float in [0.0, 1.0]",
                    );
                    None
                }
            },
        };
        let allow_downgrade = match m.values.get("updates.allow_downgrade") {
            None => false,
            Some(s) => s.value.as_bool().unwrap_or_else(|| {
                v.err("updates.allow_downgrade", "expected a boolean");
                false
            }),
        };
        let fail_versions = v.strings("os.fail_versions");
        let fail_boot_versions = v.strings("os.fail_boot_versions");
        let poll_interval = v.dur("updates.poll_interval", Duration::from_secs(300));
        let poll_secs = NonZeroU64::new(poll_interval.as_secs()).unwrap_or_else(|| {
            v.err("updates.poll_interval", "must be at least 1s");
            NonZeroU64::MIN
        });
        let state_dir = v
            .str("state.state_dir")
            .map(|s| root.join(s.trim_start_matches('/')))
            .unwrap_or_else(|| root.join("var/lib/upshift"));
        let run_dir = v
            .str("state.run_dir")
            .map(|s| root.join(s.trim_start_matches('/')))
            .unwrap_or_else(|| root.join("run/upshift"));
        let policy_url = v.str("updates.policy_url");
        // Without an explicit backend, stream when a policy URL is given.
        let default_backend = if policy_url.is_some() {
            HintBackend::Stream
        } else {
            HintBackend::Cincinnati
        };
        let explicit_backend = m.values.contains_key("updates.backend");
        let simulated_state_file = v
            .str("os.simulated_state_file")
            .map(|s| root.join(s.trim_start_matches('/')))
            .unwrap_or_else(|| state_dir.join("simulated-os.json"));
        let s = Settings {
            group,
            rollout_wariness,
            stream: v.str("identity.stream").unwrap_or_else(|| "stable".into()),
            basearch: v
                .str("identity.basearch")
                .unwrap_or_else(|| std::env::consts::ARCH.into()),
            platform: v.str("identity.platform"),
            node_uuid: v.str("identity.node_uuid"),
            hint_backend: v.choice(
                "updates.backend",
                &[
                    ("stream", HintBackend::Stream),
                    ("cincinnati", HintBackend::Cincinnati),
                ],
                default_backend,
            ),
            policy_url,
            cincinnati_url: v.str("updates.cincinnati_url"),
            poll_interval,
            allow_downgrade,
            lock_kind: v.choice(
                "lock.kind",
                &[
                    ("grpc", LockKind::Grpc),
                    ("fleetlock", LockKind::Fleetlock),
                    ("immediate", LockKind::Immediate),
                ],
                LockKind::Immediate,
            ),
            lock_url: v.str("lock.url"),
            lock_ttl: v.dur("lock.ttl", Duration::from_secs(600)),
            windows: v.windows("updates.windows"),
            max_postpone: v.dur("sessions.max_postpone", Duration::from_secs(3600)),
            session_message: v.str("sessions.message").unwrap_or_else(|| {
                "upshift-agent: an OS update is staged; this host reboots when you log out \
                 or when the postponement limit is reached."
                    .into()
            }),
            telemetry_url: v.str("telemetry.url"),
            telemetry_interval: v.dur("telemetry.interval", Duration::from_secs(60)),
            otlp_endpoint: v.otlp_endpoint("telemetry.otlp_endpoint"),
            tls: v.tls(root),
            run_dir,
            os_backend: v.choice(
                "os.backend",
                &[
                    ("rpm-ostree", OsBackend::RpmOstree),
                    ("simulated", OsBackend::Simulated),
                ],
                OsBackend::RpmOstree,
            ),
            state_dir,
            simulated_state_file,
            fail_versions,
            fail_boot_versions,
            poll_secs,
        };
        v.required_urls(&s, explicit_backend);
        if s.telemetry_interval.is_zero() {
            v.err("telemetry.interval", "must be at least 1s");
        }
        if v.errors.is_empty() {
            Ok(s)
        } else {
            Err(v.errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Sourced, load};

    fn merged(pairs: &[(&str, toml::Value)]) -> MergedInputs {
        let mut m = MergedInputs::default();
        for (k, v) in pairs {
            m.values.insert(
                (*k).into(),
                Sourced {
                    value: v.clone(),
                    source: "/f.toml".into(),
                },
            );
        }
        m
    }

    #[test]
    fn defaults() {
        let s = Settings::validate(&MergedInputs::default(), Path::new("/r")).unwrap();
        assert_eq!(s.lock_kind, LockKind::Immediate);
        assert_eq!(s.state_dir, PathBuf::from("/r/var/lib/upshift"));
        assert_eq!(s.poll_interval, Duration::from_secs(300));
        assert_eq!(s.otlp_endpoint, None, "no span export unless configured");
    }

    #[test]
    fn bad_values_all_reported_with_file_and_key() {
        let m = merged(&[
            ("identity.group", "a b".into()),
            ("identity.rollout_wariness", 2.0.into()),
            ("updates.poll_interval", "soon".into()),
            ("lock.kind", "grpc".into()),
            ("os.backend", "zypper".into()),
            ("telemetry.otlp_endpoint", "collector:4317".into()),
        ]);
        let errs = Settings::validate(&m, Path::new("/")).unwrap_err();
        let keys: Vec<_> = errs.iter().filter_map(|e| e.key.clone()).collect();
        for k in [
            "identity.group",
            "identity.rollout_wariness",
            "updates.poll_interval",
            "lock.url",
            "os.backend",
            "telemetry.otlp_endpoint",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        for e in &errs {
            if e.key.as_deref() == Some("lock.url") {
                // Unset: no file of its own, but where to put it.
                assert_eq!(e.file, None);
                assert!(
                    e.message.contains("lock.kind = \"grpc\" (set in /f.toml)"),
                    "{e}"
                );
                assert!(e.message.contains("/etc/upshift/agent.d/"), "{e}");
                assert!(e.to_string().starts_with("lock.url: not set"), "{e}");
            } else {
                assert_eq!(e.file.as_deref(), Some(Path::new("/f.toml")), "{e}");
            }
        }
    }

    #[test]
    fn windows_and_hint_backend() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("etc/upshift/agent.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("50.toml"),
            "[updates]\npolicy_url = \"http://p:7402\"\n\
             [[updates.windows]]\ndays = [\"Sat\", \"Sun\"]\nstart = \"22:00\"\nlength = \"3h\"\n\
             time_zone = \"Europe/Berlin\"\n[[updates.windows]]\nstart = \"04:30\"\nlength = \"30m\"\n",
        )
        .unwrap();
        let s = Settings::validate(&load(t.path()).unwrap(), t.path()).unwrap();
        assert_eq!(s.hint_backend, HintBackend::Stream);
        assert_eq!(s.windows.len(), 2);
        assert_eq!(s.windows[0].length, Duration::from_secs(3 * 3600));
        assert_eq!(s.run_dir, t.path().join("run/upshift"));

        let m = merged(&[
            ("updates.backend", "stream".into()),
            (
                "updates.windows",
                toml::Value::Array(vec![
                    toml::toml! { start = "25:00"
                    length = "1h"
                    time_zone = "Mars/Olympus" }
                    .into(),
                ]),
            ),
        ]);
        let errs = Settings::validate(&m, Path::new("/")).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|e| e.contains("updates.policy_url")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.contains("windows[0].start")),
            "{text:?}"
        );
        assert!(text.iter().any(|e| e.contains("Mars/Olympus")), "{text:?}");
    }

    #[test]
    fn from_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("etc/upshift/agent.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("50.toml"),
            "[os]\nbackend = \"simulated\"\nfail_versions = [\"2\"]\nfail_boot_versions = [\"3\"]\n[lock]\nkind = \"fleetlock\"\nurl = \"http://x\"\nttl = \"5m\"\n\
             [telemetry]\notlp_endpoint = \"http://collector:4317\"\n",
        )
        .unwrap();
        let s = Settings::validate(&load(t.path()).unwrap(), t.path()).unwrap();
        assert_eq!(s.os_backend, OsBackend::Simulated);
        assert_eq!(s.fail_versions, vec!["2".to_string()]);
        assert_eq!(s.fail_boot_versions, vec!["3".to_string()]);
        assert_eq!(s.lock_ttl, Duration::from_secs(300));
        assert_eq!(s.otlp_endpoint.as_deref(), Some("http://collector:4317"));
    }
}
