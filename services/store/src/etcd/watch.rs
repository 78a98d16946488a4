//! Resumable etcd prefix watches.

use std::collections::VecDeque;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use futures::StreamExt;

use super::{CallError, Timeout, convert_kv, retry_connect, revision, signed, unavailable};
use crate::{StoreError, WatchEvent, WatchStream};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One watch: the live etcd stream (if connected) and the next revision
/// not yet delivered, from which a broken stream is re-opened.
struct EtcdWatch {
    client: Client,
    key_prefix: String,
    full: String,
    next: u64,
    stream: Option<etcd_client::WatchStream>,
    pending: VecDeque<WatchEvent>,
    timeout: Duration,
}

/// Opens a watch of `prefix` (under `key_prefix`) and waits until etcd has
/// created it, so that writes made after this returns are seen.
pub(super) async fn open(
    client: Client,
    key_prefix: String,
    prefix: &str,
    from: Option<u64>,
    timeout: Duration,
) -> Result<WatchStream, StoreError> {
    let full = format!("{key_prefix}{prefix}");
    let mut watch = EtcdWatch {
        client,
        key_prefix,
        full,
        next: 0,
        stream: None,
        pending: VecDeque::new(),
        timeout,
    };
    watch.start(from.map(|r| r.max(1))).await?;
    Ok(futures::stream::unfold(Some(watch), |state| async move {
        let mut watch = state?;
        match watch.next_event().await {
            Ok(event) => Some((Ok(event), Some(watch))),
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed())
}

impl EtcdWatch {
    /// Creates the etcd watch from `from` (or from now) and reads its
    /// creation response.
    async fn start(&mut self, from: Option<u64>) -> Result<(), StoreError> {
        let mut options = if self.full.is_empty() {
            WatchOptions::new().with_all_keys()
        } else {
            WatchOptions::new().with_prefix()
        };
        // Progress notifications move `next` forward on a quiet prefix, so a
        // re-opened watch does not ask for revisions compacted meanwhile.
        options = options.with_progress_notify();
        if let Some(rev) = from {
            options = options.with_start_revision(signed(rev));
        }
        let mut refreshed = false;
        let (stream, first) = loop {
            let created = retry_connect(self.timeout, || {
                let (mut client, full, options) =
                    (self.client.clone(), self.full.clone(), options.clone());
                async move {
                    let mut stream = client.watch(full, Some(options)).await?;
                    let first = stream.message().await?;
                    Ok((stream, first))
                }
            })
            .await
            .map_err(|e| e.into_store(None))?;
            let (stream, Some(first)) = created else {
                return Err(StoreError::Unavailable(
                    "etcd closed the watch stream".into(),
                ));
            };
            // etcd checks the token when it creates a watch, and a refused
            // token cancels the watch rather than failing the call, so the
            // client's own token refresh does not see it: authenticate again
            // (a no-op without credentials) and retry once.
            if first.canceled()
                && first.cancel_reason().contains("invalid auth token")
                && !refreshed
            {
                refreshed = true;
                tokio::time::timeout(self.timeout, self.client.refresh_token())
                    .await
                    .map_err(|_| unavailable(Timeout(self.timeout)))?
                    .map_err(unavailable)?;
                continue;
            }
            break (stream, first);
        };
        if first.canceled() {
            return Err(cancelled(&first, from.unwrap_or(0)));
        }
        let mut stream = stream;
        if let Some(rev) = from
            && self.is_compacted(rev).await?
        {
            // etcd creates a watch on a compacted revision, then cancels it
            // naming the compact revision: report that now, not as a first
            // stream item, like the embedded store does.
            let next = tokio::time::timeout(self.timeout, stream.message()).await;
            if let Ok(Ok(Some(resp))) = next
                && resp.canceled()
            {
                return Err(cancelled(&resp, rev));
            }
            return Err(StoreError::Compacted {
                requested: rev,
                oldest: rev + 1,
            });
        }
        self.next = match from {
            Some(rev) => rev,
            None => revision(first.header().map_or(0, |h| h.revision())) + 1,
        };
        self.stream = Some(stream);
        Ok(())
    }

    /// Whether `rev` is older than etcd's compaction point.
    async fn is_compacted(&mut self, rev: u64) -> Result<bool, StoreError> {
        let options = GetOptions::new()
            .with_revision(signed(rev))
            .with_count_only();
        let result = retry_connect(self.timeout, || {
            let (mut kv, full, options) =
                (self.client.kv_client(), self.full.clone(), options.clone());
            async move { kv.get(full, Some(options)).await }
        })
        .await;
        match result {
            Ok(_) => Ok(false),
            Err(CallError::Etcd(etcd_client::Error::GRpcStatus(status)))
                if status.message().contains("compacted") =>
            {
                Ok(true)
            }
            // A future revision is fine to watch from; other errors surface on the stream.
            Err(CallError::Etcd(_)) => Ok(false),
            Err(e) => Err(e.into_store(None)),
        }
    }

    async fn next_event(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.reconnect().await?;
                continue;
            };
            match stream.message().await {
                Ok(Some(resp)) if resp.canceled() => {
                    let e = cancelled(&resp, self.next);
                    if matches!(e, StoreError::Compacted { .. }) {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "etcd cancelled a watch; re-opening it");
                    self.stream = None;
                }
                Ok(Some(resp)) if resp.events().is_empty() && !resp.created() => {
                    // A progress notification: every event up to its
                    // revision has been delivered.
                    let progress = revision(resp.header().map_or(0, |h| h.revision()));
                    self.next = self.next.max(progress + 1);
                }
                Ok(Some(resp)) => {
                    for event in resp.events() {
                        let event = self.convert(event)?;
                        self.next = event.revision() + 1;
                        self.pending.push_back(event);
                    }
                }
                Ok(None) => {
                    tracing::warn!(prefix = %self.full, "etcd watch stream ended; re-opening it");
                    self.stream = None;
                }
                Err(e) => {
                    tracing::warn!(prefix = %self.full, error = %e, "etcd watch stream broke; re-opening it");
                    self.stream = None;
                }
            }
        }
    }

    /// Re-opens the watch from the next undelivered revision, retrying with
    /// backoff until it succeeds; only compaction is final.
    async fn reconnect(&mut self) -> Result<(), StoreError> {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.start(Some(self.next)).await {
                Ok(()) => return Ok(()),
                Err(e @ StoreError::Compacted { .. }) => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, ?backoff, "re-opening the etcd watch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn convert(&self, event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
        let kv = event
            .kv()
            .ok_or_else(|| StoreError::Corrupt("etcd watch event without a key".into()))?;
        let kv = convert_kv(&self.key_prefix, kv)?;
        Ok(match event.event_type() {
            EventType::Put => WatchEvent::Put(kv),
            EventType::Delete => WatchEvent::Delete {
                key: kv.key,
                revision: kv.mod_revision,
            },
        })
    }
}

fn cancelled(resp: &etcd_client::WatchResponse, requested: u64) -> StoreError {
    if resp.compact_revision() > 0 {
        return StoreError::Compacted {
            requested,
            oldest: revision(resp.compact_revision()),
        };
    }
    StoreError::Unavailable(format!("etcd cancelled the watch: {}", resp.cancel_reason()).into())
}
