//! OS backends behind one trait: a simulated backend (JSON state file) for
//! the dev mesh and tests. (The rpm-ostree/logind D-Bus backend is not
//! written yet.)

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Exit code the agent uses after a simulated "reboot": a supervisor restarts
/// it and it comes up with the new version booted.
pub const EXIT_SIMULATED_REBOOT: u8 = 100;

/// A release as the OS knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub payload: String,
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
}

/// What the agent needs from the OS.
pub trait OsBackend {
    fn booted(&self) -> impl Future<Output = Result<Release, OsError>>;
    fn staged(&self) -> impl Future<Output = Result<Option<Release>, OsError>>;
    fn stage(&self, target: &Release) -> impl Future<Output = Result<(), OsError>>;
    fn finalize(&self) -> impl Future<Output = Result<(), OsError>>;
    fn cleanup(&self) -> impl Future<Output = Result<(), OsError>>;
    /// Reboots; for the simulated backend this records the new booted
    /// version and the caller exits with [`EXIT_SIMULATED_REBOOT`].
    fn reboot(&self) -> impl Future<Output = Result<(), OsError>>;
    /// Number of interactive user sessions.
    fn active_sessions(&self) -> impl Future<Output = Result<usize, OsError>>;
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
    /// Booted release used when the file does not exist yet.
    pub initial: Release,
}

impl Simulated {
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

impl OsBackend for Simulated {
    async fn booted(&self) -> Result<Release, OsError> {
        Ok(self.read().await?.booted)
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
        {
            s.booted = new;
        }
        s.finalized = false;
        self.write(&s).await
    }
    async fn active_sessions(&self) -> Result<usize, OsError> {
        Ok(self.read().await?.sessions)
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
    }
}
