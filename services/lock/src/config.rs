//! Lock service configuration, in three stages: the raw TOML file
//! ([`LockConfig`]), then validated settings ([`LockSettings`]) with every
//! error collected at once.
//!
//! ```toml
//! base_path = "/"              # FleetLock endpoints under {base_path}v1/...
//! store_layout = "upshift"     # or "airlock"
//! request_timeout = "5s"
//!
//! [store]                      # embedded (default) or etcd; see upshift_store::settings
//! backend = "embedded"
//!
//! [default]                    # optional: allows any valid group name
//! slots = 1
//!
//! [audit]                      # retention of the audit log (both limits apply)
//! keep = 10000                 # newest entries kept
//! max_age = "90d"              # older entries are removed
//!
//! [groups.workers]
//! slots = 2
//! ttl = "10m"                  # default lease of gRPC Acquire
//! [[groups.workers.windows]]
//! days = ["Sat", "Sun"]
//! start = "22:00"
//! length = "3h"
//! time_zone = "Europe/Berlin"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use upshift_common::config::{ConfigErrors, ServerSettings};

use upshift_common::window::{Window, WindowConfig};

/// Default port of the lock service.
pub const DEFAULT_PORT: u16 = 7403;

/// The whole lock service configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// Listener, TLS, admin credentials, telemetry.
    #[serde(default)]
    pub server: ServerSettings,
    /// Prefix of the FleetLock endpoints (default "/").
    pub base_path: Option<String>,
    /// Store key layout.
    #[serde(default)]
    pub store_layout: StoreLayout,
    /// Which store (embedded by default, or etcd).
    #[serde(default)]
    pub store: upshift_store::settings::StoreSettings,
    /// Deadline of one lock operation including CAS retries (default 5s).
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// Template for groups not listed under `groups`; absent: unknown groups are refused.
    pub default: Option<GroupConfig>,
    /// Configured groups.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupConfig>,
    /// Audit log retention.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// The `[audit]` section: how much of the audit log is kept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Newest entries kept (default 10000).
    pub keep: Option<usize>,
    /// Entries older than this are removed (default 90 days).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// Validated audit retention: an entry goes once it is not among the
/// newest `keep` or is older than `max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// Newest entries kept.
    pub keep: usize,
    /// Longest an entry is kept.
    pub max_age: Duration,
}

impl Default for AuditRetention {
    fn default() -> Self {
        Self {
            keep: 10_000,
            max_age: Duration::from_secs(90 * 86_400),
        }
    }
}

/// Where group records live in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreLayout {
    /// `upshift/lock/groups/<group>`, our JSON record.
    #[default]
    Upshift,
    /// `com.coreos.airlock/groups/<group>/v1/semaphore`, Airlock's JSON plus our fields.
    Airlock,
}

/// One group (or the default template).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Slot count (at least 1).
    pub slots: u32,
    /// Default lease of gRPC `Acquire` calls that give none.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Lease of FleetLock holders (none by default).
    #[serde(default, with = "humantime_serde")]
    pub fleetlock_ttl: Option<Duration>,
    /// Maintenance windows; none means grants at any time.
    #[serde(default)]
    pub windows: Vec<WindowConfig>,
}

/// Validated group settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// Slot count.
    pub slots: u32,
    /// Default gRPC lease.
    pub ttl: Option<Duration>,
    /// FleetLock lease.
    pub fleetlock_ttl: Option<Duration>,
    /// Windows.
    pub windows: Vec<Window>,
}

/// Validated lock settings.
#[derive(Debug, Clone)]
pub struct LockSettings {
    /// FleetLock prefix, starting and ending with '/'.
    pub base_path: String,
    /// Store layout.
    pub store_layout: StoreLayout,
    /// Deadline of one operation.
    pub request_timeout: Duration,
    /// Template for unlisted groups.
    pub default: Option<GroupSettings>,
    /// Configured groups.
    pub groups: BTreeMap<String, GroupSettings>,
    /// Audit log retention.
    pub audit: AuditRetention,
}

impl LockSettings {
    /// Settings of `group`: configured, else the default template, else none.
    pub fn group(&self, group: &str) -> Option<&GroupSettings> {
        self.groups.get(group).or(self.default.as_ref())
    }
}

/// Whether `group` is a valid FleetLock group name (`^[a-zA-Z0-9.-]+$`).
pub fn valid_group_name(group: &str) -> bool {
    !group.is_empty()
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

impl LockConfig {
    /// Validates the lock part of the file, reporting every error.
    pub fn validate(&self) -> Result<LockSettings, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let base_path = match self.base_path.as_deref().unwrap_or("/") {
            p if !p.starts_with('/') => {
                errors.push("base_path", "must start with '/'");
                "/".to_string()
            }
            p if p.ends_with('/') => p.to_string(),
            p => format!("{p}/"),
        };
        let request_timeout = self.request_timeout.unwrap_or(Duration::from_secs(5));
        if request_timeout.is_zero() {
            errors.push("request_timeout", "must be positive");
        }
        let default = self
            .default
            .as_ref()
            .map(|g| validate_group("default", g, &mut errors));
        let mut groups = BTreeMap::new();
        for (name, g) in &self.groups {
            if !valid_group_name(name) {
                errors.push(
                    format!("groups.{name}"),
                    "group names must match ^[a-zA-Z0-9.-]+$",
                );
            }
            groups.insert(
                name.clone(),
                validate_group(&format!("groups.{name}"), g, &mut errors),
            );
        }
        if let Err(e) = self.store.validate() {
            errors.extend(e);
        }
        let audit = self.audit.validate(&mut errors);
        errors.into_result(LockSettings {
            base_path,
            store_layout: self.store_layout,
            request_timeout,
            default,
            groups,
            audit,
        })
    }
}

impl AuditConfig {
    fn validate(&self, errors: &mut ConfigErrors) -> AuditRetention {
        let default = AuditRetention::default();
        if self.keep == Some(0) {
            errors.push("audit.keep", "must be at least 1");
        }
        if self.max_age.is_some_and(|a| a.is_zero()) {
            errors.push("audit.max_age", "must be positive");
        }
        AuditRetention {
            keep: self.keep.unwrap_or(default.keep).max(1),
            max_age: self.max_age.unwrap_or(default.max_age),
        }
    }
}

fn validate_group(key: &str, g: &GroupConfig, errors: &mut ConfigErrors) -> GroupSettings {
    if g.slots == 0 {
        errors.push(format!("{key}.slots"), "must be at least 1");
    }
    for (field, ttl) in [("ttl", g.ttl), ("fleetlock_ttl", g.fleetlock_ttl)] {
        if ttl.is_some_and(|t| t < Duration::from_secs(1)) {
            errors.push(format!("{key}.{field}"), "must be at least 1s");
        }
    }
    let windows = g
        .windows
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.validate(&format!("{key}.windows[{i}]"), errors))
        .collect();
    GroupSettings {
        slots: g.slots.max(1),
        ttl: g.ttl,
        fleetlock_ttl: g.fleetlock_ttl,
        windows,
    }
}

#[cfg(test)]
mod tests {
    use upshift_common::config::parse_toml;

    use super::*;

    #[test]
    fn full_example_parses() {
        let cfg: LockConfig = parse_toml(
            r#"
            base_path = "/fleet"
            store_layout = "airlock"
            [default]
            slots = 1
            [groups.workers]
            slots = 2
            ttl = "10m"
            [[groups.workers.windows]]
            days = ["Sat", "Sun"]
            start = "22:00"
            length = "3h"
            time_zone = "Europe/Berlin"
            "#,
        )
        .unwrap();
        let s = cfg.validate().unwrap();
        assert_eq!(s.base_path, "/fleet/");
        assert_eq!(s.store_layout, StoreLayout::Airlock);
        assert_eq!(s.groups["workers"].windows.len(), 1);
        assert_eq!(s.group("other").unwrap().slots, 1);
        assert_eq!(s.audit, AuditRetention::default());
    }

    #[test]
    fn audit_retention() {
        let cfg: LockConfig = parse_toml("[audit]\nkeep = 50\nmax_age = \"7d\"\n").unwrap();
        let s = cfg.validate().unwrap();
        assert_eq!(s.audit.keep, 50);
        assert_eq!(s.audit.max_age, Duration::from_secs(7 * 86_400));
        let cfg: LockConfig = parse_toml("[audit]\nkeep = 0\nmax_age = \"0s\"\n").unwrap();
        let keys: Vec<_> = cfg
            .validate()
            .unwrap_err()
            .errors()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(keys, ["audit.keep", "audit.max_age"]);
    }

    #[test]
    fn reports_every_error_at_once() {
        let cfg: LockConfig = parse_toml(
            r#"
            base_path = "fleet"
            [groups."bad_name"]
            slots = 0
            [[groups."bad_name".windows]]
            days = ["Funday"]
            start = "25:00"
            length = "1h"
            time_zone = "Mars/Olympus"
            "#,
        )
        .unwrap();
        let errs = cfg.validate().unwrap_err();
        let keys: Vec<_> = errs.errors().iter().map(|e| e.key.as_str()).collect();
        for k in [
            "base_path",
            "groups.bad_name",
            "groups.bad_name.slots",
            "groups.bad_name.windows[0].days",
            "groups.bad_name.windows[0].start",
            "groups.bad_name.windows[0].time_zone",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn unknown_keys_rejected() {
        assert!(parse_toml::<LockConfig>("[groups.a]\nslots = 1\nslot = 2\n").is_err());
        assert!(parse_toml::<LockConfig>("bogus = 1\n").is_err());
    }
}
