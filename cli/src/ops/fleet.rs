//! `upshift fleet summary|hosts`: the telemetry service's fleet view.

use std::fmt::Write as _;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;

use super::client::{CommonArgs, Conn, DEFAULT_TELEMETRY_URL, Exit, OpsError, Options};
use super::render::{Table, emit, timestamp, yes_no};

/// Flags of `upshift fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// gRPC URL of the telemetry service.
    #[arg(long = "telemetry", value_name = "URL", env = "UPSHIFT_TELEMETRY_URL", default_value = DEFAULT_TELEMETRY_URL, global = true)]
    url: String,
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Hosts counted by stream, version, state and group; halts in force.
    #[command(disable_version_flag = true)]
    Summary(Filter),
    /// Hosts with their state, target and last report.
    #[command(disable_version_flag = true)]
    Hosts {
        #[command(flatten)]
        filter: Filter,
        /// At most this many hosts (pages are fetched until reached).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Hosts per GetFleet call (1-1000).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
    },
}

/// Host filter flags.
#[derive(Debug, Args)]
struct Filter {
    /// Only this stream.
    #[arg(long)]
    stream: Option<String>,
    /// Only hosts booted on this version.
    #[arg(long)]
    version: Option<String>,
    /// Only hosts in this state.
    #[arg(long, value_enum)]
    state: Option<State>,
    /// Only this reboot group.
    #[arg(long)]
    group: Option<String>,
    /// Include hosts that stopped reporting.
    #[arg(long)]
    include_stale: bool,
}

/// Agent states, as the CLI and its JSON name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum State {
    Starting,
    ReportingSteady,
    Idle,
    UpdateAvailable,
    Staging,
    Staged,
    WaitingForGates,
    Finalizing,
    Rebooting,
    DeadEnd,
}

impl State {
    fn proto(self) -> pb::AgentState {
        match self {
            Self::Starting => pb::AgentState::Starting,
            Self::ReportingSteady => pb::AgentState::ReportingSteady,
            Self::Idle => pb::AgentState::Idle,
            Self::UpdateAvailable => pb::AgentState::UpdateAvailable,
            Self::Staging => pb::AgentState::Staging,
            Self::Staged => pb::AgentState::Staged,
            Self::WaitingForGates => pb::AgentState::WaitingForGates,
            Self::Finalizing => pb::AgentState::Finalizing,
            Self::Rebooting => pb::AgentState::Rebooting,
            Self::DeadEnd => pb::AgentState::DeadEnd,
        }
    }
}

/// The CLI's name of a protobuf agent state (`waiting-for-gates`).
fn state_name(state: i32) -> String {
    match pb::AgentState::try_from(state) {
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("AGENT_STATE_")
            .to_ascii_lowercase()
            .replace('_', "-"),
        Err(_) => "unknown".into(),
    }
}

impl Filter {
    fn proto(&self) -> pb::HostFilter {
        pb::HostFilter {
            stream: self.stream.clone().unwrap_or_default(),
            version: self.version.clone().unwrap_or_default(),
            state: self.state.map(|s| s.proto() as i32).unwrap_or_default(),
            group: self.group.clone().unwrap_or_default(),
            include_stale: self.include_stale,
        }
    }
}

/// Runs `upshift fleet ...`.
pub async fn run(args: FleetArgs) -> Result<Exit, OpsError> {
    let options = Options::load(&args.common, false)?;
    let conn = Conn::connect("telemetry service", &args.url, &options).await?;
    let mut client = TelemetryServiceClient::new(conn.channel.clone());
    match args.command {
        FleetCommand::Summary(filter) => {
            let summary = client
                .get_fleet_summary(conn.request(pb::GetFleetSummaryRequest {
                    filter: Some(filter.proto()),
                }))
                .await
                .map_err(|s| conn.fail(s))?
                .into_inner()
                .summary
                .unwrap_or_default();
            emit(args.common.output, &summary_view(&summary), render_summary)?;
        }
        FleetCommand::Hosts {
            filter,
            limit,
            page_size,
        } => {
            let mut hosts = Vec::new();
            let mut page_token = String::new();
            while hosts.len() < limit {
                let page = client
                    .get_fleet(conn.request(pb::GetFleetRequest {
                        filter: Some(filter.proto()),
                        page_size: (limit - hosts.len()).min(page_size as usize) as u32,
                        page_token: page_token.clone(),
                    }))
                    .await
                    .map_err(|s| conn.fail(s))?
                    .into_inner();
                hosts.extend(page.hosts.iter().map(host_view));
                // An empty page or a repeated token would loop forever.
                if page.hosts.is_empty()
                    || page.next_page_token.is_empty()
                    || page.next_page_token == page_token
                {
                    break;
                }
                page_token = page.next_page_token;
            }
            hosts.truncate(limit);
            emit(args.common.output, &HostsView { hosts }, render_hosts)?;
        }
    }
    Ok(Exit::Ok)
}

/// `fleet summary` JSON document.
#[derive(Debug, Serialize)]
struct SummaryView {
    total_hosts: u32,
    stale_hosts: u32,
    counts: Vec<CountView>,
    halts: Vec<HaltView>,
    at: Option<String>,
}

#[derive(Debug, Serialize)]
struct CountView {
    stream: String,
    version: String,
    state: String,
    group: String,
    hosts: u32,
}

#[derive(Debug, Serialize)]
struct HaltView {
    stream: String,
    version: String,
    reason: String,
    at: Option<String>,
}

/// `fleet hosts` JSON document.
#[derive(Debug, Serialize)]
struct HostsView {
    hosts: Vec<HostView>,
}

#[derive(Debug, Serialize)]
struct HostView {
    node_uuid: String,
    group: String,
    stream: String,
    basearch: String,
    platform: String,
    booted_version: String,
    target_version: Option<String>,
    state: String,
    state_since: Option<String>,
    last_error_kind: Option<String>,
    last_error: Option<String>,
    lock_held: bool,
    agent_version: String,
    last_seen: Option<String>,
    stale: bool,
}

fn summary_view(s: &pb::FleetSummary) -> SummaryView {
    SummaryView {
        total_hosts: s.total_hosts,
        stale_hosts: s.stale_hosts,
        counts: s
            .counts
            .iter()
            .map(|c| CountView {
                stream: c.stream.clone(),
                version: c.version.clone(),
                state: state_name(c.state),
                group: c.group.clone(),
                hosts: c.hosts,
            })
            .collect(),
        halts: s
            .halts
            .iter()
            .map(|h| HaltView {
                stream: h.stream.clone(),
                version: h.version.clone(),
                reason: h.reason.clone(),
                at: timestamp(h.at.as_ref()),
            })
            .collect(),
        at: timestamp(s.at.as_ref()),
    }
}

fn host_view(h: &pb::Host) -> HostView {
    let s = h.status.clone().unwrap_or_default();
    let non_empty = |v: String| (!v.is_empty()).then_some(v);
    HostView {
        state: state_name(s.state),
        state_since: timestamp(s.state_since.as_ref()),
        target_version: non_empty(s.target_version),
        last_error_kind: non_empty(s.last_error_kind),
        last_error: non_empty(s.last_error),
        node_uuid: s.node_uuid,
        group: s.group,
        stream: s.stream,
        basearch: s.basearch,
        platform: s.platform,
        booted_version: s.booted_version,
        lock_held: s.lock_held,
        agent_version: s.agent_version,
        last_seen: timestamp(h.last_seen.as_ref()),
        stale: h.stale,
    }
}

fn render_summary(v: &SummaryView) -> String {
    let mut out = format!(
        "{} hosts reporting, {} stale\n",
        v.total_hosts, v.stale_hosts
    );
    if !v.counts.is_empty() {
        let mut table = Table::new(&["STREAM", "VERSION", "STATE", "GROUP", "HOSTS"]);
        for c in &v.counts {
            table.row(vec![
                c.stream.clone(),
                c.version.clone(),
                c.state.clone(),
                c.group.clone(),
                c.hosts.to_string(),
            ]);
        }
        out.push_str(&table.render());
    }
    for h in &v.halts {
        let _ = writeln!(
            out,
            "HALTED {} {} at {}: {}",
            h.stream,
            h.version,
            h.at.as_deref().unwrap_or("-"),
            h.reason
        );
    }
    out
}

fn render_hosts(v: &HostsView) -> String {
    if v.hosts.is_empty() {
        return "no hosts\n".into();
    }
    let mut table = Table::new(&[
        "NODE",
        "GROUP",
        "STREAM",
        "VERSION",
        "TARGET",
        "STATE",
        "LOCK",
        "LAST SEEN",
        "ERROR",
    ]);
    for h in &v.hosts {
        let state = if h.stale {
            format!("{} (stale)", h.state)
        } else {
            h.state.clone()
        };
        table.row(vec![
            h.node_uuid.clone(),
            h.group.clone(),
            h.stream.clone(),
            h.booted_version.clone(),
            h.target_version.clone().unwrap_or_default(),
            state,
            yes_no(h.lock_held),
            h.last_seen.clone().unwrap_or_default(),
            h.last_error_kind.clone().unwrap_or_default(),
        ]);
    }
    table.render()
}
