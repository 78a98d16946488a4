//! Per-client rollout math: throttling, eligibility instants and wariness.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const START_EPOCH: &str = "org.fedoraproject.coreos.updates.start_epoch";
const START_VALUE: &str = "org.fedoraproject.coreos.updates.start_value";
const DURATION: &str = "org.fedoraproject.coreos.updates.duration_minutes";
const ROLLOUT: &str = "org.fedoraproject.coreos.updates.rollout";

/// Smallest wariness derived from a node UUID.
pub const MIN_DERIVED_WARINESS: f64 = 0.000_001;

/// Error parsing a client-supplied wariness.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WarinessError {
    /// Not a number at all.
    #[error("rollout_wariness is not a number: {0:?}")]
    NotANumber(String),
    /// NaN or infinite.
    #[error("rollout_wariness is not finite: {0:?}")]
    NotFinite(String),
}

/// Error reading a rollout from node metadata.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// A rollout key holds an unparsable value.
    #[error("invalid rollout metadata {key}={value:?}")]
    Invalid {
        /// Metadata key.
        key: &'static str,
        /// Offending value.
        value: String,
    },
}

/// A node's rollout parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutSpec {
    /// Start, seconds since the epoch.
    pub start_epoch: i64,
    /// Throttle value at the start (0.0-1.0).
    pub start_value: f64,
    /// Minutes until full rollout, if any.
    pub duration_minutes: Option<u64>,
}

impl RolloutSpec {
    /// Reads the rollout of a node; `Ok(None)` when the node has no rollout.
    pub fn from_metadata(md: &BTreeMap<String, String>) -> Result<Option<Self>, SpecError> {
        if md.get(ROLLOUT).map(String::as_str) != Some("true") {
            return Ok(None);
        }
        let start_epoch = parse_key(md, START_EPOCH)?.unwrap_or(0);
        let start_value: f64 = parse_key(md, START_VALUE)?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&start_value) {
            return Err(SpecError::Invalid {
                key: START_VALUE,
                value: start_value.to_string(),
            });
        }
        let duration_minutes = parse_key(md, DURATION)?;
        Ok(Some(Self {
            start_epoch,
            start_value,
            duration_minutes,
        }))
    }

    /// End of the rollout in epoch seconds, when it has a duration.
    fn end(&self) -> Option<f64> {
        let d = self.duration_minutes?.max(1);
        Some(self.start_epoch as f64 + 60.0 * d as f64)
    }

    /// Throttle value (fraction of clients allowed) at `now`.
    pub fn throttle_at(&self, now: f64) -> f64 {
        let start = self.start_epoch as f64;
        if now < start {
            return 0.0;
        }
        let Some(end) = self.end() else {
            return self.start_value;
        };
        if now >= end {
            return 1.0;
        }
        let v = self.start_value + (1.0 - self.start_value) * (now - start) / (end - start);
        v.clamp(0.0, 1.0)
    }

    /// Whether a client of this wariness sees the node at `now`.
    pub fn visible_at(&self, wariness: f64, now: f64) -> bool {
        wariness <= self.throttle_at(now)
    }

    /// Earliest instant at which a client of this wariness sees the node;
    /// `None` if it never does.
    pub fn eligible_at(&self, wariness: f64) -> Option<f64> {
        let start = self.start_epoch as f64;
        if self.visible_at(wariness, start) {
            return Some(start);
        }
        let end = self.end()?;
        let frac = (wariness - self.start_value) / (1.0 - self.start_value);
        let mut t = (start + frac * (end - start)).clamp(start, end);
        // Float rounding: move up until the predicate really holds.
        while !self.visible_at(wariness, t) {
            let next = t.next_up();
            t = if next > end { end } else { next };
            if t >= end {
                return Some(end);
            }
        }
        // And back down while it still holds, so the instant is the earliest.
        while t > start && self.visible_at(wariness, t.next_down()) {
            t = t.next_down();
        }
        Some(t)
    }
}

fn parse_key<T: std::str::FromStr>(
    md: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Option<T>, SpecError> {
    md.get(key)
        .map(|v| {
            v.parse().map_err(|_| SpecError::Invalid {
                key,
                value: v.clone(),
            })
        })
        .transpose()
}

/// Wariness derived from a node UUID.
///
/// Exactly: SHA-256 of the UTF-8 bytes of `node_uuid` as given, the first 8
/// bytes of the digest read as a big-endian `u64`, divided by 2^64, then
/// clamped to `[0.000001, 1.0]`. Stable across toolchains and platforms.
pub fn wariness_from_node_uuid(node_uuid: &str) -> f64 {
    let digest = Sha256::digest(node_uuid.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let v = u64::from_be_bytes(first) as f64 / 18_446_744_073_709_551_616.0;
    v.clamp(MIN_DERIVED_WARINESS, 1.0)
}

/// Parses a client's `rollout_wariness`: non-finite values are errors,
/// finite ones are clamped to `[0, 1]`.
pub fn parse_wariness(s: &str) -> Result<f64, WarinessError> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| WarinessError::NotANumber(s.to_owned()))?;
    if !v.is_finite() {
        return Err(WarinessError::NotFinite(s.to_owned()));
    }
    Ok(v.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests;
