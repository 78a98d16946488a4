//! The dev mesh's live terminal view: fleet by version and state, each
//! rollout's throttle and eligible share, reboot-lock holders and queue,
//! halts and pauses. Data comes from the services' own gRPC APIs (as an
//! operator would see it) and from the in-process agents' statuses.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use upshift_common::clock::Clock;
use upshift_proto::lock::v1 as lock_pb;
use upshift_proto::lock::v1::lock_service_client::LockServiceClient;
use upshift_proto::policy::v1 as policy_pb;
use upshift_proto::policy::v1::rollout_admin_service_client::RolloutAdminServiceClient;
use upshift_proto::telemetry::v1 as telemetry_pb;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;

use super::fleet::{Fleet, FleetCounts};
use super::{Addresses, DevArgs};

/// One picture of the mesh.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Simulated time.
    pub now: Option<SystemTime>,
    /// The in-process agents.
    pub fleet: FleetCounts,
    /// Rollouts as the policy service reports them.
    pub rollouts: Vec<policy_pb::Rollout>,
    /// Lock groups.
    pub groups: Vec<lock_pb::Group>,
    /// The telemetry service's summary.
    pub summary: Option<telemetry_pb::FleetSummary>,
    /// Calls that failed this round.
    pub errors: Vec<String>,
}

impl Snapshot {
    /// Every host runs `newest` and is idle.
    pub fn converged_on(&self, newest: &upshift_agent::os::Release) -> bool {
        let fleet = &self.fleet;
        fleet.by_version.get(&newest.version) == Some(&fleet.total)
            && fleet.by_state.get("idle") == Some(&fleet.total)
    }

    /// An automatic halt is in force and the policy service holds the
    /// halted rollout paused (the telemetry service records the halt a
    /// moment before the policy service accepts the pause).
    pub fn halted(&self) -> bool {
        self.summary.as_ref().is_some_and(|s| {
            s.halts.iter().any(|halt| {
                self.rollouts
                    .iter()
                    .any(|r| r.version == halt.version && r.paused)
            })
        })
    }
}

/// Clients of the mesh's services.
#[derive(Debug)]
pub struct Viewer {
    rollouts: RolloutAdminServiceClient<Channel>,
    lock: LockServiceClient<Channel>,
    telemetry: TelemetryServiceClient<Channel>,
    token: String,
}

fn channel(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .timeout(Duration::from_secs(2))
        .connect_lazy())
}

impl Viewer {
    /// Connects (lazily) to the services.
    pub async fn connect(addresses: &Addresses, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            rollouts: RolloutAdminServiceClient::new(channel(addresses.policy)?),
            lock: LockServiceClient::new(channel(addresses.lock)?),
            telemetry: TelemetryServiceClient::new(channel(addresses.telemetry)?),
            token: token.to_string(),
        })
    }

    fn admin<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {}", self.token)) {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// Gathers one snapshot; failed calls are listed, never fatal.
    pub async fn snapshot(&mut self, fleet: &Fleet, clock: &dyn Clock) -> Snapshot {
        let mut snapshot = Snapshot {
            now: Some(clock.now()),
            fleet: fleet.counts(),
            ..Snapshot::default()
        };
        let request = self.admin(policy_pb::ListRolloutsRequest {
            stream: "stable".into(),
        });
        match self.rollouts.list_rollouts(request).await {
            Ok(response) => snapshot.rollouts = response.into_inner().rollouts,
            Err(status) => snapshot
                .errors
                .push(format!("policy: {}", status.message())),
        }
        match self
            .lock
            .list_groups(lock_pb::ListGroupsRequest::default())
            .await
        {
            Ok(response) => snapshot.groups = response.into_inner().groups,
            Err(status) => snapshot.errors.push(format!("lock: {}", status.message())),
        }
        match self
            .telemetry
            .get_fleet_summary(telemetry_pb::GetFleetSummaryRequest::default())
            .await
        {
            Ok(response) => snapshot.summary = response.into_inner().summary,
            Err(status) => snapshot
                .errors
                .push(format!("telemetry: {}", status.message())),
        }
        snapshot
    }
}

/// The addresses and commands to try, printed once (or above the view).
pub fn guide(addresses: &Addresses, metadata: &Path, token_file: &Path, args: &DevArgs) -> String {
    let Addresses {
        bridge,
        graph,
        policy,
        lock,
        telemetry,
    } = addresses;
    format!(
        "Upshift dev mesh: {agents} simulated hosts, clock x{speed}. Ctrl-C stops it.\n\
         graph {graph}  policy {policy}  lock {lock}  telemetry {telemetry}  (gRPC + HTTP each)  bridge {bridge}\n\
         edit {meta}/updates.json to start a rollout; admin token in {token}\n\
         try: curl -s 'http://{graph}/v1/graph?basearch=x86_64&stream=stable'   (the whole graph, unthrottled)\n\
         \x20    grpcurl -plaintext {graph} upshift.graph.v1.GraphService/ListScopes\n\
         \x20    curl -s 'http://{policy}/v1/graph?basearch=x86_64&stream=stable&rollout_wariness=0.5'   (as a client sees it)\n\
         \x20    grpcurl -plaintext {policy} list   |   curl -s http://{telemetry}/metrics | grep upshift_telemetry\n\
         \x20    grpcurl -plaintext -H \"authorization: Bearer $(cat {token})\" -d '{{\"stream\":\"stable\"}}' {policy} upshift.policy.v1.RolloutAdminService/ListRollouts\n\
         \x20    curl -s 'http://{bridge}/bridge?selector=agent'   (host 0's agent metrics through the bridge)\n\
         \x20    upshift lock list --lock http://{lock}   |   upshift fleet summary --telemetry http://{telemetry}\n",
        agents = args.agents,
        speed = args.speed,
        meta = metadata.display(),
        token = token_file.display(),
    )
}

fn percent(share: f64) -> String {
    format!("{:5.1}%", share * 100.0)
}

fn bar(share: f64, width: usize) -> String {
    let filled = ((share.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

fn simulated_time(now: Option<SystemTime>) -> String {
    now.map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

/// The full view.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let fleet = &s.fleet;
    let total = fleet.total.max(1);
    let _ = writeln!(out, "simulated time {}", simulated_time(s.now));
    let _ = writeln!(
        out,
        "\nFLEET  {} hosts, {} updates done, {} staging failures{}",
        fleet.total,
        fleet.updates,
        fleet.failures,
        if fleet.stopped > 0 {
            format!(", {} agents stopped (see logs)", fleet.stopped)
        } else {
            String::new()
        }
    );
    for (version, count) in &fleet.by_version {
        let share = f64::from(*count) / f64::from(total);
        let _ = writeln!(
            out,
            "  {version:<20} {count:>6} {} {}",
            bar(share, 30),
            percent(share)
        );
    }
    let states: Vec<String> = fleet
        .by_state
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect();
    let _ = writeln!(out, "  states: {}", states.join(", "));
    if !fleet.denied.is_empty() {
        let denied: Vec<String> = fleet
            .denied
            .iter()
            .map(|(v, n)| format!("{v} on {n} hosts"))
            .collect();
        let _ = writeln!(out, "  deny lists: {}", denied.join(", "));
    }

    let _ = writeln!(out, "\nROLLOUTS (stable)");
    if s.rollouts.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for r in &s.rollouts {
        let _ = writeln!(
            out,
            "  {:<20} throttle {} {}  eligible {}{}",
            r.version,
            bar(r.throttle, 20),
            percent(r.throttle),
            percent(r.eligible_share),
            if r.paused {
                format!("  PAUSED: {}", r.pause_reason)
            } else {
                String::new()
            }
        );
    }

    let _ = writeln!(out, "\nREBOOT LOCKS");
    for g in &s.groups {
        let holders: Vec<&str> = g.holders.iter().map(|h| short(&h.id)).collect();
        let _ = writeln!(
            out,
            "  {:<10} {}/{} slots, {} queued{}  {}",
            g.name,
            g.holders.len(),
            g.total_slots,
            g.queue_length.max(fleet.queued),
            if g.paused { " PAUSED" } else { "" },
            holders.join(" ")
        );
    }

    let _ = writeln!(out, "\nTELEMETRY");
    match &s.summary {
        Some(summary) => {
            let _ = writeln!(
                out,
                "  {} hosts reporting, {} stale",
                summary.total_hosts, summary.stale_hosts
            );
            if summary.halts.is_empty() {
                let _ = writeln!(out, "  no automatic halts");
            }
            for halt in &summary.halts {
                let _ = writeln!(
                    out,
                    "  HALTED {} {}: {}",
                    halt.stream, halt.version, halt.reason
                );
            }
        }
        None => {
            let _ = writeln!(out, "  (no summary yet)");
        }
    }
    for error in &s.errors {
        let _ = writeln!(out, "  ! {error}");
    }
    out
}

/// One log line for runs without the live view.
pub fn summary_line(s: &Snapshot) -> String {
    let versions: Vec<String> = s
        .fleet
        .by_version
        .iter()
        .map(|(v, n)| format!("{v}={n}"))
        .collect();
    let rollouts: Vec<String> = s
        .rollouts
        .iter()
        .map(|r| {
            format!(
                "{}@{}{}",
                r.version,
                percent(r.throttle).trim(),
                if r.paused { "(paused)" } else { "" }
            )
        })
        .collect();
    let holders: usize = s.groups.iter().map(|g| g.holders.len()).sum();
    let halts = s.summary.as_ref().map_or(0, |x| x.halts.len());
    format!(
        "[{}] hosts {} | {} | rollouts {} | lock holders {} | halts {}",
        simulated_time(s.now),
        s.fleet.total,
        versions.join(" "),
        rollouts.join(" "),
        holders,
        halts
    )
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fleet mid-rollout: two hosts hold the group's slots, three wait,
    /// the rollout is halted and paused.
    fn mid_rollout() -> Snapshot {
        let mut fleet = FleetCounts {
            total: 10,
            updates: 4,
            failures: 3,
            lock_held: 2,
            queued: 3,
            ..FleetCounts::default()
        };
        fleet.by_version.insert("34.20211004.3.1".into(), 6);
        fleet.by_version.insert("34.20211016.3.0".into(), 4);
        fleet.by_state.insert("idle", 5);
        fleet.by_state.insert("waiting-for-gates", 5);
        fleet.denied.insert("34.20211016.3.0".into(), 1);
        let holder = |id: &str| lock_pb::Holder {
            id: id.into(),
            group: "default".into(),
            ..lock_pb::Holder::default()
        };
        Snapshot {
            now: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_634_400_000)),
            fleet,
            rollouts: vec![policy_pb::Rollout {
                stream: "stable".into(),
                version: "34.20211016.3.0".into(),
                throttle: 0.25,
                eligible_share: 0.4,
                paused: true,
                pause_reason: "automatic halt: 3 of 5 failed".into(),
                ..policy_pb::Rollout::default()
            }],
            groups: vec![lock_pb::Group {
                name: "default".into(),
                total_slots: 2,
                holders: vec![holder("0123456789abcdef"), holder("fedcba9876543210")],
                queue_length: 1,
                ..lock_pb::Group::default()
            }],
            summary: Some(telemetry_pb::FleetSummary {
                total_hosts: 10,
                stale_hosts: 1,
                halts: vec![telemetry_pb::Halt {
                    stream: "stable".into(),
                    version: "34.20211016.3.0".into(),
                    reason: "3 of 5 failed".into(),
                    ..telemetry_pb::Halt::default()
                }],
                ..telemetry_pb::FleetSummary::default()
            }),
            errors: vec!["lock: unavailable".into()],
        }
    }

    #[test]
    fn the_view_shows_versions_rollouts_locks_and_halts() {
        let view = render(&mid_rollout());
        for want in [
            "simulated time 2021-10-16T16:00:00Z\n",
            "FLEET  10 hosts, 4 updates done, 3 staging failures\n",
            "  34.20211004.3.1           6 [##################............]  60.0%\n",
            "  34.20211016.3.0           4 [############..................]  40.0%\n",
            "  states: idle 5, waiting-for-gates 5\n",
            "  deny lists: 34.20211016.3.0 on 1 hosts\n",
            "  34.20211016.3.0      throttle [#####...............]  25.0%  eligible  40.0%  PAUSED: automatic halt: 3 of 5 failed\n",
            // The queue is the larger of the service's length and the
            // agents' own count.
            "  default    2/2 slots, 3 queued  01234567 fedcba98\n",
            "  10 hosts reporting, 1 stale\n",
            "  HALTED stable 34.20211016.3.0: 3 of 5 failed\n",
            "  ! lock: unavailable\n",
        ] {
            assert!(view.contains(want), "{want:?} missing from\n{view}");
        }
        assert!(!view.contains("no automatic halts"), "{view}");
    }

    #[test]
    fn the_log_line_counts_holders_and_halts() {
        let line = summary_line(&mid_rollout());
        assert_eq!(
            line,
            "[2021-10-16T16:00:00Z] hosts 10 | 34.20211004.3.1=6 34.20211016.3.0=4 \
             | rollouts 34.20211016.3.0@25.0%(paused) | lock holders 2 | halts 1"
        );
    }

    #[test]
    fn an_empty_mesh_says_so() {
        let view = render(&Snapshot::default());
        assert!(view.contains("ROLLOUTS (stable)\n  none\n"), "{view}");
        assert!(view.contains("(no summary yet)"), "{view}");
    }
}
