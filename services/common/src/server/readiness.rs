//! A cloneable readiness flag published over `tokio::sync::watch`.

use std::sync::Arc;

use tokio::sync::watch;

/// Whether the service can take traffic, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyState {
    /// Serving.
    Ready,
    /// Not serving, with the reason shown on `/readyz`.
    NotReady(String),
}

/// Handle shared by the service (which sets it) and the server (which reports it).
#[derive(Debug, Clone)]
pub struct Readiness {
    tx: Arc<watch::Sender<ReadyState>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Starts not ready ("starting").
    pub fn new() -> Self {
        let (tx, _) = watch::channel(ReadyState::NotReady("starting".to_string()));
        Self { tx: Arc::new(tx) }
    }

    /// Marks the service ready.
    pub fn set_ready(&self) {
        self.tx.send_if_modified(|s| replace(s, ReadyState::Ready));
    }

    /// Marks the service not ready for `reason`.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let next = ReadyState::NotReady(reason.into());
        self.tx.send_if_modified(|s| replace(s, next));
    }

    /// True when ready.
    pub fn is_ready(&self) -> bool {
        *self.tx.borrow() == ReadyState::Ready
    }

    /// Current state.
    pub fn state(&self) -> ReadyState {
        self.tx.borrow().clone()
    }

    /// Receiver notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<ReadyState> {
        self.tx.subscribe()
    }
}

fn replace(slot: &mut ReadyState, next: ReadyState) -> bool {
    if *slot == next {
        false
    } else {
        *slot = next;
        true
    }
}
