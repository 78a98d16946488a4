//! Background tasks: the store follower (cache + wake-ups) and the lease reaper.
//!
//! Lease expiry is stored in the holder record (`lease.expires_at`), not in a
//! store lease, so it survives restarts and works the same on every store.
//! The reaper sleeps until the earliest expiry of any cached group (via the
//! clock's `deadline_for`, no polling), then removes expired holders with the
//! usual CAS update; every mutation also drops expired holders first.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::oneshot;
use upshift_store::WatchEvent;

use super::{LockService, epoch_secs};
use crate::service::CLIENT_ACTOR;

/// Follows the group records: lists them, then watches from the listing's
/// revision; re-lists after any watch failure. Resolves the returned
/// receiver after the first listing.
pub(super) fn spawn_follower(svc: LockService) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    let shutdown = svc.inner.shutdown.clone();
    tokio::spawn(async move {
        let mut first = Some(tx);
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = follow(&svc, &mut first) => {}
        }
    });
    rx
}

async fn follow(svc: &LockService, first: &mut Option<oneshot::Sender<()>>) {
    let keys = svc.inner.keys.clone();
    let prefix = keys.groups_prefix();
    let mut backoff = Duration::from_millis(100);
    loop {
        let listed = svc.inner.store.list(prefix).await;
        let (kvs, rev) = match listed {
            Ok(v) => v,
            Err(e) => {
                svc.inner.metrics.store_error("list");
                tracing::warn!(error = %e, "cannot list lock groups; retrying");
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        for kv in kvs {
            apply(svc, keys.group_of(&kv.key), Some(&kv.value));
        }
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        let mut stream = match svc.inner.store.watch(prefix, Some(rev + 1)).await {
            Ok(s) => s,
            Err(e) => {
                svc.inner.metrics.store_error("watch");
                tracing::warn!(error = %e, "cannot watch lock groups; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Put(kv)) => apply(svc, keys.group_of(&kv.key), Some(&kv.value)),
                Ok(WatchEvent::Delete { key, .. }) => apply(svc, keys.group_of(&key), None),
                Err(e) => {
                    svc.inner.metrics.store_error("watch");
                    tracing::warn!(error = %e, "lock group watch ended; re-listing");
                    break;
                }
            }
        }
    }
}

fn apply(svc: &LockService, group: Option<&str>, value: Option<&[u8]>) {
    let Some(group) = group else { return };
    match value.map(|v| svc.decode(group, v)) {
        Some(Ok(state)) => svc.cache_put(group, state),
        Some(Err(e)) => tracing::warn!(group, error = %e, "ignoring undecodable group record"),
        None => {
            let mut cache = svc.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.remove(group);
            drop(cache);
            svc.inner.wake.send_modify(|n| *n += 1);
        }
    }
}

/// Removes expired leased holders at their expiry.
pub(super) fn spawn_reaper(svc: LockService) {
    let shutdown = svc.inner.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = reap(&svc) => {}
        }
    });
}

async fn reap(svc: &LockService) {
    let mut wake = svc.subscribe();
    loop {
        let next = {
            let cache = svc.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .iter()
                // Records of groups this instance does not serve are left alone.
                .filter(|(g, _)| svc.inner.settings.group(g).is_some())
                .filter_map(|(g, s)| s.next_expiry().map(|t| (t, g.clone())))
                .min()
        };
        let Some((expires_at, group)) = next else {
            if wake.changed().await.is_err() {
                return;
            }
            continue;
        };
        let at = std::time::UNIX_EPOCH + Duration::from_secs(expires_at);
        tokio::select! {
            () = tokio::time::sleep_until(svc.inner.clock.deadline_for(at)) => {
                if epoch_secs(svc.now()) < expires_at {
                    continue;
                }
                // The mutation drops expired holders; the closure changes nothing else.
                if let Err(e) = svc.mutate(&group, CLIENT_ACTOR, |_, _| Ok(super::Effect::new(()))).await {
                    tracing::warn!(group, error = %e, "cannot remove expired holders; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            r = wake.changed() => if r.is_err() { return },
        }
    }
}
