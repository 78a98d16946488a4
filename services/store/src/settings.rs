//! Which store a service runs on, as written in its config file:
//!
//! ```toml
//! [store]
//! backend = "embedded"          # default; or "etcd"
//! # path = "/var/lib/upshift/store.redb"   # default: <data_dir>/store.redb
//!
//! [store.etcd]
//! endpoints = ["https://etcd-0:2379", "https://etcd-1:2379"]
//! key_prefix = "/upshift/"
//! username = "upshift"
//! password_file = "/etc/upshift/etcd-password"
//! ca_file = "/etc/upshift/etcd-ca.pem"
//! cert_file = "/etc/upshift/etcd-client.pem"   # mutual TLS, optional
//! key_file = "/etc/upshift/etcd-client-key.pem"
//! request_timeout = "5s"
//! connect_timeout = "5s"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use upshift_common::config::ConfigErrors;

use crate::embedded::EmbeddedStore;
use crate::etcd::{EtcdOptions, EtcdStore, EtcdTls};
use crate::{SharedStore, StoreError};

/// The store backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One redb file under the data directory (the default).
    #[default]
    Embedded,
    /// An etcd v3 cluster.
    Etcd,
}

/// The `[store]` section of a service configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// Which backend.
    #[serde(default)]
    pub backend: Backend,
    /// Embedded database file (default `<data_dir>/store.redb`).
    pub path: Option<PathBuf>,
    /// etcd connection (used when `backend = "etcd"`).
    #[serde(default)]
    pub etcd: EtcdSettings,
}

/// The `[store.etcd]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdSettings {
    /// Endpoint URLs (`http://` or `https://`).
    pub endpoints: Vec<String>,
    /// Prepended to every key.
    pub key_prefix: String,
    /// User name (with `password_file`).
    pub username: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// CA bundle for `https` endpoints.
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client key for mutual TLS.
    pub key_file: Option<PathBuf>,
    /// Deadline of every request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Deadline of establishing a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            key_prefix: "/upshift/".to_string(),
            username: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl StoreSettings {
    /// Switches to etcd at `endpoints` (the `--etcd URL,...` flag).
    pub fn use_etcd(&mut self, endpoints: Vec<String>) {
        self.backend = Backend::Etcd;
        self.etcd.endpoints = endpoints;
    }

    /// Checks the settings without touching the network or disk.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::new();
        if self.backend == Backend::Etcd {
            let etcd = &self.etcd;
            if etcd.endpoints.is_empty() {
                errors.push("store.etcd.endpoints", "at least one endpoint is needed");
            }
            for url in &etcd.endpoints {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    errors.push(
                        "store.etcd.endpoints",
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                }
            }
            if etcd.username.is_some() != etcd.password_file.is_some() {
                errors.push(
                    "store.etcd.username",
                    "username and password_file go together",
                );
            }
            if etcd.cert_file.is_some() != etcd.key_file.is_some() {
                errors.push("store.etcd.cert_file", "cert_file and key_file go together");
            }
            if etcd.cert_file.is_some() && etcd.ca_file.is_none() {
                errors.push("store.etcd.ca_file", "mutual TLS needs ca_file");
            }
            if etcd.request_timeout.is_zero() {
                errors.push("store.etcd.request_timeout", "must be positive");
            }
            if etcd.connect_timeout.is_zero() {
                errors.push("store.etcd.connect_timeout", "must be positive");
            }
        }
        errors.into_result(())
    }

    /// Where the embedded database lives for a service with `data_dir`.
    pub fn embedded_path(&self, data_dir: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| data_dir.join("store.redb"))
    }

    /// Opens the configured store (creating the data directory for the
    /// embedded one).
    pub async fn open(&self, data_dir: &Path) -> Result<SharedStore, OpenError> {
        match self.backend {
            Backend::Embedded => {
                let path = self.embedded_path(data_dir);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                let store = EmbeddedStore::open(&path).map_err(|source| OpenError::Store {
                    what: format!("embedded store {}", path.display()),
                    source,
                })?;
                Ok(Arc::new(store))
            }
            Backend::Etcd => {
                let options = self.etcd_options()?;
                let what = format!("etcd at {}", options.endpoints.join(","));
                let store = EtcdStore::connect(options)
                    .await
                    .map_err(|source| OpenError::Store { what, source })?;
                Ok(Arc::new(store))
            }
        }
    }

    fn etcd_options(&self) -> Result<EtcdOptions, OpenError> {
        let etcd = &self.etcd;
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| OpenError::Io {
                path: path.clone(),
                source,
            })
        };
        let mut options = EtcdOptions::new(etcd.endpoints.clone());
        options.key_prefix = etcd.key_prefix.clone();
        options.request_timeout = etcd.request_timeout;
        options.connect_timeout = etcd.connect_timeout;
        if let (Some(user), Some(file)) = (&etcd.username, &etcd.password_file) {
            let password = String::from_utf8_lossy(&read(file)?).trim().to_string();
            options.user = Some((user.clone(), password));
        }
        if let Some(ca) = &etcd.ca_file {
            options.tls = Some(EtcdTls {
                ca_pem: read(ca)?,
                cert_pem: etcd.cert_file.as_ref().map(read).transpose()?,
                key_pem: etcd.key_file.as_ref().map(read).transpose()?,
            });
        }
        Ok(options)
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A file of the configuration could not be read or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store itself refused.
    #[error("cannot open the {what}: {source}")]
    Store {
        /// Which store.
        what: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
}

#[cfg(test)]
mod tests {
    use upshift_common::config::parse_toml;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        store: StoreSettings,
    }

    #[test]
    fn embedded_is_the_default() {
        let file: File = parse_toml("").unwrap();
        assert_eq!(file.store.backend, Backend::Embedded);
        assert_eq!(
            file.store.embedded_path(Path::new("/var/lib/x")),
            PathBuf::from("/var/lib/x/store.redb")
        );
        file.store.validate().unwrap();
    }

    #[test]
    fn etcd_section_parses_and_validates() {
        let file: File = parse_toml(
            r#"
            [store]
            backend = "etcd"
            [store.etcd]
            endpoints = ["http://127.0.0.1:2379"]
            request_timeout = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(file.store.backend, Backend::Etcd);
        assert_eq!(file.store.etcd.request_timeout, Duration::from_secs(2));
        assert_eq!(file.store.etcd.key_prefix, "/upshift/");
        file.store.validate().unwrap();
    }

    #[test]
    fn every_etcd_problem_is_reported() {
        let mut settings = StoreSettings::default();
        settings.use_etcd(vec!["etcd:2379".into()]);
        settings.etcd.username = Some("u".into());
        settings.etcd.cert_file = Some("c.pem".into());
        let errors = settings.validate().unwrap_err();
        let keys: Vec<String> = errors.errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(parse_toml::<File>("[store]\nbackend = \"zookeeper\"").is_err());
        assert!(parse_toml::<File>("[store.etcd]\nendpoint = \"x\"").is_err());
    }

    #[tokio::test]
    async fn opens_the_embedded_store_under_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = StoreSettings::default().open(&data).await.unwrap();
        store.get("k").await.unwrap();
        assert!(data.join("store.redb").exists());
    }
}
