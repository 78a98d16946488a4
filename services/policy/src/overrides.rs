//! Runtime rollout overrides (pauses, freezes): the records kept in the
//! store and the effective-time arithmetic of a paused rollout.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use upshift_common::clock::{epoch_secs, from_epoch_secs};

/// Key prefix of every policy record in the store.
pub const PREFIX: &str = "policy/";
/// Key prefix of rollout pause records: `policy/pauses/<stream>/<version>`.
pub const PAUSES: &str = "policy/pauses/";
/// Key prefix of stream freezes: `policy/freezes/<stream>`.
pub const FREEZES: &str = "policy/freezes/";
/// Key prefix of audit entries.
pub const AUDIT: &str = "policy/audit/";

/// Who did what, when, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// Operator-given reason.
    pub reason: String,
    /// Authenticated actor.
    pub actor: String,
    /// Seconds since the Unix epoch.
    pub at: f64,
}

impl Mark {
    /// The mark's instant.
    pub fn at(&self) -> SystemTime {
        from_epoch_secs(self.at)
    }
}

/// A rollout's override record. It survives a resume because it carries
/// the accumulated paused time that keeps the throttle continuous.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutOverride {
    /// Set while paused.
    pub paused: Option<Mark>,
    /// Total seconds spent paused in earlier (resumed) pauses.
    pub paused_total: f64,
    /// The last resume, for the record.
    #[serde(default)]
    pub resumed: Option<Mark>,
    /// While paused: the release is offered to no node (an automatic halt),
    /// rather than held at its throttle for the nodes already eligible.
    #[serde(default)]
    pub withdrawn: bool,
}

impl RolloutOverride {
    /// The rollout clock at real time `now` (epoch seconds): real time minus
    /// every paused interval, frozen at the pause instant while paused.
    pub fn effective_now(&self, now: f64) -> f64 {
        match &self.paused {
            Some(p) => p.at.min(now) - self.paused_total,
            None => now - self.paused_total,
        }
    }
}

/// Every override in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Rollout records by (stream, version).
    pub rollouts: BTreeMap<(String, String), RolloutOverride>,
    /// Frozen streams.
    pub freezes: BTreeMap<String, Mark>,
}

impl Overrides {
    /// The record of one rollout, if any.
    pub fn rollout(&self, stream: &str, version: &str) -> Option<&RolloutOverride> {
        self.rollouts.get(&(stream.to_owned(), version.to_owned()))
    }

    /// The pause of a rollout, if paused.
    pub fn pause(&self, stream: &str, version: &str) -> Option<&Mark> {
        self.rollout(stream, version)
            .and_then(|o| o.paused.as_ref())
    }

    /// The rollout clock of (stream, version) at `now`, in epoch seconds.
    pub fn effective_now(&self, stream: &str, version: &str, now: SystemTime) -> f64 {
        let now = epoch_secs(now);
        self.rollout(stream, version)
            .map_or(now, |o| o.effective_now(now))
    }

    /// Seconds to add to a rollout-clock instant to get real time.
    pub fn offset(&self, stream: &str, version: &str) -> f64 {
        self.rollout(stream, version)
            .map_or(0.0, |o| o.paused_total)
    }

    /// Applies one stored key (`None` = deleted). Unknown keys are ignored.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), serde_json::Error> {
        if let Some(rest) = key.strip_prefix(PAUSES) {
            let Some((stream, version)) = rest.split_once('/') else {
                return Ok(());
            };
            let k = (stream.to_owned(), version.to_owned());
            match value {
                Some(v) => {
                    self.rollouts.insert(k, serde_json::from_slice(v)?);
                }
                None => {
                    self.rollouts.remove(&k);
                }
            }
        } else if let Some(stream) = key.strip_prefix(FREEZES) {
            match value {
                Some(v) => {
                    self.freezes
                        .insert(stream.to_owned(), serde_json::from_slice(v)?);
                }
                None => {
                    self.freezes.remove(stream);
                }
            }
        }
        Ok(())
    }
}

/// Store key of a rollout record.
pub fn pause_key(stream: &str, version: &str) -> String {
    format!("{PAUSES}{stream}/{version}")
}

/// Store key of a freeze.
pub fn freeze_key(stream: &str) -> String {
    format!("{FREEZES}{stream}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_holds_and_resume_continues() {
        let mark = |at| Mark {
            reason: "r".into(),
            actor: "a".into(),
            at,
        };
        let mut o = RolloutOverride::default();
        assert_eq!(o.effective_now(100.0), 100.0);
        o.paused = Some(mark(100.0));
        assert_eq!(o.effective_now(160.0), 100.0);
        // Resume at 160: 60 s paused.
        o.paused_total += 60.0;
        o.paused = None;
        assert_eq!(o.effective_now(160.0), 100.0);
        assert_eq!(o.effective_now(170.0), 110.0);
    }
}
