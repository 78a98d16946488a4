//! The reboot lock: gRPC `upshift.lock.v1` (a waiting `Acquire` stream,
//! lease keepalives while held, `Release`), FleetLock HTTP
//! (`/v1/pre-reboot`, `/v1/steady-state`) to any FleetLock server, or none.
//!
//! [`RebootLock::acquire`] never blocks on a queue: with gRPC it starts the
//! `Acquire` call in a task and reports `Waiting` until the grant arrives;
//! the driver waits on [`RebootLock::changed`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use upshift_common::clock::SharedClock;
use upshift_proto::lock::v1 as pb;
use upshift_proto::lock::v1::lock_service_client::LockServiceClient;

use crate::net::{ClientTls, channel, http_client};
use crate::settings::{LockKind, Settings};

/// Deadline of one lock call (not the waiting `Acquire`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Lock errors: the check itself failed (no reboot).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock url {url:?}")]
    Url {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("lock service: {0}")]
    Grpc(String),
    #[error("fleetlock {op}")]
    Http {
        op: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("fleetlock {op}: HTTP {status}: {body}")]
    Status {
        op: &'static str,
        status: u16,
        body: String,
    },
}

/// The answer of one lock check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockCheck {
    /// The slot is ours.
    Held,
    /// Queued (gRPC): position, queue length and why.
    Waiting {
        position: u32,
        queue_length: u32,
        reason: String,
    },
    /// Refused for now (FleetLock 409): the error kind.
    Refused(String),
}

/// Progress of a gRPC `Acquire` call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Acquiring {
    Connecting,
    Queued {
        position: u32,
        queue_length: u32,
        reason: String,
    },
    Granted,
    Failed(String),
}

/// The configured reboot lock.
#[derive(Debug)]
pub struct RebootLock {
    kind: LockKind,
    id: String,
    group: String,
    ttl: Duration,
    url: String,
    /// Built on first use (FleetLock only).
    http: std::sync::OnceLock<reqwest::Client>,
    grpc: Option<LockServiceClient<tonic::transport::Channel>>,
    tls: Option<ClientTls>,
    held: bool,
    acquiring: Option<(watch::Receiver<Acquiring>, JoinHandle<()>)>,
    keepalive: Option<JoinHandle<()>>,
    lost: Arc<AtomicBool>,
    /// The clock the lease runs on (scaled in the dev mesh): keepalives
    /// are timed by it, so a lease never expires between two of them.
    clock: SharedClock,
}

impl Drop for RebootLock {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

impl RebootLock {
    /// The lock of `settings.lock_kind` for node `id`, keeping leases alive
    /// on `clock`.
    pub fn new(settings: &Settings, id: &str, clock: SharedClock) -> Result<Self, LockError> {
        let url = settings.lock_url.clone().unwrap_or_default();
        let grpc = match settings.lock_kind {
            LockKind::Grpc => Some(LockServiceClient::new(
                channel(&url, settings.tls.as_ref()).map_err(|source| LockError::Url {
                    url: url.clone(),
                    source,
                })?,
            )),
            _ => None,
        };
        Ok(Self {
            kind: settings.lock_kind,
            id: id.to_owned(),
            group: settings.group.clone(),
            ttl: settings.lock_ttl,
            url,
            http: std::sync::OnceLock::new(),
            grpc,
            tls: settings.tls.clone(),
            held: false,
            acquiring: None,
            keepalive: None,
            lost: Arc::new(AtomicBool::new(false)),
            clock,
        })
    }

    /// Whether this process holds the slot now.
    pub fn held(&self) -> bool {
        self.held && !self.lost.load(Ordering::SeqCst)
    }

    /// Whether a gRPC `Acquire` is in flight (queued or about to be granted).
    pub fn pending(&self) -> bool {
        self.acquiring.is_some()
    }

    fn stop_tasks(&mut self) {
        if let Some((_, t)) = self.acquiring.take() {
            t.abort();
        }
        if let Some(t) = self.keepalive.take() {
            t.abort();
        }
    }

    /// Takes the slot, or says why not yet.
    pub async fn acquire(&mut self) -> Result<LockCheck, LockError> {
        match self.kind {
            LockKind::Immediate => Ok(LockCheck::Held),
            LockKind::Fleetlock => match self.fleetlock("pre-reboot").await? {
                None => {
                    self.held = true;
                    Ok(LockCheck::Held)
                }
                Some(kind) => Ok(LockCheck::Refused(kind)),
            },
            LockKind::Grpc => self.acquire_grpc(),
        }
    }

    fn acquire_grpc(&mut self) -> Result<LockCheck, LockError> {
        if self.held && self.lost.swap(false, Ordering::SeqCst) {
            tracing::warn!("reboot lock lease lost; acquiring again");
            self.held = false;
            if let Some(t) = self.keepalive.take() {
                t.abort();
            }
        }
        if self.held {
            return Ok(LockCheck::Held);
        }
        let state = match &self.acquiring {
            None => self.start_acquire().borrow().clone(),
            Some((rx, _)) => rx.borrow().clone(),
        };
        match state {
            Acquiring::Connecting => Ok(LockCheck::Waiting {
                position: 0,
                queue_length: 0,
                reason: "connecting".into(),
            }),
            Acquiring::Queued {
                position,
                queue_length,
                reason,
            } => Ok(LockCheck::Waiting {
                position,
                queue_length,
                reason,
            }),
            Acquiring::Granted => {
                self.acquiring = None;
                self.held = true;
                self.start_keepalive();
                Ok(LockCheck::Held)
            }
            Acquiring::Failed(e) => {
                self.acquiring = None;
                Err(LockError::Grpc(e))
            }
        }
    }

    fn start_acquire(&mut self) -> watch::Receiver<Acquiring> {
        let (tx, rx) = watch::channel(Acquiring::Connecting);
        let client = self.grpc.clone().expect("grpc lock has a client");
        let mut req = tonic::Request::new(pb::AcquireRequest {
            id: self.id.clone(),
            group: self.group.clone(),
            ttl: Some(upshift_common::grpc::duration(self.ttl)),
        });
        // A client span from the call to the grant (the wait in the queue),
        // a child of the caller's (the update's gates); the lock service's
        // server span joins it through the metadata.
        let span = tracing::info_span!(
            "lock.acquire",
            otel.kind = "client",
            rpc.method = "Acquire",
            group = %self.group
        );
        crate::trace::inject(&span, req.metadata_mut());
        let task = tokio::spawn(acquire_call(client, req, tx).instrument(span));
        self.acquiring = Some((rx.clone(), task));
        rx
    }

    fn start_keepalive(&mut self) {
        let Some(mut client) = self.grpc.clone() else {
            return;
        };
        let (id, group) = (self.id.clone(), self.group.clone());
        let every = (self.ttl / 3).max(Duration::from_millis(100));
        let lost = self.lost.clone();
        lost.store(false, Ordering::SeqCst);
        let clock = self.clock.clone();
        // Keepalives join the caller's trace without keeping its span open.
        let parent = crate::trace::traceparent(&tracing::Span::current());
        self.keepalive = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep_until(clock.deadline_for(clock.now() + every)).await;
                let mut req = tonic::Request::new(pb::KeepaliveRequest {
                    id: id.clone(),
                    group: group.clone(),
                });
                req.set_timeout(CALL_TIMEOUT);
                let span = crate::trace::adopt(
                    tracing::info_span!(
                        parent: None,
                        "lock.keepalive",
                        otel.kind = "client",
                        rpc.method = "Keepalive"
                    ),
                    parent.as_deref(),
                );
                crate::trace::inject(&span, req.metadata_mut());
                match client.keepalive(req).instrument(span).await {
                    Ok(_) => {}
                    Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e.message(), "lock keepalive failed"),
                }
            }
        }));
    }

    /// Resolves when a pending gRPC `Acquire` makes progress; never
    /// otherwise.
    pub async fn changed(&mut self) {
        match &mut self.acquiring {
            Some((rx, _)) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Frees the slot (idempotent: freeing nothing succeeds).
    pub async fn release(&mut self) -> Result<(), LockError> {
        self.stop_tasks();
        match self.kind {
            LockKind::Immediate => {}
            LockKind::Fleetlock => {
                if let Some(kind) = self.fleetlock("steady-state").await? {
                    return Err(LockError::Status {
                        op: "steady-state",
                        status: 409,
                        body: kind,
                    });
                }
            }
            LockKind::Grpc => {
                let mut client = self.grpc.clone().expect("grpc lock has a client");
                let mut req = tonic::Request::new(pb::ReleaseRequest {
                    id: self.id.clone(),
                    group: self.group.clone(),
                });
                req.set_timeout(CALL_TIMEOUT);
                let span = tracing::info_span!(
                    "lock.release",
                    otel.kind = "client",
                    rpc.method = "Release"
                );
                crate::trace::inject(&span, req.metadata_mut());
                client
                    .release(req)
                    .instrument(span)
                    .await
                    .map_err(|e| LockError::Grpc(format!("Release: {}", e.message())))?;
            }
        }
        self.held = false;
        Ok(())
    }

    /// FleetLock `POST <url>/v1/<op>`: `None` on 200, the error kind on 409.
    async fn fleetlock(&self, op: &'static str) -> Result<Option<String>, LockError> {
        let body = serde_json::json!({"client_params": {"id": self.id, "group": self.group}});
        let http = self
            .http
            .get_or_init(|| http_client(self.tls.as_ref(), CALL_TIMEOUT));
        let span = tracing::info_span!("lock.fleetlock", otel.kind = "client", op);
        let resp = http
            .post(format!("{}/v1/{op}", self.url.trim_end_matches('/')))
            .header("fleet-lock-protocol", "true")
            .headers(crate::trace::http_headers(&span))
            .json(&body)
            .send()
            .instrument(span)
            .await
            .map_err(|source| LockError::Http { op, source })?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(None);
        }
        let text = resp.text().await.unwrap_or_default();
        if status == 409 {
            let kind = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "conflict".into());
            return Ok(Some(kind));
        }
        Err(LockError::Status {
            op,
            status,
            body: text.chars().take(200).collect(),
        })
    }
}

/// One waiting `Acquire` call: publishes its progress on `tx` until the
/// grant or a failure.
async fn acquire_call(
    mut client: LockServiceClient<tonic::transport::Channel>,
    req: tonic::Request<pb::AcquireRequest>,
    tx: watch::Sender<Acquiring>,
) {
    let mut stream = match client.acquire(req).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            let _ = tx.send(Acquiring::Failed(format!("Acquire: {}", e.message())));
            return;
        }
    };
    loop {
        use pb::acquire_response::Event;
        let next = match stream.message().await {
            Ok(Some(pb::AcquireResponse {
                event: Some(Event::Queued(q)),
            })) => Acquiring::Queued {
                position: q.position,
                queue_length: q.queue_length,
                reason: q.reason,
            },
            Ok(Some(pb::AcquireResponse {
                event: Some(Event::Granted(_)),
            })) => Acquiring::Granted,
            Ok(Some(_)) => continue,
            Ok(None) => Acquiring::Failed("Acquire ended without a grant".into()),
            Err(e) => Acquiring::Failed(format!("Acquire: {}", e.message())),
        };
        let done = !matches!(next, Acquiring::Queued { .. });
        let _ = tx.send(next);
        if done {
            return;
        }
    }
}
