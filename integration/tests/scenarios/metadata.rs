//! The re-dated rollout of [`NEW`](crate::NEW) in the copy of `updates.json`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};

use crate::NEW;

/// The wall clock: the service processes run on the system clock, so the
/// re-dated rollout must be placed on it too.
#[allow(clippy::disallowed_methods)]
pub fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Rewrites the last rollout of `updates.json` (the one of [`NEW`]).
pub fn set_last_rollout(updates: &mut serde_json::Value, rollout: serde_json::Value) -> Result<()> {
    let releases = updates["releases"]
        .as_array_mut()
        .context("updates.json has no releases")?;
    let last = releases
        .iter_mut()
        .rev()
        .find(|r| r["metadata"].get("rollout").is_some())
        .context("no rollout in updates.json")?;
    ensure!(
        last["version"] == NEW,
        "last rollout is {}",
        last["version"]
    );
    last["metadata"]["rollout"] = rollout;
    Ok(())
}

/// A rollout of [`NEW`] that started `ago` seconds ago at 0% and lasts
/// `minutes`.
pub fn rollout_started(ago: i64, minutes: u64) -> serde_json::Value {
    serde_json::json!({
        "start_epoch": now_epoch() - ago,
        "start_percentage": 0.0,
        "duration_minutes": minutes,
    })
}
