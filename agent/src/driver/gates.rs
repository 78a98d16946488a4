//! Gates that compose before finalization: local pause, maintenance
//! windows, interactive sessions (postponed up to `max_postpone`), the
//! reboot lock, and the windows again once the lock is held. A gate whose
//! check fails means no reboot (`GateCheckFailed`, re-checked later).
//!
//! `finalize-now` skips pause, windows and sessions; `--force` also skips
//! the lock.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use super::{Driver, DriverError};
use crate::lock::LockCheck;
use crate::machine::Event;
use crate::os::OsBackend;
use crate::status::ErrorKind;

/// Longest interval between gate re-checks while waiting.
pub const GATE_RETRY: Duration = Duration::from_secs(10);
/// Re-check interval while users are logged in.
pub const SESSIONS_RETRY: Duration = Duration::from_secs(60);

/// Outcome of one gate round.
enum Gate {
    Pass,
    /// Not yet: why, and when to look again (`None`: on a wake-up only).
    Wait(String, Option<SystemTime>),
}

impl<O: OsBackend> Driver<'_, O> {
    pub(super) async fn check_gates(&mut self) -> Result<Event, DriverError> {
        let now = self.clock.now();
        let was_queued = self.queue_position.is_some();
        match self.gates(now).await {
            Ok(Gate::Pass) => {
                self.trace.gates_passed();
                self.waiting_for.clear();
                self.queue_position = None;
                self.force = None;
                self.retry_at = None;
                Ok(Event::GatesPassed)
            }
            Ok(Gate::Wait(why, retry)) => {
                // A move in the lock queue is not news: one info line when
                // the wait begins or its reason changes.
                if was_queued && self.queue_position.is_some() {
                    tracing::debug!(%why, "reboot postponed");
                } else {
                    tracing::info!(%why, "reboot postponed");
                }
                self.waiting_for = why;
                self.retry_at = retry;
                Ok(Event::GatesRefused)
            }
            Err(e) => {
                self.record_error(ErrorKind::GateCheckFailed, e);
                self.waiting_for = "a gate check failed".into();
                self.retry_at = Some(now + GATE_RETRY.min(self.s.poll_interval));
                Ok(Event::GateCheckFailed)
            }
        }
    }

    async fn gates(&mut self, now: SystemTime) -> Result<Gate, String> {
        let force = self.force;
        if force.is_none() {
            let refused = if self.paused {
                Some(Gate::Wait("updates paused".into(), None))
            } else if let Some(w) = self.window_gate(now) {
                Some(w)
            } else {
                self.sessions_gate(now).await?
            };
            if let Some(w) = refused {
                // No slot is kept (or granted later) while another gate says no.
                self.release_lock().await?;
                return Ok(w);
            }
        }
        if force != Some(true) {
            self.queue_position = None;
            if !self.p.lock_held && !self.p.lock_acquiring {
                self.p.lock_acquiring = true;
                self.save().map_err(|e| format!("cannot save state: {e}"))?;
            }
            match self.lock.acquire().await.map_err(|e| error_chain(&e))? {
                LockCheck::Held => {
                    if !self.p.lock_held || self.p.lock_acquiring {
                        self.p.lock_held = true;
                        self.p.lock_acquiring = false;
                        self.save().map_err(|e| format!("cannot save state: {e}"))?;
                    }
                }
                LockCheck::Waiting {
                    position,
                    queue_length,
                    reason,
                } => {
                    self.queue_position = Some(position);
                    let why = format!("reboot lock queued {position}/{queue_length} ({reason})");
                    return Ok(Gate::Wait(why, None));
                }
                LockCheck::Refused(kind) => {
                    let retry = now + GATE_RETRY.min(self.s.poll_interval);
                    return Ok(Gate::Wait(
                        format!("reboot lock refused: {kind}"),
                        Some(retry),
                    ));
                }
            }
            // The lock may have taken a while: the window must still be open.
            if force.is_none() {
                let now = self.clock.now();
                if let Some(w) = self.window_gate(now) {
                    self.release_lock().await?;
                    return Ok(w);
                }
            }
        }
        Ok(Gate::Pass)
    }

    fn window_gate(&self, now: SystemTime) -> Option<Gate> {
        let windows = &self.s.windows;
        let utc: DateTime<Utc> = now.into();
        if upshift_common::window::any_open(windows, utc) {
            return None;
        }
        let next = upshift_common::window::next_open(windows, utc).map(SystemTime::from);
        Some(Gate::Wait("outside the maintenance windows".into(), next))
    }

    async fn sessions_gate(&mut self, now: SystemTime) -> Result<Option<Gate>, String> {
        let n = self
            .os
            .active_sessions()
            .await
            .map_err(|e| format!("sessions check: {}", error_chain(&e)))?;
        if n == 0 {
            self.postponed_since = None;
            return Ok(None);
        }
        let since = *self.postponed_since.get_or_insert(now);
        let limit = since + self.s.max_postpone;
        if now >= limit {
            tracing::warn!(sessions = n, "postponement limit reached; rebooting anyway");
            return Ok(None);
        }
        match self.os.message_sessions(&self.s.session_message).await {
            Ok(reached) => tracing::info!(sessions = n, reached, "users told about the reboot"),
            Err(e) => tracing::warn!(error = %error_chain(&e), "cannot message users"),
        }
        let retry = limit.min(now + SESSIONS_RETRY);
        Ok(Some(Gate::Wait(
            format!("{n} interactive session(s) logged in"),
            Some(retry),
        )))
    }

    async fn release_lock(&mut self) -> Result<(), String> {
        if self.p.lock_held || self.p.lock_acquiring || self.lock.pending() {
            self.lock.release().await.map_err(|e| error_chain(&e))?;
            self.p.lock_held = false;
            self.p.lock_acquiring = false;
            self.save().map_err(|e| format!("cannot save state: {e}"))?;
        }
        Ok(())
    }
}

/// `e: cause: cause...` for logs and status.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
