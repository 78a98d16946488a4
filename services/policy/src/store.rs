//! The slice of the storage contract the policy service uses, and an
//! in-memory implementation (shareable between in-process replicas).
//!
//! [`UpshiftStore`] adapts the workspace store (embedded or etcd) for
//! production; [`MemoryStore`] serves tests and benchmarks.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use tokio::sync::broadcast;

/// A key change seen by a watch: key, new value (`None` = deleted), revision.
pub type Change = (String, Option<Vec<u8>>, u64);

/// A stream of changes in revision order.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<Change, StoreError>> + Send>>;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or fell behind.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Key-value store with prefix listing and watch.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + Debug + 'static {
    /// Every key under `prefix` and the revision the listing reflects.
    async fn list(&self, prefix: &str) -> Result<(Vec<(String, Vec<u8>)>, u64), StoreError>;
    /// A key's value and the revision of its last write.
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError>;
    /// Writes a key; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError>;
    /// Writes a key only if its last write is revision `expected` (0: the
    /// key is absent); returns whether it wrote.
    async fn put_if(&self, key: &str, value: Vec<u8>, expected: u64) -> Result<bool, StoreError>;
    /// Deletes a key (no error when absent); returns the new revision.
    async fn delete(&self, key: &str) -> Result<u64, StoreError>;
    /// Changes under `prefix` from revision `from` (inclusive).
    async fn watch(&self, prefix: &str, from: u64) -> Result<ChangeStream, StoreError>;
}

/// Shared store handle.
pub type SharedKv = Arc<dyn KvStore>;

#[derive(Debug, Default)]
struct Inner {
    /// Value and revision of its last write, by key.
    data: BTreeMap<String, (Vec<u8>, u64)>,
    log: Vec<Change>,
    revision: u64,
}

/// An in-memory store; clones share data (two replicas, one "store").
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<Change>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            events: broadcast::channel(1024).0,
        }
    }
}

impl MemoryStore {
    /// A new empty store.
    pub fn shared() -> SharedKv {
        Arc::new(Self::default())
    }

    fn write(&self, g: &mut Inner, key: &str, value: Vec<u8>) -> u64 {
        g.revision += 1;
        let change = (key.to_owned(), Some(value.clone()), g.revision);
        g.data.insert(key.to_owned(), (value, g.revision));
        g.log.push(change.clone());
        let _ = self.events.send(change);
        g.revision
    }
}

#[async_trait::async_trait]
impl KvStore for MemoryStore {
    async fn list(&self, prefix: &str) -> Result<(Vec<(String, Vec<u8>)>, u64), StoreError> {
        let g = self.inner.lock().unwrap();
        let kvs = g
            .data
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        Ok((kvs, g.revision))
    }

    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        Ok(self.inner.lock().unwrap().data.get(key).cloned())
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        let mut g = self.inner.lock().unwrap();
        Ok(self.write(&mut g, key, value))
    }

    async fn put_if(&self, key: &str, value: Vec<u8>, expected: u64) -> Result<bool, StoreError> {
        let mut g = self.inner.lock().unwrap();
        if g.data.get(key).map_or(0, |(_, rev)| *rev) != expected {
            return Ok(false);
        }
        self.write(&mut g, key, value);
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<u64, StoreError> {
        let mut g = self.inner.lock().unwrap();
        if g.data.remove(key).is_none() {
            return Ok(g.revision);
        }
        g.revision += 1;
        let change = (key.to_owned(), None, g.revision);
        g.log.push(change.clone());
        let _ = self.events.send(change);
        Ok(g.revision)
    }

    async fn watch(&self, prefix: &str, from: u64) -> Result<ChangeStream, StoreError> {
        let g = self.inner.lock().unwrap();
        let rx = self.events.subscribe();
        let past: Vec<Change> = g
            .log
            .iter()
            .filter(|c| c.2 >= from && c.0.starts_with(prefix))
            .cloned()
            .collect();
        let last = g.revision;
        drop(g);
        let prefix = prefix.to_owned();
        let live = tokio_stream_wrapper(rx).filter_map(move |c| {
            let keep = match &c {
                Ok(c) => c.2 > last && c.0.starts_with(&prefix),
                Err(_) => true,
            };
            std::future::ready(keep.then_some(c))
        });
        Ok(Box::pin(
            futures::stream::iter(past.into_iter().map(Ok)).chain(live),
        ))
    }
}

fn tokio_stream_wrapper(
    rx: broadcast::Receiver<Change>,
) -> impl Stream<Item = Result<Change, StoreError>> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(c) => Some((Ok(c), rx)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some((
                Err(StoreError::Unavailable(format!("watch lagged by {n}"))),
                rx,
            )),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}

/// The policy store over the workspace storage contract (embedded or etcd).
#[derive(Debug, Clone)]
pub struct UpshiftStore(pub upshift_store::SharedStore);

impl UpshiftStore {
    /// Wraps a shared store.
    pub fn shared(store: upshift_store::SharedStore) -> SharedKv {
        Arc::new(Self(store))
    }
}

fn unavailable(e: upshift_store::StoreError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl KvStore for UpshiftStore {
    async fn list(&self, prefix: &str) -> Result<(Vec<(String, Vec<u8>)>, u64), StoreError> {
        let (kvs, rev) = self.0.list(prefix).await.map_err(unavailable)?;
        Ok((kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(), rev))
    }

    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let kv = self.0.get(key).await.map_err(unavailable)?;
        Ok(kv.map(|kv| (kv.value, kv.mod_revision)))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        let txn = upshift_store::Txn::new().then(upshift_store::Op::put(key, value));
        Ok(self.0.txn(txn).await.map_err(unavailable)?.revision)
    }

    async fn put_if(&self, key: &str, value: Vec<u8>, expected: u64) -> Result<bool, StoreError> {
        let txn = upshift_store::Txn::new()
            .when_mod_revision(key, expected)
            .then(upshift_store::Op::put(key, value));
        Ok(self.0.txn(txn).await.map_err(unavailable)?.succeeded)
    }

    async fn delete(&self, key: &str) -> Result<u64, StoreError> {
        let txn = upshift_store::Txn::new().then(upshift_store::Op::delete(key));
        Ok(self.0.txn(txn).await.map_err(unavailable)?.revision)
    }

    async fn watch(&self, prefix: &str, from: u64) -> Result<ChangeStream, StoreError> {
        let s = self
            .0
            .watch(prefix, Some(from))
            .await
            .map_err(unavailable)?;
        Ok(Box::pin(s.map(|e| {
            e.map_err(unavailable).map(|e| match e {
                upshift_store::WatchEvent::Put(kv) => (kv.key, Some(kv.value), kv.mod_revision),
                upshift_store::WatchEvent::Delete { key, revision } => (key, None, revision),
            })
        })))
    }
}
