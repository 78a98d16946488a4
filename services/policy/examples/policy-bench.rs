//! Policy benchmark: `/v1/graph` throughput against a static ceiling, and N
//! concurrent `WatchUpdateHints` streams (server RSS per stream, delivery
//! delay of a fleet-wide change). The server runs in a child process (this
//! binary with `serve`), so its RSS is measured alone.
//!
//! Run (raise the fd limit first):
//! `bash -c 'ulimit -n 1048576; cargo run --release -p upshift-policy --example policy-bench -- [--streams N] [--secs S]'`
//! Writes `target/bench/policy.json`.

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use upshift_cincinnati::fcos::{ReleaseIndex, UpdatesMetadata};
use upshift_cincinnati::graph::{PayloadScheme, build_graph};
use upshift_common::auth::AdminAuth;
use upshift_common::clock::SystemClock;
use upshift_common::server::ServiceHost;
use upshift_common::telemetry::Metrics;
use upshift_policy::state::ScopeKey;
use upshift_policy::store::MemoryStore;
use upshift_policy::{PolicyConfig, PolicyService};
use upshift_proto::policy::v1 as pb;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/fcos/stable"
);
const TOKEN: &str = "bench";
/// Booted release of the benchmark streams (index 45 of history 058).
const BOOTED: usize = 45;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("serve") {
        return rt.block_on(serve());
    }
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    rt.block_on(run(flag("--streams", 100_000) as usize, flag("--secs", 5)))
}

fn fixture_graph() -> anyhow::Result<upshift_cincinnati::graph::Graph> {
    let index = ReleaseIndex::from_slice(&std::fs::read(format!("{FIXTURES}/releases.json"))?)?;
    let updates = UpdatesMetadata::from_slice(&std::fs::read(format!(
        "{FIXTURES}/updates-history/058.json"
    ))?)?;
    Ok(build_graph(&index, &updates, "x86_64", PayloadScheme::Checksum)?.graph)
}

fn key() -> ScopeKey {
    ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    }
}

/// Child: the policy service with the fixture graph plus `/static`.
async fn serve() -> anyhow::Result<()> {
    let mut config = PolicyConfig {
        keepalive_interval: Duration::from_secs(60),
        max_stream_age: Duration::from_secs(3600),
        ..Default::default()
    };
    config.server.listen = "127.0.0.1:0".parse()?;
    let metrics = Metrics::new("policy");
    let clock = SystemClock::shared();
    let host =
        ServiceHost::builder("policy", metrics.clone(), clock.clone()).settings(&config.server);
    let admin = AdminAuth::new(Some(TOKEN.into()), Vec::new());
    let svc = PolicyService::start(
        &config,
        MemoryStore::shared(),
        clock,
        &metrics,
        admin,
        host.shutdown_token(),
    );
    svc.publish(key(), 1, fixture_graph()?);
    // The ceiling: the same bytes a wariness-0.5 client gets, served plainly.
    let view = svc
        .state
        .borrow()
        .scopes
        .get(&key())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no view"))?;
    let body = view
        .variant(upshift_policy::state::VariantKey::Hidden(Default::default()))
        .body
        .clone();
    let fixed = axum::Router::new().route(
        "/static",
        axum::routing::get(move || {
            let b = body.clone();
            async move { ([(http::header::CONTENT_TYPE, "application/json")], b) }
        }),
    );
    let bound = host
        .readiness(svc.readiness.clone())
        .grpc(svc.grpc_routes())
        .grpc_service_names(upshift_policy::grpc::SERVICE_NAMES)
        .http(svc.router().merge(fixed))
        .bind(config.server.listen, None)
        .await?;
    println!("{}", bound.local_addr());
    bound.serve(std::future::pending()).await?;
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn load(base: &str, path: &str, secs: u64, conns: usize) -> (f64, f64) {
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let url = format!("{base}{path}");
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < stop {
                i += 1;
                let t = Instant::now();
                let u = format!("{url}&node_uuid={c:04x}{i:012x}");
                let r = client
                    .get(&u)
                    .header("accept", "application/json")
                    .send()
                    .await;
                if let Ok(r) = r {
                    let _ = r.bytes().await;
                }
                lat.push(t.elapsed().as_secs_f64());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / secs as f64, pct(&all, 0.99) * 1000.0)
}

async fn run(streams: usize, secs: u64) -> anyhow::Result<()> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .read_line(&mut line)?;
    let addr = line.trim().to_owned();
    let base = format!("http://{addr}");
    let pid = child.id();
    let result = bench(&base, pid, streams, secs).await;
    child.kill()?;
    child.wait()?;
    result
}

async fn bench(base: &str, pid: u32, streams: usize, secs: u64) -> anyhow::Result<()> {
    let q = "?basearch=x86_64&stream=stable";
    let (rps, p99) = load(base, &format!("/v1/graph{q}"), secs, 32).await;
    let (srps, sp99) = load(base, &format!("/static{q}"), secs, 32).await;
    println!(
        "/v1/graph: {rps:.0} req/s, p99 {p99:.2} ms; static ceiling: {srps:.0} req/s, p99 {sp99:.2} ms; ratio {:.2}",
        rps / srps
    );

    let booted = fixture_graph()?.nodes()[BOOTED].payload.clone();
    let rss_before = rss_kib(pid);
    let conns = streams / 150 + 1;
    let mut channels = Vec::new();
    for _ in 0..conns {
        channels.push(
            tonic::transport::Endpoint::from_shared(base.to_owned())?
                .connect()
                .await?,
        );
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let stop = CancellationToken::new();
    for i in 0..streams {
        let ch = channels[i % conns].clone();
        let (tx, ready, stop, booted) = (tx.clone(), ready.clone(), stop.clone(), booted.clone());
        tokio::spawn(async move {
            let mut c = pb::policy_service_client::PolicyServiceClient::new(ch);
            let id = pb::NodeIdentity {
                node_uuid: format!("{i:032x}"),
                stream: "stable".into(),
                basearch: "x86_64".into(),
                booted_payload: booted,
                ..Default::default()
            };
            let Ok(resp) = c
                .watch_update_hints(pb::WatchUpdateHintsRequest {
                    identity: Some(id),
                    resume_token: String::new(),
                })
                .await
            else {
                ready.add_permits(1);
                return;
            };
            let mut s = resp.into_inner();
            let mut first = true;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    m = s.message() => match m {
                        Ok(Some(m)) if matches!(m.event, Some(pb::watch_update_hints_response::Event::Hint(_))) => {
                            if std::mem::take(&mut first) { ready.add_permits(1) } else { let _ = tx.send(Instant::now()); }
                        }
                        Ok(Some(_)) => {}
                        _ => return,
                    }
                }
            }
        });
    }
    let opened = Instant::now();
    let _ = ready.acquire_many(streams as u32).await?;
    println!(
        "{streams} streams open in {:.1} s over {conns} connections",
        opened.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(pid);
    let per_stream = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / streams as f64;
    println!("server RSS {rss_before} KiB -> {rss_after} KiB: {per_stream:.0} bytes per stream");

    // Fleet-wide change: withdraw the rollout every stream's target belongs to.
    let mut admin =
        pb::rollout_admin_service_client::RolloutAdminServiceClient::new(channels[0].clone());
    let target = fixture_graph()?.nodes()[50].version.clone();
    let mut req = tonic::Request::new(pb::PauseRolloutRequest {
        stream: "stable".into(),
        version: target,
        reason: "bench".into(),
        mode: pb::PauseMode::Withdraw as i32,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    let sent = Instant::now();
    admin.pause_rollout(req).await?;
    let mut delays = Vec::with_capacity(streams);
    let deadline = sent + Duration::from_secs(60);
    while delays.len() < streams {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(t)) => delays.push(t.duration_since(sent).as_secs_f64()),
            _ => break,
        }
    }
    delays.sort_by(f64::total_cmp);
    let (c50, c99) = (pct(&delays, 0.5) * 1000.0, pct(&delays, 0.99) * 1000.0);
    println!(
        "fleet-wide change reached {}/{streams} streams: p50 {c50:.0} ms, p99 {c99:.0} ms",
        delays.len()
    );
    stop.cancel();

    let json = serde_json::json!({
        "graph": {"rps": rps, "p99_ms": p99, "static_rps": srps, "static_p99_ms": sp99, "ratio": rps / srps, "connections": 32, "secs": secs},
        "streams": {"count": streams, "connections": conns, "rss_before_kib": rss_before, "rss_after_kib": rss_after,
                    "bytes_per_stream": per_stream, "delivered": delays.len(), "change_p50_ms": c50, "change_p99_ms": c99},
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("policy.json"), serde_json::to_vec_pretty(&json)?)?;
    println!("wrote {}", dir.join("policy.json").display());
    Ok(())
}
