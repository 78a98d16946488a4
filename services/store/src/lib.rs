//! The storage contract every stateful Upshift service uses, with two
//! implementations: [`embedded`] (a single redb file, the default) and
//! [`etcd`] (etcd3, for several replicas).
//!
//! The model is etcd's: a flat, ordered key space of UTF-8 keys and byte
//! values; one store-wide revision that every write bumps; per key a
//! `create_revision` and a `mod_revision`; transactions that compare keys'
//! `mod_revision` (0 = absent) and then apply puts and deletes atomically;
//! prefix watches resumable from a revision; and leases whose keys are
//! deleted when they expire. A transaction that changes nothing (failed
//! compares, no ops, or only deletes of absent keys) does not bump the
//! revision; as in etcd, a transaction should write each key at most once.
//!
//! [`conformance`] is the behaviour both backends pass; [`testing`] starts
//! a real etcd for tests.

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

pub mod conformance;
pub mod embedded;
pub mod etcd;
pub mod memory;
pub mod settings;
pub mod testing;

/// A lease id (etcd's i64 lease id; embedded ids are positive too).
pub type LeaseId = i64;

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_revision: u64,
    /// Revision of the last write to the key.
    pub mod_revision: u64,
    /// Lease the key is attached to.
    pub lease: Option<LeaseId>,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals this (0 means the key is absent).
    ModRevision(String, u64),
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write `value` to `key`, attached to `lease` if given.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Lease.
        lease: Option<LeaseId>,
    },
    /// Delete `key` (no error when absent).
    Delete {
        /// Key.
        key: String,
    },
}

impl Op {
    /// A put without a lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    /// A delete.
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }
}

/// An all-or-nothing transaction: if every compare holds, apply every op.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions.
    pub compares: Vec<Compare>,
    /// Writes applied when all conditions hold.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition on a key's `mod_revision` (0 = absent).
    pub fn when_mod_revision(mut self, key: impl Into<String>, rev: u64) -> Self {
        self.compares.push(Compare::ModRevision(key.into(), rev));
        self
    }

    /// Adds a write.
    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

/// Result of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every compare held and the ops were applied.
    pub succeeded: bool,
    /// Store revision after the transaction (unchanged when it failed).
    pub revision: u64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was written; `kv.mod_revision` is the write's revision.
    Put(KeyValue),
    /// A key was deleted (explicitly or by lease expiry) at `revision`.
    Delete {
        /// Key.
        key: String,
        /// Revision of the delete.
        revision: u64,
    },
}

impl WatchEvent {
    /// Revision at which the event happened.
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }

    /// The key concerned.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// A stream of watch events, in revision order. It ends with an error when
/// the store cannot continue it (e.g. `Compacted`); the caller re-lists and
/// watches again.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time.
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A watch asked for a revision that is no longer kept.
    #[error("revision {requested} is compacted (oldest kept: {oldest})")]
    Compacted {
        /// Requested revision.
        requested: u64,
        /// Oldest revision still available.
        oldest: u64,
    },
    /// The lease does not exist (expired or revoked).
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// The stored data is not what this version understands.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// Local I/O or database failure of the embedded store.
    #[error("embedded store failure")]
    Embedded(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The storage contract. Implementations are cheap to clone behind an `Arc`.
#[async_trait]
pub trait Store: Send + Sync + Debug + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Reads every key starting with `prefix`, in key order, and the store
    /// revision the listing reflects (watch from `revision + 1` to follow it).
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError>;

    /// The first `limit` keys starting with `prefix`, in key order, and how
    /// many keys start with it in all: the oldest entries of a time-keyed
    /// log without reading the rest of it.
    async fn list_first(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, usize), StoreError> {
        let (mut kvs, _) = self.list(prefix).await?;
        let total = kvs.len();
        kvs.truncate(limit);
        Ok((kvs, total))
    }

    /// Applies a compare-and-swap transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// Watches keys starting with `prefix`, from `from_revision` (inclusive)
    /// when given, else from now. A `from_revision` that is no longer kept is
    /// answered with `Err(Compacted)` here; a stream that later cannot
    /// continue ends with `Compacted` as its last item.
    async fn watch(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
    ) -> Result<WatchStream, StoreError>;

    /// Creates a lease of `ttl`.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Renews a lease for its full TTL; returns the TTL.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Revokes a lease, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// The prefix this handle puts before every key (etcd's `key_prefix`;
    /// empty for stores that have none).
    fn key_prefix(&self) -> &str {
        ""
    }

    /// The same store, on the same connection, addressing keys exactly as
    /// given: no [`Store::key_prefix`] is added or stripped. For keys whose
    /// place another program fixes (Airlock's), and for writing those and
    /// prefixed keys in one transaction.
    fn root(self: Arc<Self>) -> SharedStore;
}

/// The store handle services hold.
pub type SharedStore = Arc<dyn Store>;
