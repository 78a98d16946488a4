//! The run loop: drives the pure [`crate::machine`] with an OS backend, the
//! hint source ([`crate::hints`]), the composed gates ([`gates`]) and local
//! control commands, and publishes a [`Status`].
//!
//! One run lasts from process start (or simulated boot) to a reboot or
//! cancellation. The parts that outlive a run (status channel, command
//! queue, clock) are a [`Runtime`].

use std::collections::HashMap;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use upshift_common::clock::{Clock, SharedClock};

use crate::hints::{self, Hint, HintSource, NodeView};
use crate::lock::RebootLock;
use crate::machine::{Action, Event, Pending, State, transition};
use crate::net::Rng;
use crate::os::{OsBackend, Release};
use crate::persist::{self, Persisted};
use crate::settings::Settings;
use crate::status::{ErrorKind, LastError, Status, state_name};

mod actions;
mod gates;
mod update_trace;

use update_trace::UpdateTrace;

pub use gates::error_chain;

pub use gates::GATE_RETRY;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The OS was rebooted (simulated: exit with `EXIT_SIMULATED_REBOOT`).
    Rebooted,
    /// The cancellation token fired.
    Cancelled,
}

/// Run-loop errors.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("state file")]
    Persist(#[from] std::io::Error),
    #[error("os backend")]
    Os(#[from] crate::os::OsError),
    #[error("state machine")]
    Transition(#[from] crate::machine::TransitionError),
    #[error("reboot lock")]
    Lock(#[from] crate::lock::LockError),
}

/// Agent identity values used on the wire.
#[derive(Debug, Clone)]
pub struct Ident {
    pub node_uuid: String,
    pub platform: String,
    /// Dead-end notice file (`<root>/run/motd.d/85-upshift-deadend.motd`).
    pub motd_path: Option<std::path::PathBuf>,
}

/// A local control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Check for an update now.
    CheckNow,
    /// Start no new staging or finalization until resumed (persisted).
    Pause,
    /// Undo `Pause`.
    Resume,
    /// Finalize the staged update now, skipping windows, sessions and
    /// pause; the lock is still taken unless `force`.
    FinalizeNow { force: bool },
}

/// A command and where its answer goes.
#[derive(Debug)]
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// Sends commands to a running agent.
#[derive(Debug, Clone)]
pub struct Control {
    tx: mpsc::Sender<Request>,
}

impl Control {
    /// Sends `command` and waits for the agent's answer.
    pub async fn send(&self, command: Command) -> Result<String, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { command, reply })
            .await
            .map_err(|_| "agent is not running".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("agent stopped before answering".into()))
    }
}

/// What outlives one run: clock, cancellation, status and command queue.
#[derive(Debug)]
pub struct Runtime {
    pub clock: SharedClock,
    pub cancel: CancellationToken,
    pub status: watch::Sender<Status>,
    pub commands: mpsc::Receiver<Request>,
    /// RNG of the hint stream's reconnect jitter (injected by tests).
    pub rng: fn() -> Rng,
}

impl Runtime {
    /// A runtime and the control handle feeding its command queue.
    pub fn new(clock: SharedClock, cancel: CancellationToken) -> (Runtime, Control) {
        let (tx, rx) = mpsc::channel(16);
        let status = watch::Sender::new(Status::starting(clock.now()));
        (
            Runtime {
                clock,
                cancel,
                status,
                commands: rx,
                rng: crate::net::thread_rng,
            },
            Control { tx },
        )
    }
}

/// Runs once until the (simulated) reboot, with a private runtime.
pub async fn run<O: OsBackend, C: Clock + Clone>(
    settings: &Settings,
    ident: &Ident,
    os: &O,
    clock: &C,
) -> Result<Exit, DriverError> {
    let (mut rt, _control) =
        Runtime::new(std::sync::Arc::new(clock.clone()), CancellationToken::new());
    run_with(settings, ident, os, &mut rt).await
}

/// Runs once until the (simulated) reboot or `rt.cancel`.
pub async fn run_with<O: OsBackend>(
    settings: &Settings,
    ident: &Ident,
    os: &O,
    rt: &mut Runtime,
) -> Result<Exit, DriverError> {
    let p = persist::load(&settings.state_dir)?;
    // Cancellation also ends an OS call in flight, as a killed process would.
    let stop = rt.cancel.clone();
    let (booted, scheme) = tokio::select! {
        r = async { Ok::<_, crate::os::OsError>((os.booted().await?, os.booted_scheme().await?)) } => r?,
        _ = stop.cancelled() => return Ok(Exit::Cancelled),
    };
    let cancel = rt.cancel.child_token();
    let _stop_tasks = cancel.clone().drop_guard();
    let node = watch::Sender::new(NodeView {
        booted: booted.clone(),
        scheme,
        denied: p.deny_list.iter().cloned().collect(),
    });
    // An update persisted by an earlier run continues its trace.
    let trace = UpdateTrace::resume(p.traceparent.clone());
    let hints = hints::spawn(
        settings.clone(),
        ident.clone(),
        node.subscribe(),
        trace.subscribe(),
        rt.clock.clone(),
        (rt.rng)(),
        cancel.clone(),
    );
    let lock = RebootLock::new(settings, &ident.node_uuid, rt.clock.clone())?;
    // Counters carry over a simulated reboot (same runtime).
    let (updates, failures, base_checks, last_error) = carried_over(&rt.status.borrow());
    let now = rt.clock.now();
    let mut d = Driver {
        s: settings,
        ident,
        os,
        clock: rt.clock.clone(),
        cancel,
        status: &rt.status,
        commands: &mut rt.commands,
        state: State::Start,
        state_since: now,
        paused: p.paused,
        p,
        booted,
        hints,
        node,
        lock,
        trace,
        targets: HashMap::new(),
        retry_at: None,
        force: None,
        postponed_since: None,
        waiting_for: String::new(),
        queue_position: None,
        last_error,
        updates,
        failures,
        base_checks,
        seen_feed_errors: 0,
    };
    tokio::select! {
        r = d.run() => r,
        _ = stop.cancelled() => Ok(Exit::Cancelled),
    }
}

struct Driver<'a, O> {
    s: &'a Settings,
    ident: &'a Ident,
    os: &'a O,
    clock: SharedClock,
    cancel: CancellationToken,
    status: &'a watch::Sender<Status>,
    commands: &'a mut mpsc::Receiver<Request>,
    state: State,
    state_since: SystemTime,
    p: Persisted,
    paused: bool,
    booted: Release,
    hints: HintSource,
    node: watch::Sender<NodeView>,
    lock: RebootLock,
    trace: UpdateTrace,
    targets: HashMap<String, Release>,
    /// When the pending retry (staging backoff, gate re-check) is due.
    retry_at: Option<SystemTime>,
    /// `finalize-now` pending: `Some(force)`.
    force: Option<bool>,
    postponed_since: Option<SystemTime>,
    waiting_for: String,
    queue_position: Option<u32>,
    last_error: Option<LastError>,
    updates: u64,
    failures: u64,
    /// Checks counted by earlier runs of this runtime.
    base_checks: u64,
    seen_feed_errors: u64,
}

impl<O: OsBackend> Driver<'_, O> {
    async fn run(&mut self) -> Result<Exit, DriverError> {
        let mut event = self.start_event().await?;
        loop {
            let now = self.clock.now();
            let (next, actions) = transition(&self.state, &event, now)?;
            let (from, to) = (state_name(&self.state), state_name(&next));
            if from == to && matches!(event, Event::RetryDue | Event::GatesRefused) {
                // Re-checks while waiting (every move in the lock queue).
                tracing::debug!(from, ?event, to, "transition");
            } else {
                tracing::info!(from, ?event, to, "transition");
            }
            if to != from {
                self.state_since = now;
            }
            self.state = next;
            // Long actions (OS calls, the lock) show the new state while they
            // run; quick local ones (notices, retries) finish first, so the
            // status never runs ahead of the files it describes.
            if actions.iter().any(Action::takes_a_while) {
                self.publish();
            }
            let mut follow = None;
            for a in actions {
                if let Some(e) = self.act(a).await? {
                    follow = Some(e);
                }
            }
            self.publish();
            if matches!(self.state, State::Rebooting { .. }) {
                return Ok(Exit::Rebooted);
            }
            event = match follow {
                Some(e) => e,
                None => match self.wait().await {
                    Some(e) => e,
                    None => return Ok(Exit::Cancelled),
                },
            };
        }
    }

    /// `Started`, with whether the OS still has the persisted target staged.
    async fn start_event(&self) -> Result<Event, DriverError> {
        let booted = self.booted.version.clone();
        let pending = match &self.p.pending_target {
            None => None,
            Some(t) => {
                let staged =
                    *t != booted && self.os.staged().await?.is_some_and(|r| r.version == *t);
                Some(Pending {
                    target: t.clone(),
                    staged,
                    failures: self.failures_of(t),
                })
            }
        };
        Ok(Event::Started { booted, pending })
    }

    /// Waits for the next event: a hint, a due retry, lock progress or a
    /// command. `None` when cancelled.
    async fn wait(&mut self) -> Option<Event> {
        loop {
            if matches!(
                self.state,
                State::Idle | State::DeadEnd { .. } | State::UpdateAvailable { .. }
            ) && let Some(e) = self.hint_event()
            {
                return Some(e);
            }
            let deadline = self.retry_at.map(|t| self.clock.deadline_for(t));
            let gated = matches!(self.state, State::WaitingForGates { .. });
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                _ = sleep_until(deadline) => {
                    self.retry_at = None;
                    return Some(Event::RetryDue);
                }
                r = self.hints.feed.changed() => {
                    if r.is_err() {
                        // The hint task ended: only cancellation remains.
                        self.cancel.cancelled().await;
                        return None;
                    }
                    self.publish();
                }
                _ = self.lock.changed(), if gated => return Some(Event::RetryDue),
                Some(req) = self.commands.recv() => {
                    if let Some(e) = self.command(req) {
                        return Some(e);
                    }
                }
            }
        }
    }

    /// The event the current hint means in `Idle`, `DeadEnd` or
    /// `UpdateAvailable`, if it changes anything.
    fn hint_event(&mut self) -> Option<Event> {
        let (hint, source) = {
            let f = self.hints.feed.borrow();
            (f.hint.clone()?, f.hint_trace.clone())
        };
        let available = match &self.state {
            State::UpdateAvailable { target, .. } => Some(target.clone()),
            _ => None,
        };
        let leave = available.is_some() || matches!(self.state, State::DeadEnd { .. });
        match hint {
            Hint::Update(r)
                if r.version != self.booted.version && !self.p.deny_list.contains(&r.version) =>
            {
                if available.as_deref() == Some(r.version.as_str()) {
                    return None;
                }
                let target = r.version.clone();
                self.choose_target(&target);
                self.begin_update(&target, source.as_deref());
                self.targets.insert(target.clone(), r);
                Some(Event::UpdateFound {
                    failures: self.failures_of(&target),
                    target,
                    paused: self.paused,
                })
            }
            Hint::DeadEnd { reason } => match &self.state {
                State::DeadEnd { reason: r } if *r == reason => None,
                _ => Some(Event::DeadEndFound { reason }),
            },
            // The source cannot place the node for now: keep the target.
            Hint::Unknown(_) if available.is_some() => None,
            _ if leave => {
                if available.is_some() {
                    self.trace.end(Some("target withdrawn"));
                }
                Some(Event::NoUpdate)
            }
            _ => None,
        }
    }

    /// A new target resets the failure counts of any other.
    fn choose_target(&mut self, target: &str) {
        let before = self.p.failure_counts.len();
        self.p.failure_counts.retain(|v, _| v == target);
        if self.p.failure_counts.len() != before
            && let Err(e) = self.save()
        {
            tracing::warn!(error = %e, "cannot save state");
        }
    }

    fn command(&mut self, req: Request) -> Option<Event> {
        let waiting = matches!(self.state, State::WaitingForGates { .. });
        let available = matches!(self.state, State::UpdateAvailable { .. });
        let (answer, event) = match req.command {
            Command::CheckNow => {
                self.hints.poke.notify_one();
                (Ok("update check requested".to_string()), None)
            }
            Command::Pause | Command::Resume => {
                let pause = req.command == Command::Pause;
                self.paused = pause;
                self.p.paused = pause;
                match persist::save(&self.s.state_dir, &self.p) {
                    Ok(()) => {
                        let ev = match (pause, waiting, available) {
                            (true, _, true) => Some(Event::Paused),
                            (false, _, true) => Some(Event::Resumed),
                            (false, true, _) => Some(Event::RetryDue),
                            _ => None,
                        };
                        let word = if pause { "paused" } else { "resumed" };
                        (Ok(format!("updates {word}")), ev)
                    }
                    Err(e) => (Err(format!("cannot save state: {e}")), None),
                }
            }
            Command::FinalizeNow { force } => match &self.state {
                State::Staged { .. } | State::WaitingForGates { .. } => {
                    self.force = Some(force);
                    let how = if force { " without the lock" } else { "" };
                    (
                        Ok(format!("finalizing now{how}")),
                        waiting.then_some(Event::RetryDue),
                    )
                }
                s => (
                    Err(format!(
                        "nothing staged to finalize (state {})",
                        state_name(s)
                    )),
                    None,
                ),
            },
        };
        let _ = req.reply.send(answer);
        self.publish();
        event
    }

    fn save(&self) -> std::io::Result<()> {
        persist::save(&self.s.state_dir, &self.p)
    }

    fn record_error(&mut self, kind: ErrorKind, message: String) {
        tracing::warn!(kind = kind.as_str(), %message, "agent error");
        self.failures += 1;
        self.last_error = Some(LastError {
            kind,
            message,
            at: self.clock.now(),
        });
    }

    /// The target being worked on, if any.
    fn pending(&self) -> Option<String> {
        match &self.state {
            State::UpdateAvailable { target, .. }
            | State::Staging { target, .. }
            | State::Staged { target }
            | State::WaitingForGates { target }
            | State::Finalizing { target }
            | State::Rebooting { target } => Some(target.clone()),
            _ => None,
        }
    }

    /// Publishes the status (and folds hint-source errors into it).
    fn publish(&mut self) {
        let feed = self.hints.feed.borrow().clone();
        if feed.errors > self.seen_feed_errors {
            self.seen_feed_errors = feed.errors;
            let msg = feed.last_error.clone().unwrap_or_default();
            self.record_error(ErrorKind::HintsUnavailable, msg);
        }
        let now = self.clock.now();
        let next_window = if self.s.windows.is_empty() {
            None
        } else {
            upshift_common::window::next_open(&self.s.windows, now.into()).map(SystemTime::from)
        };
        let target = self.pending();
        let st = Status {
            state: state_name(&self.state),
            state_since: self.state_since,
            booted: self.booted.version.clone(),
            target,
            last_check: feed.last_check,
            last_error: self.last_error.clone(),
            lock_held: self.p.lock_held,
            lock_queue_position: self.queue_position,
            paused: self.paused,
            waiting_for: self.waiting_for.clone(),
            next_window,
            dead_end: match &self.state {
                State::DeadEnd { reason } => Some(reason.clone()),
                _ => None,
            },
            hint_stream_connected: feed.connected,
            checks: self.base_checks + feed.checks,
            updates: self.updates,
            failures: self.failures,
            deny_list: self.p.deny_list.iter().cloned().collect(),
            traceparent: self.trace.traceparent(),
        };
        self.status.send_if_modified(|s| {
            if *s == st {
                false
            } else {
                *s = st;
                true
            }
        });
    }
}

/// The counters and last error an earlier run of the runtime published.
fn carried_over(s: &Status) -> (u64, u64, u64, Option<LastError>) {
    (s.updates, s.failures, s.checks, s.last_error.clone())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
