use super::*;

const T0: SystemTime = SystemTime::UNIX_EPOCH;

fn t() -> String {
    "2".to_string()
}

/// One of every state, with its name.
fn states() -> Vec<(&'static str, State)> {
    vec![
        ("start", State::Start),
        ("steady", State::ReportingSteady { booted: "1".into() }),
        ("idle", State::Idle),
        ("dead-end", State::DeadEnd { reason: "r".into() }),
        (
            "available",
            State::UpdateAvailable {
                target: t(),
                attempt: 2,
            },
        ),
        (
            "staging",
            State::Staging {
                target: t(),
                attempt: 1,
            },
        ),
        ("staged", State::Staged { target: t() }),
        ("waiting", State::WaitingForGates { target: t() }),
        ("finalizing", State::Finalizing { target: t() }),
        ("rebooting", State::Rebooting { target: t() }),
    ]
}

/// One of every event, with its name.
fn events() -> Vec<(&'static str, Event)> {
    vec![
        (
            "started",
            Event::Started {
                booted: "1".into(),
                pending: None,
            },
        ),
        ("steady-reported", Event::SteadyReported),
        ("steady-failed", Event::SteadyFailed),
        ("no-update", Event::NoUpdate),
        (
            "update-found",
            Event::UpdateFound {
                target: t(),
                failures: 0,
                paused: false,
            },
        ),
        ("dead-end-found", Event::DeadEndFound { reason: "r".into() }),
        ("stage-succeeded", Event::StageSucceeded),
        ("stage-failed", Event::StageFailed),
        ("retry-due", Event::RetryDue),
        ("gates-passed", Event::GatesPassed),
        ("gates-refused", Event::GatesRefused),
        ("gate-check-failed", Event::GateCheckFailed),
        ("finalized", Event::Finalized),
        ("finalize-failed", Event::FinalizeFailed),
        (
            "nothing-staged",
            Event::NothingStaged {
                booted: "1".into(),
                failures: 0,
            },
        ),
        ("paused", Event::Paused),
        ("resumed", Event::Resumed),
    ]
}

/// Legal (state, event) pairs; everything else must be an error.
const LEGAL: &[(&str, &[&str])] = &[
    ("start", &["started"]),
    ("steady", &["steady-reported", "steady-failed", "retry-due"]),
    ("idle", &["no-update", "update-found", "dead-end-found"]),
    ("dead-end", &["no-update", "update-found", "dead-end-found"]),
    (
        "available",
        &[
            "no-update",
            "update-found",
            "dead-end-found",
            "retry-due",
            "paused",
            "resumed",
        ],
    ),
    ("staging", &["stage-succeeded", "stage-failed", "retry-due"]),
    (
        "staged",
        &["gates-passed", "gates-refused", "gate-check-failed"],
    ),
    (
        "waiting",
        &[
            "gates-passed",
            "gates-refused",
            "gate-check-failed",
            "retry-due",
        ],
    ),
    (
        "finalizing",
        &["finalized", "finalize-failed", "nothing-staged"],
    ),
    ("rebooting", &[]),
];

#[test]
fn every_state_event_pair() {
    assert_eq!(LEGAL.len(), states().len(), "every state is in the table");
    for (sn, s) in states() {
        let legal = LEGAL
            .iter()
            .find(|(n, _)| *n == sn)
            .expect("state listed")
            .1;
        for (en, e) in events() {
            let r = transition(&s, &e, T0);
            assert_eq!(r.is_ok(), legal.contains(&en), "{s:?} x {e:?} -> {r:?}");
        }
    }
}

#[test]
fn staging_retries_then_deny() {
    let mut s = State::Staging {
        target: "2".into(),
        attempt: 1,
    };
    for attempt in 1..MAX_STAGE_ATTEMPTS {
        let (n, a) = transition(&s, &Event::StageFailed, T0).unwrap();
        assert_eq!(
            a,
            vec![Action::ScheduleRetry {
                at: T0 + stage_backoff(attempt)
            }]
        );
        s = n;
    }
    let (n, a) = transition(&s, &Event::StageFailed, T0).unwrap();
    assert_eq!(n, State::Idle);
    assert_eq!(a, vec![Action::DenyRelease { target: "2".into() }]);
    assert_eq!(stage_backoff(1), STAGE_BACKOFF);
    assert_eq!(stage_backoff(2), STAGE_BACKOFF * 2);
}

#[test]
fn steady_release_retried_until_it_succeeds() {
    let s = State::ReportingSteady { booted: "2".into() };
    let (n, a) = transition(&s, &Event::SteadyFailed, T0).unwrap();
    assert_eq!(n, s);
    assert_eq!(
        a,
        vec![Action::ScheduleRetry {
            at: T0 + STEADY_RETRY
        }]
    );
    let (n, a) = transition(&n, &Event::RetryDue, T0).unwrap();
    assert_eq!(n, s);
    assert_eq!(a, vec![Action::ReleaseLockIfHeld]);
    let (n, _) = transition(&n, &Event::SteadyReported, T0).unwrap();
    assert_eq!(n, State::Idle);
}

#[test]
fn finalize_failure_never_reboots() {
    let (n, a) = transition(
        &State::Finalizing { target: "2".into() },
        &Event::FinalizeFailed,
        T0,
    )
    .unwrap();
    assert!(!a.contains(&Action::Reboot));
    assert_eq!(n, State::WaitingForGates { target: "2".into() });
}

fn started(booted: &str, target: Option<&str>, staged: bool, failures: u32) -> Event {
    Event::Started {
        booted: booted.into(),
        pending: target.map(|t| Pending {
            target: t.into(),
            staged,
            failures,
        }),
    }
}

#[test]
fn restart_resumes() {
    let (n, a) = transition(&State::Start, &started("2", Some("2"), false, 0), T0).unwrap();
    assert_eq!(n, State::ReportingSteady { booted: "2".into() });
    assert_eq!(a, vec![Action::ReleaseLockIfHeld]);
    let (n, a) = transition(&State::Start, &started("1", None, false, 0), T0).unwrap();
    assert_eq!(n, State::ReportingSteady { booted: "1".into() });
    assert_eq!(a, vec![Action::ReleaseLockIfHeld]);
    let (n, a) = transition(&State::Start, &started("1", Some("2"), true, 0), T0).unwrap();
    assert_eq!(n, State::Staged { target: "2".into() });
    assert_eq!(a, vec![Action::CheckGates]);
}

#[test]
fn restart_after_a_rollback_fails_the_attempt_and_releases_the_lock() {
    let (n, a) = transition(&State::Start, &started("1", Some("2"), false, 0), T0).unwrap();
    assert_eq!(n, State::ReportingSteady { booted: "1".into() });
    assert_eq!(
        a,
        vec![
            Action::AttemptFailed {
                target: "2".into(),
                why: AttemptFailure::RolledBack
            },
            Action::Cleanup,
            Action::ReleaseLockIfHeld,
        ]
    );
    // Steady on the old release, then idle: no gate round, no finalize.
    let (n, a) = transition(&n, &Event::SteadyReported, T0).unwrap();
    assert_eq!((n, a), (State::Idle, vec![]));
}

#[test]
fn the_last_rollback_of_the_budget_denies_the_release() {
    let ev = started("1", Some("2"), false, MAX_STAGE_ATTEMPTS - 1);
    let (n, a) = transition(&State::Start, &ev, T0).unwrap();
    assert_eq!(n, State::ReportingSteady { booted: "1".into() });
    assert!(a.contains(&Action::DenyRelease { target: "2".into() }));
    assert_eq!(a.last(), Some(&Action::ReleaseLockIfHeld));
}

#[test]
fn finalize_with_nothing_staged_gives_the_lock_back() {
    let ev = Event::NothingStaged {
        booted: "1".into(),
        failures: 1,
    };
    let (n, a) = transition(&State::Finalizing { target: "2".into() }, &ev, T0).unwrap();
    assert_eq!(n, State::ReportingSteady { booted: "1".into() });
    assert_eq!(
        a,
        vec![
            Action::AttemptFailed {
                target: "2".into(),
                why: AttemptFailure::NothingStaged
            },
            Action::Cleanup,
            Action::ReleaseLockIfHeld,
        ]
    );
}

fn found(failures: u32, paused: bool) -> Event {
    Event::UpdateFound {
        target: "2".into(),
        failures,
        paused,
    }
}

#[test]
fn a_first_attempt_stages_at_once() {
    let (n, a) = transition(&State::Idle, &found(0, false), T0).unwrap();
    assert_eq!(
        n,
        State::Staging {
            target: "2".into(),
            attempt: 1
        }
    );
    assert_eq!(
        a,
        vec![
            Action::ClearDeadEndNotice,
            Action::Stage { target: "2".into() }
        ]
    );
}

#[test]
fn persisted_failures_continue_the_budget_after_a_backoff() {
    let (n, a) = transition(&State::Idle, &found(2, false), T0).unwrap();
    assert_eq!(
        n,
        State::UpdateAvailable {
            target: "2".into(),
            attempt: 3
        }
    );
    assert_eq!(
        a,
        vec![
            Action::ClearDeadEndNotice,
            Action::ScheduleRetry {
                at: T0 + stage_backoff(2)
            }
        ]
    );
    let (n, a) = transition(&n, &Event::RetryDue, T0).unwrap();
    assert_eq!(
        n,
        State::Staging {
            target: "2".into(),
            attempt: 3
        }
    );
    assert_eq!(a, vec![Action::Stage { target: "2".into() }]);
    // The third attempt is the last one.
    let (n, a) = transition(&n, &Event::StageFailed, T0).unwrap();
    assert_eq!(n, State::Idle);
    assert_eq!(a, vec![Action::DenyRelease { target: "2".into() }]);
}

#[test]
fn paused_update_waits_until_resumed() {
    let (n, a) = transition(&State::Idle, &found(0, true), T0).unwrap();
    let avail = State::UpdateAvailable {
        target: "2".into(),
        attempt: 1,
    };
    assert_eq!(n, avail);
    assert_eq!(a, vec![Action::ClearDeadEndNotice]);
    let (n, a) = transition(&n, &Event::Resumed, T0).unwrap();
    assert_eq!(
        n,
        State::Staging {
            target: "2".into(),
            attempt: 1
        }
    );
    assert_eq!(a, vec![Action::Stage { target: "2".into() }]);
    // Paused during a backoff: the retry is dropped; resuming restarts it.
    let backoff = State::UpdateAvailable {
        target: "2".into(),
        attempt: 2,
    };
    let (n, a) = transition(&backoff, &Event::Paused, T0).unwrap();
    assert_eq!((n.clone(), a), (backoff.clone(), vec![Action::CancelRetry]));
    let (n, a) = transition(&n, &Event::Resumed, T0).unwrap();
    assert_eq!(n, backoff);
    assert_eq!(
        a,
        vec![Action::ScheduleRetry {
            at: T0 + stage_backoff(1)
        }]
    );
}

#[test]
fn a_withdrawn_target_leaves_update_available() {
    let s = State::UpdateAvailable {
        target: "2".into(),
        attempt: 2,
    };
    let (n, a) = transition(&s, &Event::NoUpdate, T0).unwrap();
    assert_eq!(n, State::Idle);
    assert_eq!(a, vec![Action::CancelRetry, Action::ClearDeadEndNotice]);
    let other = Event::UpdateFound {
        target: "3".into(),
        failures: 0,
        paused: false,
    };
    let (n, a) = transition(&s, &other, T0).unwrap();
    assert_eq!(
        n,
        State::Staging {
            target: "3".into(),
            attempt: 1
        }
    );
    assert_eq!(a[0], Action::CancelRetry);
}
