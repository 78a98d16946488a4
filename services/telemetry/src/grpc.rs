//! gRPC front end: `upshift.telemetry.v1.TelemetryService`.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::telemetry_service_server::{
    TelemetryService as TelemetryApi, TelemetryServiceServer,
};

use crate::record::valid_node_uuid;
use crate::service::TelemetryService;

/// Fully qualified names of the gRPC services, for health and reflection.
pub const SERVICE_NAMES: &[&str] = &["upshift.telemetry.v1.TelemetryService"];

/// Default and largest `GetFleet` page sizes.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest `GetFleet` page.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The gRPC handlers.
#[derive(Debug, Clone)]
pub struct TelemetryGrpc {
    svc: TelemetryService,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl TelemetryGrpc {
    /// Handlers over `svc`.
    pub fn new(svc: TelemetryService) -> Self {
        Self { svc }
    }

    /// The service as tonic routes.
    pub fn routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(TelemetryServiceServer::new(self))
    }
}

/// The span of one report: a child of the host's update trace when the
/// report carries its `traceparent`, else of the stream's span.
fn report_span(req: &pb::ReportRequest) -> tracing::Span {
    let status = req.status.as_ref();
    let span = tracing::info_span!(
        "telemetry.report",
        node_uuid = status.map_or("", |s| s.node_uuid.as_str()),
        state = status.map_or(0, |s| s.state),
        sequence = req.sequence,
    );
    if let Some(tp) = status
        .map(|s| s.traceparent.as_str())
        .filter(|t| !t.is_empty())
        && let Ok(v) = tp.parse()
    {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("traceparent", v);
        let _ = span.set_parent(upshift_common::telemetry::extract_context(&md));
    }
    span
}

/// Reads reports, applies them and acknowledges each once stored.
async fn serve_reports(
    svc: TelemetryService,
    mut inbound: Streaming<pb::ReportRequest>,
    tx: mpsc::Sender<Result<pb::ReportResponse, Status>>,
) {
    let shutdown = svc.inner.shutdown.clone();
    let mut acknowledged = 0u64;
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return,
            m = inbound.message() => m,
        };
        let req = match msg {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(error = %status, "report stream ended");
                return;
            }
        };
        if req.sequence <= acknowledged && acknowledged > 0 {
            // A resend of what is stored already.
            svc.inner.metrics.report("duplicate");
            if tx
                .send(Ok(pb::ReportResponse { acknowledged }))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let span = report_span(&req);
        let result = async {
            let status = req
                .status
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("report without status"))?;
            let generation = svc.ingest(status).map_err(Status::from)?;
            svc.wait_stored(generation).await.map_err(Status::from)
        }
        .instrument(span)
        .await;
        match result {
            Ok(()) => {
                svc.inner.metrics.report("ok");
                acknowledged = req.sequence;
                if tx
                    .send(Ok(pb::ReportResponse { acknowledged }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(status) => {
                svc.inner.metrics.report("rejected");
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl TelemetryApi for TelemetryGrpc {
    type ReportStream = BoxStream<pb::ReportResponse>;

    async fn report(
        &self,
        request: Request<Streaming<pb::ReportRequest>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let span = tracing::info_span!("telemetry.report_stream");
        let _ = span.set_parent(upshift_common::telemetry::extract_context(
            request.metadata(),
        ));
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(serve_reports(self.svc.clone(), request.into_inner(), tx).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchFleetStream = BoxStream<pb::WatchFleetResponse>;

    async fn watch_fleet(
        &self,
        request: Request<pb::WatchFleetRequest>,
    ) -> Result<Response<Self::WatchFleetStream>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let svc = self.svc.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let shutdown = svc.inner.shutdown.clone();
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = watch_fleet(svc, filter, tx) => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_fleet(
        &self,
        request: Request<pb::GetFleetRequest>,
    ) -> Result<Response<pb::GetFleetResponse>, Status> {
        let r = request.into_inner();
        if !r.page_token.is_empty() && !valid_node_uuid(&r.page_token) {
            return Err(Status::invalid_argument("invalid page_token"));
        }
        let size = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let filter = r.filter.unwrap_or_default();
        let (hosts, next) = self.svc.page(&filter, &r.page_token, size);
        Ok(Response::new(pb::GetFleetResponse {
            hosts,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn get_fleet_summary(
        &self,
        request: Request<pb::GetFleetSummaryRequest>,
    ) -> Result<Response<pb::GetFleetSummaryResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        Ok(Response::new(pb::GetFleetSummaryResponse {
            summary: Some(self.svc.summary(&filter)),
        }))
    }
}

/// The summary at once, then at most one per coalescing interval while the
/// view changes, and only when the counts differ from the last one sent.
async fn watch_fleet(
    svc: TelemetryService,
    filter: pb::HostFilter,
    tx: mpsc::Sender<Result<pb::WatchFleetResponse, Status>>,
) {
    let mut changes = svc.subscribe();
    changes.borrow_and_update();
    let mut last: Option<pb::FleetSummary> = None;
    loop {
        let summary = svc.summary(&filter);
        let same = last.as_ref().is_some_and(|l| {
            l.counts == summary.counts
                && l.total_hosts == summary.total_hosts
                && l.stale_hosts == summary.stale_hosts
                && l.halts == summary.halts
        });
        if !same {
            let msg = pb::WatchFleetResponse {
                summary: Some(summary.clone()),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
            last = Some(summary);
        }
        if changes.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(svc.settings().watch_coalesce).await;
        changes.borrow_and_update();
    }
}
