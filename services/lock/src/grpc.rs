//! gRPC front end: `upshift.lock.v1.LockService` and `LockAdminService`.

use std::pin::Pin;
use std::time::{Duration, Instant as StdInstant, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use upshift_common::auth::AdminAuth;
use upshift_common::grpc::{duration, from_duration, timestamp};
use upshift_proto::lock::v1 as pb;
use upshift_proto::lock::v1::lock_admin_service_server::{
    LockAdminService, LockAdminServiceServer,
};
use upshift_proto::lock::v1::lock_service_server::{LockService as LockApi, LockServiceServer};

use crate::config::GroupSettings;
use crate::error::LockError;
use crate::semaphore::{HolderRecord, Method, Outcome, SemaphoreState};
use crate::service::{CLIENT_ACTOR, LockService, epoch_secs};
use upshift_common::window;

mod acquire;

/// Fully qualified names of the gRPC services, for health and reflection.
pub const SERVICE_NAMES: &[&str] = &[
    "upshift.lock.v1.LockService",
    "upshift.lock.v1.LockAdminService",
];

/// The gRPC handlers.
#[derive(Debug, Clone)]
pub struct LockGrpc {
    svc: LockService,
    auth: AdminAuth,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl LockGrpc {
    /// Handlers over `svc`; admin calls are authorized by `auth`.
    pub fn new(svc: LockService, auth: AdminAuth) -> Self {
        Self { svc, auth }
    }

    /// Both services as tonic routes.
    pub fn routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(LockServiceServer::new(self.clone()))
            .add_service(LockAdminServiceServer::new(self))
    }

    fn holder(&self, group: &str, h: &HolderRecord) -> pb::Holder {
        holder_pb(group, h, epoch_secs(self.svc.now()))
    }

    fn group(&self, name: &str, state: &SemaphoreState) -> pb::Group {
        let now_t = self.svc.now();
        let now = epoch_secs(now_t);
        let settings = self
            .svc
            .settings()
            .group(name)
            .cloned()
            .unwrap_or(GroupSettings {
                slots: state.total_slots,
                ttl: None,
                fleetlock_ttl: None,
                windows: Vec::new(),
            });
        let now_dt = DateTime::<Utc>::from(now_t);
        let open = window::any_open(&settings.windows, now_dt);
        pb::Group {
            name: name.to_string(),
            total_slots: state.total_slots,
            holders: state
                .holders
                .iter()
                .map(|h| holder_pb(name, h, now))
                .collect(),
            paused: state.paused.is_some(),
            pause_reason: state.paused.clone().unwrap_or_default(),
            queue_length: u32::try_from(self.svc.queue_length(name)).unwrap_or(u32::MAX),
            windows: settings
                .windows
                .iter()
                .map(|w| pb::MaintenanceWindow {
                    days: w.days.iter().map(|d| d.to_string()).collect(),
                    start: w.start.format("%H:%M").to_string(),
                    length: Some(duration(w.length)),
                    time_zone: w.time_zone.name().to_string(),
                })
                .collect(),
            window_open: open,
            next_window_open: (!open)
                .then(|| window::next_open(&settings.windows, now_dt))
                .flatten()
                .map(|t| timestamp(t.into())),
        }
    }

    async fn load_group(&self, name: &str) -> Result<pb::Group, LockError> {
        let (state, _, _) = self.svc.load(name).await?;
        Ok(self.group(name, &state))
    }

    fn admin_reason(reason: &str) -> Result<(), Status> {
        if reason.trim().is_empty() {
            return Err(Status::invalid_argument("reason is required"));
        }
        Ok(())
    }

    fn record<T>(&self, api: &'static str, started: StdInstant, r: &Result<T, LockError>) {
        let kind = r.as_ref().map_or_else(LockError::kind, |_| "ok");
        self.svc.inner.metrics.request(api, kind, started.elapsed());
    }
}

/// The audit outcome of an admin change.
fn changed(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Changed => "changed",
        Outcome::Unchanged => "unchanged",
    }
}

pub(crate) fn holder_pb(group: &str, h: &HolderRecord, now: u64) -> pb::Holder {
    pb::Holder {
        id: h.id.clone(),
        group: group.to_string(),
        acquired_at: Some(timestamp(UNIX_EPOCH + Duration::from_secs(h.acquired_at))),
        method: match h.method {
            Method::Fleetlock => pb::AcquireMethod::Fleetlock,
            Method::Grpc => pb::AcquireMethod::Grpc,
        } as i32,
        ttl: h.lease.map(|l| duration(Duration::from_secs(l.ttl_secs))),
        lease_expires_at: h
            .lease
            .map(|l| timestamp(UNIX_EPOCH + Duration::from_secs(l.expires_at))),
        age: Some(duration(Duration::from_secs(
            now.saturating_sub(h.acquired_at),
        ))),
    }
}

#[tonic::async_trait]
impl LockApi for LockGrpc {
    type AcquireStream = BoxStream<pb::AcquireResponse>;
    type WatchGroupStream = BoxStream<pb::WatchGroupResponse>;

    async fn acquire(
        &self,
        req: Request<pb::AcquireRequest>,
    ) -> Result<Response<Self::AcquireStream>, Status> {
        let req = req.into_inner();
        if req.id.is_empty() {
            return Err(LockError::InvalidParams("id must not be empty".into()).into());
        }
        let settings = self.svc.group_settings(&req.group)?;
        let ttl = req.ttl.as_ref().map(from_duration).or(settings.ttl);
        if ttl.is_some_and(|t| t < Duration::from_secs(1)) {
            return Err(Status::invalid_argument("ttl must be at least 1s"));
        }
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(acquire::run(self.clone(), req.group, req.id, ttl, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let started = StdInstant::now();
        let req = req.into_inner();
        let r = self
            .svc
            .unlock(&req.group, &req.id, CLIENT_ACTOR, "release", "grpc release")
            .await;
        self.record("grpc_release", started, &r);
        Ok(Response::new(pb::ReleaseResponse {
            released: r?.is_some(),
        }))
    }

    async fn keepalive(
        &self,
        req: Request<pb::KeepaliveRequest>,
    ) -> Result<Response<pb::KeepaliveResponse>, Status> {
        let started = StdInstant::now();
        let req = req.into_inner();
        let r = self.svc.keepalive(&req.group, &req.id).await;
        self.record("grpc_keepalive", started, &r);
        let at = r?;
        Ok(Response::new(pb::KeepaliveResponse {
            lease_expires_at: Some(timestamp(UNIX_EPOCH + Duration::from_secs(at))),
        }))
    }

    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let groups = self.svc.list_groups().await?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups.iter().map(|(n, s)| self.group(n, s)).collect(),
        }))
    }

    async fn get_group(
        &self,
        req: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::GetGroupResponse>, Status> {
        let group = self.load_group(&req.into_inner().group).await?;
        Ok(Response::new(pb::GetGroupResponse { group: Some(group) }))
    }

    async fn watch_group(
        &self,
        req: Request<pb::WatchGroupRequest>,
    ) -> Result<Response<Self::WatchGroupStream>, Status> {
        let name = req.into_inner().group;
        let first = self.load_group(&name).await?;
        let (tx, rx) = mpsc::channel(8);
        let this = self.clone();
        tokio::spawn(async move {
            let mut wake = this.svc.subscribe();
            let shutdown = this.svc.inner.shutdown.clone();
            let mut last = first.clone();
            if tx
                .send(Ok(pb::WatchGroupResponse { group: Some(first) }))
                .await
                .is_err()
            {
                return;
            }
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    r = wake.changed() => if r.is_err() { return },
                }
                let state = this.svc.cached(&name);
                let Some(state) = state else { continue };
                let mut group = this.group(&name, &state);
                // Ages tick every second; only real changes are sent.
                let strip = |g: &mut pb::Group| g.holders.iter_mut().for_each(|h| h.age = None);
                let (mut a, mut b) = (group.clone(), last.clone());
                strip(&mut a);
                strip(&mut b);
                if a == b {
                    continue;
                }
                last = group.clone();
                group.name.clone_from(&name);
                if tx
                    .send(Ok(pb::WatchGroupResponse { group: Some(group) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl LockAdminService for LockGrpc {
    async fn force_release(
        &self,
        req: Request<pb::ForceReleaseRequest>,
    ) -> Result<Response<pb::ForceReleaseResponse>, Status> {
        let actor = self.auth.authorize(&req)?;
        let req = req.into_inner();
        Self::admin_reason(&req.reason)?;
        if req.id.is_empty() {
            return Err(LockError::InvalidParams("id must not be empty".into()).into());
        }
        // Audited either way: releasing an id that holds nothing is recorded too.
        let (removed, _) = self
            .svc
            .admin(
                &req.group,
                &actor.0,
                "force-release",
                &req.id,
                &req.reason,
                |s| {
                    let removed = s.force_release(&req.id);
                    let outcome = if removed.is_some() {
                        "released"
                    } else {
                        "held nothing"
                    };
                    (removed, outcome)
                },
            )
            .await?;
        Ok(Response::new(pb::ForceReleaseResponse {
            released: removed.map(|h| self.holder(&req.group, &h)),
        }))
    }

    async fn set_slots(
        &self,
        req: Request<pb::SetSlotsRequest>,
    ) -> Result<Response<pb::SetSlotsResponse>, Status> {
        let actor = self.auth.authorize(&req)?;
        let req = req.into_inner();
        Self::admin_reason(&req.reason)?;
        if req.slots == 0 {
            return Err(Status::invalid_argument("slots must be at least 1"));
        }
        let (_, state) = self
            .svc
            .admin(
                &req.group,
                &actor.0,
                "set-slots",
                &req.slots.to_string(),
                &req.reason,
                |s| ((), changed(s.set_slots(req.slots))),
            )
            .await?;
        Ok(Response::new(pb::SetSlotsResponse {
            group: Some(self.group(&req.group, &state)),
        }))
    }

    async fn pause_group(
        &self,
        req: Request<pb::PauseGroupRequest>,
    ) -> Result<Response<pb::PauseGroupResponse>, Status> {
        let actor = self.auth.authorize(&req)?;
        let req = req.into_inner();
        Self::admin_reason(&req.reason)?;
        let (_, state) = self
            .svc
            .admin(&req.group, &actor.0, "pause", "", &req.reason, |s| {
                ((), changed(s.pause(&req.reason)))
            })
            .await?;
        Ok(Response::new(pb::PauseGroupResponse {
            group: Some(self.group(&req.group, &state)),
        }))
    }

    async fn resume_group(
        &self,
        req: Request<pb::ResumeGroupRequest>,
    ) -> Result<Response<pb::ResumeGroupResponse>, Status> {
        let actor = self.auth.authorize(&req)?;
        let req = req.into_inner();
        Self::admin_reason(&req.reason)?;
        let (_, state) = self
            .svc
            .admin(&req.group, &actor.0, "resume", "", &req.reason, |s| {
                ((), changed(s.resume()))
            })
            .await?;
        Ok(Response::new(pb::ResumeGroupResponse {
            group: Some(self.group(&req.group, &state)),
        }))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.auth.authorize(&req)?;
        let req = req.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => (n as usize).min(crate::service::MAX_PAGE),
        };
        let group = (!req.group.is_empty()).then_some(req.group.as_str());
        let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let page = self.svc.audit_page(group, limit, token).await?;
        Ok(Response::new(pb::ListAuditResponse {
            next_page_token: page.next_page_token.unwrap_or_default(),
            entries: page
                .entries
                .into_iter()
                .map(|a| pb::AuditEntry {
                    at: Some(timestamp(UNIX_EPOCH + Duration::from_millis(a.at_ms))),
                    actor: a.actor,
                    action: a.action,
                    group: a.group,
                    target: a.target,
                    reason: a.reason,
                    outcome: a.outcome,
                })
                .collect(),
        }))
    }
}
