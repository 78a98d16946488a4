//! gRPC: `PolicyService` (hints) and `RolloutAdminService` (rollout control).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use upshift_common::auth::AdminAuth;
use upshift_common::clock::{SharedClock, from_epoch_secs};
use upshift_common::grpc::timestamp;
use upshift_proto::policy::v1 as pb;
use upshift_proto::policy::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use upshift_proto::policy::v1::rollout_admin_service_server::{
    RolloutAdminService, RolloutAdminServiceServer,
};

use crate::control::Control;
use crate::decide::{decide, throttle};
use crate::hub::{HintStream, Hub, scope_of};
use crate::metrics::PolicyMetrics;
use crate::overrides::{Mark, Overrides};
use crate::state::{PolicyState, RolloutNode, ScopeView};

/// gRPC service names, for reflection and health.
pub const SERVICE_NAMES: &[&str] = &[
    "upshift.policy.v1.PolicyService",
    "upshift.policy.v1.RolloutAdminService",
];

/// Both gRPC services.
#[derive(Debug, Clone)]
pub struct PolicyGrpc {
    /// Published graphs.
    pub state: watch::Receiver<Arc<PolicyState>>,
    /// Override control.
    pub control: Control,
    /// Push hub.
    pub hub: Hub,
    /// Time source.
    pub clock: SharedClock,
    /// Admin authorization.
    pub admin: AdminAuth,
    /// Instruments.
    pub metrics: PolicyMetrics,
}

impl PolicyGrpc {
    /// The tonic routes of both services.
    pub fn routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(PolicyServiceServer::new(self.clone()))
            .add_service(RolloutAdminServiceServer::new(self))
    }

    fn identity(&self, id: Option<pb::NodeIdentity>) -> Result<pb::NodeIdentity, Status> {
        let id = id.ok_or_else(|| Status::invalid_argument("identity is required"))?;
        if id.stream.is_empty() || id.basearch.is_empty() {
            return Err(Status::invalid_argument(
                "identity.stream and identity.basearch are required",
            ));
        }
        if id.rollout_wariness.is_some_and(|w| !w.is_finite()) {
            return Err(Status::invalid_argument(
                "identity.rollout_wariness must be a finite number",
            ));
        }
        self.metrics.node_seen(&id.node_uuid);
        Ok(id)
    }

    fn record<T>(&self, route: &'static str, started: Instant, r: &Result<T, Status>) {
        let kind = match r {
            Ok(_) => "ok",
            Err(s) => code_kind(s.code()),
        };
        self.metrics.request(route, kind, started.elapsed());
    }
}

fn code_kind(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::NotFound => "not_found",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::Unavailable => "unavailable",
        _ => "error",
    }
}

#[tonic::async_trait]
impl PolicyService for PolicyGrpc {
    async fn get_update_hint(
        &self,
        req: Request<pb::GetUpdateHintRequest>,
    ) -> Result<Response<pb::GetUpdateHintResponse>, Status> {
        let started = Instant::now();
        let r = self.identity(req.into_inner().identity).map(|id| {
            let state = self.state.borrow().clone();
            let view = state.scopes.get(&scope_of(&id)).map(|v| &**v);
            let (hint, _) = decide(&id, view, &self.control.current(), self.clock.now());
            Response::new(pb::GetUpdateHintResponse { hint: Some(hint) })
        });
        self.record("GetUpdateHint", started, &r);
        r
    }

    type WatchUpdateHintsStream = HintStream;

    async fn watch_update_hints(
        &self,
        req: Request<pb::WatchUpdateHintsRequest>,
    ) -> Result<Response<HintStream>, Status> {
        let started = Instant::now();
        let conn = req
            .extensions()
            .get::<upshift_common::server::ConnectionId>()
            .map_or(0, |c| c.0);
        let req = req.into_inner();
        let r = self
            .identity(req.identity)
            .map(|id| Response::new(self.hub.subscribe_on(id, req.resume_token, conn)));
        self.record("WatchUpdateHints", started, &r);
        r
    }
}

fn required_reason(reason: &str) -> Result<(), Status> {
    if reason.trim().is_empty() {
        return Err(Status::invalid_argument("reason is required"));
    }
    Ok(())
}

fn store_status(e: crate::store::StoreError) -> Status {
    Status::unavailable(e.to_string())
}

impl PolicyGrpc {
    /// The rollout (stream, version) as the first scope of the stream has it.
    fn find_rollout(
        &self,
        stream: &str,
        version: &str,
    ) -> Result<(Arc<ScopeView>, RolloutNode), Status> {
        let state = self.state.borrow().clone();
        let mut views: Vec<_> = state
            .scopes
            .values()
            .filter(|v| v.key.stream == stream)
            .cloned()
            .collect();
        views.sort_by(|a, b| a.key.cmp(&b.key));
        for v in views {
            if let Some(r) = v.rollouts.iter().find(|r| r.version == version).cloned() {
                return Ok((v, r));
            }
        }
        Err(Status::not_found(format!(
            "no rollout of {version:?} in stream {stream:?}"
        )))
    }

    fn rollout_proto(
        &self,
        view: &ScopeView,
        r: &RolloutNode,
        o: &Overrides,
        now: SystemTime,
        ws: &[f64],
    ) -> pb::Rollout {
        let stream = &view.key.stream;
        let t = throttle(view, &r.spec, &r.version, o, now);
        let withdrawn = o
            .rollout(stream, &r.version)
            .is_some_and(|rec| rec.withdrawn);
        let share = if ws.is_empty() || (withdrawn && o.pause(stream, &r.version).is_some()) {
            0.0
        } else {
            ws.iter().filter(|&&w| w <= t).count() as f64 / ws.len() as f64
        };
        let pause = o.pause(stream, &r.version);
        let offset = o.offset(stream, &r.version);
        let start = r.spec.start_epoch as f64 + offset;
        pb::Rollout {
            stream: stream.clone(),
            version: r.version.clone(),
            throttle: t,
            start: Some(timestamp(from_epoch_secs(start))),
            end: r
                .spec
                .duration_minutes
                .map(|d| timestamp(from_epoch_secs(start + 60.0 * d.max(1) as f64))),
            start_value: r.spec.start_value,
            eligible_share: share,
            paused: pause.is_some(),
            pause_reason: pause
                .map(|m| format!("{} (by {})", m.reason, m.actor))
                .unwrap_or_default(),
            paused_at: pause.map(|m| timestamp(m.at())),
            pause_mode: match (pause, o.rollout(stream, &r.version)) {
                (None, _) => pb::PauseMode::Unspecified,
                (Some(_), Some(rec)) if rec.withdrawn => pb::PauseMode::Withdraw,
                (Some(_), _) => pb::PauseMode::Hold,
            } as i32,
        }
    }

    fn list(&self, stream: &str) -> pb::ListRolloutsResponse {
        let state = self.state.borrow().clone();
        let o = self.control.current();
        let now = self.clock.now();
        let mut views: Vec<_> = state
            .scopes
            .values()
            .filter(|v| stream.is_empty() || v.key.stream == stream)
            .collect();
        views.sort_by(|a, b| a.key.cmp(&b.key));
        let mut seen = std::collections::HashSet::new();
        let mut rollouts = Vec::new();
        // One copy of the streams' warinesses per stream, not per rollout:
        // the hub's registry lock is shared with 100,000 streams.
        let mut ws: std::collections::HashMap<&str, Vec<f64>> = std::collections::HashMap::new();
        for v in views {
            for r in &v.rollouts {
                if seen.insert((v.key.stream.clone(), r.version.clone())) {
                    let ws = ws
                        .entry(&v.key.stream)
                        .or_insert_with(|| self.hub.warinesses(&v.key.stream));
                    rollouts.push(self.rollout_proto(v, r, &o, now, ws));
                }
            }
        }
        let freezes = o
            .freezes
            .iter()
            .filter(|(s, _)| stream.is_empty() || *s == stream)
            .map(|(s, m)| freeze_proto(s, m))
            .collect();
        pb::ListRolloutsResponse { rollouts, freezes }
    }
}

fn freeze_proto(stream: &str, m: &Mark) -> pb::StreamFreeze {
    pb::StreamFreeze {
        stream: stream.to_owned(),
        reason: format!("{} (by {})", m.reason, m.actor),
        since: Some(timestamp(m.at())),
    }
}

#[tonic::async_trait]
impl RolloutAdminService for PolicyGrpc {
    async fn list_rollouts(
        &self,
        req: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        Ok(Response::new(self.list(&req.get_ref().stream)))
    }

    async fn pause_rollout(
        &self,
        req: Request<pb::PauseRolloutRequest>,
    ) -> Result<Response<pb::PauseRolloutResponse>, Status> {
        let actor = self.admin.authorize(&req)?;
        let r = req.into_inner();
        required_reason(&r.reason)?;
        let (view, node) = self.find_rollout(&r.stream, &r.version)?;
        let withdraw = r.mode() == pb::PauseMode::Withdraw;
        self.control
            .pause(&r.stream, &r.version, withdraw, &r.reason, &actor.0)
            .await
            .map_err(store_status)?;
        let ws = self.hub.warinesses(&r.stream);
        let rollout =
            self.rollout_proto(&view, &node, &self.control.current(), self.clock.now(), &ws);
        Ok(Response::new(pb::PauseRolloutResponse {
            rollout: Some(rollout),
        }))
    }

    async fn resume_rollout(
        &self,
        req: Request<pb::ResumeRolloutRequest>,
    ) -> Result<Response<pb::ResumeRolloutResponse>, Status> {
        let actor = self.admin.authorize(&req)?;
        let r = req.into_inner();
        required_reason(&r.reason)?;
        let (view, node) = self.find_rollout(&r.stream, &r.version)?;
        self.control
            .resume(&r.stream, &r.version, &r.reason, &actor.0)
            .await
            .map_err(store_status)?;
        let ws = self.hub.warinesses(&r.stream);
        let rollout =
            self.rollout_proto(&view, &node, &self.control.current(), self.clock.now(), &ws);
        Ok(Response::new(pb::ResumeRolloutResponse {
            rollout: Some(rollout),
        }))
    }

    async fn freeze_stream(
        &self,
        req: Request<pb::FreezeStreamRequest>,
    ) -> Result<Response<pb::FreezeStreamResponse>, Status> {
        let actor = self.admin.authorize(&req)?;
        let r = req.into_inner();
        required_reason(&r.reason)?;
        if r.stream.is_empty() {
            return Err(Status::invalid_argument("stream is required"));
        }
        let m = self
            .control
            .freeze(&r.stream, &r.reason, &actor.0)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::FreezeStreamResponse {
            freeze: Some(freeze_proto(&r.stream, &m)),
        }))
    }

    async fn unfreeze_stream(
        &self,
        req: Request<pb::UnfreezeStreamRequest>,
    ) -> Result<Response<pb::UnfreezeStreamResponse>, Status> {
        let actor = self.admin.authorize(&req)?;
        let r = req.into_inner();
        required_reason(&r.reason)?;
        self.control
            .unfreeze(&r.stream, &r.reason, &actor.0)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::UnfreezeStreamResponse {}))
    }
}
