//! Write-behind of host records: reports update the view at once and queue
//! their record here (one entry per host, later reports overwrite earlier
//! ones, so the backlog is bounded by the fleet size); one task writes the
//! queue in batched transactions. A report is acknowledged only once a
//! batch holding its host's record (or a newer one) is stored:
//! [`Writer::enqueue`] returns a generation, [`Writer::wait_stored`] waits
//! for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use upshift_store::{Op, SharedStore, Txn};

use crate::metrics::TelemetryMetrics;

/// Puts per transaction (etcd's default limit is 128 operations).
const BATCH: usize = 100;

#[derive(Debug, Default)]
struct Pending {
    generation: u64,
    /// key -> value to put (None: delete).
    dirty: HashMap<String, Option<Vec<u8>>>,
}

/// The write-behind queue and its writer task.
#[derive(Debug, Clone)]
pub struct Writer {
    pending: Arc<Mutex<Pending>>,
    notify: Arc<Notify>,
    stored: watch::Sender<u64>,
}

/// The writer stopped (shutdown) before the record was stored.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the service is shutting down")]
pub struct ShuttingDown;

impl Writer {
    /// Starts the writer task on `store` until `shutdown`.
    pub fn start(
        store: SharedStore,
        metrics: TelemetryMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        let writer = Self {
            pending: Arc::default(),
            notify: Arc::new(Notify::new()),
            stored: watch::channel(0).0,
        };
        let w = writer.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = w.run(store, metrics) => {}
            }
        });
        writer
    }

    /// Queues a put (`Some`) or delete (`None`) of `key`; returns its generation.
    pub fn enqueue(&self, key: String, value: Option<Vec<u8>>) -> u64 {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.generation += 1;
        p.dirty.insert(key, value);
        let generation = p.generation;
        drop(p);
        self.notify.notify_one();
        generation
    }

    /// Records queued and not yet stored.
    pub fn backlog(&self) -> u64 {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dirty
            .len() as u64
    }

    /// Waits until everything queued up to `generation` is stored.
    pub async fn wait_stored(&self, generation: u64) -> Result<(), ShuttingDown> {
        let mut rx = self.stored.subscribe();
        rx.wait_for(|g| *g >= generation)
            .await
            .map(|_| ())
            .map_err(|_| ShuttingDown)
    }

    async fn run(&self, store: SharedStore, metrics: TelemetryMetrics) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (batch, generation) = {
                let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                (std::mem::take(&mut p.dirty), p.generation)
            };
            if batch.is_empty() {
                self.stored.send_if_modified(|g| {
                    let changed = *g < generation;
                    *g = generation.max(*g);
                    changed
                });
                self.notify.notified().await;
                continue;
            }
            let mut entries: Vec<_> = batch.into_iter().collect();
            let mut failed = None;
            while !entries.is_empty() {
                let chunk: Vec<_> = entries.drain(..entries.len().min(BATCH)).collect();
                let txn = chunk.iter().fold(Txn::new(), |t, (k, v)| {
                    t.then(match v {
                        Some(v) => Op::put(k.clone(), v.clone()),
                        None => Op::delete(k.clone()),
                    })
                });
                if let Err(e) = store.txn(txn).await {
                    metrics.store_error("write");
                    tracing::warn!(error = %e, "cannot store host records; retrying");
                    entries.extend(chunk);
                    failed = Some(entries);
                    break;
                }
            }
            match failed {
                None => {
                    backoff = Duration::from_millis(100);
                    self.stored.send_if_modified(|g| {
                        let changed = *g < generation;
                        *g = generation.max(*g);
                        changed
                    });
                }
                Some(rest) => {
                    // Put back what was not stored, unless a newer record was queued meanwhile.
                    {
                        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                        for (k, v) in rest {
                            p.dirty.entry(k).or_insert(v);
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
