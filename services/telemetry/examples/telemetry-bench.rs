//! Ingest benchmark: N simulated agents, each on its own Report stream,
//! send R reports each (an update cycle) to an in-process telemetry service
//! on the embedded store (or etcd with `--etcd URL`); prints and writes
//! `target/bench/telemetry.json` with acknowledged reports per second, the
//! acknowledgement latency percentiles and the scrape size and time.
//!
//! ```sh
//! cargo run --release -p upshift-telemetry --example telemetry-bench -- --agents 2000 --reports 5
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use upshift_common::clock::SystemClock;
use upshift_common::config::ServerSettings;
use upshift_common::telemetry::Metrics;
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::AgentState;
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;
use upshift_store::SharedStore;
use upshift_telemetry::TelemetrySettings;

struct Args {
    agents: usize,
    reports: usize,
    etcd: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        agents: 2000,
        reports: 5,
        etcd: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agents" => a.agents = value.parse()?,
            "--reports" => a.reports = value.parse()?,
            "--etcd" => a.etcd = Some(value),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// Report `k` of host `i`: idle, update available, staging, staged, steady on 2.0.
fn report(i: usize, k: usize) -> pb::HostStatus {
    let (booted, target, state) = match k % 5 {
        0 => ("1.0", "", AgentState::Idle),
        1 => ("1.0", "2.0", AgentState::UpdateAvailable),
        2 => ("1.0", "2.0", AgentState::Staging),
        3 => ("1.0", "2.0", AgentState::Staged),
        _ => ("2.0", "", AgentState::ReportingSteady),
    };
    pb::HostStatus {
        node_uuid: format!("bench{i:06}"),
        group: format!("g{}", i % 8),
        stream: "stable".into(),
        basearch: "x86_64".into(),
        booted_version: booted.into(),
        target_version: target.into(),
        state: state as i32,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let store: SharedStore = match &a.etcd {
        Some(url) => Arc::new(
            upshift_store::etcd::EtcdStore::connect(upshift_store::etcd::EtcdOptions {
                key_prefix: format!("/telemetry-bench-{}/", std::process::id()),
                ..upshift_store::etcd::EtcdOptions::new(vec![url.clone()])
            })
            .await?,
        ),
        None => Arc::new(upshift_store::embedded::EmbeddedStore::open(
            &dir.path().join("store.redb"),
        )?),
    };
    let server = ServerSettings {
        listen: ([127, 0, 0, 1], 0).into(),
        ..Default::default()
    };
    let metrics = Metrics::new("telemetry");
    let started = upshift_telemetry::bind(
        &server,
        TelemetrySettings::default(),
        store,
        SystemClock::shared(),
        metrics,
    )
    .await?;
    let url = format!("http://{}", started.bound.local_addr());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(started.bound.serve(async move { s.cancelled().await }));

    // hyper allows 200 concurrent streams per connection: 150 agents per connection.
    let mut clients = Vec::new();
    for _ in 0..a.agents.div_ceil(150) {
        clients.push(TelemetryServiceClient::connect(url.clone()).await?);
    }
    let began = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.agents {
        let mut client = clients[i / 150].clone();
        let reports = a.reports;
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(4);
            let mut acks = client.report(ReceiverStream::new(rx)).await?.into_inner();
            let mut latencies = Vec::with_capacity(reports);
            for k in 0..reports {
                let sent = Instant::now();
                tx.send(pb::ReportRequest {
                    sequence: k as u64 + 1,
                    status: Some(report(i, k)),
                })
                .await?;
                acks.message()
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = began.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    let scrape_began = Instant::now();
    let body = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let scrape_ms = scrape_began.elapsed().as_secs_f64() * 1e3;
    let total = latencies.len();
    let report = serde_json::json!({
        "store": if a.etcd.is_some() { "etcd" } else { "embedded" },
        "agents": a.agents,
        "reports": total,
        "seconds": elapsed.as_secs_f64(),
        "acknowledged_per_second": total as f64 / elapsed.as_secs_f64(),
        "ack_latency_ms": { "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0) },
        "scrape": { "bytes": body.len(), "ms": scrape_ms },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("telemetry.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    stop.cancel();
    Ok(())
}
