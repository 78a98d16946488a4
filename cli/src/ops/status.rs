//! `upshift status` (every service's health and what it knows) and
//! `upshift health URL` (one gRPC health check).

use std::fmt::Write as _;

use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use upshift_proto::graph::v1 as graph_pb;
use upshift_proto::graph::v1::graph_service_client::GraphServiceClient;
use upshift_proto::lock::v1 as lock_pb;
use upshift_proto::lock::v1::lock_service_client::LockServiceClient;
use upshift_proto::policy::v1 as policy_pb;
use upshift_proto::policy::v1::policy_service_client::PolicyServiceClient;
use upshift_proto::policy::v1::rollout_admin_service_client::RolloutAdminServiceClient;
use upshift_proto::telemetry::v1 as telemetry_pb;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;

use super::client::{
    CommonArgs, Conn, DEFAULT_GRAPH_URL, DEFAULT_LOCK_URL, DEFAULT_POLICY_URL,
    DEFAULT_TELEMETRY_URL, Exit, OpsError, Options,
};
use super::graph::scheme_name;
use super::render::{Table, emit};

/// Node id the status probe presents to the policy service.
const PROBE_NODE: &str = "upshift-cli-status";

/// Flags of `upshift status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// gRPC URL of the graph service.
    #[arg(long = "graph", value_name = "URL", env = "UPSHIFT_GRAPH_URL", default_value = DEFAULT_GRAPH_URL)]
    graph_url: String,
    /// gRPC URL of the policy service.
    #[arg(long = "policy", value_name = "URL", env = "UPSHIFT_POLICY_URL", default_value = DEFAULT_POLICY_URL)]
    policy_url: String,
    /// gRPC URL of the lock service.
    #[arg(long = "lock", value_name = "URL", env = "UPSHIFT_LOCK_URL", default_value = DEFAULT_LOCK_URL)]
    lock_url: String,
    /// gRPC URL of the telemetry service.
    #[arg(long = "telemetry", value_name = "URL", env = "UPSHIFT_TELEMETRY_URL", default_value = DEFAULT_TELEMETRY_URL)]
    telemetry_url: String,
    /// Check only these services (default: all four).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SERVICE,...")]
    only: Vec<Service>,
    #[command(flatten)]
    common: CommonArgs,
}

/// The services of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    Graph,
    Policy,
    Lock,
    Telemetry,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Self::Graph => "graph",
            Self::Policy => "policy",
            Self::Lock => "lock",
            Self::Telemetry => "telemetry",
        }
    }
}

/// Flags of `upshift health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// gRPC URL of the service, e.g. http://127.0.0.1:7403.
    url: String,
    /// Service name to check (default: the server as a whole), e.g.
    /// upshift.lock.v1.LockService.
    #[arg(long, value_name = "NAME", default_value = "")]
    service: String,
    #[command(flatten)]
    common: CommonArgs,
}

/// `upshift health` JSON document.
#[derive(Debug, Serialize)]
struct HealthView {
    url: String,
    service: String,
    /// "serving", "not_serving", "service_unknown" or "unknown".
    status: &'static str,
}

fn status_name(status: i32) -> &'static str {
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => "serving",
        Ok(ServingStatus::NotServing) => "not_serving",
        Ok(ServingStatus::ServiceUnknown) => "service_unknown",
        _ => "unknown",
    }
}

async fn check_health(conn: &Conn, service: &str) -> Result<&'static str, OpsError> {
    let mut client = HealthClient::new(conn.channel.clone());
    let response = client
        .check(conn.request(HealthCheckRequest {
            service: service.to_string(),
        }))
        .await
        .map_err(|s| conn.fail(s))?;
    Ok(status_name(response.into_inner().status))
}

/// Runs `upshift health`: exit 0 when SERVING, 3 when not serving or
/// unreachable, 1 when the service name is unknown to the server.
pub async fn run_health(args: HealthArgs) -> Result<Exit, OpsError> {
    let options = Options::load(&args.common, false)?;
    let label = if args.service.is_empty() {
        "service".to_string()
    } else {
        args.service.clone()
    };
    let conn = Conn::connect(&label, &args.url, &options).await?;
    let status = check_health(&conn, &args.service).await?;
    let view = HealthView {
        url: args.url,
        service: args.service,
        status,
    };
    emit(args.common.output, &view, |v| {
        format!("{}\n", v.status.to_uppercase())
    })?;
    Ok(match status {
        "serving" => Exit::Ok,
        "service_unknown" => Exit::Failed,
        _ => Exit::Unavailable,
    })
}

/// `upshift status` JSON document.
#[derive(Debug, Serialize)]
struct StatusView {
    services: Vec<ServiceView>,
    /// Graph revision per scope as the graph service and the policy service
    /// see it (only when both were reachable).
    scopes: Vec<ScopeRevision>,
}

#[derive(Debug, Serialize)]
struct ServiceView {
    name: &'static str,
    url: String,
    reachable: bool,
    /// "serving", "not_serving", ... or null when unreachable.
    health: Option<&'static str>,
    /// Why the service or one of its calls failed.
    error: Option<String>,
    /// What the service knows (per-service fields, see OPERATOR.md).
    details: Value,
    #[serde(skip)]
    summary: String,
    #[serde(skip)]
    exit: Exit,
}

#[derive(Debug, Serialize)]
struct ScopeRevision {
    stream: String,
    basearch: String,
    scheme: &'static str,
    graph_revision: u64,
    /// 0 when the policy service has no graph for the scope yet.
    policy_revision: Option<u64>,
}

/// What a probe learned besides health.
struct Probe {
    summary: String,
    details: Value,
    scopes: Vec<graph_pb::Scope>,
    revisions: Vec<u64>,
}

/// Runs `upshift status`: exit 0 when every checked service is serving and
/// answered, 3 when one is unreachable or not serving, else 1.
pub async fn run_status(args: StatusArgs) -> Result<Exit, OpsError> {
    let options = Options::load(&args.common, false)?;
    let only = if args.only.is_empty() {
        vec![
            Service::Graph,
            Service::Policy,
            Service::Lock,
            Service::Telemetry,
        ]
    } else {
        args.only.clone()
    };
    let url = |s: Service| match s {
        Service::Graph => args.graph_url.clone(),
        Service::Policy => args.policy_url.clone(),
        Service::Lock => args.lock_url.clone(),
        Service::Telemetry => args.telemetry_url.clone(),
    };
    let wanted = |s: Service| only.contains(&s);
    // The graph before the policy (its scopes tell what to ask the policy
    // about); lock and telemetry meanwhile, so one slow service costs one
    // deadline, not several.
    let graph_and_policy = async {
        let mut views = Vec::new();
        let mut scopes: Vec<(graph_pb::Scope, u64)> = Vec::new();
        if wanted(Service::Graph) {
            let (view, probe) = probe(Service::Graph, url(Service::Graph), &options, &[]).await?;
            if let Some(p) = probe {
                scopes = p.scopes.into_iter().zip(p.revisions).collect();
            }
            views.push(view);
        }
        let graph_scopes: Vec<graph_pb::Scope> = scopes.iter().map(|(s, _)| s.clone()).collect();
        let mut policy_revisions = None;
        if wanted(Service::Policy) {
            let (view, probe) = probe(
                Service::Policy,
                url(Service::Policy),
                &options,
                &graph_scopes,
            )
            .await?;
            policy_revisions = probe.map(|p| p.revisions);
            views.push(view);
        }
        Ok::<_, OpsError>((views, scopes, policy_revisions))
    };
    let other = |service: Service| {
        let url = url(service);
        let options = &options;
        async move {
            match wanted(service) {
                true => probe(service, url, options, &[])
                    .await
                    .map(|(view, _)| Some(view)),
                false => Ok(None),
            }
        }
    };
    let (first, lock, telemetry) = tokio::join!(
        graph_and_policy,
        other(Service::Lock),
        other(Service::Telemetry)
    );
    let (mut services, scopes, policy_revisions) = first?;
    services.extend(lock?);
    services.extend(telemetry?);
    let scopes = scopes
        .into_iter()
        .enumerate()
        .map(|(i, (scope, revision))| ScopeRevision {
            scheme: scheme_name(scope.scheme),
            stream: scope.stream,
            basearch: scope.basearch,
            graph_revision: revision,
            policy_revision: policy_revisions.as_ref().and_then(|r| r.get(i).copied()),
        })
        .collect();
    let exit = services.iter().map(|s| s.exit).fold(Exit::Ok, Exit::worse);
    let view = StatusView { services, scopes };
    emit(args.common.output, &view, render_status)?;
    Ok(exit)
}

/// Health-checks one service, then asks what it knows.
async fn probe(
    service: Service,
    url: String,
    options: &Options,
    graph_scopes: &[graph_pb::Scope],
) -> Result<(ServiceView, Option<Probe>), OpsError> {
    let mut view = ServiceView {
        name: service.name(),
        url: url.clone(),
        reachable: false,
        health: None,
        error: None,
        details: json!({}),
        summary: String::new(),
        exit: Exit::Ok,
    };
    let label = format!("{} service", service.name());
    let conn = match Conn::connect(&label, &url, options).await {
        Ok(conn) => conn,
        Err(err @ OpsError::Usage(_)) => return Err(err),
        Err(err) => {
            view.exit = err.exit();
            view.summary = short_error(&err);
            view.error = Some(err.to_string());
            return Ok((view, None));
        }
    };
    view.reachable = true;
    match check_health(&conn, "").await {
        Ok(health) => {
            view.health = Some(health);
            if health != "serving" {
                view.exit = Exit::Unavailable;
            }
        }
        Err(err) => {
            view.exit = err.exit();
            view.summary = short_error(&err);
            view.error = Some(err.to_string());
            return Ok((view, None));
        }
    }
    let probed = match service {
        Service::Graph => probe_graph(&conn).await,
        Service::Policy => probe_policy(&conn, graph_scopes).await,
        Service::Lock => probe_lock(&conn).await,
        Service::Telemetry => probe_telemetry(&conn).await,
    };
    match probed {
        Ok(p) => {
            view.summary = p.summary.clone();
            view.details = p.details.clone();
            Ok((view, Some(p)))
        }
        Err(err) => {
            view.exit = view.exit.worse(err.exit());
            view.summary = short_error(&err);
            view.error = Some(err.to_string());
            Ok((view, None))
        }
    }
}

fn short_error(err: &OpsError) -> String {
    match err {
        OpsError::Unreachable { reason, .. } => format!("unreachable: {reason}"),
        OpsError::Call { code, message, .. } => {
            format!("{}: {message}", super::client::code_name(*code))
        }
        OpsError::Usage(m) => m.clone(),
    }
}

async fn probe_graph(conn: &Conn) -> Result<Probe, OpsError> {
    let mut client = GraphServiceClient::new(conn.channel.clone());
    let infos = client
        .list_scopes(conn.request(graph_pb::ListScopesRequest {}))
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner()
        .scopes;
    let max = infos.iter().map(|i| i.revision).max().unwrap_or(0);
    let scopes: Vec<graph_pb::Scope> = infos.iter().filter_map(|i| i.scope.clone()).collect();
    let revisions: Vec<u64> = infos
        .iter()
        .filter(|i| i.scope.is_some())
        .map(|i| i.revision)
        .collect();
    let listed: Vec<Value> = infos
        .iter()
        .filter_map(|i| {
            let s = i.scope.as_ref()?;
            Some(json!({
                "stream": s.stream,
                "basearch": s.basearch,
                "scheme": scheme_name(s.scheme),
                "revision": i.revision,
                "nodes": i.nodes,
                "edges": i.edges,
            }))
        })
        .collect();
    Ok(Probe {
        summary: format!("{} scopes, latest revision {max}", scopes.len()),
        details: json!({ "revision": max, "scopes": listed }),
        scopes,
        revisions,
    })
}

async fn probe_policy(conn: &Conn, graph_scopes: &[graph_pb::Scope]) -> Result<Probe, OpsError> {
    let mut admin = RolloutAdminServiceClient::new(conn.channel.clone());
    let listed = admin
        .list_rollouts(conn.request(policy_pb::ListRolloutsRequest::default()))
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner();
    let paused = listed.rollouts.iter().filter(|r| r.paused).count();
    // The policy's graph revision per scope is the revision its decisions
    // are based on: ask for a decision for a probe node in each scope.
    let mut hints = PolicyServiceClient::new(conn.channel.clone());
    let mut revisions = Vec::new();
    for scope in graph_scopes {
        let identity = policy_pb::NodeIdentity {
            node_uuid: PROBE_NODE.into(),
            stream: scope.stream.clone(),
            basearch: scope.basearch.clone(),
            scheme: scope.scheme,
            ..Default::default()
        };
        let hint = hints
            .get_update_hint(conn.request(policy_pb::GetUpdateHintRequest {
                identity: Some(identity),
            }))
            .await
            .map_err(|s| conn.fail(s))?
            .into_inner()
            .hint
            .unwrap_or_default();
        revisions.push(hint.graph_revision);
    }
    let max = revisions.iter().copied().max();
    let mut summary = format!(
        "{} rollouts ({paused} paused), {} frozen streams",
        listed.rollouts.len(),
        listed.freezes.len()
    );
    if let Some(max) = max {
        let _ = write!(summary, ", graph revision {max}");
    }
    Ok(Probe {
        summary,
        details: json!({
            "graph_revision": max,
            "rollouts": listed.rollouts.len(),
            "paused_rollouts": paused,
            "frozen_streams": listed.freezes.iter().map(|f| f.stream.clone()).collect::<Vec<_>>(),
        }),
        scopes: Vec::new(),
        revisions,
    })
}

async fn probe_lock(conn: &Conn) -> Result<Probe, OpsError> {
    let mut client = LockServiceClient::new(conn.channel.clone());
    let groups = client
        .list_groups(conn.request(lock_pb::ListGroupsRequest {}))
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner()
        .groups;
    let holders: usize = groups.iter().map(|g| g.holders.len()).sum();
    let queued: u32 = groups.iter().map(|g| g.queue_length).sum();
    let paused = groups.iter().filter(|g| g.paused).count();
    Ok(Probe {
        summary: format!(
            "{} groups, {holders} holders, {queued} queued, {paused} paused",
            groups.len()
        ),
        details: json!({
            "groups": groups.len(),
            "holders": holders,
            "queued": queued,
            "paused_groups": paused,
        }),
        scopes: Vec::new(),
        revisions: Vec::new(),
    })
}

async fn probe_telemetry(conn: &Conn) -> Result<Probe, OpsError> {
    let mut client = TelemetryServiceClient::new(conn.channel.clone());
    let summary = client
        .get_fleet_summary(conn.request(telemetry_pb::GetFleetSummaryRequest::default()))
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner()
        .summary
        .unwrap_or_default();
    Ok(Probe {
        summary: format!(
            "{} hosts, {} stale, {} halts",
            summary.total_hosts,
            summary.stale_hosts,
            summary.halts.len()
        ),
        details: json!({
            "hosts": summary.total_hosts,
            "stale_hosts": summary.stale_hosts,
            "halts": summary.halts.len(),
        }),
        scopes: Vec::new(),
        revisions: Vec::new(),
    })
}

fn render_status(view: &StatusView) -> String {
    let mut table = Table::new(&["SERVICE", "URL", "HEALTH", "DETAILS"]);
    for s in &view.services {
        table.row(vec![
            s.name.to_string(),
            s.url.clone(),
            s.health
                .map(str::to_uppercase)
                .unwrap_or_else(|| "UNREACHABLE".into()),
            s.summary.clone(),
        ]);
    }
    let mut out = table.render();
    if !view.scopes.is_empty() {
        out.push('\n');
        let mut scopes = Table::new(&["SCOPE", "GRAPH REVISION", "POLICY REVISION"]);
        for s in &view.scopes {
            scopes.row(vec![
                format!("{}/{}/{}", s.stream, s.basearch, s.scheme),
                s.graph_revision.to_string(),
                match s.policy_revision {
                    Some(0) | None => String::new(),
                    Some(r) => r.to_string(),
                },
            ]);
        }
        out.push_str(&scopes.render());
    }
    out
}
