//! The agent state machine: one enum and a pure transition function.
//!
//! `transition(state, event, now)` does no I/O: it returns the next state and
//! the actions the driver must perform. Illegal pairs are errors.

use std::time::{Duration, SystemTime};

/// Staging attempts before the release goes on the deny list.
pub const MAX_STAGE_ATTEMPTS: u32 = 3;
/// Base staging retry backoff (doubles per attempt).
pub const STAGE_BACKOFF: Duration = Duration::from_secs(30);
/// Retry interval when releasing the lock at steady state fails.
pub const STEADY_RETRY: Duration = Duration::from_secs(10);

/// Agent states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Start,
    /// Confirming the booted version and releasing any lock held.
    ReportingSteady {
        booted: String,
    },
    Idle,
    DeadEnd {
        reason: String,
    },
    UpdateAvailable {
        target: String,
    },
    Staging {
        target: String,
        attempt: u32,
    },
    Staged {
        target: String,
    },
    WaitingForGates {
        target: String,
    },
    Finalizing {
        target: String,
    },
    Rebooting {
        target: String,
    },
}

/// Inputs to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Process start: the booted version and any target persisted before.
    Started {
        booted: String,
        pending_target: Option<String>,
    },
    /// Steady state confirmed (lock released if held).
    SteadyReported,
    /// Releasing the lock at steady state failed (retried).
    SteadyFailed,
    NoUpdate,
    UpdateFound {
        target: String,
    },
    DeadEndFound {
        reason: String,
    },
    StageSucceeded,
    StageFailed,
    RetryDue,
    GatesPassed,
    GatesRefused,
    GateCheckFailed,
    Finalized,
    FinalizeFailed,
}

/// Side effects for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    ReleaseLockIfHeld,
    Stage { target: String },
    ScheduleRetry { at: SystemTime },
    DenyRelease { target: String },
    CheckGates,
    Finalize { target: String },
    Reboot,
    WriteDeadEndNotice { reason: String },
    ClearDeadEndNotice,
}

impl Action {
    /// Whether carrying it out waits on the OS or another service.
    pub fn takes_a_while(&self) -> bool {
        match self {
            Self::ReleaseLockIfHeld
            | Self::Stage { .. }
            | Self::CheckGates
            | Self::Finalize { .. }
            | Self::Reboot => true,
            Self::ScheduleRetry { .. }
            | Self::DenyRelease { .. }
            | Self::WriteDeadEndNotice { .. }
            | Self::ClearDeadEndNotice => false,
        }
    }
}

/// An illegal (state, event) pair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: {event:?} in state {state:?}")]
pub struct TransitionError {
    pub state: State,
    pub event: Event,
}

/// The pure transition function.
pub fn transition(
    state: &State,
    event: &Event,
    now: SystemTime,
) -> Result<(State, Vec<Action>), TransitionError> {
    use Event as E;
    use State as S;
    let ok = |s: State, a: Vec<Action>| Ok((s, a));
    match (state, event) {
        (
            S::Start,
            E::Started {
                booted,
                pending_target,
            },
        ) => match pending_target {
            // Rebooted into the target (or not): either way confirm steady first;
            // the driver compares booted with the persisted target.
            Some(t) if t != booted => ok(S::Staged { target: t.clone() }, vec![Action::CheckGates]),
            _ => ok(
                S::ReportingSteady {
                    booted: booted.clone(),
                },
                vec![Action::ReleaseLockIfHeld],
            ),
        },
        (S::ReportingSteady { .. }, E::SteadyReported) => ok(S::Idle, vec![]),
        (S::ReportingSteady { booted }, E::SteadyFailed) => ok(
            S::ReportingSteady {
                booted: booted.clone(),
            },
            vec![Action::ScheduleRetry {
                at: now + STEADY_RETRY,
            }],
        ),
        (S::ReportingSteady { booted }, E::RetryDue) => ok(
            S::ReportingSteady {
                booted: booted.clone(),
            },
            vec![Action::ReleaseLockIfHeld],
        ),
        (S::Idle | S::DeadEnd { .. }, E::NoUpdate) => ok(S::Idle, vec![Action::ClearDeadEndNotice]),
        (S::Idle | S::DeadEnd { .. }, E::UpdateFound { target }) => ok(
            S::Staging {
                target: target.clone(),
                attempt: 1,
            },
            vec![
                Action::ClearDeadEndNotice,
                Action::Stage {
                    target: target.clone(),
                },
            ],
        ),
        (S::UpdateAvailable { target }, E::RetryDue) => ok(
            S::Staging {
                target: target.clone(),
                attempt: 1,
            },
            vec![Action::Stage {
                target: target.clone(),
            }],
        ),
        (S::Idle | S::DeadEnd { .. }, E::DeadEndFound { reason }) => ok(
            S::DeadEnd {
                reason: reason.clone(),
            },
            vec![Action::WriteDeadEndNotice {
                reason: reason.clone(),
            }],
        ),
        (S::Staging { target, .. }, E::StageSucceeded) => ok(
            S::Staged {
                target: target.clone(),
            },
            vec![Action::CheckGates],
        ),
        (S::Staging { target, attempt }, E::StageFailed) => {
            if *attempt >= MAX_STAGE_ATTEMPTS {
                ok(
                    S::Idle,
                    vec![Action::DenyRelease {
                        target: target.clone(),
                    }],
                )
            } else {
                let backoff = STAGE_BACKOFF * 2u32.saturating_pow(attempt - 1);
                ok(
                    S::Staging {
                        target: target.clone(),
                        attempt: attempt + 1,
                    },
                    vec![Action::ScheduleRetry { at: now + backoff }],
                )
            }
        }
        (S::Staging { target, attempt }, E::RetryDue) => ok(
            S::Staging {
                target: target.clone(),
                attempt: *attempt,
            },
            vec![Action::Stage {
                target: target.clone(),
            }],
        ),
        (S::Staged { target }, E::GatesRefused | E::GateCheckFailed) => ok(
            S::WaitingForGates {
                target: target.clone(),
            },
            vec![],
        ),
        (S::Staged { target } | S::WaitingForGates { target }, E::GatesPassed) => ok(
            S::Finalizing {
                target: target.clone(),
            },
            vec![Action::Finalize {
                target: target.clone(),
            }],
        ),
        (S::WaitingForGates { target }, E::GatesRefused | E::GateCheckFailed) => ok(
            S::WaitingForGates {
                target: target.clone(),
            },
            vec![],
        ),
        (S::WaitingForGates { target }, E::RetryDue) => ok(
            S::WaitingForGates {
                target: target.clone(),
            },
            vec![Action::CheckGates],
        ),
        (S::Finalizing { target }, E::Finalized) => ok(
            S::Rebooting {
                target: target.clone(),
            },
            vec![Action::Reboot],
        ),
        // A failed finalization never reboots: back to waiting (keeps the lock
        // until the next gate round decides).
        (S::Finalizing { target }, E::FinalizeFailed) => ok(
            S::WaitingForGates {
                target: target.clone(),
            },
            vec![],
        ),
        (s, e) => Err(TransitionError {
            state: s.clone(),
            event: e.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states() -> Vec<State> {
        let t = || "2".to_string();
        vec![
            State::Start,
            State::ReportingSteady { booted: "1".into() },
            State::Idle,
            State::DeadEnd { reason: "r".into() },
            State::UpdateAvailable { target: t() },
            State::Staging {
                target: t(),
                attempt: 1,
            },
            State::Staged { target: t() },
            State::WaitingForGates { target: t() },
            State::Finalizing { target: t() },
            State::Rebooting { target: t() },
        ]
    }

    fn events() -> Vec<Event> {
        vec![
            Event::Started {
                booted: "1".into(),
                pending_target: None,
            },
            Event::SteadyReported,
            Event::NoUpdate,
            Event::UpdateFound { target: "2".into() },
            Event::DeadEndFound { reason: "r".into() },
            Event::StageSucceeded,
            Event::StageFailed,
            Event::RetryDue,
            Event::GatesPassed,
            Event::GatesRefused,
            Event::GateCheckFailed,
            Event::Finalized,
            Event::FinalizeFailed,
            Event::SteadyFailed,
        ]
    }

    /// Legal (state index, event index) pairs; everything else must be an error.
    const LEGAL: &[(usize, usize)] = &[
        (0, 0),
        (1, 1),
        (1, 7),
        (1, 13),
        (2, 2),
        (2, 3),
        (2, 4),
        (3, 2),
        (3, 3),
        (3, 4),
        (4, 7),
        (5, 5),
        (5, 6),
        (5, 7),
        (6, 8),
        (6, 9),
        (6, 10),
        (7, 7),
        (7, 8),
        (7, 9),
        (7, 10),
        (8, 11),
        (8, 12),
    ];

    #[test]
    fn every_state_event_pair() {
        let now = SystemTime::UNIX_EPOCH;
        for (si, s) in states().iter().enumerate() {
            for (ei, e) in events().iter().enumerate() {
                let r = transition(s, e, now);
                assert_eq!(
                    r.is_ok(),
                    LEGAL.contains(&(si, ei)),
                    "{s:?} x {e:?} -> {r:?}"
                );
            }
        }
    }

    #[test]
    fn staging_retries_then_deny() {
        let now = SystemTime::UNIX_EPOCH;
        let mut s = State::Staging {
            target: "2".into(),
            attempt: 1,
        };
        for _ in 1..MAX_STAGE_ATTEMPTS {
            let (n, a) = transition(&s, &Event::StageFailed, now).unwrap();
            assert!(matches!(a[..], [Action::ScheduleRetry { .. }]));
            s = n;
        }
        let (n, a) = transition(&s, &Event::StageFailed, now).unwrap();
        assert_eq!(n, State::Idle);
        assert_eq!(a, vec![Action::DenyRelease { target: "2".into() }]);
    }

    #[test]
    fn steady_release_retried_until_it_succeeds() {
        let now = SystemTime::UNIX_EPOCH;
        let s = State::ReportingSteady { booted: "2".into() };
        let (n, a) = transition(&s, &Event::SteadyFailed, now).unwrap();
        assert_eq!(n, s);
        assert_eq!(
            a,
            vec![Action::ScheduleRetry {
                at: now + STEADY_RETRY
            }]
        );
        let (n, a) = transition(&n, &Event::RetryDue, now).unwrap();
        assert_eq!(n, s);
        assert_eq!(a, vec![Action::ReleaseLockIfHeld]);
        let (n, _) = transition(&n, &Event::SteadyReported, now).unwrap();
        assert_eq!(n, State::Idle);
    }

    #[test]
    fn finalize_failure_never_reboots() {
        let (n, a) = transition(
            &State::Finalizing { target: "2".into() },
            &Event::FinalizeFailed,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert!(!a.contains(&Action::Reboot));
        assert_eq!(n, State::WaitingForGates { target: "2".into() });
    }

    #[test]
    fn restart_resumes() {
        let now = SystemTime::UNIX_EPOCH;
        let booted_target = Event::Started {
            booted: "2".into(),
            pending_target: Some("2".into()),
        };
        let (n, a) = transition(&State::Start, &booted_target, now).unwrap();
        assert_eq!(n, State::ReportingSteady { booted: "2".into() });
        assert_eq!(a, vec![Action::ReleaseLockIfHeld]);
        let staged = Event::Started {
            booted: "1".into(),
            pending_target: Some("2".into()),
        };
        let (n, _) = transition(&State::Start, &staged, now).unwrap();
        assert_eq!(n, State::Staged { target: "2".into() });
    }
}
