//! A tiny in-memory [`Store`] for service tests: etcd semantics (revisions,
//! CAS, prefix watches with history), leases without expiry, and an outage
//! switch ([`MemStore::set_failing`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::{
    Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnOutcome, WatchEvent, WatchStream,
};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

/// The in-memory store.
#[derive(Debug)]
pub struct MemStore {
    fail: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    events: broadcast::Sender<WatchEvent>,
}

#[derive(Debug, Default)]
struct State {
    rev: u64,
    kvs: BTreeMap<String, KeyValue>,
    history: Vec<WatchEvent>,
    next_lease: i64,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Self {
            fail: Default::default(),
            state: Mutex::default(),
            events: broadcast::channel(100_000).0,
        }
    }

    /// Makes reads and transactions fail (as if the store were down).
    /// While set, every call fails with [`StoreError::Unavailable`].
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected failure".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.check()?;
        Ok(self.state.lock().unwrap().kvs.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let s = self.state.lock().unwrap();
        let kvs = s
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((kvs, s.rev))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        let ok = txn.compares.iter().all(|c| match c {
            Compare::ModRevision(k, r) => s.kvs.get(k).map_or(0, |kv| kv.mod_revision) == *r,
        });
        if !ok {
            return Ok(TxnOutcome {
                succeeded: false,
                revision: s.rev,
            });
        }
        if txn.ops.is_empty() {
            return Ok(TxnOutcome {
                succeeded: true,
                revision: s.rev,
            });
        }
        s.rev += 1;
        let rev = s.rev;
        for op in txn.ops {
            let ev = match op {
                Op::Put { key, value, lease } => {
                    let create = s.kvs.get(&key).map_or(rev, |kv| kv.create_revision);
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision: create,
                        mod_revision: rev,
                        lease,
                    };
                    s.kvs.insert(key, kv.clone());
                    WatchEvent::Put(kv)
                }
                Op::Delete { key } => {
                    if s.kvs.remove(&key).is_none() {
                        continue;
                    }
                    WatchEvent::Delete { key, revision: rev }
                }
            };
            s.history.push(ev.clone());
            let _ = self.events.send(ev);
        }
        Ok(TxnOutcome {
            succeeded: true,
            revision: rev,
        })
    }

    async fn watch(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
    ) -> Result<WatchStream, StoreError> {
        let s = self.state.lock().unwrap();
        let rx = self.events.subscribe();
        let from = from_revision.unwrap_or(s.rev + 1);
        let past: Vec<_> = s
            .history
            .iter()
            .filter(|e| e.revision() >= from && e.key().starts_with(prefix))
            .cloned()
            .map(Ok)
            .collect();
        let last = s.rev;
        let prefix = prefix.to_string();
        let live = BroadcastStream::new(rx).filter_map(move |e| {
            let prefix = prefix.clone();
            async move {
                match e {
                    Ok(e) if e.revision() > last && e.key().starts_with(&prefix) => Some(Ok(e)),
                    Ok(_) => None,
                    Err(_) => Some(Err(StoreError::Compacted {
                        requested: 0,
                        oldest: 0,
                    })),
                }
            }
        });
        Ok(Box::pin(futures::stream::iter(past).chain(live)))
    }

    async fn grant_lease(&self, _ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut s = self.state.lock().unwrap();
        s.next_lease += 1;
        Ok(s.next_lease)
    }

    async fn keep_alive(&self, _lease: LeaseId) -> Result<Duration, StoreError> {
        Ok(Duration::from_secs(1))
    }

    fn root(self: std::sync::Arc<Self>) -> crate::SharedStore {
        self
    }

    async fn revoke_lease(&self, _lease: LeaseId) -> Result<(), StoreError> {
        Ok(())
    }
}
