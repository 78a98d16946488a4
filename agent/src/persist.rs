//! Persistent agent state under the state directory, written atomically
//! (temp file + fsync + rename + directory fsync).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name under the state directory.
pub const STATE_FILE: &str = "agent-state.json";

/// What survives restarts and reboots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// Target staged or being finalized; compared with the booted version
    /// after a restart.
    pub pending_target: Option<String>,
    /// Releases that failed staging past the retry budget.
    pub deny_list: BTreeSet<String>,
    /// Staging failures per release.
    pub failure_counts: BTreeMap<String, u32>,
    /// Whether a reboot lock is held (released in steady state).
    pub lock_held: bool,
    /// Set before asking for the lock, until it is held or given back: a
    /// crash between the grant and saving `lock_held` leaves this set, and
    /// steady state releases (idempotently) what may have been granted.
    #[serde(default)]
    pub lock_acquiring: bool,
    /// Updates paused locally (`upshift-agent pause`).
    #[serde(default)]
    pub paused: bool,
    /// W3C `traceparent` of the update of `pending_target`: the spans of
    /// the next run (steady state after the reboot) join its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Path of the state file.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// Loads the state; a missing file is the default state.
pub fn load(state_dir: &Path) -> std::io::Result<Persisted> {
    match std::fs::read(path(state_dir)) {
        Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
        Err(e) => Err(e),
    }
}

/// Saves the state atomically.
pub fn save(state_dir: &Path, state: &Persisted) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(".{STATE_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(state_dir))?;
    std::fs::File::open(state_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_missing() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("var/lib/upshift");
        assert_eq!(load(&dir).unwrap(), Persisted::default());
        let mut p = Persisted {
            pending_target: Some("2".into()),
            lock_held: true,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            ..Default::default()
        };
        p.deny_list.insert("3".into());
        p.failure_counts.insert("3".into(), 3);
        save(&dir, &p).unwrap();
        assert_eq!(load(&dir).unwrap(), p);
        assert!(!dir.join(format!(".{STATE_FILE}.tmp")).exists());
    }

    #[test]
    fn state_of_an_older_agent_loads() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            path(t.path()),
            r#"{"pending_target": "2", "deny_list": [], "failure_counts": {}, "lock_held": true}"#,
        )
        .unwrap();
        let p = load(t.path()).unwrap();
        assert_eq!(p.pending_target.as_deref(), Some("2"));
        assert_eq!(p.traceparent, None);
        assert!(!p.paused);
        assert!(!p.lock_acquiring);
    }
}
