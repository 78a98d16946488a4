//! `cargo xtask bench <name>`: benchmarks that print their figures and save
//! them as JSON under `target/bench/`. Benchmarks never run in tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::tools::{self, Tools};

/// Runs the named benchmark.
pub fn run(args: &[String]) -> Result<()> {
    let Some(name) = args.first() else {
        bail!("usage: cargo xtask bench <graph|lock|policy|agent> [args for the benchmark]");
    };
    let tools = Tools::provide_build_only()?;
    match name.as_str() {
        "graph" => graph(&tools),
        "lock" => lock(&tools, benchmark_args(args)),
        "policy" => policy(&tools, benchmark_args(args)),
        "agent" => agent(&tools, benchmark_args(args)),
        other => bail!("unknown benchmark {other:?} (known: graph, lock, policy, agent)"),
    }
}

/// The benchmark's own flags (after its name and an optional `--`).
fn benchmark_args(args: &[String]) -> &[String] {
    match args.get(1).map(String::as_str) {
        Some("--") => &args[2..],
        _ => &args[1..],
    }
}

fn bench_dir() -> Result<PathBuf> {
    let dir = tools::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn graph(tools: &Tools) -> Result<()> {
    tools.cargo(&["build", "--release", "--bin", "upshift"])?;
    tools.cargo(&[
        "build",
        "--release",
        "-p",
        "upshift-graph",
        "--example",
        "build_bench",
    ])?;
    let release = tools::target_dir().join("release");
    let out = Command::new(release.join("examples/build_bench"))
        .output()
        .context("build_bench")?;
    if !out.status.success() {
        bail!(
            "build_bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let build: serde_json::Value = serde_json::from_slice(&out.stdout)?;

    let work = tempfile::tempdir()?;
    let stream = work.path().join("metadata/stable");
    std::fs::create_dir_all(&stream)?;
    let fixtures = tools::workspace_root().join("../shared/fixtures/fcos/stable");
    std::fs::copy(fixtures.join("releases.json"), stream.join("releases.json"))?;
    std::fs::copy(
        fixtures.join("updates-history/058.json"),
        stream.join("updates.json"),
    )?;
    let server = Server::start(
        &release.join("upshift"),
        &["serve", "graph", "--metadata"],
        &work.path().join("metadata"),
        work.path(),
    )?;
    let url = format!(
        "http://{}/v1/graph?basearch=x86_64&stream=stable",
        server.addr
    );
    let size = reqwest_len(&url)?;
    let load = wrk(&url, 2, 64, 10)?;
    let report = serde_json::json!({
        "benchmark": "graph",
        "command": "cargo xtask bench graph",
        "build": build,
        "http": { "url": "/v1/graph?basearch=x86_64&stream=stable", "body_bytes": size, "wrk": load },
    });
    save("graph", &report)
}

/// `lock`: grant+release cycles on the embedded store and on a real etcd,
/// with the raw etcd transaction rate of the same run
/// (`services/lock/examples/lock-bench.rs`).
fn lock(tools: &Tools, extra: &[String]) -> Result<()> {
    let report = release_example(tools, "upshift-lock", "lock-bench", extra)?;
    save("lock", &report)
}

/// `policy`: `/v1/graph` against a static-file ceiling, then N concurrent
/// WatchUpdateHints streams (memory per stream, fleet-wide change delay)
/// (`services/policy/examples/policy-bench.rs`, which writes
/// target/bench/policy.json itself).
fn policy(tools: &Tools, extra: &[String]) -> Result<()> {
    tools.cargo(&[
        "build",
        "--release",
        "-p",
        "upshift-policy",
        "--example",
        "policy-bench",
    ])?;
    let bin = tools::target_dir().join("release/examples/policy-bench");
    // 100,000 streams need as many sockets on both ends.
    let status = Command::new("bash")
        .arg("-c")
        .arg(r#"ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#)
        .arg(&bin)
        .args(extra)
        .status()
        .context("policy-bench")?;
    if !status.success() {
        bail!("policy-bench exited with {status}");
    }
    Ok(())
}

/// `agent`: the release `upshift-agent` binary with its hint stream open to
/// a real policy service: idle RSS and CPU over `--secs` (default 60), then
/// the time from a pushed hint to staging started, `--rounds` times
/// (`agent/examples/agent-bench.rs`).
fn agent(tools: &Tools, extra: &[String]) -> Result<()> {
    tools.cargo(&[
        "build",
        "--release",
        "-p",
        "upshift-agent",
        "--bin",
        "upshift-agent",
    ])?;
    let bin = tools::target_dir().join("release/upshift-agent");
    let mut args = vec!["--agent".to_string(), bin.display().to_string()];
    args.extend(extra.iter().cloned());
    let report = release_example(tools, "upshift-agent", "agent-bench", &args)?;
    save("agent", &report)
}

/// Builds and runs a release example that prints its JSON report on stdout.
fn release_example(
    tools: &Tools,
    package: &str,
    example: &str,
    extra: &[String],
) -> Result<serde_json::Value> {
    tools.cargo(&["build", "--release", "-p", package, "--example", example])?;
    let bin = tools::target_dir().join("release/examples").join(example);
    let mut cmd = Command::new(bin);
    cmd.args(extra).stderr(Stdio::inherit());
    tools.apply_env(&mut cmd);
    let out = cmd.output().with_context(|| format!("running {example}"))?;
    if !out.status.success() {
        bail!("{example} exited with {}", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{example} printed no JSON report"))
}

fn save(name: &str, report: &serde_json::Value) -> Result<()> {
    let path = bench_dir()?.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(report)?)?;
    println!("{}", serde_json::to_string_pretty(report)?);
    eprintln!("xtask: saved {}", path.display());
    Ok(())
}

/// A service process started for a benchmark, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(bin: &Path, args: &[&str], last: &Path, work: &Path) -> Result<Self> {
        let addr_file = work.join("addr");
        let child = Command::new(bin)
            .args(args)
            .arg(last)
            .args(["--listen", "127.0.0.1:0", "--addr-file"])
            .arg(&addr_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting the service")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file)
                && !addr.trim().is_empty()
            {
                return Ok(Self {
                    child,
                    addr: addr.trim().to_string(),
                });
            }
            if Instant::now() > deadline {
                bail!("service did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reqwest_len(url: &str) -> Result<usize> {
    // curl keeps xtask free of an HTTP client; it is on every machine here.
    for _ in 0..100 {
        let out = Command::new("curl").args(["-sf", url]).output()?;
        if out.status.success() {
            return Ok(out.stdout.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} never answered")
}

/// Runs wrk and extracts requests/s and latency percentiles.
pub fn wrk(url: &str, threads: u32, connections: u32, seconds: u32) -> Result<serde_json::Value> {
    ensure_wrk()?;
    let out = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "--latency", url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}");
    }
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    Ok(serde_json::json!({
        "threads": threads,
        "connections": connections,
        "seconds": seconds,
        "requests_per_sec": field("Requests/sec:").and_then(|v| v.parse::<f64>().ok()),
        "p50": field("50%"),
        "p99": field("99%"),
        "non_2xx": field("Non-2xx"),
        "raw": text,
    }))
}

fn ensure_wrk() -> Result<()> {
    if tools::on_path("wrk") {
        return Ok(());
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "wrk"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if status.map(|s| s.success()).unwrap_or(false) && tools::on_path("wrk") {
        return Ok(());
    }
    bail!("wrk not found: install Debian's wrk package")
}
