//! The agent's published status: what `status`, the metrics socket and the
//! telemetry reports show. The driver owns the `watch::Sender`; readers
//! never block it.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use crate::machine::State;

/// Closed set of error kinds (metric labels and telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The hint stream or the Cincinnati server failed.
    HintsUnavailable,
    /// Deploying the target failed.
    StagingFailed,
    /// The release went on the deny list.
    ReleaseDenied,
    /// A gate could not be checked (lock service, sessions).
    GateCheckFailed,
    /// Finalization failed (also: nothing was left staged to finalize).
    FinalizeFailed,
    /// After a restart the target was neither booted nor staged: the host
    /// booted it and rolled back, or the staged deployment was removed.
    RolledBack,
    /// Releasing the lock at steady state failed.
    SteadyStateFailed,
    /// The OS backend failed.
    Os,
}

impl ErrorKind {
    /// Every kind, for metric exposition.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::HintsUnavailable,
        ErrorKind::StagingFailed,
        ErrorKind::ReleaseDenied,
        ErrorKind::GateCheckFailed,
        ErrorKind::FinalizeFailed,
        ErrorKind::RolledBack,
        ErrorKind::SteadyStateFailed,
        ErrorKind::Os,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::HintsUnavailable => "hints-unavailable",
            ErrorKind::StagingFailed => "staging-failed",
            ErrorKind::ReleaseDenied => "release-denied",
            ErrorKind::GateCheckFailed => "gate-check-failed",
            ErrorKind::FinalizeFailed => "finalize-failed",
            ErrorKind::RolledBack => "rolled-back",
            ErrorKind::SteadyStateFailed => "steady-state-failed",
            ErrorKind::Os => "os",
        }
    }
}

/// State names, in diagram order (the `state` label).
pub const STATE_NAMES: [&str; 10] = [
    "start",
    "reporting-steady",
    "idle",
    "dead-end",
    "update-available",
    "staging",
    "staged",
    "waiting-for-gates",
    "finalizing",
    "rebooting",
];

/// The `state` label of a state.
pub fn state_name(s: &State) -> &'static str {
    match s {
        State::Start => STATE_NAMES[0],
        State::ReportingSteady { .. } => STATE_NAMES[1],
        State::Idle => STATE_NAMES[2],
        State::DeadEnd { .. } => STATE_NAMES[3],
        State::UpdateAvailable { .. } => STATE_NAMES[4],
        State::Staging { .. } => STATE_NAMES[5],
        State::Staged { .. } => STATE_NAMES[6],
        State::WaitingForGates { .. } => STATE_NAMES[7],
        State::Finalizing { .. } => STATE_NAMES[8],
        State::Rebooting { .. } => STATE_NAMES[9],
    }
}

/// The last failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(with = "epoch")]
    pub at: SystemTime,
}

/// A snapshot of the agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// State label (see [`STATE_NAMES`]).
    pub state: &'static str,
    #[serde(with = "epoch")]
    pub state_since: SystemTime,
    pub booted: String,
    /// Pending target (staging or staged).
    pub target: Option<String>,
    #[serde(with = "epoch_opt")]
    pub last_check: Option<SystemTime>,
    pub last_error: Option<LastError>,
    pub lock_held: bool,
    /// Queue position while waiting for a gRPC lock.
    pub lock_queue_position: Option<u32>,
    pub paused: bool,
    /// Why the gates refused last (empty when they passed).
    pub waiting_for: String,
    #[serde(with = "epoch_opt")]
    pub next_window: Option<SystemTime>,
    pub dead_end: Option<String>,
    pub hint_stream_connected: bool,
    pub checks: u64,
    pub updates: u64,
    pub failures: u64,
    pub deny_list: Vec<String>,
    /// W3C `traceparent` of the update in progress (reported to telemetry).
    pub traceparent: Option<String>,
}

impl Status {
    /// The status before the first transition.
    pub fn starting(now: SystemTime) -> Self {
        Self {
            state: STATE_NAMES[0],
            state_since: now,
            booted: String::new(),
            target: None,
            last_check: None,
            last_error: None,
            lock_held: false,
            lock_queue_position: None,
            paused: false,
            waiting_for: String::new(),
            next_window: None,
            dead_end: None,
            hint_stream_connected: false,
            checks: 0,
            updates: 0,
            failures: 0,
            deny_list: Vec::new(),
            traceparent: None,
        }
    }

    /// One line for people: the sd_notify `STATUS=` (`systemctl status`).
    pub fn summary(&self) -> String {
        let target = self.target.as_deref().unwrap_or("-");
        let mut line = match self.state {
            "reporting-steady" => format!("reporting steady state, booted {}", self.booted),
            "idle" => format!("idle, booted {}", self.booted),
            "dead-end" => format!("dead-end: {}", self.dead_end.as_deref().unwrap_or("")),
            "update-available" if self.paused => format!("update to {target} available, paused"),
            "update-available" => {
                format!("update to {target} available, waiting to retry after a failed attempt")
            }
            "staging" => format!("staging {target}"),
            "staged" => format!("staged {target}"),
            "waiting-for-gates" => match self.lock_queue_position {
                Some(n) if n > 0 => {
                    format!(
                        "waiting for a reboot slot (queue position {n}) to reboot into {target}"
                    )
                }
                _ => format!("waiting to reboot into {target}: {}", self.waiting_for),
            },
            "finalizing" => format!("finalizing {target}"),
            "rebooting" => format!("rebooting into {target}"),
            _ => "starting".to_string(),
        };
        if let Some(e) = &self.last_error
            && self.state == "reporting-steady"
        {
            let _ = write!(line, " (last error: {})", e.kind.as_str());
        }
        line
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render_metrics(&self) -> String {
        let mut o = String::new();
        let secs = |t: SystemTime| upshift_common::clock::epoch_secs(t);
        let b = |v: bool| u8::from(v);
        gauge_head(
            &mut o,
            "upshift_agent_state",
            "Current state (1 for the active one).",
        );
        for s in STATE_NAMES {
            let _ = writeln!(
                o,
                "upshift_agent_state{{state=\"{s}\"}} {}",
                b(s == self.state)
            );
        }
        gauge_head(
            &mut o,
            "upshift_agent_state_since_timestamp_seconds",
            "When the current state was entered.",
        );
        let _ = writeln!(
            o,
            "upshift_agent_state_since_timestamp_seconds {}",
            secs(self.state_since)
        );
        gauge_head(&mut o, "upshift_agent_booted_info", "Booted release.");
        let _ = writeln!(
            o,
            "upshift_agent_booted_info{{version=\"{}\"}} 1",
            esc(&self.booted)
        );
        gauge_head(
            &mut o,
            "upshift_agent_pending_target_info",
            "Pending target release (absent when none).",
        );
        if let Some(t) = &self.target {
            let _ = writeln!(
                o,
                "upshift_agent_pending_target_info{{version=\"{}\"}} 1",
                esc(t)
            );
        }
        gauge_head(
            &mut o,
            "upshift_agent_last_error_info",
            "Kind of the last failure (absent when none).",
        );
        if let Some(e) = &self.last_error {
            let _ = writeln!(
                o,
                "upshift_agent_last_error_info{{kind=\"{}\"}} 1",
                e.kind.as_str()
            );
        }
        gauge_head(
            &mut o,
            "upshift_agent_lock_held",
            "Whether the reboot lock is held.",
        );
        let _ = writeln!(o, "upshift_agent_lock_held {}", b(self.lock_held));
        gauge_head(
            &mut o,
            "upshift_agent_lock_queue_position",
            "Position in the reboot lock queue (0: not queued).",
        );
        let _ = writeln!(
            o,
            "upshift_agent_lock_queue_position {}",
            self.lock_queue_position.unwrap_or(0)
        );
        gauge_head(
            &mut o,
            "upshift_agent_updates_paused",
            "Whether updates are paused locally.",
        );
        let _ = writeln!(o, "upshift_agent_updates_paused {}", b(self.paused));
        gauge_head(
            &mut o,
            "upshift_agent_deadend",
            "Whether the booted release is a dead-end.",
        );
        let _ = writeln!(o, "upshift_agent_deadend {}", b(self.dead_end.is_some()));
        gauge_head(
            &mut o,
            "upshift_agent_hint_stream_connected",
            "Whether the hint stream is open.",
        );
        let _ = writeln!(
            o,
            "upshift_agent_hint_stream_connected {}",
            b(self.hint_stream_connected)
        );
        gauge_head(
            &mut o,
            "upshift_agent_last_check_timestamp_seconds",
            "When the last update check completed (0: never).",
        );
        let _ = writeln!(
            o,
            "upshift_agent_last_check_timestamp_seconds {}",
            self.last_check.map_or(0.0, secs)
        );
        gauge_head(
            &mut o,
            "upshift_agent_denied_releases",
            "Releases on the deny list.",
        );
        let _ = writeln!(o, "upshift_agent_denied_releases {}", self.deny_list.len());
        counter(
            &mut o,
            "upshift_agent_update_checks_total",
            "Update checks (hints received, polls).",
            self.checks,
        );
        counter(
            &mut o,
            "upshift_agent_updates_total",
            "Updates finalized (reboots into a new release).",
            self.updates,
        );
        counter(
            &mut o,
            "upshift_agent_failures_total",
            "Failures (staging, gates, finalization, hints).",
            self.failures,
        );
        o
    }
}

fn gauge_head(o: &mut String, name: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

/// Escapes a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

mod epoch {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(upshift_common::clock::epoch_secs(*t))
    }
}

mod epoch_opt {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&upshift_common::clock::epoch_secs(*t)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_each_state() {
        let mut s = Status::starting(SystemTime::UNIX_EPOCH);
        s.booted = "1".into();
        let mut seen = Vec::new();
        for name in STATE_NAMES {
            s.state = name;
            s.target = Some("2".into());
            s.dead_end = Some("see issue 42".into());
            seen.push(s.summary());
        }
        assert_eq!(
            seen,
            [
                "starting",
                "reporting steady state, booted 1",
                "idle, booted 1",
                "dead-end: see issue 42",
                "update to 2 available, waiting to retry after a failed attempt",
                "staging 2",
                "staged 2",
                "waiting to reboot into 2: ",
                "finalizing 2",
                "rebooting into 2",
            ]
        );
        s.state = "waiting-for-gates";
        s.lock_queue_position = Some(3);
        assert_eq!(
            s.summary(),
            "waiting for a reboot slot (queue position 3) to reboot into 2"
        );
        s.state = "update-available";
        s.paused = true;
        assert_eq!(s.summary(), "update to 2 available, paused");
    }

    #[test]
    fn exposition_lines() {
        let mut s = Status::starting(SystemTime::UNIX_EPOCH);
        s.state = "staged";
        s.target = Some("2\"x".into());
        s.lock_held = true;
        s.last_error = Some(LastError {
            kind: ErrorKind::StagingFailed,
            message: "m".into(),
            at: SystemTime::UNIX_EPOCH,
        });
        let m = s.render_metrics();
        assert!(m.contains("upshift_agent_state{state=\"staged\"} 1\n"));
        assert!(m.contains("upshift_agent_state{state=\"idle\"} 0\n"));
        assert!(m.contains("upshift_agent_pending_target_info{version=\"2\\\"x\"} 1\n"));
        assert!(m.contains("upshift_agent_last_error_info{kind=\"staging-failed\"} 1\n"));
        assert!(m.contains("upshift_agent_lock_held 1\n"));
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let v = line.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
