//! Follows `telemetry/` in the store: lists it at start (the fleet view
//! survives restarts), then watches from the listing's revision so reports
//! taken by another replica and halts recorded anywhere show up here;
//! re-lists after a watch failure.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::oneshot;
use upshift_store::WatchEvent;

use super::TelemetryService;
use crate::fleet::duration_ms;
use crate::record::{HALTS_PREFIX, HOSTS_PREFIX, HaltRecord, HostRecord, epoch_ms};

const PREFIX: &str = "telemetry/";

/// Spawns the follower; the receiver resolves after the first listing (or
/// its first failure).
pub(super) fn spawn(svc: TelemetryService) -> oneshot::Receiver<()> {
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

async fn follow(svc: &TelemetryService, first: &mut Option<oneshot::Sender<()>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (kvs, rev) = match svc.inner.store.list(PREFIX).await {
            Ok(v) => v,
            Err(e) => {
                svc.inner.metrics.store_error("list");
                tracing::warn!(error = %e, "cannot list the fleet; retrying");
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let loaded = kvs.len();
        for kv in kvs {
            apply_put(svc, &kv.key, &kv.value, true);
        }
        svc.changed();
        if let Some(tx) = first.take() {
            tracing::info!(records = loaded, "fleet view loaded from the store");
            let _ = tx.send(());
        }
        let mut stream = match svc.inner.store.watch(PREFIX, Some(rev + 1)).await {
            Ok(s) => s,
            Err(e) => {
                svc.inner.metrics.store_error("watch");
                tracing::warn!(error = %e, "cannot watch the fleet; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Put(kv)) => {
                    if apply_put(svc, &kv.key, &kv.value, false) {
                        svc.changed();
                    }
                }
                Ok(WatchEvent::Delete { key, .. }) => {
                    if apply_delete(svc, &key) {
                        svc.changed();
                    }
                }
                Err(e) => {
                    svc.inner.metrics.store_error("watch");
                    tracing::warn!(error = %e, "fleet watch ended; re-listing");
                    break;
                }
            }
        }
    }
}

/// Applies a stored record; true when the view changed. `listed`: read by
/// a listing (start or re-list) rather than seen live.
fn apply_put(svc: &TelemetryService, key: &str, value: &[u8], listed: bool) -> bool {
    if key.starts_with(HOSTS_PREFIX) {
        let rec = match HostRecord::decode(value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key, error = %e, "ignoring undecodable host record");
                return false;
            }
        };
        let mut fleet = svc.fleet();
        // Our own writes come back here, and a newer report may already be in the view.
        if fleet
            .get(&rec.status.node_uuid)
            .is_some_and(|cur| cur.last_seen_ms >= rec.last_seen_ms)
        {
            return false;
        }
        fleet.put(rec);
        true
    } else if key.starts_with(HALTS_PREFIX) {
        let halt = match HaltRecord::decode(value) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(key, error = %e, "ignoring undecodable halt record");
                return false;
            }
        };
        let pending = halt.paused_at_ms.is_none() && halt.in_force();
        let changed = svc.fleet().halt(&halt.stream, &halt.version) != Some(&halt);
        svc.fleet().put_halt(halt.clone());
        if pending && listed {
            // Recorded but not accepted by the policy when this instance
            // (re)started: its creator may have died. A halt seen live is
            // left to its creator (the lift checker takes over stale ones).
            svc.inner
                .halter
                .ensure_paused(svc, halt, tracing::Span::none());
        }
        changed
    } else {
        false
    }
}

fn apply_delete(svc: &TelemetryService, key: &str) -> bool {
    if let Some(id) = key.strip_prefix(HOSTS_PREFIX) {
        let cutoff = epoch_ms(svc.now()).saturating_sub(duration_ms(svc.inner.settings.drop_after));
        let mut fleet = svc.fleet();
        // Another replica dropped it; keep it if it reported here since.
        if fleet.get(id).is_some_and(|h| h.last_seen_ms <= cutoff) {
            fleet.remove(id);
            return true;
        }
        false
    } else if key.starts_with(HALTS_PREFIX) {
        svc.fleet().remove_halt(key);
        true
    } else {
        false
    }
}
