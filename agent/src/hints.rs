//! Update hints: a `WatchUpdateHints` stream to the policy service (current
//! hint at once, then pushed changes; jittered exponential reconnect that
//! honours the server's `Reconnect` hint and passes the resume token back),
//! with Cincinnati `GET /v1/graph` polling as the fallback while the stream
//! is down, or as the only source (`updates.backend = "cincinnati"`).
//!
//! One task publishes the latest [`Hint`] on a `watch` channel ([`Feed`]);
//! the driver reacts to changes, so a pushed hint starts staging at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use upshift_common::clock::SharedClock;
use upshift_proto::policy::v1 as pb;
use upshift_proto::policy::v1::policy_service_client::PolicyServiceClient;

use crate::cincinnati::{Choice, Query, choose};
use crate::driver::Ident;
use crate::net::{Backoff, Rng, channel, http_client};
use crate::os::{PayloadScheme, Release};
use crate::settings::{HintBackend, Settings};

/// Consecutive stream failures after which Cincinnati polling fills in.
pub const FALLBACK_AFTER: u32 = 2;
/// A stream silent for this long (no hint, no keepalive) is treated as dead.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the hint source says for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Update to this release.
    Update(Release),
    /// Nothing to do now (up to date, throttled, paused, frozen).
    UpToDate,
    /// The booted release is a dead-end.
    DeadEnd { reason: String },
    /// The source cannot place this node (booted release or stream unknown).
    Unknown(String),
}

/// The published state of the hint source.
#[derive(Debug, Clone, Default)]
pub struct Feed {
    /// Latest hint, once one arrived.
    pub hint: Option<Hint>,
    /// Whether the stream is open now.
    pub connected: bool,
    /// Hints received over the stream.
    pub pushed: u64,
    /// Successful stream connections.
    pub connects: u64,
    /// Completed update checks (stream hints, unary checks and polls).
    pub checks: u64,
    /// Failed checks and stream errors.
    pub errors: u64,
    /// When the last check completed.
    pub last_check: Option<SystemTime>,
    /// The last failure.
    pub last_error: Option<String>,
    /// `traceparent` of the call that delivered `hint` (the stream's
    /// connect, or a unary check); `None` for Cincinnati polls. The update
    /// the hint starts links to it.
    pub hint_trace: Option<String>,
}

/// What the driver tells the hint source about the node; a change re-opens
/// the stream with the new identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub booted: Release,
    /// The booted deployment's payload scheme: the graph hints come from.
    pub scheme: PayloadScheme,
    pub denied: Vec<String>,
}

/// Handle of the hint task.
#[derive(Debug, Clone)]
pub struct HintSource {
    /// Latest feed.
    pub feed: watch::Receiver<Feed>,
    /// Wakes the source for an immediate check (`check-now`).
    pub poke: Arc<Notify>,
}

struct Task {
    settings: Settings,
    ident: Ident,
    node: watch::Receiver<NodeView>,
    /// `traceparent` of the update in progress, if any.
    trace: watch::Receiver<Option<String>>,
    /// The update in progress when the task started: the run's first
    /// connect (after the reboot, the new booted version) belongs to it.
    first_trace: Option<String>,
    poke: Arc<Notify>,
    clock: SharedClock,
    feed: watch::Sender<Feed>,
    /// Built on the first poll: a stream-only agent never pays for it.
    http: std::sync::OnceLock<reqwest::Client>,
    backoff: Backoff,
    cancel: CancellationToken,
}

/// Starts the hint task; it ends with `cancel`. Calls made while `trace`
/// names an update (the stream's connect after the reboot, `check-now`)
/// are part of that update's trace.
pub fn spawn(
    settings: Settings,
    ident: Ident,
    node: watch::Receiver<NodeView>,
    trace: watch::Receiver<Option<String>>,
    clock: SharedClock,
    rng: Rng,
    cancel: CancellationToken,
) -> HintSource {
    let (tx, rx) = watch::channel(Feed::default());
    let poke = Arc::new(Notify::new());
    let first_trace = trace.borrow().clone();
    let task = Task {
        settings,
        ident,
        node,
        first_trace,
        trace,
        poke: poke.clone(),
        clock,
        feed: tx,
        http: std::sync::OnceLock::new(),
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300), rng),
        cancel,
    };
    tokio::spawn(task.run());
    HintSource { feed: rx, poke }
}

impl Task {
    async fn run(mut self) {
        match (self.settings.hint_backend, self.settings.policy_url.clone()) {
            (HintBackend::Stream, Some(url)) => self.stream_loop(&url).await,
            _ => self.poll_loop().await,
        }
    }

    fn publish(&self, hint: Option<Hint>, error: Option<String>) {
        self.publish_counted(hint, error, false, None);
    }

    /// Publishes in one update, so readers never see a count without its
    /// hint; `source` is the `traceparent` of the call that brought it.
    fn publish_counted(
        &self,
        hint: Option<Hint>,
        error: Option<String>,
        pushed: bool,
        source: Option<&str>,
    ) {
        let now = self.clock.now();
        self.feed.send_modify(|f| {
            if pushed {
                f.pushed += 1;
            }
            if let Some(h) = hint {
                f.hint = Some(h);
                f.hint_trace = source.map(str::to_owned);
                f.checks += 1;
                f.last_check = Some(now);
            }
            if let Some(e) = error {
                tracing::warn!(error = %e, "update hints");
                f.errors += 1;
                f.last_error = Some(e);
            }
        });
    }

    /// Sleeps `d` of the agent's clock; false when cancelled. A poke or a
    /// node change ends the sleep early.
    async fn nap(&mut self, d: Duration) -> bool {
        let deadline = self.clock.deadline_for(self.clock.now() + d);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => true,
            _ = self.poke.notified() => true,
            r = self.node.changed() => r.is_ok(),
            _ = self.cancel.cancelled() => false,
        }
    }

    async fn poll_loop(&mut self) {
        loop {
            let r = self.poll().await;
            self.report(r);
            let d = jitter(self.settings.poll_interval);
            if !self.nap(d).await {
                return;
            }
        }
    }

    fn report(&self, r: Result<Hint, String>) {
        match r {
            Ok(h) => self.publish(Some(h), None),
            Err(e) => self.publish(None, Some(e)),
        }
    }

    async fn stream_loop(&mut self, url: &str) {
        let mut client = match channel(url, self.settings.tls.as_ref()) {
            Ok(c) => PolicyServiceClient::new(c),
            Err(e) => {
                self.publish(None, Some(format!("policy_url {url:?}: {e}")));
                return self.poll_loop().await;
            }
        };
        let mut token = String::new();
        let mut next_poll = None::<tokio::time::Instant>;
        loop {
            let outcome = self.watch_once(&mut client, &mut token).await;
            self.feed.send_modify(|f| f.connected = false);
            let server_hint = match outcome {
                StreamEnd::Cancelled => return,
                StreamEnd::Reconnect(d) => Some(d),
                StreamEnd::NodeChanged => continue,
                StreamEnd::Failed(e) => {
                    self.publish(None, Some(e));
                    None
                }
            };
            let delay = self.backoff.next_delay(server_hint);
            // While the stream is down, Cincinnati polling fills in.
            let fallback =
                self.settings.cincinnati_url.is_some() && self.backoff.attempts() >= FALLBACK_AFTER;
            if fallback && next_poll.is_none_or(|t| t <= tokio::time::Instant::now()) {
                let r = self.poll().await;
                self.report(r);
                let d = jitter(self.settings.poll_interval);
                next_poll = Some(self.clock.deadline_for(self.clock.now() + d));
            }
            tracing::debug!(?delay, "hint stream reconnect");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.poke.notified() => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    fn identity(&self) -> pb::NodeIdentity {
        let n = self.node.borrow().clone();
        pb::NodeIdentity {
            node_uuid: self.ident.node_uuid.clone(),
            group: self.settings.group.clone(),
            rollout_wariness: self.settings.rollout_wariness,
            stream: self.settings.stream.clone(),
            basearch: self.settings.basearch.clone(),
            platform: self.ident.platform.clone(),
            scheme: proto_scheme(n.scheme) as i32,
            booted_version: n.booted.version,
            booted_payload: n.booted.payload,
            denied_versions: n.denied,
            allow_downgrade: self.settings.allow_downgrade,
        }
    }

    /// A client span for one call to the policy service: part of the
    /// update in progress, else a root.
    fn call_span(&self, span: tracing::Span) -> tracing::Span {
        crate::trace::adopt(span, self.trace.borrow().as_deref())
    }

    /// [`Self::call_span`] for a stream connect; the run's first one
    /// belongs to the update in progress when the run started.
    fn connect_span(&mut self, span: tracing::Span) -> tracing::Span {
        match self.first_trace.take() {
            Some(tp) => crate::trace::adopt(span, Some(&tp)),
            None => self.call_span(span),
        }
    }

    async fn watch_once(
        &mut self,
        client: &mut PolicyServiceClient<tonic::transport::Channel>,
        token: &mut String,
    ) -> StreamEnd {
        self.node.mark_unchanged();
        let mut req = tonic::Request::new(pb::WatchUpdateHintsRequest {
            identity: Some(self.identity()),
            resume_token: token.clone(),
        });
        // The span covers the call, not the hours the stream stays open.
        let span = self.connect_span(tracing::info_span!(
            parent: None,
            "policy.watch_update_hints",
            otel.kind = "client",
            rpc.method = "WatchUpdateHints"
        ));
        crate::trace::inject(&span, req.metadata_mut());
        let source = crate::trace::traceparent(&span);
        let mut stream = tokio::select! {
            r = client.watch_update_hints(req).instrument(span) => match r {
                Ok(s) => s.into_inner(),
                Err(e) => return StreamEnd::Failed(format!("WatchUpdateHints: {}", e.message())),
            },
            _ = self.cancel.cancelled() => return StreamEnd::Cancelled,
        };
        self.feed.send_modify(|f| {
            f.connected = true;
            f.connects += 1;
        });
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.message()) => m,
                _ = self.poke.notified() => {
                    self.check_unary(client).await;
                    continue;
                }
                r = self.node.changed() => {
                    if r.is_err() { return StreamEnd::Cancelled; }
                    return StreamEnd::NodeChanged;
                }
                _ = self.cancel.cancelled() => return StreamEnd::Cancelled,
            };
            let msg = match msg {
                Err(_) => return StreamEnd::Failed("hint stream idle too long".into()),
                Ok(Err(e)) => return StreamEnd::Failed(format!("hint stream: {}", e.message())),
                Ok(Ok(None)) => return StreamEnd::Failed("hint stream ended".into()),
                Ok(Ok(Some(m))) => m,
            };
            self.backoff.reset();
            if !msg.resume_token.is_empty() {
                *token = msg.resume_token.clone();
            }
            use pb::watch_update_hints_response::Event;
            match msg.event {
                Some(Event::Hint(h)) => {
                    self.publish_counted(Some(from_proto(&h)), None, true, source.as_deref())
                }
                Some(Event::Reconnect(r)) => {
                    let d = r
                        .retry_after
                        .as_ref()
                        .map(upshift_common::grpc::from_duration)
                        .unwrap_or_default();
                    tracing::info!(reason = %r.reason, ?d, "policy asked to reconnect");
                    return StreamEnd::Reconnect(d);
                }
                Some(Event::Keepalive(_)) | None => {}
            }
        }
    }

    /// `check-now` on an open stream: one unary `GetUpdateHint`.
    async fn check_unary(&self, client: &mut PolicyServiceClient<tonic::transport::Channel>) {
        let mut req = tonic::Request::new(pb::GetUpdateHintRequest {
            identity: Some(self.identity()),
        });
        req.set_timeout(Duration::from_secs(10));
        let span = self.call_span(tracing::info_span!(
            parent: None,
            "policy.get_update_hint",
            otel.kind = "client",
            rpc.method = "GetUpdateHint"
        ));
        crate::trace::inject(&span, req.metadata_mut());
        let source = crate::trace::traceparent(&span);
        match client.get_update_hint(req).instrument(span).await {
            Ok(r) => match r.into_inner().hint {
                Some(h) => {
                    self.publish_counted(Some(from_proto(&h)), None, false, source.as_deref())
                }
                None => self.publish(None, Some("GetUpdateHint: empty answer".into())),
            },
            Err(e) => self.publish(None, Some(format!("GetUpdateHint: {}", e.message()))),
        }
    }

    /// One Cincinnati `GET /v1/graph` with Zincati's parameters.
    async fn poll(&self) -> Result<Hint, String> {
        let Some(base) = &self.settings.cincinnati_url else {
            return Err("no hint source: updates.cincinnati_url is not set".into());
        };
        let n = self.node.borrow().clone();
        let q = Query {
            basearch: self.settings.basearch.clone(),
            stream: self.settings.stream.clone(),
            rollout_wariness: self.settings.rollout_wariness,
            node_uuid: self.ident.node_uuid.clone(),
            os_version: n.booted.version.clone(),
            os_checksum: n.booted.payload.clone(),
            group: self.settings.group.clone(),
            platform: self.ident.platform.clone(),
            oci: n.scheme == PayloadScheme::Oci,
        };
        let url = format!("{}/v1/graph", base.trim_end_matches('/'));
        let http = self
            .http
            .get_or_init(|| http_client(self.settings.tls.as_ref(), Duration::from_secs(30)));
        let resp = http
            .get(&url)
            .header("accept", "application/json")
            .query(&q.pairs())
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("graph poll: {e}"))?;
        let body = resp.bytes().await.map_err(|e| format!("graph poll: {e}"))?;
        Ok(
            match choose(&body, &n.booted, &n.denied, self.settings.allow_downgrade) {
                Choice::Update(r) => Hint::Update(r),
                Choice::UpToDate => Hint::UpToDate,
                Choice::DeadEnd { reason } => Hint::DeadEnd { reason },
                Choice::Unknown(why) => Hint::Unknown(why),
            },
        )
    }
}

enum StreamEnd {
    Cancelled,
    NodeChanged,
    Reconnect(Duration),
    Failed(String),
}

/// The wire value of a payload scheme.
pub fn proto_scheme(s: PayloadScheme) -> upshift_proto::graph::v1::PayloadScheme {
    match s {
        PayloadScheme::Checksum => upshift_proto::graph::v1::PayloadScheme::Checksum,
        PayloadScheme::Oci => upshift_proto::graph::v1::PayloadScheme::Oci,
    }
}

/// Converts a policy hint.
pub fn from_proto(h: &pb::UpdateHint) -> Hint {
    use pb::NoUpdateReason as R;
    match &h.decision {
        Some(pb::update_hint::Decision::Target(t)) => Hint::Update(Release {
            version: t.version.clone(),
            payload: t.payload.clone(),
        }),
        Some(pb::update_hint::Decision::NoUpdate(n)) => match n.reason() {
            R::DeadEnd => Hint::DeadEnd {
                reason: n.detail.clone(),
            },
            R::BootedUnknown | R::StreamUnknown => {
                Hint::Unknown(format!("{}: {}", n.reason().as_str_name(), n.detail))
            }
            _ => Hint::UpToDate,
        },
        None => Hint::Unknown("hint without a decision".into()),
    }
}

/// `d` spread by +-10%.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..1.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_decisions() {
        let t = pb::UpdateHint {
            decision: Some(pb::update_hint::Decision::Target(pb::UpdateTarget {
                version: "2".into(),
                payload: "p2".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            from_proto(&t),
            Hint::Update(Release {
                version: "2".into(),
                payload: "p2".into()
            })
        );
        let no = |r: pb::NoUpdateReason| pb::UpdateHint {
            decision: Some(pb::update_hint::Decision::NoUpdate(pb::NoUpdate {
                reason: r as i32,
                detail: "why".into(),
                eligible_at: None,
            })),
            ..Default::default()
        };
        assert_eq!(
            from_proto(&no(pb::NoUpdateReason::DeadEnd)),
            Hint::DeadEnd {
                reason: "why".into()
            }
        );
        assert_eq!(
            from_proto(&no(pb::NoUpdateReason::Throttled)),
            Hint::UpToDate
        );
        assert!(matches!(
            from_proto(&no(pb::NoUpdateReason::BootedUnknown)),
            Hint::Unknown(_)
        ));
    }

    /// Polls of a fleet spread over +-10% of `poll_interval`, so hosts
    /// started together do not poll the server together.
    #[test]
    fn poll_interval_is_spread_by_ten_percent() {
        let interval = Duration::from_secs(300);
        let polls: Vec<Duration> = (0..1000).map(|_| jitter(interval)).collect();
        assert!(
            polls
                .iter()
                .all(|d| (Duration::from_secs(270)..Duration::from_secs(330)).contains(d)),
            "{polls:?}"
        );
        let (min, max) = (polls.iter().min().unwrap(), polls.iter().max().unwrap());
        assert!(*min < Duration::from_secs(285), "never early: {min:?}");
        assert!(*max > Duration::from_secs(315), "never late: {max:?}");
    }
}
