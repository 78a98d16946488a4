//! Stored records (JSON under `telemetry/`) and the pure derivation of update
//! attempts from successive reports of one host.
//!
//! An *attempt* of a host on release R opens when the host is seen working
//! towards R (staging, staged, waiting for gates, finalizing, rebooting with
//! target R), or reopens on a fresh `staging` after a failure. Its staged
//! instant is the first report showing it at or past staged (staged, waiting
//! for gates, finalizing, rebooting): the agent reports only its latest
//! state, so a quick host may never report `staged` itself. It fails when a
//! report carries a new error (`last_error_kind`/`last_error` changed and not
//! empty) of a kind that says the release failed on the host
//! ([`RELEASE_FAILURE_KINDS`]) while working towards R, and succeeds when the
//! host reports steady on R (booted R in `reporting-steady`, `idle`,
//! `update-available` or `dead-end`). Other kinds (the hint source, a gate or
//! the lock unreachable) are outages around the host, not verdicts on R:
//! they are counted by kind but leave the attempt open. A host that ever
//! failed on R counts as failed for R's halt rule, even if a later try
//! succeeded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use upshift_common::grpc::{from_timestamp, timestamp};
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::AgentState;

/// Store key prefix of host records.
pub const HOSTS_PREFIX: &str = "telemetry/hosts/";
/// Store key prefix of halt records.
pub const HALTS_PREFIX: &str = "telemetry/halts/";
/// Attempts kept per host (the most recent releases).
pub const MAX_ATTEMPTS_PER_HOST: usize = 4;

/// Error kinds (the agent's closed set) that fail an attempt and so count
/// towards a release's halt: deploying it failed, finalizing it failed, the
/// host booted it and came back on the old release (or its staged
/// deployment vanished), or the agent gave up on it (deny list after
/// repeated failed attempts).
///
/// Not counted: `hints-unavailable` (policy or Cincinnati server down),
/// `gate-check-failed` (lock service or session check unreachable),
/// `steady-state-failed` (releasing the lock after boot), `os` (the OS
/// backend itself unreachable) and any kind this list does not name. A
/// host that rolls back reports `rolled-back` after it restarts on the old
/// release; until then its attempt stays open and counts through the
/// rule's `steady_within`.
pub const RELEASE_FAILURE_KINDS: [&str; 4] = [
    "staging-failed",
    "finalize-failed",
    "rolled-back",
    "release-denied",
];

/// Whether an error of `kind` says the release failed on the host.
pub fn is_release_failure(kind: &str) -> bool {
    RELEASE_FAILURE_KINDS.contains(&kind)
}

/// Whether `s` is usable as a stream, version, group or error kind (and a key part).
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_+~".contains(&b))
}

/// Whether `s` is a valid node id (1-128 of `[A-Za-z0-9._-]`).
pub fn valid_node_uuid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
}

/// Milliseconds since the epoch.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `SystemTime` of `ms` milliseconds since the epoch.
pub fn from_epoch_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Lower-case, dash-separated name of a state (metric label, logs).
pub fn state_name(s: AgentState) -> &'static str {
    match s {
        AgentState::Unspecified => "unspecified",
        AgentState::Starting => "starting",
        AgentState::ReportingSteady => "reporting-steady",
        AgentState::Idle => "idle",
        AgentState::UpdateAvailable => "update-available",
        AgentState::Staging => "staging",
        AgentState::Staged => "staged",
        AgentState::WaitingForGates => "waiting-for-gates",
        AgentState::Finalizing => "finalizing",
        AgentState::Rebooting => "rebooting",
        AgentState::DeadEnd => "dead-end",
    }
}

fn in_progress(s: AgentState) -> bool {
    matches!(
        s,
        AgentState::Staging
            | AgentState::Staged
            | AgentState::WaitingForGates
            | AgentState::Finalizing
            | AgentState::Rebooting
    )
}

/// Staged or a later step towards the reboot.
fn at_or_past_staged(s: AgentState) -> bool {
    matches!(
        s,
        AgentState::Staged
            | AgentState::WaitingForGates
            | AgentState::Finalizing
            | AgentState::Rebooting
    )
}

fn steady(s: AgentState) -> bool {
    matches!(
        s,
        AgentState::ReportingSteady
            | AgentState::Idle
            | AgentState::UpdateAvailable
            | AgentState::DeadEnd
    )
}

/// A host's last status, as stored (mirrors `HostStatus`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct StatusRecord {
    pub node_uuid: String,
    pub group: String,
    pub stream: String,
    pub basearch: String,
    pub platform: String,
    pub booted_version: String,
    pub target_version: String,
    pub state: i32,
    pub last_error_kind: String,
    pub last_error: String,
    pub observed_at_ms: u64,
    pub state_since_ms: u64,
    pub lock_held: bool,
    pub agent_version: String,
    pub traceparent: String,
}

impl StatusRecord {
    /// From the wire message.
    pub fn from_pb(s: &pb::HostStatus) -> Self {
        let ms = |t: &Option<prost_types::Timestamp>| {
            t.as_ref().map_or(0, |t| epoch_ms(from_timestamp(t)))
        };
        Self {
            node_uuid: s.node_uuid.clone(),
            group: s.group.clone(),
            stream: s.stream.clone(),
            basearch: s.basearch.clone(),
            platform: s.platform.clone(),
            booted_version: s.booted_version.clone(),
            target_version: s.target_version.clone(),
            state: s.state,
            last_error_kind: s.last_error_kind.clone(),
            last_error: s.last_error.clone(),
            observed_at_ms: ms(&s.observed_at),
            state_since_ms: ms(&s.state_since),
            lock_held: s.lock_held,
            agent_version: s.agent_version.clone(),
            traceparent: s.traceparent.clone(),
        }
    }

    /// To the wire message.
    pub fn to_pb(&self) -> pb::HostStatus {
        let ts = |ms: u64| (ms > 0).then(|| timestamp(from_epoch_ms(ms)));
        pb::HostStatus {
            node_uuid: self.node_uuid.clone(),
            group: self.group.clone(),
            stream: self.stream.clone(),
            basearch: self.basearch.clone(),
            platform: self.platform.clone(),
            booted_version: self.booted_version.clone(),
            target_version: self.target_version.clone(),
            state: self.state,
            last_error_kind: self.last_error_kind.clone(),
            last_error: self.last_error.clone(),
            observed_at: ts(self.observed_at_ms),
            state_since: ts(self.state_since_ms),
            lock_held: self.lock_held,
            agent_version: self.agent_version.clone(),
            traceparent: self.traceparent.clone(),
        }
    }

    /// The state enum (unknown values read as unspecified).
    pub fn state(&self) -> AgentState {
        AgentState::try_from(self.state).unwrap_or(AgentState::Unspecified)
    }
}

/// One host's update attempt on one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Stream of the release.
    pub stream: String,
    /// Target release.
    pub version: String,
    /// When the (first) attempt opened.
    pub started_ms: u64,
    /// When the host was first seen at or past staged on it (this try).
    #[serde(default)]
    pub staged_ms: Option<u64>,
    /// Whether an attempt is in progress.
    pub open: bool,
    /// Error kind of the first failure.
    #[serde(default)]
    pub failed: Option<String>,
    /// When the host reported steady on the release.
    #[serde(default)]
    pub steady_ms: Option<u64>,
}

/// A host's stored record (`telemetry/hosts/<node_uuid>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Last status.
    pub status: StatusRecord,
    /// When the last report arrived (server clock).
    pub last_seen_ms: u64,
    /// Attempts on the most recent releases.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

impl HostRecord {
    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What a report changed about attempts (turned into metrics by the caller).
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEvent {
    /// An attempt on `version` opened.
    Started {
        /// Stream.
        stream: String,
        /// Target release.
        version: String,
    },
    /// A host reported a new error, of any kind (release failure or not).
    ErrorReported {
        /// Stream.
        stream: String,
        /// Error kind.
        kind: String,
    },
    /// An attempt failed with `kind` (one of [`RELEASE_FAILURE_KINDS`]).
    Failed {
        /// Stream.
        stream: String,
        /// Target release.
        version: String,
        /// Error kind.
        kind: String,
    },
    /// The host reached steady on `version`; `staged_for` is the time from staged.
    Steady {
        /// Stream.
        stream: String,
        /// Release.
        version: String,
        /// Staged to steady, when the staged instant is known.
        staged_for: Option<Duration>,
    },
}

/// Applies a new status to the previous record (if any), returning the new
/// record and the attempt events it implies. Pure: `now` is the server clock.
pub fn apply_status(
    prev: Option<&HostRecord>,
    status: StatusRecord,
    now: SystemTime,
) -> (HostRecord, Vec<AttemptEvent>) {
    let now_ms = epoch_ms(now);
    let mut attempts = prev.map(|p| p.attempts.clone()).unwrap_or_default();
    let prev_status = prev.map(|p| &p.status);
    let mut events = Vec::new();
    track_progress(&mut attempts, prev_status, &status, now_ms, &mut events);
    track_failure(&mut attempts, prev_status, &status, now_ms, &mut events);
    track_steady(&mut attempts, &status, now_ms, &mut events);
    if attempts.len() > MAX_ATTEMPTS_PER_HOST {
        let excess = attempts.len() - MAX_ATTEMPTS_PER_HOST;
        attempts.drain(..excess);
    }
    let record = HostRecord {
        status,
        last_seen_ms: now_ms,
        attempts,
    };
    (record, events)
}

/// Opens (or reopens after a failure) the attempt on the target while the
/// host works towards it, and notes when it is first seen at or past staged.
/// Times are the server's, so durations do not mix clocks.
fn track_progress(
    attempts: &mut Vec<Attempt>,
    prev: Option<&StatusRecord>,
    status: &StatusRecord,
    now_ms: u64,
    events: &mut Vec<AttemptEvent>,
) {
    let state = status.state();
    let (target, stream) = (status.target_version.as_str(), status.stream.as_str());
    if target.is_empty() || target == status.booted_version || !in_progress(state) {
        return;
    }
    let prev_state = prev.map_or(AgentState::Unspecified, StatusRecord::state);
    let fresh_staging = state == AgentState::Staging && prev_state != AgentState::Staging;
    match attempts.iter_mut().find(|a| a.version == target) {
        None => {
            attempts.push(new_attempt(stream, target, now_ms));
            events.push(started(stream, target));
        }
        Some(a) if !a.open && a.steady_ms.is_none() && fresh_staging => {
            a.open = true;
            // Staged-to-steady measures the try that reaches steady.
            a.staged_ms = None;
            events.push(started(stream, target));
        }
        Some(_) => {}
    }
    if at_or_past_staged(state)
        && let Some(a) = attempts.iter_mut().find(|a| a.version == target)
    {
        a.staged_ms.get_or_insert(now_ms);
    }
}

/// A new error (kind or message changed, not empty) is reported by kind; one
/// of [`RELEASE_FAILURE_KINDS`] also fails the open attempt on the target
/// (or on the previous report's target when none is given).
fn track_failure(
    attempts: &mut Vec<Attempt>,
    prev: Option<&StatusRecord>,
    status: &StatusRecord,
    now_ms: u64,
    events: &mut Vec<AttemptEvent>,
) {
    let kind = &status.last_error_kind;
    let new_error = !kind.is_empty()
        && prev.is_none_or(|p| &p.last_error_kind != kind || p.last_error != status.last_error);
    if !new_error {
        return;
    }
    events.push(AttemptEvent::ErrorReported {
        stream: status.stream.clone(),
        kind: kind.clone(),
    });
    if !is_release_failure(kind) {
        return;
    }
    let target = match status.target_version.as_str() {
        "" => prev.map_or("", |p| p.target_version.as_str()),
        t => t,
    };
    if target.is_empty() || target == status.booted_version {
        return;
    }
    if !attempts.iter().any(|a| a.version == target) {
        attempts.push(new_attempt(&status.stream, target, now_ms));
        events.push(started(&status.stream, target));
    }
    if let Some(a) = attempts.iter_mut().find(|a| a.version == target)
        && a.open
    {
        a.open = false;
        a.failed.get_or_insert_with(|| kind.clone());
        events.push(AttemptEvent::Failed {
            stream: a.stream.clone(),
            version: a.version.clone(),
            kind: kind.clone(),
        });
    }
}

/// Steady on a release closes its attempt as a success.
fn track_steady(
    attempts: &mut [Attempt],
    status: &StatusRecord,
    now_ms: u64,
    events: &mut Vec<AttemptEvent>,
) {
    if !steady(status.state()) {
        return;
    }
    if let Some(a) = attempts
        .iter_mut()
        .find(|a| a.version == status.booted_version && a.steady_ms.is_none())
    {
        a.open = false;
        a.steady_ms = Some(now_ms);
        events.push(AttemptEvent::Steady {
            stream: a.stream.clone(),
            version: a.version.clone(),
            staged_for: a
                .staged_ms
                .map(|s| Duration::from_millis(now_ms.saturating_sub(s))),
        });
    }
}

fn new_attempt(stream: &str, version: &str, now_ms: u64) -> Attempt {
    Attempt {
        stream: stream.to_string(),
        version: version.to_string(),
        started_ms: now_ms,
        staged_ms: None,
        open: true,
        failed: None,
        steady_ms: None,
    }
}

fn started(stream: &str, version: &str) -> AttemptEvent {
    AttemptEvent::Started {
        stream: stream.to_string(),
        version: version.to_string(),
    }
}

/// A recorded automatic halt (`telemetry/halts/<stream>/<version>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaltRecord {
    /// Stream.
    pub stream: String,
    /// Halted release.
    pub version: String,
    /// The threshold crossed and the figures.
    pub reason: String,
    /// When the halt fired.
    pub at_ms: u64,
    /// When the policy service accepted the pause.
    #[serde(default)]
    pub paused_at_ms: Option<u64>,
    /// Last error of the pause call, while it is being retried.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the policy showed the rollout resumed (the halt is lifted).
    #[serde(default)]
    pub lifted_at_ms: Option<u64>,
}

impl HaltRecord {
    /// Its store key.
    pub fn key(&self) -> String {
        halt_key(&self.stream, &self.version)
    }

    /// Whether it is in force (not lifted).
    pub fn in_force(&self) -> bool {
        self.lifted_at_ms.is_none()
    }

    /// The wire message.
    pub fn to_pb(&self) -> pb::Halt {
        pb::Halt {
            stream: self.stream.clone(),
            version: self.version.clone(),
            reason: self.reason.clone(),
            at: Some(timestamp(from_epoch_ms(self.at_ms))),
        }
    }

    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Store key of the halt of `version` in `stream`.
pub fn halt_key(stream: &str, version: &str) -> String {
    format!("{HALTS_PREFIX}{stream}/{version}")
}

/// Store key of a host.
pub fn host_key(node_uuid: &str) -> String {
    format!("{HOSTS_PREFIX}{node_uuid}")
}

#[cfg(test)]
mod tests;
