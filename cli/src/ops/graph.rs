//! `upshift graph show|sources`: the graph service's view of each scope.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use upshift_cincinnati::graph::AGE_INDEX;
use upshift_cincinnati::rollout::RolloutSpec;
use upshift_common::clock::{Clock, SystemClock, epoch_secs, from_epoch_secs};
use upshift_proto::graph::v1 as pb;
use upshift_proto::graph::v1::graph_service_client::GraphServiceClient;

use super::client::{CommonArgs, Conn, DEFAULT_GRAPH_URL, Exit, OpsError, Options};
use super::render::{Table, emit, percent, rfc3339, timestamp};

const UPDATES: &str = "org.fedoraproject.coreos.updates";

/// Flags of `upshift graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// gRPC URL of the graph service.
    #[arg(long = "graph", value_name = "URL", env = "UPSHIFT_GRAPH_URL", default_value = DEFAULT_GRAPH_URL, global = true)]
    url: String,
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: GraphCommand,
}

#[derive(Debug, Subcommand)]
enum GraphCommand {
    /// Releases of each scope: update edges, barriers, dead-ends, rollouts.
    Show {
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
        /// Only this base architecture.
        #[arg(long, value_name = "BASEARCH")]
        arch: Option<String>,
        /// Only this payload scheme.
        #[arg(long, value_enum)]
        scheme: Option<Scheme>,
        /// List every update edge of each release, not just the count and
        /// the newest target.
        #[arg(long, conflicts_with = "tree")]
        edges: bool,
        /// Draw the releases as a tree: each release under the newest
        /// release it updates to (the path a host takes).
        #[arg(long)]
        tree: bool,
    },
    /// Load state of every stream's metadata source.
    Sources {
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
    },
}

/// Payload scheme filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scheme {
    /// OSTree commit checksums.
    Checksum,
    /// OCI digest references.
    Oci,
}

/// Runs `upshift graph ...`.
pub async fn run(args: GraphArgs) -> Result<Exit, OpsError> {
    let options = Options::load(&args.common, false)?;
    let conn = Conn::connect("graph service", &args.url, &options).await?;
    match args.command {
        GraphCommand::Show {
            stream,
            arch,
            scheme,
            edges,
            tree,
        } => {
            let view = show(&conn, stream, arch, scheme).await?;
            let style = match (tree, edges) {
                (true, _) => Style::Tree,
                (false, true) => Style::AllEdges,
                (false, false) => Style::Table,
            };
            emit(args.common.output, &view, |v| render_show(v, style))?;
        }
        GraphCommand::Sources { stream } => {
            let view = sources(&conn, stream.unwrap_or_default()).await?;
            emit(args.common.output, &view, render_sources)?;
        }
    }
    Ok(Exit::Ok)
}

/// `graph show` JSON document.
#[derive(Debug, Serialize)]
struct ShowView {
    scopes: Vec<ScopeView>,
}

#[derive(Debug, Serialize)]
struct ScopeView {
    stream: String,
    basearch: String,
    scheme: &'static str,
    revision: u64,
    digest: String,
    built_at: Option<String>,
    releases: Vec<ReleaseView>,
    edges: usize,
}

#[derive(Debug, Serialize)]
struct ReleaseView {
    version: String,
    payload: String,
    age_index: Option<u64>,
    /// Versions reachable by one edge, oldest first.
    edges_out: Vec<String>,
    /// The newest of `edges_out`.
    newest_target: Option<String>,
    barrier: bool,
    barrier_reason: Option<String>,
    dead_end: bool,
    dead_end_reason: Option<String>,
    rollout: Option<RolloutView>,
}

#[derive(Debug, Serialize)]
struct RolloutView {
    start: Option<String>,
    start_value: f64,
    duration_minutes: Option<u64>,
    end: Option<String>,
    /// Throttle from the graph's metadata at the CLI's clock (policy pauses
    /// are not applied: see `upshift rollout list`).
    throttle_now: f64,
}

pub(super) fn scheme_name(scheme: i32) -> &'static str {
    match pb::PayloadScheme::try_from(scheme) {
        Ok(pb::PayloadScheme::Oci) => "oci",
        _ => "checksum",
    }
}

async fn show(
    conn: &Conn,
    stream: Option<String>,
    arch: Option<String>,
    scheme: Option<Scheme>,
) -> Result<ShowView, OpsError> {
    let mut client = GraphServiceClient::new(conn.channel.clone());
    let scopes = client
        .list_scopes(conn.request(pb::ListScopesRequest {}))
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner()
        .scopes;
    let wanted: Vec<pb::Scope> = scopes
        .into_iter()
        .filter_map(|info| info.scope)
        .filter(|s| stream.as_ref().is_none_or(|w| *w == s.stream))
        .filter(|s| arch.as_ref().is_none_or(|w| *w == s.basearch))
        .filter(|s| {
            scheme.is_none_or(|w| (w == Scheme::Oci) == (s.scheme == pb::PayloadScheme::Oci as i32))
        })
        .collect();
    if wanted.is_empty() {
        return Err(conn.fail(tonic::Status::not_found(format!(
            "no graph matches stream {} and basearch {}",
            stream.as_deref().unwrap_or("(any)"),
            arch.as_deref().unwrap_or("(any)"),
        ))));
    }
    let now = epoch_secs(SystemClock.now());
    let mut views = Vec::new();
    for scope in wanted {
        let graph = client
            .get_graph(conn.request(pb::GetGraphRequest { scope: Some(scope) }))
            .await
            .map_err(|s| conn.fail(s))?
            .into_inner()
            .graph
            .ok_or_else(|| conn.fail(tonic::Status::internal("response without a graph")))?;
        views.push(scope_view(&graph, now));
    }
    Ok(ShowView { scopes: views })
}

fn scope_view(graph: &pb::Graph, now: f64) -> ScopeView {
    let scope = graph.scope.clone().unwrap_or_default();
    let mut successors: Vec<Vec<u32>> = vec![Vec::new(); graph.nodes.len()];
    for e in &graph.edges {
        if let Some(list) = successors.get_mut(e.from as usize) {
            list.push(e.to);
        }
    }
    let releases = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut out = successors[i].clone();
            out.sort_unstable();
            out.dedup();
            let edges_out: Vec<String> = out
                .iter()
                .filter_map(|&j| graph.nodes.get(j as usize))
                .map(|n| n.version.clone())
                .collect();
            release_view(node, edges_out, now)
        })
        .collect();
    ScopeView {
        stream: scope.stream,
        basearch: scope.basearch,
        scheme: scheme_name(scope.scheme),
        revision: graph.revision,
        digest: graph.digest.clone(),
        built_at: timestamp(graph.built_at.as_ref()),
        releases,
        edges: graph.edges.len(),
    }
}

fn release_view(node: &pb::Release, edges_out: Vec<String>, now: f64) -> ReleaseView {
    let md: BTreeMap<String, String> = node
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let flag = |key: &str| {
        md.get(&format!("{UPDATES}.{key}"))
            .is_some_and(|v| v == "true")
    };
    let text = |key: &str| md.get(&format!("{UPDATES}.{key}")).cloned();
    let rollout = match RolloutSpec::from_metadata(&md) {
        Ok(Some(spec)) => Some(RolloutView {
            start: text("start_epoch").map(|_| rfc3339(from_epoch_secs(spec.start_epoch as f64))),
            start_value: spec.start_value,
            duration_minutes: spec.duration_minutes,
            end: spec.duration_minutes.map(|d| {
                rfc3339(from_epoch_secs(
                    spec.start_epoch as f64 + 60.0 * d.max(1) as f64,
                ))
            }),
            throttle_now: spec.throttle_at(now),
        }),
        _ => None,
    };
    ReleaseView {
        version: node.version.clone(),
        payload: node.payload.clone(),
        age_index: md.get(AGE_INDEX).and_then(|v| v.parse().ok()),
        newest_target: edges_out.last().cloned(),
        edges_out,
        barrier: flag("barrier"),
        barrier_reason: text("barrier_reason"),
        dead_end: flag("deadend"),
        dead_end_reason: text("deadend_reason"),
        rollout,
    }
}

/// How `graph show` draws releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// One row per release with its edge count and newest target.
    Table,
    /// One row per release with every target.
    AllEdges,
    /// Releases under their newest targets.
    Tree,
}

fn render_show(view: &ShowView, style: Style) -> String {
    let mut out = String::new();
    for (n, scope) in view.scopes.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{}/{}/{}: revision {}, {} releases, {} edges, built {}",
            scope.stream,
            scope.basearch,
            scope.scheme,
            scope.revision,
            scope.releases.len(),
            scope.edges,
            scope.built_at.as_deref().unwrap_or("-"),
        );
        if scope.releases.is_empty() {
            out.push_str("no releases\n");
            continue;
        }
        if style == Style::Tree {
            out.push_str(&render_tree(scope));
            continue;
        }
        out.push_str(&release_table(scope, style == Style::AllEdges).render());
        for r in &scope.releases {
            if r.barrier {
                let reason = r.barrier_reason.as_deref().unwrap_or("generic");
                let _ = writeln!(out, "  barrier {}: {reason}", r.version);
            }
            if r.dead_end {
                let reason = r.dead_end_reason.as_deref().unwrap_or("generic");
                let _ = writeln!(out, "  dead-end {}: {reason}", r.version);
            }
        }
    }
    out
}

fn release_table(scope: &ScopeView, all_edges: bool) -> Table {
    let mut table = Table::new(&[
        "VERSION",
        "EDGES OUT",
        if all_edges {
            "UPDATES TO"
        } else {
            "NEWEST TARGET"
        },
        "BARRIER",
        "DEAD-END",
        "ROLLOUT START",
        "DURATION",
        "THROTTLE NOW",
    ]);
    for r in &scope.releases {
        let targets = if all_edges {
            r.edges_out.join(", ")
        } else {
            r.newest_target.clone().unwrap_or_default()
        };
        let (start, duration, throttle) = match &r.rollout {
            Some(ro) => (
                ro.start.clone().unwrap_or_else(|| "immediate".into()),
                ro.duration_minutes
                    .map(|m| format!("{m}m"))
                    .unwrap_or_default(),
                percent(ro.throttle_now),
            ),
            None => Default::default(),
        };
        table.row(vec![
            r.version.clone(),
            r.edges_out.len().to_string(),
            targets,
            if r.barrier {
                "yes".into()
            } else {
                String::new()
            },
            if r.dead_end {
                "yes".into()
            } else {
                String::new()
            },
            start,
            duration,
            throttle,
        ]);
    }
    table
}

/// Each release under the newest release it updates to; roots (releases
/// without edges out) newest first, children newest first.
fn render_tree(scope: &ScopeView) -> String {
    let index: BTreeMap<&str, usize> = scope
        .releases
        .iter()
        .enumerate()
        .map(|(i, r)| (r.version.as_str(), i))
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); scope.releases.len()];
    let mut roots = Vec::new();
    for (i, r) in scope.releases.iter().enumerate() {
        match r.newest_target.as_deref().and_then(|t| index.get(t)) {
            Some(&parent) if parent != i => children[parent].push(i),
            _ => roots.push(i),
        }
    }
    let mut out = String::new();
    for &root in roots.iter().rev() {
        let _ = writeln!(out, "{}", tree_label(&scope.releases[root]));
        tree_children(scope, &children, root, "", &mut out);
    }
    out
}

fn tree_children(
    scope: &ScopeView,
    children: &[Vec<usize>],
    node: usize,
    prefix: &str,
    out: &mut String,
) {
    let kids = &children[node];
    for (n, &child) in kids.iter().rev().enumerate() {
        let last = n + 1 == kids.len();
        let (branch, indent) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        let _ = writeln!(
            out,
            "{prefix}{branch}{}",
            tree_label(&scope.releases[child])
        );
        tree_children(scope, children, child, &format!("{prefix}{indent}"), out);
    }
}

fn tree_label(r: &ReleaseView) -> String {
    let mut notes = Vec::new();
    if r.barrier {
        notes.push(format!(
            "barrier: {}",
            r.barrier_reason.as_deref().unwrap_or("generic")
        ));
    }
    if r.dead_end {
        notes.push(format!(
            "dead-end: {}",
            r.dead_end_reason.as_deref().unwrap_or("generic")
        ));
    }
    if let Some(ro) = &r.rollout {
        let start = ro.start.as_deref().unwrap_or("immediate");
        let duration = ro
            .duration_minutes
            .map(|m| format!(" over {m}m"))
            .unwrap_or_default();
        notes.push(format!(
            "rollout {start}{duration}, throttle {}",
            percent(ro.throttle_now)
        ));
    }
    if notes.is_empty() {
        r.version.clone()
    } else {
        format!("{} [{}]", r.version, notes.join("; "))
    }
}

/// `graph sources` JSON document.
#[derive(Debug, Serialize)]
struct SourcesView {
    sources: Vec<SourceView>,
}

#[derive(Debug, Serialize)]
struct SourceView {
    stream: String,
    location: String,
    /// "ok", "rejected" or "never_loaded".
    state: &'static str,
    error: Option<String>,
    error_file: Option<String>,
    error_kind: Option<String>,
    last_attempt: Option<String>,
    last_success: Option<String>,
    warnings: Vec<String>,
    architectures: Vec<String>,
}

async fn sources(conn: &Conn, stream: String) -> Result<SourcesView, OpsError> {
    let mut client = GraphServiceClient::new(conn.channel.clone());
    let response = client
        .get_source_status(conn.request(pb::GetSourceStatusRequest { stream }))
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner();
    let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    let sources = response
        .sources
        .iter()
        .map(|s| SourceView {
            stream: s.stream.clone(),
            location: s.location.clone(),
            state: match pb::SourceState::try_from(s.state) {
                Ok(pb::SourceState::Ok) => "ok",
                Ok(pb::SourceState::Rejected) => "rejected",
                Ok(pb::SourceState::NeverLoaded) => "never_loaded",
                _ => "unknown",
            },
            error: non_empty(&s.error),
            error_file: non_empty(&s.error_file),
            error_kind: non_empty(&s.error_kind),
            last_attempt: timestamp(s.last_attempt.as_ref()),
            last_success: timestamp(s.last_success.as_ref()),
            warnings: s.warnings.clone(),
            architectures: s.architectures.clone(),
        })
        .collect();
    Ok(SourcesView { sources })
}

fn render_sources(view: &SourcesView) -> String {
    let mut table = Table::new(&[
        "STREAM",
        "STATE",
        "ARCHITECTURES",
        "LAST SUCCESS",
        "LOCATION",
    ]);
    for s in &view.sources {
        table.row(vec![
            s.stream.clone(),
            s.state.to_string(),
            s.architectures.join(","),
            s.last_success.clone().unwrap_or_default(),
            s.location.clone(),
        ]);
    }
    let mut out = table.render();
    for s in &view.sources {
        if let Some(error) = &s.error {
            let _ = writeln!(
                out,
                "  {} rejected ({}, {}): {error}",
                s.stream,
                s.error_kind.as_deref().unwrap_or("error"),
                s.error_file.as_deref().unwrap_or("-"),
            );
        }
        for w in &s.warnings {
            let _ = writeln!(out, "  {} warning: {w}", s.stream);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str, index: usize, updates: &[(&str, &str)]) -> pb::Release {
        let mut metadata: std::collections::HashMap<String, String> = updates
            .iter()
            .map(|(k, v)| (format!("{UPDATES}.{k}"), v.to_string()))
            .collect();
        metadata.insert(AGE_INDEX.into(), index.to_string());
        pb::Release {
            version: version.into(),
            payload: format!("sha-{index}"),
            metadata,
        }
    }

    /// a -> b (barrier) -> d (rollout); c -> d; e is a dead-end.
    fn graph() -> pb::Graph {
        let edge = |from, to| pb::Edge { from, to };
        pb::Graph {
            scope: Some(pb::Scope {
                stream: "stable".into(),
                basearch: "x86_64".into(),
                scheme: pb::PayloadScheme::Checksum as i32,
            }),
            revision: 7,
            nodes: vec![
                release("1.0", 0, &[]),
                release("2.0", 1, &[("barrier", "true"), ("barrier_reason", "keys")]),
                release("3.0", 2, &[]),
                release(
                    "4.0",
                    3,
                    &[
                        ("rollout", "true"),
                        ("start_epoch", "1000"),
                        ("start_value", "0.5"),
                        ("duration_minutes", "10"),
                    ],
                ),
                release(
                    "5.0",
                    4,
                    &[("deadend", "true"), ("deadend_reason", "broken")],
                ),
            ],
            edges: vec![edge(0, 1), edge(1, 3), edge(2, 3), edge(1, 2)],
            built_at: None,
            digest: "d".into(),
        }
    }

    #[test]
    fn releases_carry_edges_barriers_dead_ends_and_throttle() {
        // Half-way through the rollout: 0.5 + 0.5 * 300/600.
        let view = scope_view(&graph(), 1300.0);
        assert_eq!(view.revision, 7);
        assert_eq!(view.edges, 4);
        let r = &view.releases;
        assert_eq!(r[1].edges_out, ["3.0", "4.0"]);
        assert_eq!(r[1].newest_target.as_deref(), Some("4.0"));
        assert!(r[1].barrier);
        assert_eq!(r[1].barrier_reason.as_deref(), Some("keys"));
        assert!(r[4].dead_end && r[4].edges_out.is_empty());
        let rollout = r[3].rollout.as_ref().unwrap();
        assert_eq!(rollout.throttle_now, 0.75);
        assert_eq!(rollout.start.as_deref(), Some("1970-01-01T00:16:40Z"));
        assert_eq!(rollout.end.as_deref(), Some("1970-01-01T00:26:40Z"));
        assert!(r[0].rollout.is_none());
    }

    #[test]
    fn tree_puts_each_release_under_its_newest_target() {
        let view = ShowView {
            scopes: vec![scope_view(&graph(), 0.0)],
        };
        let text = render_show(&view, Style::Tree);
        let tree: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            tree,
            [
                "5.0 [dead-end: broken]",
                "4.0 [rollout 1970-01-01T00:16:40Z over 10m, throttle 0.0%]",
                "├── 3.0",
                "└── 2.0 [barrier: keys]",
                "    └── 1.0",
            ]
        );
    }
}
