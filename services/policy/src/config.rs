//! Policy service configuration: the TOML file (`[server]` plus the keys
//! below), validated all at once.

use std::time::Duration;

use serde::Deserialize;
use upshift_common::config::{ConfigErrors, ServerSettings};

use crate::hub::HubSettings;

/// Default listen port of the policy service.
pub const DEFAULT_PORT: u16 = 7402;

/// The policy config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// gRPC URL of the graph service (`http://host:7401`); none = no follower.
    pub graph_url: Option<String>,
    /// Listener, TLS, admin token.
    pub server: ServerSettings,
    /// Streams end with a reconnect hint after about this long.
    #[serde(with = "humantime_serde")]
    pub max_stream_age: Duration,
    /// Keepalive message interval on idle streams (one shared tick).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Open-stream limit; beyond it new streams get `Reconnect{overload}`.
    pub max_streams: Option<usize>,
    /// Where rollout overrides live (embedded by default, or etcd).
    pub store: upshift_store::settings::StoreSettings,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let mut server = ServerSettings::default();
        server.listen.set_port(DEFAULT_PORT);
        Self {
            graph_url: None,
            server,
            max_stream_age: Duration::from_secs(30 * 60),
            keepalive_interval: Duration::from_secs(30),
            max_streams: None,
            store: Default::default(),
        }
    }
}

impl PolicyConfig {
    /// Checks every setting, reporting all problems together.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = ConfigErrors::new();
        if let Err(e) = self.server.validate() {
            errs.extend(e);
        }
        if let Err(e) = self.store.validate() {
            errs.extend(e);
        }
        if let Some(url) = &self.graph_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errs.push(
                "graph_url",
                format!("{url:?} is not an http:// or https:// URL"),
            );
        }
        if self.keepalive_interval < Duration::from_millis(10) {
            errs.push("keepalive_interval", "must be at least 10ms");
        }
        if self.max_stream_age <= self.keepalive_interval {
            errs.push("max_stream_age", "must be longer than keepalive_interval");
        }
        if self.max_streams == Some(0) {
            errs.push("max_streams", "must be positive when set");
        }
        errs.into_result(())
    }

    /// The hub's stream settings.
    pub fn hub(&self) -> HubSettings {
        HubSettings {
            keepalive_interval: self.keepalive_interval,
            max_stream_age: self.max_stream_age,
            max_streams: self.max_streams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upshift_common::config::parse_toml;

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let c: PolicyConfig = parse_toml(
            "graph_url = \"http://127.0.0.1:7401\"\nmax_stream_age = \"10m\"\nkeepalive_interval = \"20s\"\n[server]\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        assert_eq!(c.max_stream_age, Duration::from_secs(600));
        c.validate().unwrap();
        assert!(parse_toml::<PolicyConfig>("graph_ur = \"x\"\n").is_err());
    }

    #[test]
    fn reports_every_error() {
        let c = PolicyConfig {
            graph_url: Some("ftp://x".into()),
            max_stream_age: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(5),
            max_streams: Some(0),
            ..PolicyConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().errors().len(), 3);
    }
}
