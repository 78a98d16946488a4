//! Blocking redb operations of the embedded store. Every function here runs
//! on a blocking thread (`spawn_blocking`), never on the async executor.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::broadcast;

use super::codec::{Record, decode_events, decode_record, encode_events, encode_record};
use crate::{KeyValue, LeaseId, Op, StoreError, Txn, TxnOutcome, WatchEvent};

/// key -> encoded [`Record`].
const KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("keys");
/// (lease, key) -> (): which keys each lease owns.
const LEASE_KEYS: TableDefinition<'_, (i64, &str), ()> = TableDefinition::new("lease_keys");
/// lease id -> TTL in milliseconds.
const LEASES: TableDefinition<'_, i64, u64> = TableDefinition::new("leases");
/// revision -> encoded events of that revision.
const HISTORY: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("history");
/// Store-wide counters.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
/// Highest revision removed from the history (oldest kept is one more).
const META_COMPACTED: &str = "compacted";
const META_NEXT_LEASE: &str = "next_lease";

/// The events one committed write produced.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) revision: u64,
    pub(crate) events: Vec<WatchEvent>,
}

/// The redb file plus the in-process fan-out of committed events.
#[derive(Debug)]
pub(crate) struct Db {
    db: Database,
    /// Held from `begin_write` until the batch is broadcast, so watchers see
    /// batches in revision order.
    writer: Mutex<()>,
    pub(crate) events: broadcast::Sender<Arc<Batch>>,
    history: u64,
}

pub(crate) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Embedded(Box::new(e.into()))
}

impl Db {
    /// Opens or creates the file and its tables.
    pub(crate) fn open(path: &Path, history: u64, watch_buffer: usize) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(KEYS).map_err(db_err)?;
            tx.open_table(LEASE_KEYS).map_err(db_err)?;
            tx.open_table(LEASES).map_err(db_err)?;
            tx.open_table(HISTORY).map_err(db_err)?;
            tx.open_table(META).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        let (events, _) = broadcast::channel(watch_buffer.max(1));
        Ok(Self {
            db,
            writer: Mutex::new(()),
            events,
            history: history.max(1),
        })
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let keys = tx.open_table(KEYS).map_err(db_err)?;
        let Some(bytes) = keys.get(key).map_err(db_err)? else {
            return Ok(None);
        };
        Ok(Some(decode_record(bytes.value())?.into_kv(key.to_owned())))
    }

    pub(crate) fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let keys = tx.open_table(KEYS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in keys.range::<&str>(prefix..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(decode_record(v.value())?.into_kv(k.value().to_owned()));
        }
        let meta = tx.open_table(META).map_err(db_err)?;
        Ok((out, meta_get(&meta, META_REVISION)?))
    }

    /// The store revision.
    pub(crate) fn revision(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        meta_get(&tx.open_table(META).map_err(db_err)?, META_REVISION)
    }

    /// Events of revisions `from..` in the history, and the revision they
    /// reach; `Compacted` when `from` is no longer kept.
    pub(crate) fn history_since(
        &self,
        prefix: &str,
        from: u64,
    ) -> Result<(Vec<WatchEvent>, u64), StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let meta = tx.open_table(META).map_err(db_err)?;
        let compacted = meta_get(&meta, META_COMPACTED)?;
        if from <= compacted {
            return Err(StoreError::Compacted {
                requested: from,
                oldest: compacted + 1,
            });
        }
        let history = tx.open_table(HISTORY).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in history.range(from..).map_err(db_err)? {
            let (rev, bytes) = entry.map_err(db_err)?;
            let events = decode_events(rev.value(), bytes.value())?;
            out.extend(events.into_iter().filter(|e| e.key().starts_with(prefix)));
        }
        Ok((out, meta_get(&meta, META_REVISION)?))
    }

    /// Checks every compare, then applies every op, in one durable commit.
    pub(crate) fn txn(&self, txn: &Txn) -> Result<TxnOutcome, StoreError> {
        self.write(|w| {
            for crate::Compare::ModRevision(key, rev) in &txn.compares {
                let current = w.get_record(key)?.map_or(0, |r| r.mod_revision);
                if current != *rev {
                    return Ok(false);
                }
            }
            for op in &txn.ops {
                match op {
                    Op::Put { key, value, lease } => w.put(key, value, *lease)?,
                    Op::Delete { key } => w.delete(key)?,
                }
            }
            Ok(true)
        })
    }

    /// Records a new lease and returns its id.
    pub(crate) fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut id = 0;
        self.write(|w| {
            let mut meta = w.tx.open_table(META).map_err(db_err)?;
            id = meta_get(&meta, META_NEXT_LEASE)?.max(1);
            meta.insert(META_NEXT_LEASE, id + 1).map_err(db_err)?;
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let lease =
                i64::try_from(id).map_err(|_| StoreError::Corrupt("lease ids exhausted".into()))?;
            w.tx.open_table(LEASES)
                .map_err(db_err)?
                .insert(lease, ttl_ms)
                .map_err(db_err)?;
            Ok(true)
        })?;
        Ok(id as LeaseId)
    }

    /// Deletes a lease and every key attached to it, in one commit.
    pub(crate) fn remove_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.write(|w| {
            let keys: Vec<String> = {
                let index = w.tx.open_table(LEASE_KEYS).map_err(db_err)?;
                let mut keys = Vec::new();
                for entry in index.range((lease, "")..).map_err(db_err)? {
                    let (k, _) = entry.map_err(db_err)?;
                    let (id, key) = k.value();
                    if id != lease {
                        break;
                    }
                    keys.push(key.to_owned());
                }
                keys
            };
            for key in keys {
                w.delete(&key)?;
            }
            w.tx.open_table(LEASES)
                .map_err(db_err)?
                .remove(lease)
                .map_err(db_err)?;
            Ok(true)
        })?;
        Ok(())
    }

    /// Every persisted lease with its TTL.
    pub(crate) fn leases(&self) -> Result<Vec<(LeaseId, Duration)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let leases = tx.open_table(LEASES).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in leases.iter().map_err(db_err)? {
            let (id, ttl) = entry.map_err(db_err)?;
            out.push((id.value(), Duration::from_millis(ttl.value())));
        }
        Ok(out)
    }

    /// Runs `f` in a write transaction. When `f` returns `true` the
    /// transaction commits (durably: redb's default `Durability::Immediate`
    /// fsyncs before `commit` returns); when it made changes they get one new
    /// revision, are appended to the history and broadcast to watchers.
    fn write(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<bool, StoreError>,
    ) -> Result<TxnOutcome, StoreError> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = self.db.begin_write().map_err(db_err)?;
        let revision = meta_get(&tx.open_table(META).map_err(db_err)?, META_REVISION)?;
        let mut w = Writer {
            tx,
            revision: revision + 1,
            events: Vec::new(),
        };
        if !f(&mut w)? {
            w.tx.abort().map_err(db_err)?;
            return Ok(TxnOutcome {
                succeeded: false,
                revision,
            });
        }
        let Writer {
            tx,
            revision: next,
            events,
        } = w;
        if events.is_empty() {
            tx.commit().map_err(db_err)?;
            return Ok(TxnOutcome {
                succeeded: true,
                revision,
            });
        }
        self.append_history(&tx, next, &events)?;
        tx.commit().map_err(db_err)?;
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(Arc::new(Batch {
            revision: next,
            events,
        }));
        Ok(TxnOutcome {
            succeeded: true,
            revision: next,
        })
    }

    fn append_history(
        &self,
        tx: &WriteTransaction,
        revision: u64,
        events: &[WatchEvent],
    ) -> Result<(), StoreError> {
        let mut meta = tx.open_table(META).map_err(db_err)?;
        meta.insert(META_REVISION, revision).map_err(db_err)?;
        let mut history = tx.open_table(HISTORY).map_err(db_err)?;
        history
            .insert(revision, encode_events(events).as_slice())
            .map_err(db_err)?;
        let compacted = meta_get(&meta, META_COMPACTED)?;
        if revision.saturating_sub(compacted) > self.history {
            let new_compacted = revision - self.history;
            history
                .retain_in(..=new_compacted, |_, _| false)
                .map_err(db_err)?;
            meta.insert(META_COMPACTED, new_compacted).map_err(db_err)?;
        }
        Ok(())
    }
}

fn meta_get(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, StoreError> {
    Ok(meta.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
}

/// One write transaction being built; every change is stamped `revision`.
struct Writer {
    tx: WriteTransaction,
    revision: u64,
    events: Vec<WatchEvent>,
}

impl Writer {
    fn get_record(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let keys = self.tx.open_table(KEYS).map_err(db_err)?;
        let found = keys.get(key).map_err(db_err)?;
        found.map(|v| decode_record(v.value())).transpose()
    }

    fn put(&mut self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<(), StoreError> {
        if let Some(id) = lease {
            let leases = self.tx.open_table(LEASES).map_err(db_err)?;
            if leases.get(id).map_err(db_err)?.is_none() {
                return Err(StoreError::LeaseNotFound(id));
            }
        }
        let old = self.get_record(key)?;
        let create = old.as_ref().map_or(self.revision, |r| r.create_revision);
        let mut index = self.tx.open_table(LEASE_KEYS).map_err(db_err)?;
        if let Some(old_lease) = old.and_then(|r| r.lease) {
            index.remove((old_lease, key)).map_err(db_err)?;
        }
        if let Some(id) = lease {
            index.insert((id, key), ()).map_err(db_err)?;
        }
        let record = encode_record(create, self.revision, lease, value);
        self.tx
            .open_table(KEYS)
            .map_err(db_err)?
            .insert(key, record.as_slice())
            .map_err(db_err)?;
        self.events.push(WatchEvent::Put(KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: self.revision,
            lease,
        }));
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<(), StoreError> {
        let Some(old) = self.get_record(key)? else {
            return Ok(());
        };
        if let Some(lease) = old.lease {
            self.tx
                .open_table(LEASE_KEYS)
                .map_err(db_err)?
                .remove((lease, key))
                .map_err(db_err)?;
        }
        self.tx
            .open_table(KEYS)
            .map_err(db_err)?
            .remove(key)
            .map_err(db_err)?;
        self.events.push(WatchEvent::Delete {
            key: key.to_owned(),
            revision: self.revision,
        });
        Ok(())
    }
}
