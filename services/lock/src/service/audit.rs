//! The audit log: entries are written in the transaction of the change they
//! describe, listed newest first a page at a time, and trimmed to the
//! configured retention by a background task.
//!
//! Trimming runs at start, after every `keep / 10` entries this instance
//! wrote (so the log never grows much past `keep`), and hourly (for
//! `max_age`). Several replicas trimming at once is harmless: deleting a
//! deleted key changes nothing.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use upshift_store::{Op, Txn};

use super::{LockService, epoch_ms};
use crate::error::LockError;
use crate::layout::AuditRecord;

/// Largest page `ListAudit` returns.
pub const MAX_PAGE: usize = 10_000;

/// How often the age limit is applied even without new entries.
const AGE_CHECK: Duration = Duration::from_secs(3600);

/// Deletes per store transaction (etcd allows 128 operations by default).
const DELETE_BATCH: usize = 100;

/// Oldest entries read per trimming step.
const TRIM_PAGE: usize = 1_000;

/// One page of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    /// Entries, newest first.
    pub entries: Vec<AuditRecord>,
    /// Where the next (older) page starts; `None` on the last page.
    pub next_page_token: Option<String>,
}

impl LockService {
    /// The newest `limit` audit entries (of `group` when given).
    pub async fn audit(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, LockError> {
        Ok(self.audit_page(group, limit, None).await?.entries)
    }

    /// A page of at most `limit` audit entries (of `group` when given),
    /// newest first, older than `page_token` (a previous page's
    /// `next_page_token`) when given.
    pub async fn audit_page(
        &self,
        group: Option<&str>,
        limit: usize,
        page_token: Option<&str>,
    ) -> Result<AuditPage, LockError> {
        let keys = &self.inner.keys;
        let before = match page_token {
            Some(token)
                if keys
                    .audit_time(&format!("{}{token}", keys.audit_prefix()))
                    .is_some() =>
            {
                Some(format!("{}{token}", keys.audit_prefix()))
            }
            Some(_) => return Err(LockError::InvalidParams("invalid page_token".into())),
            None => None,
        };
        let (kvs, _) = self
            .inner
            .store
            .list(keys.audit_prefix())
            .await
            .map_err(|e| LockError::Unavailable(Some(e)))?;
        let mut matching = kvs
            .iter()
            .rev()
            .filter(|kv| before.as_ref().is_none_or(|b| kv.key < *b))
            .filter_map(|kv| {
                Some((
                    &kv.key,
                    serde_json::from_slice::<AuditRecord>(&kv.value).ok()?,
                ))
            })
            .filter(|(_, a)| group.is_none_or(|g| a.group == g));
        let mut entries = Vec::new();
        let mut last_key = None;
        for (key, entry) in matching.by_ref().take(limit.clamp(1, MAX_PAGE)) {
            entries.push(entry);
            last_key = Some(key);
        }
        let more = matching.next().is_some();
        let next_page_token = last_key
            .filter(|_| more)
            .and_then(|k| k.strip_prefix(keys.audit_prefix()))
            .map(str::to_string);
        Ok(AuditPage {
            entries,
            next_page_token,
        })
    }

    /// Removes the audit entries past the retention: all but the newest
    /// `keep`, and those older than `max_age`. Returns how many went.
    ///
    /// Keys sort by time, so only the oldest entries can be past it: each
    /// step reads at most [`TRIM_PAGE`] of them and the count of all. (Reading
    /// the whole log each time read eleven entries per entry written.)
    pub async fn trim_audit(&self) -> Result<usize, LockError> {
        let retention = self.inner.settings.audit;
        let keys = &self.inner.keys;
        let cutoff = epoch_ms(
            self.now()
                .checked_sub(retention.max_age)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let mut removed = 0;
        let mut steps_left: Option<usize> = None;
        loop {
            let (oldest, total) = self
                .inner
                .store
                .list_first(keys.audit_prefix(), TRIM_PAGE)
                .await
                .map_err(|e| LockError::Unavailable(Some(e)))?;
            // Bounded by the first count, should deletes not take.
            let steps = steps_left.get_or_insert(total / TRIM_PAGE + 1);
            let excess = total.saturating_sub(retention.keep);
            let doomed: Vec<&str> = oldest
                .iter()
                .enumerate()
                .filter(|(i, kv)| {
                    *i < excess || keys.audit_time(&kv.key).is_some_and(|t| t < cutoff)
                })
                .map(|(_, kv)| kv.key.as_str())
                .collect();
            self.delete_audit(&doomed).await?;
            removed += doomed.len();
            *steps -= 1;
            // More can be past the retention only when a full page all went.
            if doomed.len() < TRIM_PAGE || *steps == 0 {
                break;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "audit log trimmed to its retention");
        }
        Ok(removed)
    }

    async fn delete_audit(&self, doomed: &[&str]) -> Result<(), LockError> {
        for batch in doomed.chunks(DELETE_BATCH) {
            let txn = batch
                .iter()
                .fold(Txn::new(), |txn, key| txn.then(Op::delete(*key)));
            self.inner.store.txn(txn).await.map_err(|e| {
                self.inner.metrics.store_error("txn");
                LockError::Unavailable(Some(e))
            })?;
        }
        Ok(())
    }

    /// Counts entries this instance wrote; wakes the trimmer every `keep / 10`.
    pub(crate) fn audit_written(&self, count: usize) {
        let every = (self.inner.settings.audit.keep / 10).max(1) as u64;
        let written = self
            .inner
            .audit_writes
            .fetch_add(count as u64, Ordering::Relaxed)
            + count as u64;
        if written >= every {
            self.inner.audit_writes.store(0, Ordering::Relaxed);
            self.inner.trim.notify_one();
        }
    }

    /// A new audit entry (no outcome: admin calls set theirs).
    pub(crate) fn audit_record(
        &self,
        at: SystemTime,
        actor: &str,
        action: &str,
        group: &str,
        target: &str,
        reason: &str,
    ) -> AuditRecord {
        AuditRecord {
            at_ms: epoch_ms(at),
            actor: actor.to_string(),
            action: action.to_string(),
            group: group.to_string(),
            target: target.to_string(),
            reason: reason.to_string(),
            outcome: String::new(),
        }
    }
}

/// Logs written audit entries at info level.
pub(super) fn log(audit: &[AuditRecord]) {
    for a in audit {
        tracing::info!(
            actor = a.actor,
            action = a.action,
            group = a.group,
            target = a.target,
            reason = a.reason,
            outcome = a.outcome,
            "lock audit"
        );
    }
}

/// Trims the audit log at start, when woken by [`LockService::audit_written`]
/// and hourly, until shutdown.
pub(super) fn spawn_trimmer(svc: LockService) {
    let shutdown = svc.inner.shutdown.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = svc.trim_audit().await {
                tracing::warn!(error = %e, "cannot trim the audit log; retrying later");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = svc.inner.trim.notified() => {}
                () = tokio::time::sleep(AGE_CHECK) => {}
            }
        }
    });
}
