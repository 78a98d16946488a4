//! Lease deadlines (in memory, tokio time) and the reaper task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Inner;
use crate::LeaseId;

/// Delay before retrying an expiry that failed to commit.
const REAP_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
}

/// Live leases and their deadlines.
#[derive(Debug)]
pub(crate) struct Leases {
    live: Mutex<HashMap<LeaseId, Lease>>,
    /// Wakes the reaper when a deadline may have moved earlier or the store closed.
    wake: Arc<Notify>,
}

impl Leases {
    /// Leases loaded from the file, each given a fresh full TTL.
    pub(crate) fn new(persisted: Vec<(LeaseId, Duration)>) -> Self {
        let now = Instant::now();
        let live = persisted
            .into_iter()
            .map(|(id, ttl)| {
                (
                    id,
                    Lease {
                        ttl,
                        deadline: now + ttl,
                    },
                )
            })
            .collect();
        Self {
            live: Mutex::new(live),
            wake: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Lease>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, id: LeaseId, ttl: Duration) {
        self.lock().insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
            },
        );
        self.wake.notify_one();
    }

    /// Pushes the deadline a full TTL away; `None` when the lease is gone.
    pub(crate) fn renew(&self, id: LeaseId) -> Option<Duration> {
        let mut live = self.lock();
        let lease = live.get_mut(&id)?;
        lease.deadline = Instant::now() + lease.ttl;
        Some(lease.ttl)
    }

    /// Forgets a lease; `false` when it was not live.
    pub(crate) fn remove(&self, id: LeaseId) -> bool {
        self.lock().remove(&id).is_some()
    }

    pub(crate) fn shutdown(&self) {
        self.wake.notify_one();
    }

    /// Removes and returns the expired leases with their TTLs, and the next
    /// deadline.
    fn take_expired(&self, now: Instant) -> (Vec<(LeaseId, Duration)>, Option<Instant>) {
        let mut live = self.lock();
        let expired: Vec<_> = live
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, l)| (*id, l.ttl))
            .collect();
        for (id, _) in &expired {
            live.remove(id);
        }
        (expired, live.values().map(|l| l.deadline).min())
    }

    /// Puts back a lease whose expiry could not be written, to retry soon.
    fn retry(&self, id: LeaseId, ttl: Duration) {
        self.lock().insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + REAP_RETRY,
            },
        );
    }
}

/// The reaper: deletes the keys of each expired lease, one transaction per
/// lease. It holds the store only weakly and exits once the store is gone.
pub(crate) async fn reap(store: Weak<Inner>) {
    loop {
        let Some(inner) = store.upgrade() else { return };
        let wake = inner.leases.wake.clone();
        let (expired, next) = inner.leases.take_expired(Instant::now());
        for (id, ttl) in expired {
            let db = inner.clone();
            let result = tokio::task::spawn_blocking(move || db.db.remove_lease(id)).await;
            let error = match result {
                Ok(Ok(())) => {
                    tracing::debug!(lease = id, "lease expired");
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(lease = id, %error, "deleting the keys of an expired lease failed; retrying");
            inner.leases.retry(id, ttl);
        }
        drop(inner);
        let notified = wake.notified();
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = notified => {}
                }
            }
            None => notified.await,
        }
    }
}
