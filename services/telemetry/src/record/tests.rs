use super::*;

fn status(booted: &str, target: &str, state: AgentState, err: &str) -> StatusRecord {
    StatusRecord {
        node_uuid: "n1".into(),
        stream: "stable".into(),
        group: "default".into(),
        booted_version: booted.into(),
        target_version: target.into(),
        state: state as i32,
        last_error_kind: err.into(),
        last_error: if err.is_empty() {
            String::new()
        } else {
            format!("{err} happened")
        },
        ..Default::default()
    }
}

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

/// Feeds reports in order, returning the final record and all events.
fn run(steps: &[(u64, StatusRecord)]) -> (HostRecord, Vec<AttemptEvent>) {
    let mut rec: Option<HostRecord> = None;
    let mut all = Vec::new();
    for (t, s) in steps {
        let (r, ev) = apply_status(rec.as_ref(), s.clone(), at(*t));
        all.extend(ev);
        rec = Some(r);
    }
    (rec.unwrap(), all)
}

/// The events' variants, in order.
fn names(ev: &[AttemptEvent]) -> Vec<&'static str> {
    ev.iter()
        .map(|e| match e {
            AttemptEvent::Started { .. } => "started",
            AttemptEvent::ErrorReported { .. } => "error",
            AttemptEvent::Failed { .. } => "failed",
            AttemptEvent::Steady { .. } => "steady",
        })
        .collect()
}

#[test]
fn successful_update_records_staged_to_steady() {
    let (rec, ev) = run(&[
        (0, status("1", "", AgentState::Idle, "")),
        (10, status("1", "2", AgentState::UpdateAvailable, "")),
        (20, status("1", "2", AgentState::Staging, "")),
        (30, status("1", "2", AgentState::Staged, "")),
        (90, status("1", "2", AgentState::Rebooting, "")),
        (150, status("2", "", AgentState::ReportingSteady, "")),
        (160, status("2", "", AgentState::Idle, "")),
    ]);
    assert_eq!(
        ev,
        vec![
            AttemptEvent::Started {
                stream: "stable".into(),
                version: "2".into()
            },
            AttemptEvent::Steady {
                stream: "stable".into(),
                version: "2".into(),
                staged_for: Some(Duration::from_secs(120)),
            },
        ]
    );
    assert_eq!(rec.attempts.len(), 1);
    assert!(rec.attempts[0].steady_ms.is_some() && rec.attempts[0].failed.is_none());
}

/// The `staged_for` of the (single) steady event.
fn staged_for(ev: &[AttemptEvent]) -> Option<Duration> {
    let steady: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            AttemptEvent::Steady { staged_for, .. } => Some(*staged_for),
            _ => None,
        })
        .collect();
    assert_eq!(steady.len(), 1, "{ev:?}");
    steady[0]
}

#[test]
fn staged_clock_starts_at_the_first_report_past_staged() {
    // The agent's status channel keeps only the latest state: `staged` is
    // never reported by a host that moves on quickly.
    let (_, ev) = run(&[
        (0, status("1", "2", AgentState::UpdateAvailable, "")),
        (20, status("1", "2", AgentState::Staging, "")),
        (30, status("1", "2", AgentState::WaitingForGates, "")),
        (40, status("1", "2", AgentState::Finalizing, "")),
        (50, status("1", "2", AgentState::Rebooting, "")),
        (150, status("2", "", AgentState::ReportingSteady, "")),
    ]);
    assert_eq!(staged_for(&ev), Some(Duration::from_secs(120)));
    for (first, state) in [
        (5, AgentState::WaitingForGates),
        (6, AgentState::Finalizing),
        (7, AgentState::Rebooting),
    ] {
        let (_, ev) = run(&[
            (0, status("1", "2", AgentState::Staging, "")),
            (first, status("1", "2", state, "")),
            (100, status("2", "", AgentState::Idle, "")),
        ]);
        let want = Duration::from_secs(100 - first);
        assert_eq!(staged_for(&ev), Some(want), "{state:?}");
    }
}

#[test]
fn staged_clock_restarts_with_a_new_try() {
    let (_, ev) = run(&[
        (0, status("1", "2", AgentState::Staging, "")),
        (10, status("1", "2", AgentState::Staged, "")),
        (
            20,
            status("1", "2", AgentState::WaitingForGates, "finalize-failed"),
        ),
        (
            100,
            status("1", "2", AgentState::Staging, "finalize-failed"),
        ),
        (
            110,
            status("1", "2", AgentState::Finalizing, "finalize-failed"),
        ),
        (200, status("2", "", AgentState::Idle, "")),
    ]);
    assert_eq!(
        names(&ev),
        ["started", "error", "failed", "started", "steady"]
    );
    assert_eq!(staged_for(&ev), Some(Duration::from_secs(90)));
}

#[test]
fn failure_counts_once_and_retry_reopens() {
    let (rec, ev) = run(&[
        (0, status("1", "2", AgentState::Staging, "")),
        (
            5,
            status("1", "2", AgentState::UpdateAvailable, "staging-failed"),
        ),
        (
            6,
            status("1", "2", AgentState::UpdateAvailable, "staging-failed"),
        ),
        (60, status("1", "2", AgentState::Staging, "staging-failed")),
        (70, status("1", "2", AgentState::Staged, "")),
        (80, status("2", "", AgentState::Idle, "")),
    ]);
    assert_eq!(
        names(&ev),
        ["started", "error", "failed", "started", "steady"]
    );
    // The host failed once on 2: it stays counted as failed.
    assert_eq!(rec.attempts[0].failed.as_deref(), Some("staging-failed"));
}

#[test]
fn error_without_prior_attempt_opens_and_fails() {
    let (_, ev) = run(&[(
        0,
        status("1", "2", AgentState::UpdateAvailable, "finalize-failed"),
    )]);
    assert_eq!(names(&ev), ["error", "started", "failed"]);
    assert!(matches!(&ev[2], AttemptEvent::Failed { kind, .. } if kind == "finalize-failed"));
}

#[test]
fn rollback_after_the_reboot_fails_the_attempt() {
    // The agent reports rolled-back on the old release once it restarted
    // there; the report names no target, the previous one did.
    let (rec, ev) = run(&[
        (0, status("1", "2", AgentState::Staging, "")),
        (10, status("1", "2", AgentState::Rebooting, "")),
        (90, status("1", "", AgentState::Idle, "rolled-back")),
    ]);
    assert_eq!(names(&ev), ["started", "error", "failed"]);
    assert!(matches!(&ev[2], AttemptEvent::Failed { version, kind, .. }
        if version == "2" && kind == "rolled-back"));
    assert_eq!(rec.attempts[0].failed.as_deref(), Some("rolled-back"));
    assert!(is_release_failure("rolled-back"));
}

#[test]
fn outages_while_staged_leave_the_attempt_open() {
    let (rec, ev) = run(&[
        (0, status("1", "2", AgentState::Staging, "")),
        (10, status("1", "2", AgentState::Staged, "")),
        (
            20,
            status("1", "2", AgentState::Staged, "hints-unavailable"),
        ),
        (
            30,
            status("1", "2", AgentState::WaitingForGates, "gate-check-failed"),
        ),
        (
            40,
            status("1", "2", AgentState::Rebooting, "gate-check-failed"),
        ),
        (50, status("2", "", AgentState::Idle, "steady-state-failed")),
    ]);
    assert_eq!(names(&ev), ["started", "error", "error", "error", "steady"]);
    let errors: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            AttemptEvent::ErrorReported { kind, .. } => Some(kind.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        [
            "hints-unavailable",
            "gate-check-failed",
            "steady-state-failed"
        ]
    );
    assert_eq!(rec.attempts[0].failed, None);
    assert!(rec.attempts[0].steady_ms.is_some());
}

#[test]
fn only_release_failure_kinds_fail() {
    for kind in [
        "hints-unavailable",
        "gate-check-failed",
        "os",
        "no-such-kind",
    ] {
        let (rec, ev) = run(&[
            (0, status("1", "2", AgentState::Staging, "")),
            (1, status("1", "2", AgentState::UpdateAvailable, kind)),
        ]);
        assert_eq!(names(&ev), ["started", "error"], "{kind}");
        assert!(rec.attempts[0].open && rec.attempts[0].failed.is_none());
    }
    for kind in RELEASE_FAILURE_KINDS {
        let (rec, ev) = run(&[
            (0, status("1", "2", AgentState::Staging, "")),
            (1, status("1", "2", AgentState::UpdateAvailable, kind)),
        ]);
        assert_eq!(names(&ev), ["started", "error", "failed"], "{kind}");
        assert_eq!(rec.attempts[0].failed.as_deref(), Some(kind));
    }
}

#[test]
fn attempts_are_bounded() {
    let mut steps = Vec::new();
    for v in 2..10u64 {
        steps.push((
            v * 10,
            status(
                &(v - 1).to_string(),
                &v.to_string(),
                AgentState::Staging,
                "",
            ),
        ));
    }
    let (rec, ev) = run(&steps);
    assert_eq!(ev.len(), 8);
    assert_eq!(rec.attempts.len(), MAX_ATTEMPTS_PER_HOST);
    assert_eq!(rec.attempts.last().unwrap().version, "9");
}

#[test]
fn records_round_trip() {
    let (rec, _) = run(&[(0, status("1", "2", AgentState::Staged, ""))]);
    assert_eq!(HostRecord::decode(&rec.encode()).unwrap(), rec);
    let pb = rec.status.to_pb();
    assert_eq!(StatusRecord::from_pb(&pb), rec.status);
}

#[test]
fn labels_and_ids() {
    assert!(valid_label("34.20211016.3.0"));
    assert!(!valid_label("a/b"));
    assert!(!valid_label(""));
    assert!(valid_node_uuid("0123abcd"));
    assert!(!valid_node_uuid("x y"));
}
