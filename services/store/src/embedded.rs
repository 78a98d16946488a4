//! The embedded store: one redb file, no external server.
//!
//! - Every acknowledged write is committed with redb's default
//!   `Durability::Immediate` (fsync before `commit` returns), so it survives
//!   a process crash.
//! - The last `history_revisions` revisions (10,000 by default) are kept so a
//!   watch can replay from a past revision; an older revision is answered
//!   with [`StoreError::Compacted`].
//! - Live watchers are fed by an in-process broadcast after each commit. A
//!   watcher that falls more than `watch_buffer` batches behind never slows
//!   writers: it re-reads what it missed from the history table and carries
//!   on, ending with `Compacted` only if the history no longer has it.
//! - Lease deadlines live in memory (tokio time); the lease ids and TTLs are
//!   persisted. After a reopen every lease gets a fresh full TTL, as etcd
//!   does after a leader change. One reaper task deletes the keys of each
//!   expired lease in one transaction, producing `Delete` events.

mod codec;
mod db;
mod leases;

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;

use self::db::{Batch, Db};
use self::leases::Leases;
use crate::{KeyValue, LeaseId, Store, StoreError, Txn, TxnOutcome, WatchEvent, WatchStream};

/// Tuning of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// How many past revisions a watch can replay from.
    pub history_revisions: u64,
    /// How many committed batches a live watcher may lag before it falls
    /// back to reading the history table.
    pub watch_buffer: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            history_revisions: 10_000,
            watch_buffer: 1024,
        }
    }
}

/// The embedded store handle. Dropping it stops its lease reaper and ends
/// its watch streams; the file is closed when the last in-flight operation
/// finishes.
#[derive(Debug)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    db: Db,
    leases: Leases,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.leases.shutdown();
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` with default options.
    ///
    /// Blocks while redb opens the file (and repairs it after a crash); call
    /// it at startup, from within a Tokio runtime (it spawns the reaper).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    /// Opens (or creates) the store file at `path`.
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|e| StoreError::Embedded(Box::new(e)))?;
        let db = Db::open(path, options.history_revisions, options.watch_buffer)?;
        let leases = Leases::new(db.leases()?);
        let inner = Arc::new(Inner { db, leases });
        runtime.spawn(leases::reap(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        blocking(self.inner.clone(), f).await
    }
}

async fn blocking<T: Send + 'static>(
    inner: Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || f(&inner))
        .await
        .map_err(|e| StoreError::Embedded(Box::new(e)))?
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |i| i.db.get(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |i| i.db.list(&prefix)).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.blocking(move |i| i.db.txn(&txn)).await
    }

    async fn watch(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
    ) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the history so no commit falls in between;
        // batches the history already covered are skipped by revision.
        let rx = self.inner.db.events.subscribe();
        let mut watch = Watch {
            inner: Arc::downgrade(&self.inner),
            prefix: prefix.to_owned(),
            next: 0,
            rx,
            pending: Default::default(),
        };
        match from_revision {
            Some(from) => {
                let prefix = prefix.to_owned();
                let from = from.max(1);
                let (events, reached) = self
                    .blocking(move |i| i.db.history_since(&prefix, from))
                    .await?;
                watch.pending.extend(events);
                watch.next = reached.max(from - 1) + 1;
            }
            None => watch.next = self.list_revision().await? + 1,
        }
        Ok(watch.into_stream())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let id = self.blocking(move |i| i.db.grant_lease(ttl)).await?;
        self.inner.leases.insert(id, ttl);
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.inner
            .leases
            .renew(lease)
            .ok_or(StoreError::LeaseNotFound(lease))
    }

    fn root(self: Arc<Self>) -> crate::SharedStore {
        self
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        if !self.inner.leases.remove(lease) {
            return Err(StoreError::LeaseNotFound(lease));
        }
        self.blocking(move |i| i.db.remove_lease(lease)).await
    }
}

impl EmbeddedStore {
    async fn list_revision(&self) -> Result<u64, StoreError> {
        self.blocking(|i| i.db.revision()).await
    }
}

/// State of one watch stream.
struct Watch {
    inner: Weak<Inner>,
    prefix: String,
    /// The next revision this watch has not delivered yet.
    next: u64,
    rx: broadcast::Receiver<Arc<Batch>>,
    pending: std::collections::VecDeque<WatchEvent>,
}

impl Watch {
    fn into_stream(self) -> WatchStream {
        futures::stream::unfold(Some(self), |state| async move {
            let mut watch = state?;
            match watch.next_event().await {
                Ok(Some(event)) => Some((Ok(event), Some(watch))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }

    /// The next event; `None` when the store was closed.
    async fn next_event(&mut self) -> Result<Option<WatchEvent>, StoreError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            match self.rx.recv().await {
                Ok(batch) if batch.revision < self.next => {}
                Ok(batch) => {
                    self.next = batch.revision + 1;
                    let events = batch
                        .events
                        .iter()
                        .filter(|e| e.key().starts_with(&self.prefix));
                    self.pending.extend(events.cloned());
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, prefix = %self.prefix, "watcher lagged; catching up from history");
                    if !self.catch_up().await? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Re-reads what a lagging watcher missed from the history table.
    async fn catch_up(&mut self) -> Result<bool, StoreError> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(false);
        };
        self.rx = inner.db.events.subscribe();
        let (prefix, from) = (self.prefix.clone(), self.next);
        let (events, reached) = blocking(inner, move |i| i.db.history_since(&prefix, from)).await?;
        self.pending.extend(events);
        self.next = self.next.max(reached + 1);
        Ok(true)
    }
}
