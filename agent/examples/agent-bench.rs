//! Agent benchmark (run by `cargo xtask bench agent`): the release
//! `upshift-agent` binary on the simulated backend with its hint stream open
//! to a real policy service (in this process).
//!
//! 1. Idle: resident memory (VmRSS, sampled every second) and CPU time
//!    (utime + stime) of the agent process over `--secs` seconds.
//! 2. Push latency, `--rounds` times: a new graph revision is published and
//!    the time until the agent logs its transition to `staging` is taken.
//!
//! Prints a JSON report on stdout.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use upshift_cincinnati::graph::{Graph, Node, PayloadScheme};
use upshift_common::auth::AdminAuth;
use upshift_common::clock::SystemClock;
use upshift_common::telemetry::Metrics;
use upshift_policy::state::ScopeKey;
use upshift_policy::{PolicyConfig, PolicyService};

struct Args {
    agent: PathBuf,
    secs: u64,
    rounds: u32,
}

fn args() -> Result<Args> {
    let mut a = Args {
        agent: PathBuf::from("target/release/upshift-agent"),
        secs: 60,
        rounds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--agent" => a.agent = v.into(),
            "--secs" => a.secs = v.parse().context("--secs")?,
            "--rounds" => a.rounds = v.parse().context("--rounds")?,
            _ => bail!("usage: agent-bench [--agent PATH] [--secs N] [--rounds N]"),
        }
    }
    Ok(a)
}

fn graph(versions: &[&str]) -> Graph {
    let nodes: Vec<Node> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| Node {
            version: v.to_string(),
            payload: format!("p{v}"),
            metadata: [(
                "org.fedoraproject.coreos.releases.age_index".to_string(),
                i.to_string(),
            )]
            .into(),
        })
        .collect();
    let edges = (1..nodes.len() as u32).map(|i| (0, i)).collect();
    Graph::new(nodes, edges).expect("valid graph")
}

fn key() -> ScopeKey {
    ScopeKey {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: PayloadScheme::Checksum,
    }
}

/// An agent process under a fresh root; its stderr lines arrive on `lines`
/// with their arrival instant.
struct Agent {
    child: Child,
    run_dir: PathBuf,
    lines: mpsc::Receiver<(Instant, String)>,
    _root: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(bin: &Path, policy: &str) -> Result<Agent> {
    let root = tempfile::tempdir()?;
    let conf = root.path().join("etc/upshift/agent.d");
    std::fs::create_dir_all(&conf)?;
    std::fs::write(
        conf.join("50-bench.toml"),
        format!(
            "[identity]\nnode_uuid = \"bench-node\"\nbasearch = \"x86_64\"\nstream = \"stable\"\n\
             [updates]\nbackend = \"stream\"\npolicy_url = \"{policy}\"\npoll_interval = \"1h\"\n\
             [lock]\nkind = \"immediate\"\n[os]\nbackend = \"simulated\"\n"
        ),
    )?;
    let state = root.path().join("var/lib/upshift");
    std::fs::create_dir_all(&state)?;
    std::fs::write(
        state.join("simulated-os.json"),
        r#"{"booted":{"version":"1","payload":"p1"}}"#,
    )?;
    let mut child = Command::new(bin)
        .arg("--root")
        .arg(root.path())
        .arg("run")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().context("agent stderr")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    Ok(Agent {
        child,
        run_dir: root.path().join("run/upshift"),
        lines,
        _root: root,
    })
}

/// Waits until the agent is idle with its hint stream open.
async fn wait_idle(a: &Agent) -> Result<()> {
    let sock = a.run_dir.join(upshift_agent::local::METRICS_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(m) = upshift_agent::local::scrape(&sock).await
            && m.contains("upshift_agent_hint_stream_connected 1\n")
            && m.contains("upshift_agent_state{state=\"idle\"} 1\n")
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("agent did not become idle with an open stream")
}

/// (utime + stime) in seconds and VmRSS in KiB of `pid`.
fn usage(pid: u32, tick: f64) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let cpu = (f[11].parse::<u64>()? + f[12].parse::<u64>()?) as f64 / tick;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok((cpu, rss))
}

fn clock_tick() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn idle(a: &Agent, secs: u64) -> Result<serde_json::Value> {
    let pid = a.child.id();
    let tick = clock_tick();
    let (cpu0, rss0) = usage(pid, tick)?;
    let mut rss_max = rss0;
    let start = Instant::now();
    for _ in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(usage(pid, tick)?.1);
    }
    let (cpu1, rss1) = usage(pid, tick)?;
    let wall = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "seconds": wall,
        "rss_kib_start": rss0,
        "rss_kib_end": rss1,
        "rss_kib_max": rss_max,
        "cpu_seconds": cpu1 - cpu0,
        "cpu_percent": 100.0 * (cpu1 - cpu0) / wall,
    }))
}

/// Publishes a new target and waits for the agent's `staging` transition.
fn push_to_staging(a: &Agent, policy: &PolicyService, revision: u64) -> Result<f64> {
    while a.lines.try_recv().is_ok() {}
    let pushed = Instant::now();
    policy.publish(key(), revision, graph(&["1", "2"]));
    let deadline = pushed + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, line) = a
            .lines
            .recv_timeout(left)
            .context("no staging transition within 30 s")?;
        if line.contains("transition") && line.contains("to=\"staging\"") {
            return Ok(at.duration_since(pushed).as_secs_f64() * 1000.0);
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let mut c = PolicyConfig::default();
    c.server.listen = "127.0.0.1:0".parse()?;
    let srv = upshift_policy::bind(
        &c,
        upshift_policy::store::MemoryStore::shared(),
        SystemClock::shared(),
        Metrics::new("policy-bench"),
        AdminAuth::new(None, Vec::new()),
    )
    .await?;
    let url = format!("http://{}", srv.bound.local_addr());
    let policy = srv.service;
    tokio::spawn(srv.bound.serve(std::future::pending::<()>()));
    let mut revision = 1;
    policy.publish(key(), revision, graph(&["1"]));

    let mut idle_report = serde_json::Value::Null;
    let mut latencies = Vec::new();
    for round in 0..args.rounds.max(1) {
        revision += 1;
        policy.publish(key(), revision, graph(&["1"]));
        let agent = start_agent(&args.agent, &url)?;
        wait_idle(&agent).await?;
        if round == 0 {
            eprintln!("agent-bench: idle for {} s", args.secs);
            idle_report = idle(&agent, args.secs).await?;
        }
        revision += 1;
        let ms = tokio::task::block_in_place(|| push_to_staging(&agent, &policy, revision))?;
        eprintln!("agent-bench: round {round}: hint to staging {ms:.2} ms");
        latencies.push(ms);
    }
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let report = serde_json::json!({
        "benchmark": "agent",
        "agent": args.agent.display().to_string(),
        "idle": idle_report,
        "hint_to_staging_ms": {
            "samples": latencies,
            "median": sorted[sorted.len() / 2],
            "max": sorted[sorted.len() - 1],
        },
        "targets": {"idle_rss_kib": 10240, "hint_to_staging_ms": 1000},
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
