//! Automatic halts, after the rule fired and the halt was recorded (see
//! `TelemetryService::fire`): the pause call to the policy service, retried
//! with backoff until the policy accepts it, and the check that notices an
//! operator's resume in the policy service and marks the halt lifted.
//!
//! The halt record (`telemetry/halts/<stream>/<version>`) is created with a
//! create-only compare-and-swap, so it fires once across restarts and
//! replicas; the record stays after it is lifted, so the same release is not
//! halted again. The pause is idempotent in the policy service: a replica
//! that finds a recorded halt not yet accepted (its creator died) retries it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;
use upshift_proto::policy::v1 as ppb;
use upshift_proto::policy::v1::rollout_admin_service_client::RolloutAdminServiceClient;
use upshift_store::Txn;

use crate::config::PolicySettings;
use crate::error::TelemetryError;
use crate::record::{HaltRecord, epoch_ms, halt_key};
use crate::service::TelemetryService;

/// The policy admin client and the set of pauses in progress.
#[derive(Debug, Clone)]
pub struct Halter {
    client: Option<PolicyClient>,
    running: Arc<Mutex<HashSet<String>>>,
}

#[derive(Debug, Clone)]
struct PolicyClient {
    admin: RolloutAdminServiceClient<Channel>,
    token: Option<String>,
    check_interval: Duration,
}

impl PolicyClient {
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        upshift_common::telemetry::inject_context(req.metadata_mut());
        req
    }
}

impl Halter {
    /// A halter calling the policy service at `policy` (none: halts are never
    /// fired, so nothing is called).
    pub fn new(policy: Option<&PolicySettings>) -> Result<Self, TelemetryError> {
        let client = policy
            .map(|p| {
                let endpoint = Endpoint::from_shared(p.url.clone())
                    .map_err(|e| TelemetryError::Invalid(format!("policy.url: {e}")))?
                    .timeout(p.request_timeout)
                    .connect_timeout(p.request_timeout);
                Ok::<_, TelemetryError>(PolicyClient {
                    admin: RolloutAdminServiceClient::new(endpoint.connect_lazy()),
                    token: p.admin_token.clone(),
                    check_interval: p.check_interval,
                })
            })
            .transpose()?;
        Ok(Self {
            client,
            running: Arc::default(),
        })
    }

    /// Pauses the halted rollout in the policy service (once per process and
    /// halt at a time), retrying with backoff until it is accepted.
    pub(crate) fn ensure_paused(
        &self,
        svc: &TelemetryService,
        halt: HaltRecord,
        cause: tracing::Span,
    ) {
        let Some(client) = self.client.clone() else {
            tracing::warn!(
                key = halt.key(),
                "halt recorded but no policy service is configured"
            );
            return;
        };
        let key = halt.key();
        if !self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return;
        }
        let svc = svc.clone();
        let running = self.running.clone();
        let shutdown = svc.inner.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = pause_until_accepted(&svc, client, &halt, &cause) => {}
            }
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
    }
}

async fn pause_until_accepted(
    svc: &TelemetryService,
    mut client: PolicyClient,
    halt: &HaltRecord,
    cause: &tracing::Span,
) {
    let mut backoff = Duration::from_millis(500);
    // The error last written to the record (written again only when it changes).
    let mut recorded: Option<String> = None;
    loop {
        let span = tracing::info_span!(
            parent: cause,
            "telemetry.pause_rollout",
            stream = halt.stream,
            version = halt.version
        );
        let req = span.in_scope(|| {
            client.request(ppb::PauseRolloutRequest {
                stream: halt.stream.clone(),
                version: halt.version.clone(),
                reason: halt.reason.clone(),
                // A failing release is offered to no one, not just held.
                mode: ppb::PauseMode::Withdraw as i32,
            })
        });
        match client.admin.pause_rollout(req).instrument(span).await {
            Ok(_) => {
                svc.inner.metrics.pause_call("ok");
                tracing::warn!(
                    stream = halt.stream,
                    version = halt.version,
                    "rollout paused in the policy service"
                );
                update_halt(svc, &halt.stream, &halt.version, |h| {
                    h.paused_at_ms.get_or_insert(epoch_ms(svc.now()));
                    h.last_error = None;
                })
                .await;
                return;
            }
            Err(status) => {
                svc.inner.metrics.pause_call("error");
                tracing::warn!(
                    stream = halt.stream,
                    version = halt.version,
                    code = ?status.code(),
                    message = status.message(),
                    retry_in = ?backoff,
                    "cannot pause the halted rollout; retrying"
                );
                let error = format!("{:?}: {}", status.code(), status.message());
                if recorded.as_deref() != Some(error.as_str()) {
                    update_halt(svc, &halt.stream, &halt.version, |h| {
                        h.last_error = Some(error.clone());
                    })
                    .await;
                    recorded = Some(error);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Read-modify-CAS of a halt record; retried on conflicts and store errors
/// a few times (the follower keeps the view right either way).
async fn update_halt(
    svc: &TelemetryService,
    stream: &str,
    version: &str,
    f: impl Fn(&mut HaltRecord),
) {
    let key = halt_key(stream, version);
    for attempt in 0..20u32 {
        let result = async {
            let Some(kv) = svc.inner.store.get(&key).await? else {
                return Ok(true);
            };
            let Ok(mut rec) = HaltRecord::decode(&kv.value) else {
                return Ok(true);
            };
            f(&mut rec);
            let txn = Txn::new()
                .when_mod_revision(key.clone(), kv.mod_revision)
                .then(upshift_store::Op::put(key.clone(), rec.encode()));
            let done = svc.inner.store.txn(txn).await?.succeeded;
            if done {
                svc.fleet().put_halt(rec);
                svc.changed();
            }
            Ok::<_, upshift_store::StoreError>(done)
        }
        .await;
        match result {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                svc.inner.metrics.store_error("halt");
                tracing::warn!(key, error = %e, "cannot update the halt record");
                tokio::time::sleep(Duration::from_millis(100) * (attempt + 1)).await;
            }
        }
    }
}

/// Spawns the task that marks halts lifted once an operator resumed the
/// rollout in the policy service.
pub(crate) fn spawn_lift_checker(svc: TelemetryService) {
    let Some(client) = svc.inner.halter.client.clone() else {
        return;
    };
    let shutdown = svc.inner.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = check_lifts(&svc, client) => {}
        }
    });
}

/// A halt recorded this long ago and still not accepted by the policy is
/// retried by every replica (its creator may have died).
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(300);

async fn check_lifts(svc: &TelemetryService, mut client: PolicyClient) {
    loop {
        tokio::time::sleep(client.check_interval).await;
        let cutoff = epoch_ms(svc.now()).saturating_sub(crate::fleet::duration_ms(TAKEOVER_AFTER));
        let stuck: Vec<HaltRecord> = svc
            .fleet()
            .halts()
            .filter(|h| h.in_force() && h.paused_at_ms.is_none() && h.at_ms <= cutoff)
            .cloned()
            .collect();
        for h in stuck {
            svc.inner
                .halter
                .ensure_paused(svc, h, tracing::Span::none());
        }
        let paused: Vec<HaltRecord> = svc
            .fleet()
            .halts()
            .filter(|h| h.in_force() && h.paused_at_ms.is_some())
            .cloned()
            .collect();
        let streams: HashSet<&str> = paused.iter().map(|h| h.stream.as_str()).collect();
        for stream in streams {
            let req = client.request(ppb::ListRolloutsRequest {
                stream: stream.to_string(),
            });
            let rollouts = match client.admin.list_rollouts(req).await {
                Ok(r) => r.into_inner().rollouts,
                Err(status) => {
                    tracing::debug!(stream, error = %status, "cannot list rollouts");
                    continue;
                }
            };
            for h in paused.iter().filter(|h| h.stream == stream) {
                let resumed = rollouts.iter().any(|r| r.version == h.version && !r.paused);
                if resumed {
                    tracing::info!(
                        stream,
                        version = h.version,
                        "rollout resumed in the policy service; halt lifted"
                    );
                    update_halt(svc, &h.stream, &h.version, |rec| {
                        rec.lifted_at_ms.get_or_insert(epoch_ms(svc.now()));
                    })
                    .await;
                }
            }
        }
    }
}
