//! Rollout control: pauses and freezes written to the store (with an audit
//! entry) and followed from the store's watch, so every replica sharing the
//! store publishes the same [`Overrides`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use upshift_common::clock::{SharedClock, epoch_secs};

use crate::overrides::{AUDIT, Mark, Overrides, PREFIX, RolloutOverride, freeze_key, pause_key};
use crate::store::{SharedKv, StoreError};

/// Compare-and-swap attempts of one rollout change.
const CAS_ATTEMPTS: u32 = 8;

/// Handle for changing overrides.
#[derive(Debug, Clone)]
pub struct Control {
    store: SharedKv,
    tx: watch::Sender<Arc<Overrides>>,
    clock: SharedClock,
}

impl Control {
    /// Starts following the store's overrides until `shutdown`.
    pub fn start(store: SharedKv, clock: SharedClock, shutdown: CancellationToken) -> Self {
        let (tx, _) = watch::channel(Arc::new(Overrides::default()));
        tokio::spawn(follow(store.clone(), tx.clone(), shutdown));
        Self { store, tx, clock }
    }

    /// The published overrides.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Overrides>> {
        self.tx.subscribe()
    }

    /// Current overrides.
    pub fn current(&self) -> Arc<Overrides> {
        self.tx.borrow().clone()
    }

    fn mark(&self, reason: &str, actor: &str) -> Mark {
        Mark {
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            at: epoch_secs(self.clock.now()),
        }
    }

    /// Pauses a rollout, holding its throttle or (`withdraw`) offering it
    /// to no one. Idempotent: an existing pause is kept, though a hold
    /// becomes a withdrawal when asked.
    pub async fn pause(
        &self,
        stream: &str,
        version: &str,
        withdraw: bool,
        reason: &str,
        actor: &str,
    ) -> Result<RolloutOverride, StoreError> {
        self.change_rollout(stream, version, reason, actor, |rec, mark| {
            let action = match (&rec.paused, rec.withdrawn, withdraw) {
                (None, _, false) => "pause",
                (None, _, true) | (Some(_), false, true) => "withdraw",
                (Some(_), _, _) => return None,
            };
            if rec.paused.is_none() {
                rec.paused = Some(mark);
            }
            rec.withdrawn = withdraw;
            Some(action)
        })
        .await
    }

    /// Resumes a rollout, adding the paused interval to its offset.
    pub async fn resume(
        &self,
        stream: &str,
        version: &str,
        reason: &str,
        actor: &str,
    ) -> Result<RolloutOverride, StoreError> {
        self.change_rollout(stream, version, reason, actor, |rec, mark| {
            let p = rec.paused.take()?;
            rec.paused_total += (mark.at - p.at).max(0.0);
            rec.resumed = Some(mark);
            rec.withdrawn = false;
            Some("resume")
        })
        .await
    }

    /// Read-modify-write of a rollout record, compare-and-swapped on the
    /// record's revision in the store (not on this replica's copy, which may
    /// lag another replica's change). `change` returns the audit action, or
    /// `None` when there is nothing to do.
    async fn change_rollout(
        &self,
        stream: &str,
        version: &str,
        reason: &str,
        actor: &str,
        change: impl Fn(&mut RolloutOverride, Mark) -> Option<&'static str>,
    ) -> Result<RolloutOverride, StoreError> {
        let key = pause_key(stream, version);
        for attempt in 0..CAS_ATTEMPTS {
            let (mut rec, rev) = match self.store.get(&key).await? {
                Some((v, rev)) => (serde_json::from_slice(&v).unwrap_or_default(), rev),
                None => (RolloutOverride::default(), 0),
            };
            let Some(action) = change(&mut rec, self.mark(reason, actor)) else {
                return Ok(rec);
            };
            let value = serde_json::to_vec(&rec).unwrap_or_default();
            if self.store.put_if(&key, value.clone(), rev).await? {
                self.apply_local(&key, Some(&value));
                self.audit(action, stream, version, reason, actor).await;
                return Ok(rec);
            }
            let backoff = 5u64 << attempt.min(6);
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..=backoff))).await;
        }
        Err(StoreError::Unavailable(format!(
            "{key} changed {CAS_ATTEMPTS} times while being written; try again"
        )))
    }

    /// Freezes a stream (idempotent).
    pub async fn freeze(
        &self,
        stream: &str,
        reason: &str,
        actor: &str,
    ) -> Result<Mark, StoreError> {
        if let Some(m) = self.current().freezes.get(stream) {
            return Ok(m.clone());
        }
        let m = self.mark(reason, actor);
        let key = freeze_key(stream);
        let value = serde_json::to_vec(&m).unwrap_or_default();
        self.store.put(&key, value.clone()).await?;
        self.apply_local(&key, Some(&value));
        self.audit("freeze", stream, "", reason, actor).await;
        Ok(m)
    }

    /// Lifts a stream freeze.
    pub async fn unfreeze(
        &self,
        stream: &str,
        reason: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let key = freeze_key(stream);
        self.store.delete(&key).await?;
        self.apply_local(&key, None);
        self.audit("unfreeze", stream, "", reason, actor).await;
        Ok(())
    }

    fn apply_local(&self, key: &str, value: Option<&[u8]>) {
        self.tx.send_if_modified(|o| {
            let mut next = (**o).clone();
            if next.apply(key, value).is_ok() && next != **o {
                *o = Arc::new(next);
                return true;
            }
            false
        });
    }

    async fn audit(&self, action: &str, stream: &str, version: &str, reason: &str, actor: &str) {
        tracing::info!(action, stream, version, reason, actor, "rollout override");
        let at = epoch_secs(self.clock.now());
        let key = format!(
            "{AUDIT}{:020}-{:08x}",
            (at * 1000.0) as u64,
            rand::random::<u32>()
        );
        let entry = serde_json::json!({"action": action, "stream": stream, "version": version, "reason": reason, "actor": actor, "at": at});
        if let Err(e) = self.store.put(&key, entry.to_string().into_bytes()).await {
            tracing::error!(error = %e, action, "cannot write audit entry");
        }
    }
}

async fn follow(store: SharedKv, tx: watch::Sender<Arc<Overrides>>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = follow_once(&store, &tx) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "override watch failed; relisting");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn follow_once(
    store: &SharedKv,
    tx: &watch::Sender<Arc<Overrides>>,
) -> Result<(), StoreError> {
    let (kvs, rev) = store.list(PREFIX).await?;
    let mut o = Overrides::default();
    for (k, v) in &kvs {
        if let Err(e) = o.apply(k, Some(v)) {
            tracing::warn!(key = %k, error = %e, "ignoring corrupt override");
        }
    }
    tx.send_if_modified(|cur| {
        let changed = **cur != o;
        if changed {
            *cur = Arc::new(o);
        }
        changed
    });
    let mut changes = store.watch(PREFIX, rev + 1).await?;
    while let Some(change) = changes.next().await {
        let (key, value, _) = change?;
        tx.send_if_modified(|cur| {
            let mut next = (**cur).clone();
            match next.apply(&key, value.as_deref()) {
                Ok(()) if next != **cur => {
                    *cur = Arc::new(next);
                    true
                }
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "ignoring corrupt override");
                    false
                }
            }
        });
    }
    Ok(())
}
