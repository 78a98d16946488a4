//! OS backends behind one trait ([`OsBackend`]):
//!
//! - [`Simulated`]: booted/staged versions in a JSON state file, for the dev
//!   mesh and tests;
//! - [`rpm_ostree::RpmOstree`]: the real host, rpm-ostree over D-Bus for
//!   deployments and [`logind::Logind`] for sessions and reboot, with
//!   [`wall`] messages to logged-in users' terminals.

pub mod dbus;
pub mod logind;
pub mod rpm_ostree;
pub mod wall;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use upshift_cincinnati::graph::PayloadScheme;

/// Exit code the agent uses after a simulated "reboot": a supervisor restarts
/// it and it comes up with the new version booted.
pub const EXIT_SIMULATED_REBOOT: u8 = 100;

/// A release as the OS knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub payload: String,
}

/// The OS operation an error belongs to (a closed set, usable as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Connecting to the bus.
    Connect,
    /// rpm-ostree `Sysroot.RegisterClient`.
    RegisterClient,
    /// rpm-ostree driver registration (`UpdateDeployment` with `register-driver`).
    RegisterDriver,
    /// Reading rpm-ostree deployments.
    ReadDeployments,
    /// Staging a deployment (`UpdateDeployment` with `lock-finalization`).
    Deploy,
    /// `FinalizeDeployment`.
    Finalize,
    /// `Cleanup` of the pending deployment.
    Cleanup,
    /// logind `ListSessions` and session properties.
    ListSessions,
    /// logind `Reboot`.
    Reboot,
}

impl Op {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Connect => "connect",
            Op::RegisterClient => "register_client",
            Op::RegisterDriver => "register_driver",
            Op::ReadDeployments => "read_deployments",
            Op::Deploy => "deploy",
            Op::Finalize => "finalize",
            Op::Cleanup => "cleanup",
            Op::ListSessions => "list_sessions",
            Op::Reboot => "reboot",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors from an OS backend.
#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad state file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("staging {0} failed")]
    StageFailed(String),
    #[error("nothing staged")]
    NothingStaged,
    /// The service is not on the bus (not running, no activation).
    #[error("{op}: {service} is not available on the bus")]
    ServiceUnavailable {
        op: Op,
        service: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
    /// The service refused the call (D-Bus policy or polkit).
    #[error("{op}: {service} denied the call")]
    Denied {
        op: Op,
        service: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
    /// Any other D-Bus failure (error reply, broken connection, bad address).
    #[error("{op}: D-Bus call to {service} failed")]
    Dbus {
        op: Op,
        service: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
    /// No answer within the configured time.
    #[error("{op}: no answer within {after:?}")]
    Timeout { op: Op, after: Duration },
    /// An rpm-ostree transaction finished unsuccessfully.
    #[error("{op}: transaction failed: {message}")]
    TransactionFailed { op: Op, message: String },
    /// A reply had an unexpected shape or content.
    #[error("{op}: unexpected reply: {detail}")]
    BadReply { op: Op, detail: String },
    /// The release payload is neither an OSTree checksum nor an image reference.
    #[error("payload {0:?} is neither an OSTree commit checksum nor an OCI image reference")]
    UnsupportedPayload(String),
}

impl OsError {
    /// Short, stable error kind (for the `last error kind` metric).
    pub fn kind(&self) -> &'static str {
        match self {
            OsError::Io(_) => "io",
            OsError::Json(_) => "state_file",
            OsError::StageFailed(_) => "stage_failed",
            OsError::NothingStaged => "nothing_staged",
            OsError::ServiceUnavailable { .. } => "service_unavailable",
            OsError::Denied { .. } => "denied",
            OsError::Dbus { .. } => "dbus",
            OsError::Timeout { .. } => "timeout",
            OsError::TransactionFailed { .. } => "transaction_failed",
            OsError::BadReply { .. } => "bad_reply",
            OsError::UnsupportedPayload(_) => "unsupported_payload",
        }
    }
}

/// What the agent needs from the OS.
pub trait OsBackend {
    fn booted(&self) -> impl Future<Output = Result<Release, OsError>>;
    /// How the booted deployment's payload is identified: an OSTree commit
    /// checksum, or an OCI image (`name@sha256:...`). Hints are asked for
    /// the graph of that scheme.
    fn booted_scheme(&self) -> impl Future<Output = Result<PayloadScheme, OsError>>;
    fn staged(&self) -> impl Future<Output = Result<Option<Release>, OsError>>;
    fn stage(&self, target: &Release) -> impl Future<Output = Result<(), OsError>>;
    fn finalize(&self) -> impl Future<Output = Result<(), OsError>>;
    fn cleanup(&self) -> impl Future<Output = Result<(), OsError>>;
    /// Reboots; for the simulated backend this records the new booted
    /// version and the caller exits with [`EXIT_SIMULATED_REBOOT`].
    fn reboot(&self) -> impl Future<Output = Result<(), OsError>>;
    /// Number of interactive user sessions.
    fn active_sessions(&self) -> impl Future<Output = Result<usize, OsError>>;
    /// Writes `message` to the terminals of logged-in users (as `wall`
    /// does); returns how many terminals it reached. Terminals that cannot
    /// be opened are skipped. The default reaches nobody.
    fn message_sessions(&self, message: &str) -> impl Future<Output = Result<usize, OsError>> {
        let _ = message;
        async { Ok(0) }
    }
    /// Best-effort [`OsBackend::message_sessions`]: failures are logged, not returned.
    fn notify_users(&self, message: &str) -> impl Future<Output = ()> {
        async move {
            match self.message_sessions(message).await {
                Ok(n) => tracing::info!(terminals = n, "messaged logged-in users"),
                Err(e) => tracing::warn!(error = %e, "could not message logged-in users"),
            }
        }
    }
}

/// The simulated backend's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimState {
    pub booted: Release,
    #[serde(default)]
    pub staged: Option<Release>,
    #[serde(default)]
    pub finalized: bool,
    #[serde(default)]
    pub sessions: usize,
}

/// Simulated OS: booted/staged versions in a JSON file.
#[derive(Debug, Clone)]
pub struct Simulated {
    pub file: PathBuf,
    /// Versions whose staging fails.
    pub fail_versions: Vec<String>,
    /// Versions that fail to boot: a reboot into one comes back up on the
    /// old release with nothing staged (a rollback).
    pub fail_boot_versions: Vec<String>,
    /// Booted release used when the file does not exist yet.
    pub initial: Release,
}

impl Simulated {
    /// Where [`OsBackend::message_sessions`] writes: `<file>.messages`.
    pub fn messages_file(&self) -> PathBuf {
        self.file.with_extension("messages")
    }
    async fn read(&self) -> Result<SimState, OsError> {
        match tokio::fs::read(&self.file).await {
            Ok(b) => Ok(serde_json::from_slice(&b)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SimState {
                booted: self.initial.clone(),
                staged: None,
                finalized: false,
                sessions: 0,
            }),
            Err(e) => Err(e.into()),
        }
    }
    async fn write(&self, s: &SimState) -> Result<(), OsError> {
        if let Some(d) = self.file.parent() {
            tokio::fs::create_dir_all(d).await?;
        }
        let tmp = self.file.with_extension("tmp");
        tokio::fs::write(&tmp, serde_json::to_vec_pretty(s)?).await?;
        tokio::fs::rename(&tmp, &self.file).await?;
        Ok(())
    }
}

/// The scheme of a payload as the backends write it: an image digest
/// reference (`name@sha256:<hex>`) is OCI, anything else a checksum.
pub fn scheme_of(payload: &str) -> PayloadScheme {
    match payload.split_once("@sha256:") {
        Some((name, digest)) if !name.is_empty() && !digest.is_empty() => PayloadScheme::Oci,
        _ => PayloadScheme::Checksum,
    }
}

impl OsBackend for Simulated {
    async fn booted(&self) -> Result<Release, OsError> {
        Ok(self.read().await?.booted)
    }
    /// From the booted payload ([`scheme_of`]).
    async fn booted_scheme(&self) -> Result<PayloadScheme, OsError> {
        Ok(scheme_of(&self.read().await?.booted.payload))
    }
    async fn staged(&self) -> Result<Option<Release>, OsError> {
        Ok(self.read().await?.staged)
    }
    async fn stage(&self, target: &Release) -> Result<(), OsError> {
        if self.fail_versions.contains(&target.version) {
            return Err(OsError::StageFailed(target.version.clone()));
        }
        let mut s = self.read().await?;
        s.staged = Some(target.clone());
        s.finalized = false;
        self.write(&s).await
    }
    async fn finalize(&self) -> Result<(), OsError> {
        let mut s = self.read().await?;
        if s.staged.is_none() {
            return Err(OsError::NothingStaged);
        }
        s.finalized = true;
        self.write(&s).await
    }
    async fn cleanup(&self) -> Result<(), OsError> {
        let mut s = self.read().await?;
        s.staged = None;
        s.finalized = false;
        self.write(&s).await
    }
    async fn reboot(&self) -> Result<(), OsError> {
        let mut s = self.read().await?;
        if s.finalized
            && let Some(new) = s.staged.take()
            && !self.fail_boot_versions.contains(&new.version)
        {
            s.booted = new;
        }
        s.finalized = false;
        self.write(&s).await
    }
    async fn active_sessions(&self) -> Result<usize, OsError> {
        Ok(self.read().await?.sessions)
    }
    /// Appends the message to `<file>.messages` once per simulated session.
    async fn message_sessions(&self, message: &str) -> Result<usize, OsError> {
        use tokio::io::AsyncWriteExt;
        let sessions = self.read().await?.sessions;
        if sessions == 0 {
            return Ok(0);
        }
        if let Some(d) = self.file.parent() {
            tokio::fs::create_dir_all(d).await?;
        }
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.messages_file())
            .await?;
        for _ in 0..sessions {
            f.write_all(wall::format_message(message).as_bytes())
                .await?;
        }
        f.flush().await?;
        Ok(sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(v: &str) -> Release {
        Release {
            version: v.into(),
            payload: format!("sha-{v}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn simulated_stage_finalize_reboot() {
        let t = tempfile::tempdir().unwrap();
        let os = Simulated {
            file: t.path().join("sim.json"),
            fail_versions: vec!["3".into()],
            fail_boot_versions: vec![],
            initial: rel("1"),
        };
        assert_eq!(os.booted().await.unwrap(), rel("1"));
        assert!(matches!(
            os.stage(&rel("3")).await,
            Err(OsError::StageFailed(_))
        ));
        os.stage(&rel("2")).await.unwrap();
        assert_eq!(os.staged().await.unwrap(), Some(rel("2")));
        // Reboot without finalization keeps the old version.
        os.reboot().await.unwrap();
        assert_eq!(os.booted().await.unwrap(), rel("1"));
        os.finalize().await.unwrap();
        os.reboot().await.unwrap();
        assert_eq!(os.booted().await.unwrap(), rel("2"));
        assert_eq!(os.staged().await.unwrap(), None);
        assert_eq!(os.active_sessions().await.unwrap(), 0);
        assert_eq!(os.message_sessions("hi").await.unwrap(), 0);
        assert!(!os.messages_file().exists());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn simulated_scheme_follows_the_booted_payload() {
        let t = tempfile::tempdir().unwrap();
        let mut os = Simulated {
            file: t.path().join("sim.json"),
            fail_versions: vec![],
            fail_boot_versions: vec![],
            initial: rel("1"),
        };
        assert_eq!(os.booted_scheme().await.unwrap(), PayloadScheme::Checksum);
        os.initial.payload = "quay.io/fedora/fedora-coreos@sha256:0123abcd".into();
        assert_eq!(os.booted_scheme().await.unwrap(), PayloadScheme::Oci);
        assert_eq!(scheme_of("@sha256:00"), PayloadScheme::Checksum);
        assert_eq!(scheme_of(&"c".repeat(64)), PayloadScheme::Checksum);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn simulated_boot_failure_rolls_back() {
        let t = tempfile::tempdir().unwrap();
        let os = Simulated {
            file: t.path().join("sim.json"),
            fail_versions: vec![],
            fail_boot_versions: vec!["2".into()],
            initial: rel("1"),
        };
        os.stage(&rel("2")).await.unwrap();
        os.finalize().await.unwrap();
        os.reboot().await.unwrap();
        // Back on the old release, the failed deployment gone.
        assert_eq!(os.booted().await.unwrap(), rel("1"));
        assert_eq!(os.staged().await.unwrap(), None);
        assert!(matches!(os.finalize().await, Err(OsError::NothingStaged)));
        os.stage(&rel("3")).await.unwrap();
        os.finalize().await.unwrap();
        os.reboot().await.unwrap();
        assert_eq!(os.booted().await.unwrap(), rel("3"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn simulated_messages_reach_each_session() {
        let t = tempfile::tempdir().unwrap();
        let os = Simulated {
            file: t.path().join("sim.json"),
            fail_versions: vec![],
            fail_boot_versions: vec![],
            initial: rel("1"),
        };
        std::fs::write(
            &os.file,
            r#"{"booted":{"version":"1","payload":"p"},"sessions":2}"#,
        )
        .unwrap();
        assert_eq!(os.message_sessions("reboot soon").await.unwrap(), 2);
        let text = std::fs::read_to_string(os.messages_file()).unwrap();
        assert_eq!(text.matches("reboot soon").count(), 2);
    }
}
