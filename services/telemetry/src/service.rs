//! The telemetry service core: ingest of reports into the fleet view, the
//! write-behind of host records, the store follower (other replicas'
//! reports, halts), the ageing sweep and the halt trigger.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use upshift_common::clock::SharedClock;
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::AgentState;
use upshift_store::{Op, SharedStore, Txn};

use crate::config::TelemetrySettings;
use crate::error::TelemetryError;
use crate::fleet::{Crossing, Fleet, duration_ms};
use crate::halt::Halter;
use crate::metrics::TelemetryMetrics;
use crate::record::{
    HaltRecord, StatusRecord, apply_status, epoch_ms, host_key, valid_label, valid_node_uuid,
};
use crate::writer::Writer;

mod follow;
mod sweep;

/// The telemetry service: cheap to clone, shared by the gRPC handlers.
#[derive(Debug, Clone)]
pub struct TelemetryService {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) settings: TelemetrySettings,
    pub(crate) store: SharedStore,
    pub(crate) clock: SharedClock,
    pub(crate) metrics: TelemetryMetrics,
    pub(crate) fleet: Arc<Mutex<Fleet>>,
    /// Bumped on every change of the view (reports, ageing, halts).
    pub(crate) changes: watch::Sender<u64>,
    pub(crate) writer: Writer,
    pub(crate) halter: Halter,
    creating: Mutex<HashSet<String>>,
    pub(crate) shutdown: CancellationToken,
}

impl TelemetryService {
    /// Starts the service: loads the fleet view from the store, then follows
    /// it, writes records behind, ages hosts and checks halts until `shutdown`.
    pub async fn start(
        settings: TelemetrySettings,
        store: SharedStore,
        clock: SharedClock,
        metrics: TelemetryMetrics,
        shutdown: CancellationToken,
    ) -> Result<Self, TelemetryError> {
        let fleet = Arc::new(Mutex::new(Fleet::new()));
        metrics.observe(fleet.clone(), clock.clone(), settings.stale_after);
        let writer = Writer::start(store.clone(), metrics.clone(), shutdown.clone());
        let w = writer.clone();
        metrics.observe_pending(Arc::new(move || w.backlog()));
        let halter = Halter::new(settings.policy.as_ref())?;
        let svc = Self {
            inner: Arc::new(Inner {
                settings,
                store,
                clock,
                metrics,
                fleet,
                changes: watch::channel(0).0,
                writer,
                halter,
                creating: Mutex::default(),
                shutdown,
            }),
        };
        follow::spawn(svc.clone()).await.ok();
        sweep::spawn(svc.clone());
        crate::halt::spawn_lift_checker(svc.clone());
        Ok(svc)
    }

    /// The settings.
    pub fn settings(&self) -> &TelemetrySettings {
        &self.inner.settings
    }

    /// The current time of the injected clock.
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// Subscribes to view changes (the value is a change counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub(crate) fn changed(&self) {
        self.inner.changes.send_modify(|n| *n += 1);
    }

    pub(crate) fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.inner.fleet.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fleet summary of the hosts matching `filter`.
    pub fn summary(&self, filter: &pb::HostFilter) -> pb::FleetSummary {
        let now = self.now();
        self.fleet()
            .summary(filter, now, self.inner.settings.stale_after)
    }

    /// A page of hosts after node id `after`; the next page's start when more remain.
    pub fn page(
        &self,
        filter: &pb::HostFilter,
        after: &str,
        size: usize,
    ) -> (Vec<pb::Host>, Option<String>) {
        let now = self.now();
        self.fleet()
            .page(filter, after, size, now, self.inner.settings.stale_after)
    }

    /// Halt records (in force and lifted).
    pub fn halts(&self) -> Vec<HaltRecord> {
        self.fleet().halts().cloned().collect()
    }

    /// Applies one report to the view and queues its record; returns the
    /// write generation to wait for (see [`TelemetryService::wait_stored`]).
    pub fn ingest(&self, status: &pb::HostStatus) -> Result<u64, TelemetryError> {
        validate(status)?;
        let now = self.now();
        let status = StatusRecord::from_pb(status);
        let (record, events, crossings) = {
            let mut fleet = self.fleet();
            let (record, events) = apply_status(fleet.get(&status.node_uuid), status, now);
            fleet.put(record.clone());
            let crossings: Vec<Crossing> = record
                .attempts
                .iter()
                .filter_map(|a| {
                    let rule = self.inner.settings.rule(&a.stream);
                    fleet.crossing(&a.stream, &a.version, &rule, now)
                })
                .collect();
            (record, events, crossings)
        };
        self.inner.metrics.attempt_events(&events);
        // Fire before announcing the change: the ageing task re-evaluates
        // on every change, and a halt it fired first would start outside
        // this report's trace.
        for c in crossings {
            self.fire(c);
        }
        self.changed();
        let key = host_key(&record.status.node_uuid);
        Ok(self.inner.writer.enqueue(key, Some(record.encode())))
    }

    /// Waits until the write generation `generation` is stored.
    pub async fn wait_stored(&self, generation: u64) -> Result<(), TelemetryError> {
        // The writer stops at shutdown: nothing is acknowledged after it.
        tokio::select! {
            () = self.inner.shutdown.cancelled() => Err(TelemetryError::ShuttingDown),
            r = self.inner.writer.wait_stored(generation) => r.map_err(|_| TelemetryError::ShuttingDown),
        }
    }

    /// Evaluates every release's halt rule now (time-based limits).
    pub(crate) fn evaluate_all(&self) {
        let now = self.now();
        let crossings: Vec<Crossing> = {
            let fleet = self.fleet();
            fleet
                .release_keys()
                .into_iter()
                .filter_map(|(s, v)| fleet.crossing(&s, &v, &self.inner.settings.rule(&s), now))
                .collect()
        };
        for c in crossings {
            self.fire(c);
        }
    }

    /// Records a halt exactly once (a create-only CAS) and starts its pause.
    fn fire(&self, c: Crossing) {
        let record = HaltRecord {
            stream: c.stream,
            version: c.version,
            reason: c.reason,
            at_ms: epoch_ms(self.now()),
            paused_at_ms: None,
            last_error: None,
            lifted_at_ms: None,
        };
        let key = record.key();
        if !self
            .inner
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return;
        }
        let svc = self.clone();
        // The pause joins the trace of the report that crossed the threshold.
        let cause = tracing::Span::current();
        tokio::spawn(async move {
            let txn = Txn::new()
                .when_mod_revision(key.clone(), 0)
                .then(Op::put(key.clone(), record.encode()));
            match svc.inner.store.txn(txn).await {
                Ok(outcome) if outcome.succeeded => {
                    tracing::warn!(
                        stream = record.stream,
                        version = record.version,
                        reason = record.reason,
                        "rollout halted"
                    );
                    svc.fleet().put_halt(record.clone());
                    svc.changed();
                    svc.inner.halter.ensure_paused(&svc, record, cause);
                }
                Ok(_) => {
                    // Another replica (or an earlier run) recorded it; the follower brings it.
                    tracing::info!(key, "halt already recorded");
                }
                Err(e) => {
                    svc.inner.metrics.store_error("halt");
                    tracing::warn!(key, error = %e, "cannot record the halt; the next report retries");
                    svc.inner
                        .creating
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                }
            }
        });
    }

    /// Drops hosts not seen for `drop_after` (view and store).
    pub(crate) fn drop_old(&self, now: SystemTime) {
        let cutoff = epoch_ms(now).saturating_sub(duration_ms(self.inner.settings.drop_after));
        let dropped: Vec<String> = {
            let mut fleet = self.fleet();
            let ids = fleet.seen_at_or_before(cutoff);
            for id in &ids {
                fleet.remove(id);
            }
            ids
        };
        if dropped.is_empty() {
            return;
        }
        tracing::info!(
            hosts = dropped.len(),
            "dropped hosts that stopped reporting"
        );
        for id in dropped {
            self.inner.writer.enqueue(host_key(&id), None);
        }
        self.changed();
    }
}

fn validate(s: &pb::HostStatus) -> Result<(), TelemetryError> {
    let bad = |what: &str, v: &str| {
        Err(TelemetryError::Invalid(format!(
            "{what} {v:?} is not valid"
        )))
    };
    if !valid_node_uuid(&s.node_uuid) {
        return bad("node_uuid", &s.node_uuid);
    }
    if !valid_label(&s.stream) {
        return bad("stream", &s.stream);
    }
    for (what, v) in [
        ("group", &s.group),
        ("booted_version", &s.booted_version),
        ("target_version", &s.target_version),
        ("last_error_kind", &s.last_error_kind),
    ] {
        if !v.is_empty() && !valid_label(v) {
            return bad(what, v);
        }
    }
    if AgentState::try_from(s.state).is_err() {
        return Err(TelemetryError::Invalid(format!(
            "unknown state {}",
            s.state
        )));
    }
    for (what, v, max) in [
        ("last_error", &s.last_error, 4096),
        ("basearch", &s.basearch, 64),
        ("platform", &s.platform, 64),
        ("agent_version", &s.agent_version, 128),
        ("traceparent", &s.traceparent, 128),
    ] {
        if v.len() > max {
            return Err(TelemetryError::Invalid(format!(
                "{what} longer than {max} bytes"
            )));
        }
    }
    Ok(())
}
