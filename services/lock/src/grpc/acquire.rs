//! The waiting `Acquire` call: FIFO per group on this instance, re-evaluated
//! on every observed change of the group's record or queue, and at the exact
//! opening of the next maintenance window.

use std::time::{Duration, Instant as StdInstant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tonic::Status;
use upshift_proto::lock::v1 as pb;

use super::LockGrpc;
use crate::error::LockError;
use crate::semaphore::{Denied, LockRequest, Method};
use crate::service::CLIENT_ACTOR;
use upshift_common::window;

type Tx = mpsc::Sender<Result<pb::AcquireResponse, Status>>;

/// Far enough to mean "no timer".
const NEVER: Duration = Duration::from_secs(86_400 * 365);

pub(super) async fn run(g: LockGrpc, group: String, id: String, ttl: Option<Duration>, tx: Tx) {
    let started = StdInstant::now();
    let result = wait(&g, &group, &id, ttl, &tx).await;
    let kind = match &result {
        Ok(true) => "ok",
        Ok(false) => "cancelled",
        Err(e) => e.kind(),
    };
    g.svc
        .inner
        .metrics
        .request("grpc_acquire", kind, started.elapsed());
    if let Err(e) = result {
        let _ = tx.send(Err(e.into())).await;
    }
}

/// Waits for the grant; `Ok(false)` when the caller went away or the server stops.
async fn wait(
    g: &LockGrpc,
    group: &str,
    id: &str,
    ttl: Option<Duration>,
    tx: &Tx,
) -> Result<bool, LockError> {
    let svc = &g.svc;
    let mut wake = svc.subscribe();
    let guard = svc.enqueue(group);
    let shutdown = svc.inner.shutdown.clone();
    let settings = svc.group_settings(group)?.clone();
    let mut last_sent = None;
    let mut last_eval = None;
    let mut timer_fired = false;
    loop {
        wake.borrow_and_update();
        let (position, queue_length) = guard.position();
        let cached = svc.cached(group);
        // Wake-ups are shared by all groups: skip the store read unless this
        // group's record, this queue or the window changed.
        let eval = (cached.clone(), position, queue_length);
        if last_eval.as_ref() == Some(&eval) && !timer_fired {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                () = tx.closed() => return Ok(false),
                r = wake.changed() => if r.is_err() { return Ok(false) },
            }
            continue;
        }
        last_eval = Some(eval);
        timer_fired = false;
        let held = cached.as_ref().is_some_and(|s| s.holder(id).is_some());
        let denied = if position == 1 || held {
            let req = LockRequest {
                id: id.to_string(),
                method: Method::Grpc,
                ttl_secs: ttl.map(|t| t.as_secs()),
            };
            match svc.lock(group, req, CLIENT_ACTOR).await {
                Ok(holder) => {
                    drop(guard);
                    let msg = pb::AcquireResponse {
                        event: Some(pb::acquire_response::Event::Granted(pb::Granted {
                            holder: Some(g.holder(group, &holder)),
                        })),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        // The caller left while we were granting: give the slot back.
                        svc.unlock(group, id, CLIENT_ACTOR, "release", "caller went away")
                            .await?;
                        return Ok(false);
                    }
                    return Ok(true);
                }
                Err(LockError::Denied(d)) => d,
                Err(e) => return Err(e),
            }
        } else {
            match svc.cached(group) {
                Some(s) if s.paused.is_some() => Denied::Paused,
                _ if !svc.window_open(&settings) => Denied::OutsideWindow,
                _ => Denied::Full,
            }
        };
        let update = (position, queue_length, denied);
        if last_sent != Some(update) {
            last_sent = Some(update);
            let msg = pb::AcquireResponse {
                event: Some(pb::acquire_response::Event::Queued(pb::Queued {
                    position,
                    queue_length,
                    reason: denied.reason().to_string(),
                })),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return Ok(false);
            }
        }
        let window_at = if denied == Denied::OutsideWindow {
            window::next_open(&settings.windows, DateTime::<Utc>::from(svc.now()))
                .map(|t| svc.inner.clock.deadline_for(t.into()))
        } else {
            None
        };
        let window_at = window_at.unwrap_or_else(|| tokio::time::Instant::now() + NEVER);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tx.closed() => return Ok(false),
            r = wake.changed() => if r.is_err() { return Ok(false) },
            () = tokio::time::sleep_until(window_at) => timer_fired = true,
        }
    }
}
