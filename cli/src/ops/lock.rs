//! `upshift lock list|show|release|slots|pause|resume|audit`: the lock
//! service's LockService and LockAdminService.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use serde::Serialize;
use upshift_common::grpc::from_duration;
use upshift_proto::lock::v1 as pb;
use upshift_proto::lock::v1::lock_admin_service_client::LockAdminServiceClient;
use upshift_proto::lock::v1::lock_service_client::LockServiceClient;

use super::client::{CommonArgs, Conn, DEFAULT_LOCK_URL, Exit, Format, OpsError, Options};
use super::render::{Table, age, emit, timestamp, yes_no};

/// Flags of `upshift lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// gRPC URL of the lock service.
    #[arg(long = "lock", value_name = "URL", env = "UPSHIFT_LOCK_URL", default_value = DEFAULT_LOCK_URL, global = true)]
    url: String,
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: LockCommand,
}

#[derive(Debug, Subcommand)]
enum LockCommand {
    /// Every group: slots, holders, queue, pause, window.
    List,
    /// One group with its holders (ages, leases) and windows.
    Show {
        /// Group name.
        group: String,
    },
    /// Force-release a holder's slot (admin).
    Release {
        /// Group name.
        group: String,
        /// Holder id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Change a group's slot count; shrinking never evicts holders (admin).
    Slots {
        /// Group name.
        group: String,
        /// New slot count (at least 1).
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        slots: u32,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Stop new grants in a group (admin).
    Pause {
        /// Group name.
        group: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Allow new grants again (admin).
    Resume {
        /// Group name.
        group: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Audit entries, newest first (admin).
    Audit {
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Older entries: the token a previous page printed.
        #[arg(long)]
        page_token: Option<String>,
    },
}

/// Runs `upshift lock ...`.
pub async fn run(args: LockArgs) -> Result<Exit, OpsError> {
    let options = Options::load(
        &args.common,
        !matches!(args.command, LockCommand::List | LockCommand::Show { .. }),
    )?;
    let conn = Conn::connect("lock service", &args.url, &options).await?;
    let format = args.common.output;
    let mut locks = LockServiceClient::new(conn.channel.clone());
    let mut admin = LockAdminServiceClient::new(conn.channel.clone());
    let fail = |s| conn.fail(s);
    let group = match args.command {
        LockCommand::List => {
            let groups = locks
                .list_groups(conn.request(pb::ListGroupsRequest {}))
                .await
                .map_err(fail)?
                .into_inner()
                .groups;
            let view = GroupsView {
                groups: groups.iter().map(group_view).collect(),
            };
            emit(format, &view, render_list)?;
            return Ok(Exit::Ok);
        }
        LockCommand::Audit {
            group,
            limit,
            page_token,
        } => {
            let page = admin
                .list_audit(conn.request(pb::ListAuditRequest {
                    group: group.unwrap_or_default(),
                    limit,
                    page_token: page_token.unwrap_or_default(),
                }))
                .await
                .map_err(fail)?
                .into_inner();
            emit_audit(format, &page)?;
            return Ok(Exit::Ok);
        }
        LockCommand::Release { group, id, reason } => {
            let released = admin
                .force_release(conn.request(pb::ForceReleaseRequest {
                    group: group.clone(),
                    id: id.clone(),
                    reason,
                }))
                .await
                .map_err(fail)?
                .into_inner()
                .released;
            let view = Released {
                group,
                id,
                released: released.as_ref().map(holder_view),
            };
            emit(format, &view, |v| match &v.released {
                Some(h) => format!("released {} in {} (held {})\n", v.id, v.group, h.age_text),
                None => format!("{} held no slot in {}\n", v.id, v.group),
            })?;
            return Ok(Exit::Ok);
        }
        LockCommand::Show { group } => {
            locks
                .get_group(conn.request(pb::GetGroupRequest { group }))
                .await
                .map_err(fail)?
                .into_inner()
                .group
        }
        LockCommand::Slots {
            group,
            slots,
            reason,
        } => {
            admin
                .set_slots(conn.request(pb::SetSlotsRequest {
                    group,
                    slots,
                    reason,
                }))
                .await
                .map_err(fail)?
                .into_inner()
                .group
        }
        LockCommand::Pause { group, reason } => {
            admin
                .pause_group(conn.request(pb::PauseGroupRequest { group, reason }))
                .await
                .map_err(fail)?
                .into_inner()
                .group
        }
        LockCommand::Resume { group, reason } => {
            admin
                .resume_group(conn.request(pb::ResumeGroupRequest { group, reason }))
                .await
                .map_err(fail)?
                .into_inner()
                .group
        }
    };
    let group = group.ok_or_else(|| fail(tonic::Status::internal("response without a group")))?;
    emit(format, &group_view(&group), render_group)?;
    Ok(Exit::Ok)
}

/// `lock list` JSON document.
#[derive(Debug, Serialize)]
struct GroupsView {
    groups: Vec<GroupView>,
}

/// One group (`lock show`, `slots`, `pause`, `resume` JSON document).
#[derive(Debug, Serialize)]
struct GroupView {
    name: String,
    total_slots: u32,
    holders: Vec<HolderView>,
    paused: bool,
    pause_reason: Option<String>,
    queue_length: u32,
    windows: Vec<WindowView>,
    window_open: bool,
    next_window_open: Option<String>,
}

#[derive(Debug, Serialize)]
struct HolderView {
    id: String,
    group: String,
    acquired_at: Option<String>,
    /// "fleetlock", "grpc" or "unknown".
    method: &'static str,
    ttl_seconds: Option<u64>,
    lease_expires_at: Option<String>,
    age_seconds: u64,
    #[serde(skip)]
    age_text: String,
}

#[derive(Debug, Serialize)]
struct WindowView {
    days: Vec<String>,
    start: String,
    length_seconds: u64,
    time_zone: String,
}

#[derive(Debug, Serialize)]
struct Released {
    group: String,
    id: String,
    released: Option<HolderView>,
}

#[derive(Debug, Serialize)]
struct AuditView {
    entries: Vec<AuditEntryView>,
    /// `--page-token` of the next (older) page, if any.
    next_page_token: Option<String>,
}

#[derive(Debug, Serialize)]
struct AuditEntryView {
    at: Option<String>,
    actor: String,
    action: String,
    group: String,
    target: String,
    reason: String,
    outcome: String,
}

fn holder_view(h: &pb::Holder) -> HolderView {
    let held = h.age.as_ref().map(from_duration).unwrap_or_default();
    HolderView {
        id: h.id.clone(),
        group: h.group.clone(),
        acquired_at: timestamp(h.acquired_at.as_ref()),
        method: match pb::AcquireMethod::try_from(h.method) {
            Ok(pb::AcquireMethod::Fleetlock) => "fleetlock",
            Ok(pb::AcquireMethod::Grpc) => "grpc",
            _ => "unknown",
        },
        ttl_seconds: h.ttl.as_ref().map(|d| from_duration(d).as_secs()),
        lease_expires_at: timestamp(h.lease_expires_at.as_ref()),
        age_seconds: held.as_secs(),
        age_text: age(held),
    }
}

fn group_view(g: &pb::Group) -> GroupView {
    GroupView {
        name: g.name.clone(),
        total_slots: g.total_slots,
        holders: g.holders.iter().map(holder_view).collect(),
        paused: g.paused,
        pause_reason: (!g.pause_reason.is_empty()).then(|| g.pause_reason.clone()),
        queue_length: g.queue_length,
        windows: g
            .windows
            .iter()
            .map(|w| WindowView {
                days: w.days.clone(),
                start: w.start.clone(),
                length_seconds: w
                    .length
                    .as_ref()
                    .map(|d| from_duration(d).as_secs())
                    .unwrap_or(0),
                time_zone: w.time_zone.clone(),
            })
            .collect(),
        window_open: g.window_open,
        next_window_open: timestamp(g.next_window_open.as_ref()),
    }
}

fn window_text(g: &GroupView) -> String {
    if g.windows.is_empty() {
        return "always".into();
    }
    if g.window_open {
        return "open".into();
    }
    match &g.next_window_open {
        Some(at) => format!("closed until {at}"),
        None => "closed".into(),
    }
}

fn render_list(view: &GroupsView) -> String {
    if view.groups.is_empty() {
        return "no groups\n".into();
    }
    let mut table = Table::new(&[
        "GROUP", "SLOTS", "HELD", "QUEUE", "PAUSED", "WINDOW", "HOLDERS",
    ]);
    for g in &view.groups {
        let holders: Vec<String> = g
            .holders
            .iter()
            .map(|h| format!("{} ({})", h.id, h.age_text))
            .collect();
        table.row(vec![
            g.name.clone(),
            g.total_slots.to_string(),
            g.holders.len().to_string(),
            g.queue_length.to_string(),
            yes_no(g.paused),
            window_text(g),
            holders.join(", "),
        ]);
    }
    table.render()
}

fn render_group(g: &GroupView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "group {}: {}/{} slots held, {} queued, window {}",
        g.name,
        g.holders.len(),
        g.total_slots,
        g.queue_length,
        window_text(g)
    );
    if g.paused {
        let _ = writeln!(
            out,
            "PAUSED: {}",
            g.pause_reason.as_deref().unwrap_or("no reason given")
        );
    }
    for w in &g.windows {
        let days = if w.days.is_empty() {
            "every day".to_string()
        } else {
            w.days.join(",")
        };
        let _ = writeln!(
            out,
            "window: {days} {} for {} ({})",
            w.start,
            age(std::time::Duration::from_secs(w.length_seconds)),
            w.time_zone
        );
    }
    if g.holders.is_empty() {
        out.push_str("no holders\n");
        return out;
    }
    let mut table = Table::new(&["HOLDER", "METHOD", "ACQUIRED", "AGE", "LEASE EXPIRES"]);
    for h in &g.holders {
        table.row(vec![
            h.id.clone(),
            h.method.to_string(),
            h.acquired_at.clone().unwrap_or_default(),
            h.age_text.clone(),
            h.lease_expires_at.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&table.render());
    out
}

fn emit_audit(format: Format, page: &pb::ListAuditResponse) -> Result<(), OpsError> {
    let view = AuditView {
        entries: page
            .entries
            .iter()
            .map(|e| AuditEntryView {
                at: timestamp(e.at.as_ref()),
                actor: e.actor.clone(),
                action: e.action.clone(),
                group: e.group.clone(),
                target: e.target.clone(),
                reason: e.reason.clone(),
                outcome: e.outcome.clone(),
            })
            .collect(),
        next_page_token: (!page.next_page_token.is_empty()).then(|| page.next_page_token.clone()),
    };
    emit(format, &view, |v| {
        let mut table = Table::new(&[
            "AT", "ACTOR", "ACTION", "GROUP", "TARGET", "OUTCOME", "REASON",
        ]);
        for e in &v.entries {
            table.row(vec![
                e.at.clone().unwrap_or_default(),
                e.actor.clone(),
                e.action.clone(),
                e.group.clone(),
                e.target.clone(),
                e.outcome.clone(),
                e.reason.clone(),
            ]);
        }
        let mut out = table.render();
        if let Some(token) = &v.next_page_token {
            out.push_str(&format!("older entries: --page-token {token}\n"));
        }
        out
    })
}
