//! One trace per host update: the `update` root span opens when the driver
//! takes a target from a hint (linked to the policy call that delivered
//! it); `staging`, `gates` (with the lock calls below it), `finalize` and
//! `reboot` are its children. Its `traceparent` is persisted with the
//! pending target, so after the reboot the new run's `steady` span (and
//! the lock `Release` under it) joins the same trace. The trace ends once
//! steady state is reported, or when the target is denied.

use tokio::sync::watch;
use tracing::Span;

use super::Driver;
use crate::machine::{Action, State};
use crate::os::OsBackend;
use crate::trace;

/// The current update's trace.
#[derive(Debug)]
pub(super) struct UpdateTrace {
    /// The `update` span, in the run that took the target.
    root: Option<Span>,
    /// The update's `traceparent` (from `root`, or persisted by an earlier
    /// run), shared with the hint task.
    traceparent: watch::Sender<Option<String>>,
    /// Open from the first gate round until the gates pass.
    gates: Option<Span>,
}

impl UpdateTrace {
    /// Resumes the trace of a persisted update (or none).
    pub(super) fn resume(traceparent: Option<String>) -> Self {
        Self {
            root: None,
            traceparent: watch::Sender::new(traceparent),
            gates: None,
        }
    }

    /// The update's `traceparent` as the hint task sees it.
    pub(super) fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.traceparent.subscribe()
    }

    /// The update's `traceparent`, while one is in progress and exported.
    pub(super) fn traceparent(&self) -> Option<String> {
        self.traceparent.borrow().clone()
    }

    /// Opens the trace of a new update with its `update` root span,
    /// linked to the call that delivered the hint (`hint_trace`).
    pub(super) fn begin(&mut self, root: Span, hint_trace: Option<&str>) {
        if let Some(tp) = hint_trace {
            trace::link(&root, tp);
        }
        self.gates = None;
        self.traceparent.send_replace(trace::traceparent(&root));
        self.root = Some(root);
    }

    /// Makes the new `span` a child of the update (a root without one).
    pub(super) fn child(&self, span: Span) -> Span {
        trace::adopt(span, self.traceparent.borrow().as_deref())
    }

    /// The `gates` span of this wait, opened on the first round.
    pub(super) fn gates(&mut self, target: &str) -> Span {
        if self.gates.is_none() {
            let span = self.child(tracing::info_span!(parent: None, "gates", target));
            self.gates = Some(span);
        }
        self.gates.clone().unwrap_or_else(Span::none)
    }

    /// The gates passed: their span ends with the round in progress.
    pub(super) fn gates_passed(&mut self) {
        self.gates = None;
    }

    /// Ends the trace; `failure` marks the root span as failed.
    pub(super) fn end(&mut self, failure: Option<&str>) {
        if let (Some(root), Some(why)) = (&self.root, failure) {
            root.record("otel.status_code", "ERROR");
            root.record("otel.status_description", why);
        }
        self.root = None;
        self.gates = None;
        self.traceparent.send_replace(None);
    }
}

impl<O: OsBackend> Driver<'_, O> {
    /// Opens the trace of the update to `target` from the booted release.
    pub(super) fn begin_update(&mut self, target: &str, hint_trace: Option<&str>) {
        let root = tracing::info_span!(
            parent: None,
            "update",
            node_uuid = %self.ident.node_uuid,
            group = %self.s.group,
            stream = %self.s.stream,
            from_version = %self.booted.version,
            to_version = %target,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        self.trace.begin(root, hint_trace);
    }

    /// The span an action runs in: the update's step it is.
    pub(super) fn action_span(&mut self, a: &Action) -> Span {
        let span = match a {
            // Steady state ends an update only after its reboot.
            Action::ReleaseLockIfHeld if self.trace.traceparent().is_none() => return Span::none(),
            Action::ReleaseLockIfHeld => {
                tracing::info_span!(parent: None, "steady", booted = %self.booted.version)
            }
            Action::Stage { target } => {
                let attempt = match &self.state {
                    State::Staging { attempt, .. } => *attempt,
                    _ => 1,
                };
                tracing::info_span!(
                    parent: None,
                    "staging",
                    %target,
                    attempt,
                    otel.status_code = tracing::field::Empty,
                )
            }
            Action::CheckGates => {
                let target = self.pending().unwrap_or_default();
                return self.trace.gates(&target);
            }
            Action::Finalize { target } => tracing::info_span!(
                parent: None,
                "finalize",
                %target,
                otel.status_code = tracing::field::Empty,
            ),
            Action::Reboot => tracing::info_span!(parent: None, "reboot"),
            Action::Cleanup => tracing::info_span!(parent: None, "cleanup"),
            Action::ScheduleRetry { .. }
            | Action::CancelRetry
            | Action::AttemptFailed { .. }
            | Action::DenyRelease { .. }
            | Action::WriteDeadEndNotice { .. }
            | Action::ClearDeadEndNotice => return Span::none(),
        };
        self.trace.child(span)
    }
}
