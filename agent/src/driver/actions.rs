//! Carrying out the machine's [`Action`]s: OS calls, the lock at steady
//! state, the persisted failure counts and deny list, notices.

use tracing::Instrument;

use super::{Driver, DriverError};
use crate::machine::{Action, AttemptFailure, Event};
use crate::os::{OsBackend, OsError};
use crate::status::ErrorKind;

impl<O: OsBackend> Driver<'_, O> {
    pub(super) async fn act(&mut self, a: Action) -> Result<Option<Event>, DriverError> {
        let span = self.action_span(&a);
        self.perform(a).instrument(span).await
    }

    async fn perform(&mut self, a: Action) -> Result<Option<Event>, DriverError> {
        Ok(match a {
            Action::ReleaseLockIfHeld => Some(self.report_steady().await?),
            Action::Stage { target } => Some(self.stage(target).await?),
            Action::ScheduleRetry { at } => {
                self.retry_at = Some(at);
                None
            }
            Action::CancelRetry => {
                self.retry_at = None;
                None
            }
            Action::AttemptFailed { target, why } => {
                self.attempt_failed(target, why)?;
                None
            }
            Action::Cleanup => {
                // Best effort: a leftover deployment is replaced by the next deploy.
                if let Err(e) = self.os.cleanup().await {
                    tracing::warn!(error = %super::error_chain(&e), "cleanup of the pending deployment");
                }
                None
            }
            Action::DenyRelease { target } => {
                self.deny(target)?;
                None
            }
            Action::CheckGates => Some(self.check_gates().await?),
            Action::Finalize { .. } => Some(self.finalize().await),
            Action::Reboot => {
                self.os.reboot().await?;
                None
            }
            Action::WriteDeadEndNotice { reason } => {
                self.write_dead_end_notice(&reason)?;
                None
            }
            Action::ClearDeadEndNotice => {
                if let Some(m) = &self.ident.motd_path {
                    let _ = std::fs::remove_file(m);
                }
                None
            }
        })
    }

    fn write_dead_end_notice(&self, reason: &str) -> std::io::Result<()> {
        if let Some(m) = &self.ident.motd_path {
            if let Some(d) = m.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(
                m,
                format!("This host runs a dead-end release and will not be updated: {reason}\n"),
            )?;
        }
        Ok(())
    }

    /// Failed attempts on `target` persisted so far.
    pub(super) fn failures_of(&self, target: &str) -> u32 {
        self.p.failure_counts.get(target).copied().unwrap_or(0)
    }

    fn deny(&mut self, target: String) -> std::io::Result<()> {
        let n = self.failures_of(&target);
        self.record_error(
            ErrorKind::ReleaseDenied,
            format!("{target} failed {n} attempts; denied"),
        );
        self.p.deny_list.insert(target);
        self.save()?;
        self.trace.end(Some("release denied after failed attempts"));
        self.targets.clear();
        self.node
            .send_modify(|n| n.denied = self.p.deny_list.iter().cloned().collect());
        Ok(())
    }

    /// Counts a failed attempt that is not a staging failure.
    fn attempt_failed(&mut self, target: String, why: AttemptFailure) -> std::io::Result<()> {
        let booted = self.booted.version.clone();
        let (kind, message) = match why {
            AttemptFailure::RolledBack => (
                ErrorKind::RolledBack,
                format!(
                    "{target} is neither booted nor staged (booted {booted}): \
                     the host rolled back or the deployment was removed"
                ),
            ),
            AttemptFailure::NothingStaged => (
                ErrorKind::FinalizeFailed,
                format!("{target}: nothing staged to finalize"),
            ),
        };
        self.record_error(kind, message);
        *self.p.failure_counts.entry(target).or_default() += 1;
        self.p.pending_target = None;
        self.save()?;
        self.trace.end(Some(kind.as_str()));
        Ok(())
    }

    async fn finalize(&mut self) -> Event {
        match self.os.finalize().await {
            Ok(()) => {
                self.updates += 1;
                Event::Finalized
            }
            Err(OsError::NothingStaged) => {
                tracing::Span::current().record("otel.status_code", "ERROR");
                let target = self.pending().unwrap_or_default();
                Event::NothingStaged {
                    booted: self.booted.version.clone(),
                    failures: self.failures_of(&target),
                }
            }
            Err(e) => {
                tracing::Span::current().record("otel.status_code", "ERROR");
                self.record_error(ErrorKind::FinalizeFailed, e.to_string());
                self.retry_at = Some(self.clock.now() + super::GATE_RETRY);
                Event::FinalizeFailed
            }
        }
    }

    /// Releases the lock if it is held or was being acquired (a grant
    /// may have arrived just before a crash), then forgets the target.
    async fn report_steady(&mut self) -> Result<Event, DriverError> {
        if self.p.lock_held || self.p.lock_acquiring {
            if let Err(e) = self.lock.release().await {
                self.record_error(ErrorKind::SteadyStateFailed, e.to_string());
                return Ok(Event::SteadyFailed);
            }
            self.p.lock_held = false;
            self.p.lock_acquiring = false;
        }
        self.p.pending_target = None;
        self.p.traceparent = None;
        // Running it is the success of the release: its budget starts over.
        self.p.failure_counts.remove(&self.booted.version);
        self.save()?;
        self.trace.end(None);
        Ok(Event::SteadyReported)
    }

    async fn stage(&mut self, target: String) -> Result<Event, DriverError> {
        let Some(rel) = self.targets.get(&target).cloned() else {
            self.record_error(
                ErrorKind::StagingFailed,
                format!("no payload known for {target}"),
            );
            return Ok(Event::StageFailed);
        };
        // Already deployed (a restart during staging): no second deploy.
        let staged = matches!(self.os.staged().await, Ok(Some(r)) if r == rel);
        let result = if staged {
            Ok(())
        } else {
            self.os.stage(&rel).await
        };
        match result {
            Ok(()) => {
                self.p.pending_target = Some(target);
                // The next run (after the reboot) continues this trace.
                self.p.traceparent = self.trace.traceparent();
                self.save()?;
                Ok(Event::StageSucceeded)
            }
            Err(e) => {
                tracing::Span::current().record("otel.status_code", "ERROR");
                self.record_error(ErrorKind::StagingFailed, e.to_string());
                *self.p.failure_counts.entry(target).or_default() += 1;
                self.save()?;
                Ok(Event::StageFailed)
            }
        }
    }
}
