//! Telemetry service configuration: the raw TOML file ([`TelemetryConfig`])
//! and the validated settings ([`TelemetrySettings`]), every error collected
//! at once.
//!
//! ```toml
//! stale_after = "15m"          # no report for this long: stale
//! drop_after = "24h"           # no report for this long: dropped
//! watch_coalesce = "1s"        # WatchFleet sends at most one summary per interval
//! max_label_values = 50        # named values per label dimension at a time; the rest: "other"
//!
//! [store]                      # embedded (default) or etcd; see upshift_store::settings
//!
//! [policy]                     # where automatic halts pause rollouts
//! url = "http://127.0.0.1:7402"
//! admin_token_file = "/etc/upshift/admin-token"  # default: [server]'s admin token
//! check_interval = "30s"       # how often halts in force are checked for a resume
//!
//! [halt.default]               # every stream without its own table
//! max_failure_ratio = 0.1
//! min_attempts = 20
//! max_failures = 50
//! steady_within = "2h"
//!
//! [halt.streams.testing]       # unset keys inherit [halt.default]
//! enabled = false
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use upshift_common::config::{ConfigErrors, ServerSettings};
use upshift_store::settings::StoreSettings;

/// Default port of the telemetry service.
pub const DEFAULT_PORT: u16 = 7404;

/// The whole telemetry configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Listener, TLS, admin credentials, tracing.
    #[serde(default)]
    pub server: ServerSettings,
    /// Which store (embedded by default, or etcd).
    #[serde(default)]
    pub store: StoreSettings,
    /// A host without a report for this long is stale (default 15m).
    #[serde(default, with = "humantime_serde")]
    pub stale_after: Option<Duration>,
    /// A host without a report for this long is dropped (default 24h).
    #[serde(default, with = "humantime_serde")]
    pub drop_after: Option<Duration>,
    /// Minimum interval between two WatchFleet summaries (default 1s).
    #[serde(default, with = "humantime_serde")]
    pub watch_coalesce: Option<Duration>,
    /// Distinct values kept per metric label dimension (default 50).
    pub max_label_values: Option<usize>,
    /// The policy service that automatic halts pause.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Automatic halt thresholds.
    #[serde(default)]
    pub halt: HaltConfig,
}

/// `[policy]`: the policy service's admin API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// gRPC URL; without it automatic halts are off.
    pub url: Option<String>,
    /// Bearer token for `PauseRollout` given inline.
    pub admin_token: Option<String>,
    /// File holding that token (default: the `[server]` admin token).
    pub admin_token_file: Option<PathBuf>,
    /// Interval of the check that notices an operator's resume (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub check_interval: Option<Duration>,
    /// Deadline of one policy call (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
}

/// `[halt]`: a default rule and per-stream overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltConfig {
    /// Rule of streams without their own table.
    #[serde(default)]
    pub default: HaltRuleConfig,
    /// Per-stream rules; unset keys inherit `default`.
    #[serde(default)]
    pub streams: BTreeMap<String, HaltRuleConfig>,
}

/// One halt rule as written (every key optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltRuleConfig {
    /// Whether the rule halts at all (default: true when `policy.url` is set).
    pub enabled: Option<bool>,
    /// Halt when more than this share of the hosts that attempted a release failed.
    pub max_failure_ratio: Option<f64>,
    /// The ratio applies from this many attempting hosts on.
    pub min_attempts: Option<u32>,
    /// Halt when more than this many hosts failed, whatever the ratio.
    pub max_failures: Option<u32>,
    /// An attempt not steady on the release within this long counts as failed.
    #[serde(default, with = "humantime_serde")]
    pub steady_within: Option<Duration>,
}

/// A validated halt rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaltRule {
    /// Whether it halts.
    pub enabled: bool,
    /// Failure share threshold, in [0, 1].
    pub max_failure_ratio: f64,
    /// Attempts needed before the ratio applies.
    pub min_attempts: u32,
    /// Absolute failure threshold.
    pub max_failures: Option<u32>,
    /// Time limit to steady.
    pub steady_within: Option<Duration>,
}

/// Default failure ratio of a halt rule.
pub const DEFAULT_MAX_FAILURE_RATIO: f64 = 0.1;
/// Default attempts before the ratio applies.
pub const DEFAULT_MIN_ATTEMPTS: u32 = 20;

/// Validated policy client settings.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// gRPC URL.
    pub url: String,
    /// Bearer token (read from the file at validation).
    pub admin_token: Option<String>,
    /// Resume check interval.
    pub check_interval: Duration,
    /// Per-call deadline.
    pub request_timeout: Duration,
}

/// Validated telemetry settings.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// Stale threshold.
    pub stale_after: Duration,
    /// Drop threshold.
    pub drop_after: Duration,
    /// WatchFleet coalescing interval.
    pub watch_coalesce: Duration,
    /// Label values named at a time per dimension (see `metrics::budget`).
    pub max_label_values: usize,
    /// Policy client; `None`: automatic halts off.
    pub policy: Option<PolicySettings>,
    /// Rule of unlisted streams.
    pub default_rule: HaltRule,
    /// Per-stream rules.
    pub rules: BTreeMap<String, HaltRule>,
}

impl TelemetrySettings {
    /// The halt rule of `stream`; disabled when no policy is configured.
    pub fn rule(&self, stream: &str) -> HaltRule {
        let rule = *self.rules.get(stream).unwrap_or(&self.default_rule);
        HaltRule {
            enabled: rule.enabled && self.policy.is_some(),
            ..rule
        }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetryConfig::default()
            .validate()
            .expect("the default configuration is valid")
    }
}

impl TelemetryConfig {
    /// Validates the telemetry part of the file, reporting every error.
    pub fn validate(&self) -> Result<TelemetrySettings, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let stale_after = self.stale_after.unwrap_or(Duration::from_secs(15 * 60));
        let drop_after = self.drop_after.unwrap_or(Duration::from_secs(24 * 3600));
        if stale_after < Duration::from_secs(1) {
            errors.push("stale_after", "must be at least 1s");
        }
        if drop_after <= stale_after {
            errors.push("drop_after", "must be longer than stale_after");
        }
        let watch_coalesce = self.watch_coalesce.unwrap_or(Duration::from_secs(1));
        if watch_coalesce.is_zero() {
            errors.push("watch_coalesce", "must be positive");
        }
        let max_label_values = self.max_label_values.unwrap_or(50);
        if max_label_values == 0 {
            errors.push("max_label_values", "must be at least 1");
        }
        if let Err(e) = self.store.validate() {
            errors.extend(e);
        }
        let policy = self.policy.validate(&self.server, &mut errors);
        let default_rule = validate_rule(
            "halt.default",
            &self.halt.default,
            &HaltRuleConfig::default(),
            policy.is_some(),
            &mut errors,
        );
        let mut rules = BTreeMap::new();
        for (name, rule) in &self.halt.streams {
            let key = format!("halt.streams.{name}");
            if !crate::record::valid_label(name) {
                errors.push(&key, "stream names are 1-64 of [A-Za-z0-9._+~-]");
            }
            let merged = validate_rule(
                &key,
                rule,
                &self.halt.default,
                policy.is_some(),
                &mut errors,
            );
            rules.insert(name.clone(), merged);
        }
        errors.into_result(TelemetrySettings {
            stale_after,
            drop_after,
            watch_coalesce,
            max_label_values: max_label_values.max(1),
            policy,
            default_rule,
            rules,
        })
    }
}

impl PolicyConfig {
    fn validate(
        &self,
        server: &ServerSettings,
        errors: &mut ConfigErrors,
    ) -> Option<PolicySettings> {
        if self.admin_token.is_some() && self.admin_token_file.is_some() {
            errors.push(
                "policy.admin_token",
                "set either admin_token or admin_token_file, not both",
            );
        }
        let check_interval = self.check_interval.unwrap_or(Duration::from_secs(30));
        if check_interval.is_zero() {
            errors.push("policy.check_interval", "must be positive");
        }
        let request_timeout = self.request_timeout.unwrap_or(Duration::from_secs(10));
        if request_timeout.is_zero() {
            errors.push("policy.request_timeout", "must be positive");
        }
        let url = self.url.as_ref()?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(
                "policy.url",
                format!("{url:?} is not an http:// or https:// URL"),
            );
        }
        let admin_token = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(t) => Some(t.trim().to_string()),
                Err(e) => {
                    errors.push(
                        "policy.admin_token_file",
                        format!("{}: {e}", path.display()),
                    );
                    None
                }
            },
            (None, None) => server.admin_token().unwrap_or_default(),
        };
        let unreadable =
            self.admin_token.is_none() && self.admin_token_file.is_some() && admin_token.is_none();
        if !unreadable && admin_token.as_deref().is_none_or(str::is_empty) {
            errors.push(
                "policy.admin_token_file",
                "automatic halts need the policy admin token (policy.admin_token_file or \
                 server.admin_token_file)",
            );
        }
        Some(PolicySettings {
            url: url.clone(),
            admin_token,
            check_interval,
            request_timeout,
        })
    }
}

fn validate_rule(
    key: &str,
    rule: &HaltRuleConfig,
    base: &HaltRuleConfig,
    have_policy: bool,
    errors: &mut ConfigErrors,
) -> HaltRule {
    let enabled = rule.enabled.or(base.enabled);
    if enabled == Some(true) && !have_policy {
        errors.push(format!("{key}.enabled"), "automatic halts need policy.url");
    }
    let max_failure_ratio = rule
        .max_failure_ratio
        .or(base.max_failure_ratio)
        .unwrap_or(DEFAULT_MAX_FAILURE_RATIO);
    if !(0.0..=1.0).contains(&max_failure_ratio) {
        errors.push(format!("{key}.max_failure_ratio"), "must be within [0, 1]");
    }
    let min_attempts = rule
        .min_attempts
        .or(base.min_attempts)
        .unwrap_or(DEFAULT_MIN_ATTEMPTS);
    if min_attempts == 0 {
        errors.push(format!("{key}.min_attempts"), "must be at least 1");
    }
    let steady_within = rule.steady_within.or(base.steady_within);
    if steady_within.is_some_and(|d| d < Duration::from_secs(1)) {
        errors.push(format!("{key}.steady_within"), "must be at least 1s");
    }
    HaltRule {
        enabled: enabled.unwrap_or(true),
        max_failure_ratio: max_failure_ratio.clamp(0.0, 1.0),
        min_attempts: min_attempts.max(1),
        max_failures: rule.max_failures.or(base.max_failures),
        steady_within,
    }
}

#[cfg(test)]
mod tests {
    use upshift_common::config::parse_toml;

    use super::*;

    #[test]
    fn defaults_and_inheritance() {
        let cfg: TelemetryConfig = parse_toml(
            r#"
            stale_after = "5m"
            [policy]
            url = "http://127.0.0.1:7402"
            admin_token = "0123456789abcdef"
            [halt.default]
            max_failure_ratio = 0.2
            min_attempts = 5
            [halt.streams.testing]
            enabled = false
            [halt.streams.next]
            max_failures = 3
            "#,
        )
        .unwrap();
        let s = cfg.validate().unwrap();
        assert_eq!(s.stale_after, Duration::from_secs(300));
        assert_eq!(s.drop_after, Duration::from_secs(86400));
        assert!(s.rule("stable").enabled);
        assert!(!s.rule("testing").enabled);
        let next = s.rule("next");
        assert_eq!((next.min_attempts, next.max_failures), (5, Some(3)));
        assert!((next.max_failure_ratio - 0.2).abs() < 1e-9);
    }

    #[test]
    fn without_policy_halts_are_off() {
        let s = TelemetryConfig::default().validate().unwrap();
        assert!(s.policy.is_none());
        assert!(!s.rule("stable").enabled);
    }

    #[test]
    fn reports_every_error_at_once() {
        let cfg: TelemetryConfig = parse_toml(
            r#"
            stale_after = "1h"
            drop_after = "30m"
            max_label_values = 0
            [halt.default]
            enabled = true
            max_failure_ratio = 1.5
            min_attempts = 0
            [halt.streams."bad/name"]
            steady_within = "10ms"
            "#,
        )
        .unwrap();
        let errs = cfg.validate().unwrap_err();
        let keys: Vec<_> = errs.errors().iter().map(|e| e.key.as_str()).collect();
        for k in [
            "drop_after",
            "max_label_values",
            "halt.default.enabled",
            "halt.default.max_failure_ratio",
            "halt.default.min_attempts",
            "halt.streams.bad/name",
            "halt.streams.bad/name.steady_within",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn policy_needs_a_token() {
        let cfg: TelemetryConfig = parse_toml("[policy]\nurl = \"http://p:1\"\n").unwrap();
        let errs = cfg.validate().unwrap_err();
        assert_eq!(errs.errors()[0].key, "policy.admin_token_file");
    }

    #[test]
    fn unknown_keys_rejected() {
        assert!(parse_toml::<TelemetryConfig>("bogus = 1\n").is_err());
        assert!(parse_toml::<TelemetryConfig>("[halt.default]\nratio = 1\n").is_err());
    }
}
