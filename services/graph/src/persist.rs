//! Revisions persisted in the data directory, so a restart neither reuses a
//! revision nor bumps the revision of a graph that did not change.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What is kept across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PersistedState {
    /// Highest revision handed out.
    pub revision: u64,
    /// Per scope (`stream/basearch/scheme`): revision and digest of its graph.
    pub scopes: BTreeMap<String, PersistedScope>,
}

/// One scope's persisted revision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PersistedScope {
    /// Revision of the graph.
    pub revision: u64,
    /// Digest of the graph.
    pub digest: String,
}

impl PersistedState {
    /// Loads the state; a missing or unreadable file starts from zero (logged).
    pub fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(path = %path.display(), %err, "ignoring unreadable graph state");
                Self::default()
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot read graph state");
                Self::default()
            }
        }
    }

    /// Writes the state atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}
