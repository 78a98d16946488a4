//! The one ageing task: sleeps (on the injected clock) until the next host
//! turns stale or is due to be dropped, or the next update attempt exceeds
//! its stream's `steady_within`, then announces the change, drops what is
//! due and re-evaluates the halt rules. No per-host timers.

use std::time::Duration;

use super::TelemetryService;
use crate::fleet::duration_ms;
use crate::record::{epoch_ms, from_epoch_ms};

pub(super) fn spawn(svc: TelemetryService) {
    let shutdown = svc.inner.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = run(&svc) => {}
        }
    });
}

/// The next instant (epoch ms) at which a host turns stale or is dropped.
fn next_deadline(svc: &TelemetryService, now_ms: u64) -> Option<u64> {
    let stale = duration_ms(svc.inner.settings.stale_after);
    let drop = duration_ms(svc.inner.settings.drop_after);
    let fleet = svc.fleet();
    let next_stale = fleet
        .next_seen_after(now_ms.saturating_sub(stale))
        .map(|t| t.saturating_add(stale));
    let next_drop = fleet.oldest_seen().map(|t| t.saturating_add(drop));
    let next_overdue = fleet.next_overdue(now_ms, |s| svc.inner.settings.rule(s));
    [next_stale, next_drop, next_overdue]
        .into_iter()
        .flatten()
        .min()
}

async fn run(svc: &TelemetryService) {
    let mut changes = svc.subscribe();
    loop {
        let now = svc.now();
        svc.drop_old(now);
        svc.evaluate_all();
        let next = next_deadline(svc, epoch_ms(now));
        changes.borrow_and_update();
        match next {
            Some(at) => {
                let deadline = svc.inner.clock.deadline_for(from_epoch_ms(at));
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {
                        // A host aged: WatchFleet and the gauges see new counts.
                        svc.changed();
                        changes.borrow_and_update();
                    }
                    r = changes.changed() => if r.is_err() { return },
                }
            }
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
        // Reports arrive in bursts; re-plan at most every 100 ms of tokio time.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
