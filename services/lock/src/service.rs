//! The lock service core: CAS updates of group records, the audit log, the
//! cache of group records fed by a store watch, lease expiry and the
//! per-group FIFO of gRPC waiters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use upshift_common::clock::SharedClock;
use upshift_store::{SharedStore, Txn};

use crate::config::{GroupSettings, LockSettings, valid_group_name};
use crate::error::LockError;
use crate::layout::{AuditRecord, DecodeError, Keys, UNKNOWN_ACQUIRED_AT};
use crate::metrics::LockMetrics;
use crate::semaphore::{HolderRecord, LockRequest, Outcome, SemaphoreState};
use upshift_common::window;

mod audit;
mod reaper;

pub use audit::{AuditPage, MAX_PAGE};

/// Actor recorded for grants and releases made by clients themselves.
pub const CLIENT_ACTOR: &str = "client";

/// Cached group records, by group name.
pub(crate) type Cache = Arc<Mutex<BTreeMap<String, SemaphoreState>>>;

/// The lock service: cheap to clone, shared by the HTTP and gRPC front ends.
#[derive(Debug, Clone)]
pub struct LockService {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) settings: LockSettings,
    /// The store's root handle: every key below is spelled out in full.
    pub(crate) store: SharedStore,
    pub(crate) keys: Keys,
    /// When this instance first saw each holder of unknown acquisition time
    /// (written by Airlock), by group and id; written into the record with
    /// the next change of it.
    first_seen: Mutex<HashMap<String, HashMap<String, u64>>>,
    pub(crate) clock: SharedClock,
    pub(crate) metrics: LockMetrics,
    pub(crate) cache: Cache,
    /// Bumped on every observed change of a record or of a queue.
    pub(crate) wake: watch::Sender<u64>,
    pub(crate) queues: Arc<Mutex<HashMap<String, VecDeque<u64>>>>,
    /// The last record this instance wrote per group (state, its mod
    /// revision, its bytes): the next mutation CASes against it without a
    /// read, and falls back to a fresh read when anything but a successful
    /// write comes of it.
    written: Mutex<HashMap<String, Written>>,
    next_waiter: AtomicU64,
    /// Audit entries written since the trimmer last ran (see `audit`).
    audit_writes: AtomicU64,
    trim: tokio::sync::Notify,
    pub(crate) shutdown: CancellationToken,
}

type Written = (SemaphoreState, u64, Vec<u8>);

/// What one read-modify-CAS attempt came to.
enum Attempt<T> {
    /// Written, or decided on a fresh read.
    Done(T),
    /// Decided on this instance's last write, which may be stale: retry at
    /// once on a fresh read.
    Stale,
    /// The CAS lost against another writer: retry after a backoff.
    Conflict,
}

/// The effect of a mutation closure: a value and the audit entries to write
/// with the record, in the same transaction.
pub(crate) struct Effect<T> {
    pub(crate) value: T,
    pub(crate) audit: Vec<AuditRecord>,
}

impl<T> Effect<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            value,
            audit: Vec::new(),
        }
    }
}

/// Epoch seconds of `t`.
pub(crate) fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl LockService {
    /// Starts the service: reconciles configured slot counts, then follows
    /// the store (cache, wake-ups) and reaps expired leases until `shutdown`.
    pub async fn start(
        settings: LockSettings,
        store: SharedStore,
        clock: SharedClock,
        metrics: LockMetrics,
        shutdown: CancellationToken,
    ) -> Result<Self, LockError> {
        let (wake, _) = watch::channel(0);
        let keys = Keys::new(settings.store_layout, store.key_prefix());
        let inner = Arc::new(Inner {
            settings,
            store: store.root(),
            keys,
            first_seen: Mutex::default(),
            clock,
            metrics,
            cache: Cache::default(),
            wake,
            queues: Arc::default(),
            written: Mutex::default(),
            next_waiter: AtomicU64::new(1),
            audit_writes: AtomicU64::new(0),
            trim: tokio::sync::Notify::new(),
            shutdown,
        });
        let svc = Self { inner };
        let configured = svc
            .inner
            .settings
            .groups
            .iter()
            .map(|(name, g)| (name.clone(), g.slots))
            .collect();
        svc.inner.metrics.observe(
            svc.inner.cache.clone(),
            svc.inner.queues.clone(),
            svc.inner.clock.clone(),
            configured,
        );
        svc.reconcile().await?;
        let first_list = reaper::spawn_follower(svc.clone());
        first_list.await.ok();
        reaper::spawn_reaper(svc.clone());
        audit::spawn_trimmer(svc.clone());
        Ok(svc)
    }

    /// Writes configured slot counts that differ from the stored ones.
    pub async fn reconcile(&self) -> Result<(), LockError> {
        let groups: Vec<(String, u32)> = self
            .inner
            .settings
            .groups
            .iter()
            .map(|(n, g)| (n.clone(), g.slots))
            .collect();
        for (group, slots) in groups {
            self.mutate(&group, "config", |s, _| {
                let before = s.total_slots;
                if s.set_slots(slots) == Outcome::Changed {
                    tracing::info!(
                        group,
                        from = before,
                        to = slots,
                        "slot count reconciled from config"
                    );
                }
                Ok(Effect::new(()))
            })
            .await?;
        }
        Ok(())
    }

    /// The settings.
    pub fn settings(&self) -> &LockSettings {
        &self.inner.settings
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// Settings of a valid, known group.
    pub fn group_settings(&self, group: &str) -> Result<&GroupSettings, LockError> {
        if !valid_group_name(group) {
            return Err(LockError::InvalidParams(format!(
                "group {group:?} must match ^[a-zA-Z0-9.-]+$"
            )));
        }
        self.inner
            .settings
            .group(group)
            .ok_or_else(|| LockError::UnknownGroup(group.to_string()))
    }

    /// Whether a window of `group` is open now.
    pub fn window_open(&self, group: &GroupSettings) -> bool {
        window::any_open(&group.windows, DateTime::<Utc>::from(self.now()))
    }

    /// Reads a group's record (a fresh default when absent).
    pub async fn load(
        &self,
        group: &str,
    ) -> Result<(SemaphoreState, u64, Option<Vec<u8>>), LockError> {
        let settings = self.group_settings(group)?;
        let key = self.inner.keys.group_key(group);
        let kv = self.inner.store.get(&key).await.map_err(|e| {
            self.inner.metrics.store_error("get");
            LockError::Unavailable(Some(e))
        })?;
        match kv {
            None => Ok((SemaphoreState::new(settings.slots), 0, None)),
            Some(kv) => {
                let state = self
                    .decode(group, &kv.value)
                    .map_err(|e| LockError::Corrupt(group.to_string(), e))?;
                Ok((state, kv.mod_revision, Some(kv.value)))
            }
        }
    }

    /// Read-modify-CAS loop on a group's record inside the request deadline.
    /// Expired leases are removed on the way; nothing is written when the
    /// record (after expiry) is unchanged.
    pub(crate) async fn mutate<T>(
        &self,
        group: &str,
        actor: &str,
        mut f: impl FnMut(&mut SemaphoreState, u64) -> Result<Effect<T>, LockError>,
    ) -> Result<T, LockError> {
        let deadline = tokio::time::Instant::now() + self.inner.settings.request_timeout;
        let mut attempt = 0u32;
        loop {
            let result = self.try_mutate(group, actor, &mut f).await;
            match result {
                Ok(Attempt::Done(value)) => return Ok(value),
                Ok(Attempt::Stale) => continue,
                Ok(Attempt::Conflict) => {}
                Err(LockError::Unavailable(e)) if tokio::time::Instant::now() >= deadline => {
                    return Err(LockError::Unavailable(e));
                }
                Err(LockError::Unavailable(_)) => {}
                Err(e) => return Err(e),
            }
            attempt += 1;
            let cap = 2u64.saturating_pow(attempt.min(6)).min(50);
            let backoff = Duration::from_millis(rand::random_range(1..=cap));
            if tokio::time::Instant::now() + backoff >= deadline {
                tracing::warn!(
                    group,
                    attempt,
                    "lock update gave up at the request deadline"
                );
                return Err(LockError::Unavailable(None));
            }
            tokio::time::sleep(backoff).await;
        }
    }

    /// One attempt, on this instance's last write of the record when it has
    /// one (one store round trip), else on a fresh read.
    async fn try_mutate<T>(
        &self,
        group: &str,
        actor: &str,
        f: &mut impl FnMut(&mut SemaphoreState, u64) -> Result<Effect<T>, LockError>,
    ) -> Result<Attempt<T>, LockError> {
        let remembered = self.written().remove(group);
        let from_memory = remembered.is_some();
        let (before, rev, raw) = match remembered {
            Some((state, rev, raw)) => (state, rev, Some(raw)),
            None => self.load(group).await?,
        };
        let now_t = self.now();
        let now = epoch_secs(now_t);
        let mut state = before.clone();
        let mut audit: Vec<AuditRecord> = state
            .expire(now)
            .into_iter()
            .map(|h| self.audit_record(now_t, "lease", "release", group, &h.id, "lease expired"))
            .collect();
        let effect = match f(&mut state, now) {
            Ok(effect) => effect,
            // A refusal must rest on the record as stored, not as remembered.
            Err(_) if from_memory => return Ok(Attempt::Stale),
            Err(e) => return Err(e),
        };
        audit.extend(effect.audit.into_iter().map(|mut a| {
            if a.actor.is_empty() {
                a.actor = actor.to_string();
            }
            a
        }));
        if state == before && audit.is_empty() {
            if from_memory {
                return Ok(Attempt::Stale);
            }
            return Ok(Attempt::Done(effect.value));
        }
        let encoded =
            (state != before).then(|| self.inner.keys.layout().encode(&state, raw.as_deref()));
        let Some(revision) = self.commit(group, rev, encoded.as_deref(), &audit).await? else {
            if from_memory {
                return Ok(Attempt::Stale);
            }
            self.inner.metrics.cas_conflict();
            return Ok(Attempt::Conflict);
        };
        match (encoded, raw) {
            // Every put of a transaction carries its revision.
            (Some(bytes), _) => {
                self.written()
                    .insert(group.to_string(), (state.clone(), revision, bytes));
            }
            (None, Some(raw)) => {
                self.written()
                    .insert(group.to_string(), (before.clone(), rev, raw));
            }
            (None, None) => {}
        }
        audit::log(&audit);
        self.audit_written(audit.len());
        self.cache_put(group, state);
        Ok(Attempt::Done(effect.value))
    }

    /// Writes `group`'s record (when `encoded`) and the audit entries in one
    /// transaction, if the record is still at `rev`: also when it is left
    /// unchanged, so that a no-op admin call's outcome ("held nothing")
    /// rests on the record as stored. The new revision, `None` on conflict.
    async fn commit(
        &self,
        group: &str,
        rev: u64,
        encoded: Option<&[u8]>,
        audit: &[AuditRecord],
    ) -> Result<Option<u64>, LockError> {
        let key = self.inner.keys.group_key(group);
        let mut txn = Txn::new().when_mod_revision(key.clone(), rev);
        if let Some(bytes) = encoded {
            txn = txn.then(upshift_store::Op::put(key, bytes.to_vec()));
        }
        for a in audit {
            txn = txn.then(upshift_store::Op::put(
                self.inner.keys.audit_key(a.at_ms),
                serde_json::to_vec(a).unwrap_or_default(),
            ));
        }
        let outcome = self.inner.store.txn(txn).await.map_err(|e| {
            self.inner.metrics.store_error("txn");
            LockError::Unavailable(Some(e))
        })?;
        Ok(outcome.succeeded.then_some(outcome.revision))
    }

    /// Decodes `group`'s stored record. Holders of unknown acquisition time
    /// (written by Airlock) are dated to when this instance first saw them,
    /// so their ages count from the takeover rather than from 1970.
    pub(crate) fn decode(&self, group: &str, raw: &[u8]) -> Result<SemaphoreState, DecodeError> {
        let mut state = self.inner.keys.layout().decode(raw)?;
        let mut seen = self
            .inner
            .first_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !state
            .holders
            .iter()
            .any(|h| h.acquired_at == UNKNOWN_ACQUIRED_AT)
        {
            if !seen.is_empty() {
                seen.remove(group);
            }
            return Ok(state);
        }
        let now = epoch_secs(self.now());
        let known = seen.entry(group.to_string()).or_default();
        known.retain(|id, _| state.holders.iter().any(|h| &h.id == id));
        for h in &mut state.holders {
            if h.acquired_at == UNKNOWN_ACQUIRED_AT {
                h.acquired_at = *known.entry(h.id.clone()).or_insert(now);
            }
        }
        state.holders.sort_by_key(|h| h.acquired_at);
        Ok(state)
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<String, Written>> {
        self.inner.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cache_put(&self, group: &str, state: SemaphoreState) {
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.get(group) != Some(&state) {
            cache.insert(group.to_string(), state);
            drop(cache);
            self.inner.wake.send_modify(|n| *n += 1);
        }
    }

    /// Takes a slot (recursive). Returns the holder record.
    pub async fn lock(
        &self,
        group: &str,
        req: LockRequest,
        actor: &str,
    ) -> Result<HolderRecord, LockError> {
        if req.id.is_empty() {
            return Err(LockError::InvalidParams("id must not be empty".into()));
        }
        let settings = self.group_settings(group)?.clone();
        let window_open = self.window_open(&settings);
        let now_t = self.now();
        self.mutate(group, actor, |s, now| {
            let outcome = s.lock(&req, now, window_open)?;
            let mut effect = Effect::new(s.holder(&req.id).cloned());
            if outcome == Outcome::Changed {
                let method = format!("{:?}", req.method).to_lowercase();
                effect
                    .audit
                    .push(self.audit_record(now_t, "", "grant", group, &req.id, &method));
            }
            Ok(effect)
        })
        .await?
        .ok_or(LockError::Unavailable(None))
    }

    /// Frees `id`'s slot; `Ok(None)` when it held none (nothing written).
    pub async fn unlock(
        &self,
        group: &str,
        id: &str,
        actor: &str,
        action: &str,
        reason: &str,
    ) -> Result<Option<HolderRecord>, LockError> {
        if id.is_empty() {
            return Err(LockError::InvalidParams("id must not be empty".into()));
        }
        self.group_settings(group)?;
        let now_t = self.now();
        self.mutate(group, actor, |s, _| {
            let removed = s.unlock(id);
            let mut effect = Effect::new(removed.clone());
            if removed.is_some() {
                effect
                    .audit
                    .push(self.audit_record(now_t, "", action, group, id, reason));
            }
            Ok(effect)
        })
        .await
    }

    /// Renews `id`'s lease; returns the new expiry (epoch seconds).
    pub async fn keepalive(&self, group: &str, id: &str) -> Result<u64, LockError> {
        self.group_settings(group)?;
        self.mutate(group, CLIENT_ACTOR, |s, now| {
            Ok(Effect::new(s.keepalive(id, now)?))
        })
        .await
    }

    /// Applies an audited admin change to a group's record. `f` returns its
    /// value and the outcome recorded with the entry; the entry is written
    /// even when nothing changed.
    pub(crate) async fn admin<T>(
        &self,
        group: &str,
        actor: &str,
        action: &str,
        target: &str,
        reason: &str,
        mut f: impl FnMut(&mut SemaphoreState) -> (T, &'static str),
    ) -> Result<(T, SemaphoreState), LockError> {
        self.group_settings(group)?;
        let now_t = self.now();
        self.mutate(group, actor, |s, _| {
            let (value, outcome) = f(s);
            let mut entry = self.audit_record(now_t, actor, action, group, target, reason);
            entry.outcome = outcome.to_string();
            let mut effect = Effect::new((value, s.clone()));
            effect.audit.push(entry);
            Ok(effect)
        })
        .await
    }

    /// Every known group: configured ones and any with a stored record.
    pub async fn list_groups(&self) -> Result<Vec<(String, SemaphoreState)>, LockError> {
        let keys = &self.inner.keys;
        let (kvs, _) = self
            .inner
            .store
            .list(keys.groups_prefix())
            .await
            .map_err(|e| LockError::Unavailable(Some(e)))?;
        let mut out: BTreeMap<String, SemaphoreState> = BTreeMap::new();
        for kv in kvs {
            if let Some(group) = keys.group_of(&kv.key)
                && let Ok(state) = self.decode(group, &kv.value)
            {
                out.insert(group.to_string(), state);
            }
        }
        for (name, g) in &self.inner.settings.groups {
            out.entry(name.clone())
                .or_insert_with(|| SemaphoreState::new(g.slots));
        }
        Ok(out.into_iter().collect())
    }

    /// Number of gRPC waiters queued for `group` on this instance.
    pub fn queue_length(&self, group: &str) -> usize {
        let queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.get(group).map_or(0, VecDeque::len)
    }

    /// Joins `group`'s FIFO; the guard leaves it when dropped.
    pub(crate) fn enqueue(&self, group: &str) -> QueueGuard {
        let id = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed);
        let mut queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(group.to_string()).or_default().push_back(id);
        drop(queues);
        self.inner.wake.send_modify(|n| *n += 1);
        QueueGuard {
            svc: self.clone(),
            group: group.to_string(),
            id,
        }
    }

    /// A receiver woken on every observed change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    /// Cached record of `group`.
    pub(crate) fn cached(&self, group: &str) -> Option<SemaphoreState> {
        let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(group).cloned()
    }
}

/// A place in a group's queue.
#[derive(Debug)]
pub(crate) struct QueueGuard {
    svc: LockService,
    group: String,
    id: u64,
}

impl QueueGuard {
    /// 1-based position and queue length.
    pub(crate) fn position(&self) -> (u32, u32) {
        let queues = self
            .svc
            .inner
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let q = queues.get(&self.group);
        let pos = q
            .and_then(|q| q.iter().position(|w| *w == self.id))
            .unwrap_or(0);
        let len = q.map_or(0, VecDeque::len);
        (
            u32::try_from(pos + 1).unwrap_or(u32::MAX),
            u32::try_from(len).unwrap_or(u32::MAX),
        )
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let mut queues = self
            .svc
            .inner
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queues.get_mut(&self.group) {
            q.retain(|w| *w != self.id);
            if q.is_empty() {
                queues.remove(&self.group);
            }
        }
        drop(queues);
        self.svc.inner.wake.send_modify(|n| *n += 1);
    }
}
