//! The agent state machine: one enum and a pure transition function.
//!
//! `transition(state, event, now)` does no I/O: it returns the next state and
//! the actions the driver must perform. Illegal pairs are errors. Inputs the
//! decision needs (whether the target is still staged, failures persisted
//! for it, whether updates are paused) come in with the events.

use std::time::{Duration, SystemTime};

/// Failed attempts on a release (staging, or a boot that rolled back)
/// before it goes on the deny list.
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
    /// A target is known but staging is postponed: updates are paused, or
    /// the backoff after an earlier failed attempt is running. `attempt`
    /// is the attempt staging will be.
    UpdateAvailable {
        target: String,
        attempt: u32,
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

/// The target persisted by an earlier run, as the OS sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub target: String,
    /// Whether the OS still has it staged (asked only when not booted).
    pub staged: bool,
    /// Failed attempts on it so far (persisted).
    pub failures: u32,
}

/// Why an attempt on a release failed outside staging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// After a restart the target is neither booted nor staged: the host
    /// booted it and came back, or the deployment was removed.
    RolledBack,
    /// Finalization found nothing staged.
    NothingStaged,
}

/// Inputs to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Process start: the booted version and any target persisted before.
    Started {
        booted: String,
        pending: Option<Pending>,
    },
    /// Steady state confirmed (lock released if held).
    SteadyReported,
    /// Releasing the lock at steady state failed (retried).
    SteadyFailed,
    NoUpdate,
    /// A target to update to; `failures` persisted for it, `paused`
    /// whether updates are paused locally.
    UpdateFound {
        target: String,
        failures: u32,
        paused: bool,
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
    /// Finalization found nothing staged: the deployment is gone.
    NothingStaged {
        booted: String,
        failures: u32,
    },
    /// `upshift-agent pause`.
    Paused,
    /// `upshift-agent resume`.
    Resumed,
}

/// Side effects for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    ReleaseLockIfHeld,
    Stage {
        target: String,
    },
    ScheduleRetry {
        at: SystemTime,
    },
    /// Drops a scheduled retry (the state that wanted it is left).
    CancelRetry,
    /// Counts a failed attempt on `target` and reports why.
    AttemptFailed {
        target: String,
        why: AttemptFailure,
    },
    /// Removes any pending (staged) deployment.
    Cleanup,
    DenyRelease {
        target: String,
    },
    CheckGates,
    Finalize {
        target: String,
    },
    Reboot,
    WriteDeadEndNotice {
        reason: String,
    },
    ClearDeadEndNotice,
}

impl Action {
    /// Whether carrying it out waits on the OS or another service.
    pub fn takes_a_while(&self) -> bool {
        match self {
            Self::ReleaseLockIfHeld
            | Self::Stage { .. }
            | Self::Cleanup
            | Self::CheckGates
            | Self::Finalize { .. }
            | Self::Reboot => true,
            Self::ScheduleRetry { .. }
            | Self::CancelRetry
            | Self::AttemptFailed { .. }
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

type Next = (State, Vec<Action>);

/// Backoff before the attempt after `failures` failed ones.
pub fn stage_backoff(failures: u32) -> Duration {
    STAGE_BACKOFF * 2u32.saturating_pow(failures.saturating_sub(1))
}

/// The pure transition function.
pub fn transition(state: &State, event: &Event, now: SystemTime) -> Result<Next, TransitionError> {
    use Event as E;
    use State as S;
    let next = match (state, event) {
        (S::Start, E::Started { booted, pending }) => started(booted, pending.as_ref()),
        (S::ReportingSteady { .. }, E::SteadyReported) => (S::Idle, vec![]),
        (S::ReportingSteady { booted }, E::SteadyFailed) => (
            steady(booted),
            vec![Action::ScheduleRetry {
                at: now + STEADY_RETRY,
            }],
        ),
        (S::ReportingSteady { booted }, E::RetryDue) => {
            (steady(booted), vec![Action::ReleaseLockIfHeld])
        }
        (S::Idle | S::DeadEnd { .. } | S::UpdateAvailable { .. }, _) => {
            return waiting(state, event, now).ok_or_else(|| illegal(state, event));
        }
        (S::Staging { target, .. }, E::StageSucceeded) => (
            S::Staged {
                target: target.clone(),
            },
            vec![Action::CheckGates],
        ),
        (S::Staging { target, attempt }, E::StageFailed) => stage_failed(target, *attempt, now),
        (S::Staging { target, attempt }, E::RetryDue) => staging(target, *attempt),
        (S::Staged { .. } | S::WaitingForGates { .. }, _) => {
            return gated(state, event).ok_or_else(|| illegal(state, event));
        }
        (S::Finalizing { target }, E::Finalized) => (
            S::Rebooting {
                target: target.clone(),
            },
            vec![Action::Reboot],
        ),
        // A failed finalization never reboots: back to waiting (keeps the lock
        // until the next gate round decides).
        (S::Finalizing { target }, E::FinalizeFailed) => (
            S::WaitingForGates {
                target: target.clone(),
            },
            vec![],
        ),
        // Nothing left to finalize: waiting would hold the lock forever.
        (S::Finalizing { target }, E::NothingStaged { booted, failures }) => {
            attempt_failed(target, booted, *failures, AttemptFailure::NothingStaged)
        }
        (s, e) => return Err(illegal(s, e)),
    };
    Ok(next)
}

fn illegal(state: &State, event: &Event) -> TransitionError {
    TransitionError {
        state: state.clone(),
        event: event.clone(),
    }
}

fn steady(booted: &str) -> State {
    State::ReportingSteady {
        booted: booted.to_owned(),
    }
}

fn staging(target: &str, attempt: u32) -> Next {
    (
        State::Staging {
            target: target.to_owned(),
            attempt,
        },
        vec![Action::Stage {
            target: target.to_owned(),
        }],
    )
}

/// Start: steady when the target (or nothing) is booted, resume when it is
/// still staged, else the attempt failed (rolled back or removed).
fn started(booted: &str, pending: Option<&Pending>) -> Next {
    match pending {
        Some(p) if p.target != booted && p.staged => (
            State::Staged {
                target: p.target.clone(),
            },
            vec![Action::CheckGates],
        ),
        Some(p) if p.target != booted => {
            attempt_failed(&p.target, booted, p.failures, AttemptFailure::RolledBack)
        }
        _ => (steady(booted), vec![Action::ReleaseLockIfHeld]),
    }
}

/// A failed attempt outside staging: count it (deny the release once the
/// budget is spent), remove what is left staged, and report steady on the
/// booted release, which releases the lock.
fn attempt_failed(target: &str, booted: &str, failures: u32, why: AttemptFailure) -> Next {
    let mut actions = vec![
        Action::AttemptFailed {
            target: target.to_owned(),
            why,
        },
        Action::Cleanup,
    ];
    if failures + 1 >= MAX_STAGE_ATTEMPTS {
        actions.push(Action::DenyRelease {
            target: target.to_owned(),
        });
    }
    actions.push(Action::ReleaseLockIfHeld);
    (steady(booted), actions)
}

fn stage_failed(target: &str, attempt: u32, now: SystemTime) -> Next {
    if attempt >= MAX_STAGE_ATTEMPTS {
        return (
            State::Idle,
            vec![Action::DenyRelease {
                target: target.to_owned(),
            }],
        );
    }
    (
        State::Staging {
            target: target.to_owned(),
            attempt: attempt + 1,
        },
        vec![Action::ScheduleRetry {
            at: now + stage_backoff(attempt),
        }],
    )
}

/// Transitions of `Staged` and `WaitingForGates`. `None` when illegal.
fn gated(state: &State, event: &Event) -> Option<Next> {
    use Event as E;
    use State as S;
    let (S::Staged { target } | S::WaitingForGates { target }) = state else {
        return None;
    };
    let waiting = || S::WaitingForGates {
        target: target.clone(),
    };
    Some(match (state, event) {
        (_, E::GatesRefused | E::GateCheckFailed) => (waiting(), vec![]),
        (_, E::GatesPassed) => (
            S::Finalizing {
                target: target.clone(),
            },
            vec![Action::Finalize {
                target: target.clone(),
            }],
        ),
        (S::WaitingForGates { .. }, E::RetryDue) => (waiting(), vec![Action::CheckGates]),
        _ => return None,
    })
}

/// Transitions of the states that wait for a hint: `Idle`, `DeadEnd` and
/// `UpdateAvailable`. `None` when illegal.
fn waiting(state: &State, event: &Event, now: SystemTime) -> Option<Next> {
    use Event as E;
    use State as S;
    let available = matches!(state, S::UpdateAvailable { .. });
    // Leaving `UpdateAvailable` drops its backoff.
    let leave = |mut n: Next| {
        if available {
            n.1.insert(0, Action::CancelRetry);
        }
        n
    };
    Some(match (state, event) {
        (_, E::NoUpdate) => leave((S::Idle, vec![Action::ClearDeadEndNotice])),
        (
            _,
            E::UpdateFound {
                target,
                failures,
                paused,
            },
        ) => {
            let (s, mut a) = found(target, *failures, *paused, now);
            a.insert(0, Action::ClearDeadEndNotice);
            leave((s, a))
        }
        (_, E::DeadEndFound { reason }) => leave((
            S::DeadEnd {
                reason: reason.clone(),
            },
            vec![Action::WriteDeadEndNotice {
                reason: reason.clone(),
            }],
        )),
        (S::UpdateAvailable { target, attempt }, E::RetryDue) => staging(target, *attempt),
        (S::UpdateAvailable { target, attempt }, E::Paused) => (
            S::UpdateAvailable {
                target: target.clone(),
                attempt: *attempt,
            },
            vec![Action::CancelRetry],
        ),
        (S::UpdateAvailable { target, attempt }, E::Resumed) => {
            found(target, attempt.saturating_sub(1), false, now)
        }
        _ => return None,
    })
}

/// A target was chosen: stage at once, or wait in `UpdateAvailable` while
/// paused (until resumed) or for the backoff after earlier failures.
fn found(target: &str, failures: u32, paused: bool, now: SystemTime) -> Next {
    let available = State::UpdateAvailable {
        target: target.to_owned(),
        attempt: failures + 1,
    };
    if paused {
        (available, vec![])
    } else if failures > 0 {
        (
            available,
            vec![Action::ScheduleRetry {
                at: now + stage_backoff(failures),
            }],
        )
    } else {
        staging(target, 1)
    }
}

#[cfg(test)]
mod tests;
