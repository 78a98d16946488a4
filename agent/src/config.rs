//! Configuration fragments: discovery, precedence and merging.
//!
//! Fragments are `*.toml` files in `<root>/usr/lib/upshift/agent.d/`,
//! `<root>/etc/upshift/agent.d/` and `<root>/run/upshift/agent.d/`. All
//! fragments are applied in file-name order across directories; a same-named
//! file in a later directory replaces the earlier one, and a symlink to
//! `/dev/null` masks it. Later fragments override earlier values key by key.
//!
//! Stage 1 (raw fragments) and stage 2 (merged values with their source
//! file) are here; unknown sections/keys are errors naming file and key, all
//! collected. Stage 3 (typed validation) is [`crate::settings`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Fragment directories, lowest precedence first, relative to the root.
pub const FRAGMENT_DIRS: [&str; 3] = [
    "usr/lib/upshift/agent.d",
    "etc/upshift/agent.d",
    "run/upshift/agent.d",
];

/// Known sections and keys.
pub const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "identity",
        &[
            "group",
            "rollout_wariness",
            "stream",
            "basearch",
            "platform",
            "node_uuid",
        ],
    ),
    (
        "updates",
        &[
            "backend",
            "policy_url",
            "cincinnati_url",
            "poll_interval",
            "allow_downgrade",
            "windows",
        ],
    ),
    ("lock", &["kind", "url", "ttl"]),
    ("sessions", &["max_postpone", "message"]),
    ("telemetry", &["url", "interval", "otlp_endpoint"]),
    ("state", &["state_dir", "run_dir"]),
    ("tls", &["ca_file", "cert_file", "key_file"]),
    (
        "os",
        &[
            "backend",
            "simulated_state_file",
            "fail_versions",
            "fail_boot_versions",
        ],
    ),
];

/// One configuration problem, naming the file (when a fragment holds the
/// value; a missing key has none) and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(k) = &self.key {
            write!(f, "{k}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A merged value and the fragment it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced {
    pub value: toml::Value,
    pub source: PathBuf,
}

/// Stage 2: merged values keyed by `section.key`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergedInputs {
    pub values: BTreeMap<String, Sourced>,
}

/// Lists the effective fragment files in application order.
pub fn discover(root: &Path) -> Vec<PathBuf> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in FRAGMENT_DIRS {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".toml") {
                by_name.insert(name, entry.path());
            }
        }
    }
    by_name
        .into_values()
        .filter(|p| std::fs::read_link(p).map_or(true, |t| t != Path::new("/dev/null")))
        .collect()
}

/// Reads and merges all fragments under `root`; all errors at once.
pub fn load(root: &Path) -> Result<MergedInputs, Vec<ConfigError>> {
    let mut merged = MergedInputs::default();
    let mut errors = Vec::new();
    for file in discover(root) {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    file: Some(file),
                    key: None,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    file: Some(file),
                    key: None,
                    message: e.to_string(),
                });
                continue;
            }
        };
        for (section, body) in table {
            let Some((_, keys)) = KNOWN_KEYS.iter().find(|(s, _)| *s == section) else {
                errors.push(ConfigError {
                    file: Some(file.clone()),
                    key: Some(section),
                    message: "unknown section".into(),
                });
                continue;
            };
            let toml::Value::Table(body) = body else {
                errors.push(ConfigError {
                    file: Some(file.clone()),
                    key: Some(section),
                    message: "expected a table".into(),
                });
                continue;
            };
            for (key, value) in body {
                let full = format!("{section}.{key}");
                if !keys.contains(&key.as_str()) {
                    errors.push(ConfigError {
                        file: Some(file.clone()),
                        key: Some(full),
                        message: "unknown key".into(),
                    });
                    continue;
                }
                merged.values.insert(
                    full,
                    Sourced {
                        value,
                        source: file.clone(),
                    },
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(merged)
    } else {
        Err(errors)
    }
}

impl MergedInputs {
    /// `config show` text: one `key = value  # source` line per value.
    pub fn show(&self) -> String {
        self.values
            .iter()
            .map(|(k, v)| format!("{k} = {}  # {}\n", v.value, v.source.display()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, dir: &str, name: &str, body: &str) {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), body).unwrap();
    }

    #[test]
    fn precedence_replace_and_mask() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(
            r,
            FRAGMENT_DIRS[0],
            "00-defaults.toml",
            "[identity]\ngroup = \"default\"\nstream = \"stable\"\n",
        );
        write(
            r,
            FRAGMENT_DIRS[0],
            "10-x.toml",
            "[identity]\nstream = \"next\"\n",
        );
        write(
            r,
            FRAGMENT_DIRS[1],
            "10-x.toml",
            "[identity]\nbasearch = \"aarch64\"\n",
        );
        write(
            r,
            FRAGMENT_DIRS[0],
            "20-masked.toml",
            "[identity]\ngroup = \"masked\"\n",
        );
        std::fs::create_dir_all(r.join(FRAGMENT_DIRS[2])).unwrap();
        std::os::unix::fs::symlink("/dev/null", r.join(FRAGMENT_DIRS[2]).join("20-masked.toml"))
            .unwrap();
        write(
            r,
            FRAGMENT_DIRS[2],
            "30-run.toml",
            "[lock]\nkind = \"immediate\"\n",
        );
        let m = load(r).unwrap();
        assert_eq!(m.values["identity.group"].value.as_str(), Some("default"));
        // 10-x.toml in /usr/lib was replaced entirely by the /etc one.
        assert_eq!(m.values["identity.stream"].value.as_str(), Some("stable"));
        assert_eq!(
            m.values["identity.basearch"].value.as_str(),
            Some("aarch64")
        );
        assert!(
            m.values["identity.basearch"]
                .source
                .starts_with(r.join(FRAGMENT_DIRS[1]))
        );
        assert_eq!(m.values["lock.kind"].value.as_str(), Some("immediate"));
        assert!(m.show().contains("lock.kind = \"immediate\""));
    }

    #[test]
    fn unknown_keys_all_reported() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(
            r,
            FRAGMENT_DIRS[1],
            "a.toml",
            "[identity]\ngrop = 1\n[bogus]\nx = 1\n",
        );
        write(r, FRAGMENT_DIRS[1], "b.toml", "not toml [");
        let errs = load(r).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.key.as_deref() == Some("identity.grop"))
        );
        assert!(errs.iter().any(|e| e.key.as_deref() == Some("bogus")));
    }
}
