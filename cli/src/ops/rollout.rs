//! `upshift rollout list|pause|resume|freeze|unfreeze`: the policy
//! service's RolloutAdminService.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use serde::Serialize;
use upshift_proto::policy::v1 as pb;
use upshift_proto::policy::v1::rollout_admin_service_client::RolloutAdminServiceClient;

use super::client::{CommonArgs, Conn, DEFAULT_POLICY_URL, Exit, OpsError, Options};
use super::render::{Table, emit, percent, timestamp};

/// Flags of `upshift rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// gRPC URL of the policy service.
    #[arg(long = "policy", value_name = "URL", env = "UPSHIFT_POLICY_URL", default_value = DEFAULT_POLICY_URL, global = true)]
    url: String,
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Rollouts with their throttle now, eligible share and pauses; frozen
    /// streams.
    List {
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Hold a rollout's throttle where it is, or with --withdraw offer the
    /// release to no one (admin).
    Pause(PauseChange),
    /// Continue a paused rollout from the value it was held at (admin).
    Resume(Change),
    /// Stop every update of a stream (admin).
    Freeze(StreamChange),
    /// Lift a stream freeze (admin).
    Unfreeze(StreamChange),
}

#[derive(Debug, Args)]
struct Change {
    /// Stream.
    stream: String,
    /// Rollout release version.
    #[arg(id = "release", value_name = "VERSION")]
    version: String,
    /// Why (recorded in the audit log).
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Args)]
struct PauseChange {
    #[command(flatten)]
    change: Change,
    /// Offer the release to no node until resumed, not even to the nodes
    /// already eligible (what an automatic halt does).
    #[arg(long)]
    withdraw: bool,
}

#[derive(Debug, Args)]
struct StreamChange {
    /// Stream.
    stream: String,
    /// Why (recorded in the audit log).
    #[arg(long)]
    reason: String,
}

/// Runs `upshift rollout ...`.
pub async fn run(args: RolloutArgs) -> Result<Exit, OpsError> {
    let options = Options::load(
        &args.common,
        !matches!(args.command, RolloutCommand::List { .. }),
    )?;
    let conn = Conn::connect("policy service", &args.url, &options).await?;
    let mut client = RolloutAdminServiceClient::new(conn.channel.clone());
    let fail = |s| conn.fail(s);
    let format = args.common.output;
    match args.command {
        RolloutCommand::List { stream } => {
            let response = client
                .list_rollouts(conn.request(pb::ListRolloutsRequest {
                    stream: stream.unwrap_or_default(),
                }))
                .await
                .map_err(fail)?
                .into_inner();
            let view = list_view(&response);
            emit(format, &view, render_list)?;
        }
        RolloutCommand::Pause(PauseChange {
            change: c,
            withdraw,
        }) => {
            let mode = if withdraw {
                pb::PauseMode::Withdraw
            } else {
                pb::PauseMode::Hold
            };
            let response = client
                .pause_rollout(conn.request(pb::PauseRolloutRequest {
                    stream: c.stream,
                    version: c.version,
                    reason: c.reason,
                    mode: mode as i32,
                }))
                .await
                .map_err(fail)?
                .into_inner();
            emit_one(format, response.rollout.as_ref())?;
        }
        RolloutCommand::Resume(c) => {
            let response = client
                .resume_rollout(conn.request(pb::ResumeRolloutRequest {
                    stream: c.stream,
                    version: c.version,
                    reason: c.reason,
                }))
                .await
                .map_err(fail)?
                .into_inner();
            emit_one(format, response.rollout.as_ref())?;
        }
        RolloutCommand::Freeze(c) => {
            let response = client
                .freeze_stream(conn.request(pb::FreezeStreamRequest {
                    stream: c.stream.clone(),
                    reason: c.reason,
                }))
                .await
                .map_err(fail)?
                .into_inner();
            let freeze = response.freeze.as_ref().map(freeze_view);
            emit(format, &FreezeResult { freeze }, |v| match &v.freeze {
                Some(f) => format!("stream {} frozen: {}\n", f.stream, f.reason),
                None => format!("stream {} frozen\n", c.stream),
            })?;
        }
        RolloutCommand::Unfreeze(c) => {
            client
                .unfreeze_stream(conn.request(pb::UnfreezeStreamRequest {
                    stream: c.stream.clone(),
                    reason: c.reason,
                }))
                .await
                .map_err(fail)?;
            let done = Unfrozen {
                stream: c.stream,
                frozen: false,
            };
            emit(format, &done, |v| format!("stream {} unfrozen\n", v.stream))?;
        }
    }
    Ok(Exit::Ok)
}

/// `rollout list` JSON document.
#[derive(Debug, Serialize)]
struct ListView {
    rollouts: Vec<RolloutView>,
    freezes: Vec<FreezeView>,
}

#[derive(Debug, Serialize)]
struct RolloutView {
    stream: String,
    version: String,
    throttle: f64,
    eligible_share: f64,
    start: Option<String>,
    end: Option<String>,
    start_value: f64,
    paused: bool,
    /// `hold` or `withdraw` while paused.
    pause_mode: Option<&'static str>,
    pause_reason: Option<String>,
    paused_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct FreezeView {
    stream: String,
    reason: String,
    since: Option<String>,
}

#[derive(Debug, Serialize)]
struct OneView {
    rollout: Option<RolloutView>,
}

#[derive(Debug, Serialize)]
struct FreezeResult {
    freeze: Option<FreezeView>,
}

#[derive(Debug, Serialize)]
struct Unfrozen {
    stream: String,
    frozen: bool,
}

fn rollout_view(r: &pb::Rollout) -> RolloutView {
    RolloutView {
        stream: r.stream.clone(),
        version: r.version.clone(),
        throttle: r.throttle,
        eligible_share: r.eligible_share,
        start: timestamp(r.start.as_ref()),
        end: timestamp(r.end.as_ref()),
        start_value: r.start_value,
        paused: r.paused,
        pause_mode: match r.pause_mode() {
            _ if !r.paused => None,
            pb::PauseMode::Withdraw => Some("withdraw"),
            _ => Some("hold"),
        },
        pause_reason: (!r.pause_reason.is_empty()).then(|| r.pause_reason.clone()),
        paused_at: timestamp(r.paused_at.as_ref()),
    }
}

fn freeze_view(f: &pb::StreamFreeze) -> FreezeView {
    FreezeView {
        stream: f.stream.clone(),
        reason: f.reason.clone(),
        since: timestamp(f.since.as_ref()),
    }
}

fn list_view(response: &pb::ListRolloutsResponse) -> ListView {
    ListView {
        rollouts: response.rollouts.iter().map(rollout_view).collect(),
        freezes: response.freezes.iter().map(freeze_view).collect(),
    }
}

fn rollout_table(rollouts: &[RolloutView]) -> Table {
    let mut table = Table::new(&[
        "STREAM", "VERSION", "THROTTLE", "ELIGIBLE", "START", "END", "PAUSED", "WHY",
    ]);
    for r in rollouts {
        table.row(vec![
            r.stream.clone(),
            r.version.clone(),
            percent(r.throttle),
            percent(r.eligible_share),
            // A rollout without a start epoch starts at the epoch.
            match r.start.as_deref() {
                Some("1970-01-01T00:00:00Z") => "immediate".to_string(),
                other => other.unwrap_or_default().to_string(),
            },
            r.end.clone().unwrap_or_default(),
            match r.pause_mode {
                Some("withdraw") => "withdrawn",
                Some(_) => "held",
                None => "no",
            }
            .to_string(),
            r.pause_reason.clone().unwrap_or_default(),
        ]);
    }
    table
}

fn render_list(view: &ListView) -> String {
    let mut out = if view.rollouts.is_empty() {
        "no rollouts\n".to_string()
    } else {
        rollout_table(&view.rollouts).render()
    };
    for f in &view.freezes {
        let _ = writeln!(
            out,
            "stream {} FROZEN since {}: {}",
            f.stream,
            f.since.as_deref().unwrap_or("-"),
            f.reason
        );
    }
    out
}

fn emit_one(format: super::client::Format, rollout: Option<&pb::Rollout>) -> Result<(), OpsError> {
    let view = OneView {
        rollout: rollout.map(rollout_view),
    };
    emit(format, &view, |v| match &v.rollout {
        Some(r) => rollout_table(std::slice::from_ref(r)).render(),
        None => String::new(),
    })
}
