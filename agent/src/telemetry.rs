//! Status reports to the telemetry service (`upshift.telemetry.v1.Report`,
//! a bidirectional stream): one report per change of what a report carries
//! (a status change it does not carry, such as a move in the reboot-lock
//! queue, sends nothing) plus a heartbeat,
//! reconnecting with jittered backoff. The task only reads the status
//! `watch`, so the update path never waits for it; reports that pile up
//! while disconnected collapse into the latest status.

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use upshift_common::clock::SharedClock;
use upshift_common::grpc::timestamp;
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;

use crate::driver::Ident;
use crate::net::{Backoff, Rng, channel};
use crate::settings::Settings;
use crate::status::Status;

/// Counters of the reporter (for tests and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReporterStats {
    pub connects: u64,
    pub sent: u64,
    pub acknowledged: u64,
}

/// Starts the reporter when `settings.telemetry_url` is set.
pub fn spawn(
    settings: &Settings,
    ident: &Ident,
    status: watch::Receiver<Status>,
    clock: SharedClock,
    rng: Rng,
    cancel: CancellationToken,
) -> Option<watch::Receiver<ReporterStats>> {
    let url = settings.telemetry_url.clone()?;
    let (tx, rx) = watch::channel(ReporterStats::default());
    let r = Reporter {
        url,
        tls: settings.tls.clone(),
        base: base_status(settings, ident),
        interval: settings.telemetry_interval,
        status,
        clock,
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300), rng),
        stats: tx,
        seq: 0,
        last: None,
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = r.run() => {}
            _ = cancel.cancelled() => {}
        }
    });
    Some(rx)
}

fn base_status(s: &Settings, ident: &Ident) -> pb::HostStatus {
    pb::HostStatus {
        node_uuid: ident.node_uuid.clone(),
        group: s.group.clone(),
        stream: s.stream.clone(),
        basearch: s.basearch.clone(),
        platform: ident.platform.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The wire state of a status state label.
pub fn agent_state(label: &str) -> pb::AgentState {
    use pb::AgentState as A;
    match label {
        "start" => A::Starting,
        "reporting-steady" => A::ReportingSteady,
        "idle" => A::Idle,
        "dead-end" => A::DeadEnd,
        "update-available" => A::UpdateAvailable,
        "staging" => A::Staging,
        "staged" => A::Staged,
        "waiting-for-gates" => A::WaitingForGates,
        "finalizing" => A::Finalizing,
        "rebooting" => A::Rebooting,
        _ => A::Unspecified,
    }
}

/// A report of `st` observed at `now`.
pub fn host_status(base: &pb::HostStatus, st: &Status, now: SystemTime) -> pb::HostStatus {
    let mut h = base.clone();
    h.booted_version = st.booted.clone();
    h.target_version = st.target.clone().unwrap_or_default();
    h.state = agent_state(st.state) as i32;
    if let Some(e) = &st.last_error {
        h.last_error_kind = e.kind.as_str().into();
        h.last_error = e.message.clone();
    }
    h.observed_at = Some(timestamp(now));
    h.state_since = Some(timestamp(st.state_since));
    h.lock_held = st.lock_held;
    // The telemetry service's report span (and any halt) joins the update.
    h.traceparent = st.traceparent.clone().unwrap_or_default();
    h
}

struct Reporter {
    url: String,
    tls: Option<crate::net::ClientTls>,
    base: pb::HostStatus,
    interval: Duration,
    status: watch::Receiver<Status>,
    clock: SharedClock,
    backoff: Backoff,
    stats: watch::Sender<ReporterStats>,
    seq: u64,
    /// The last report queued, without its observation time.
    last: Option<pb::HostStatus>,
}

impl Reporter {
    async fn run(mut self) {
        let client = match channel(&self.url, self.tls.as_ref()) {
            Ok(c) => TelemetryServiceClient::new(c),
            Err(e) => {
                tracing::warn!(error = %e, url = %self.url, "telemetry disabled: bad url");
                return;
            }
        };
        loop {
            if let Err(e) = self.session(client.clone()).await {
                tracing::warn!(error = %e, "telemetry report stream");
            }
            tokio::time::sleep(self.backoff.next_delay(None)).await;
        }
    }

    /// One `Report` stream: sends the current status at once, then on every
    /// change and heartbeat, until the stream fails.
    async fn session(
        &mut self,
        mut client: TelemetryServiceClient<tonic::transport::Channel>,
    ) -> Result<(), String> {
        let (tx, rx) = mpsc::channel(4);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        // The stream outlives any update: its own short span, a root. Each
        // report joins its update through `HostStatus.traceparent`.
        let span = tracing::info_span!(
            parent: None,
            "telemetry.connect",
            otel.kind = "client",
            rpc.method = "Report"
        );
        crate::trace::inject(&span, req.metadata_mut());
        let first = self.current();
        self.send(&tx, first)?;
        let mut acks = client
            .report(req)
            .instrument(span)
            .await
            .map_err(|e| format!("Report: {}", e.message()))?
            .into_inner();
        self.backoff.reset();
        self.stats.send_modify(|s| s.connects += 1);
        loop {
            tokio::select! {
                r = self.status.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    let report = self.current();
                    if self.is_news(&report) {
                        self.send(&tx, report)?;
                    }
                }
                _ = tokio::time::sleep_until(self.clock.deadline_for(self.clock.now() + self.interval)) => {
                    let report = self.current();
                    self.send(&tx, report)?;
                }
                m = acks.message() => match m {
                    Ok(Some(a)) => self.stats.send_modify(|s| s.acknowledged = a.acknowledged),
                    Ok(None) => return Err("server ended the stream".into()),
                    Err(e) => return Err(e.message().to_string()),
                },
            }
        }
    }

    /// The report of the current status, observed now.
    fn current(&mut self) -> pb::HostStatus {
        let st = self.status.borrow_and_update();
        host_status(&self.base, &st, self.clock.now())
    }

    /// Whether `report` says something other than the last report queued
    /// (its observation time aside).
    fn is_news(&self, report: &pb::HostStatus) -> bool {
        let bare = pb::HostStatus {
            observed_at: None,
            ..report.clone()
        };
        self.last.as_ref() != Some(&bare)
    }

    /// Queues `status`; a full queue drops it (the next change or heartbeat
    /// carries a newer one).
    fn send(
        &mut self,
        tx: &mpsc::Sender<pb::ReportRequest>,
        status: pb::HostStatus,
    ) -> Result<(), String> {
        self.seq += 1;
        let msg = pb::ReportRequest {
            sequence: self.seq,
            status: Some(status.clone()),
        };
        match tx.try_send(msg) {
            Ok(()) => {
                self.last = Some(pb::HostStatus {
                    observed_at: None,
                    ..status
                });
                self.stats.send_modify(|s| s.sent += 1);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err("report stream closed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter(status: watch::Receiver<Status>) -> Reporter {
        Reporter {
            url: String::new(),
            tls: None,
            base: pb::HostStatus::default(),
            interval: Duration::from_secs(60),
            status,
            clock: upshift_common::clock::SystemClock::shared(),
            backoff: Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(2),
                Box::new(|| 0.5),
            ),
            stats: watch::channel(ReporterStats::default()).0,
            seq: 0,
            last: None,
        }
    }

    #[test]
    fn only_changes_a_report_carries_are_sent() {
        let (set, status) = watch::channel(Status::starting(SystemTime::UNIX_EPOCH));
        let mut r = reporter(status);
        let (tx, mut rx) = mpsc::channel(4);
        let report = r.current();
        assert!(r.is_news(&report), "nothing reported yet");
        r.send(&tx, report).unwrap();
        let again = r.current();
        assert!(!r.is_news(&again), "the same status again");
        // A move in the lock queue is not in the report.
        set.send_modify(|s| s.lock_queue_position = Some(7));
        let moved = r.current();
        assert!(!r.is_news(&moved));
        set.send_modify(|s| s.lock_held = true);
        let report = r.current();
        assert!(r.is_news(&report));
        r.send(&tx, report).unwrap();
        set.send_modify(|s| s.state = "rebooting");
        let rebooting = r.current();
        assert!(r.is_news(&rebooting));
        let sent: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(sent.len(), 2);
        assert!(sent[1].status.as_ref().unwrap().lock_held);
        assert!(sent[1].status.as_ref().unwrap().observed_at.is_some());
    }

    #[test]
    fn every_state_label_maps() {
        for s in crate::status::STATE_NAMES {
            assert_ne!(agent_state(s), pb::AgentState::Unspecified, "{s}");
        }
    }
}
