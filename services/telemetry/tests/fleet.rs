//! The fleet view over gRPC: 500 simulated agents, the gauges on /metrics,
//! summaries, paging, WatchFleet, replicas sharing a store and restarts, on
//! the in-memory store, the embedded store and a real etcd.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mem.rs"]
mod mem;
#[path = "support/stores.rs"]
mod stores;

use std::time::Duration;

use futures::StreamExt;
use harness::{Agent, Server, parse, status, sum};
use upshift_common::clock::SystemClock;
use upshift_proto::telemetry::v1 as pb;
use upshift_proto::telemetry::v1::AgentState;

const HOSTS: usize = 500;

/// Host `i`'s first report: 300 idle on 1.0, 150 idle on 2.0, 50 staged 1.0 -> 2.0.
fn first_status(i: usize) -> pb::HostStatus {
    let id = format!("node{i:04}");
    let group = format!("g{}", i % 5);
    match i {
        0..300 => status(&id, &group, "1.0", "", AgentState::Idle, ""),
        300..450 => status(&id, &group, "2.0", "", AgentState::Idle, ""),
        _ => status(&id, &group, "1.0", "2.0", AgentState::Staged, ""),
    }
}

/// Runs `HOSTS` agents, each on its own stream (100 per connection).
async fn simulate(s: &Server) -> Vec<Agent> {
    let mut tasks = Vec::new();
    for chunk in 0..HOSTS / 100 {
        let client = s.client().await;
        for i in chunk * 100..(chunk + 1) * 100 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut agent = Agent::connect(&mut c).await;
                agent.report(first_status(i)).await.unwrap();
                (i, agent)
            }));
        }
    }
    let mut agents: Vec<(usize, Agent)> = Vec::new();
    for t in tasks {
        agents.push(t.await.unwrap());
    }
    agents.sort_by_key(|(i, _)| *i);
    agents.into_iter().map(|(_, a)| a).collect()
}

async fn many_agents_make_the_gauges(open: stores::Opener) {
    let s = Server::start("", open(), SystemClock::shared()).await;
    let mut agents = simulate(&s).await;
    // 10 of the staged hosts fail, 20 reach steady on 2.0.
    for (k, a) in agents.iter_mut().enumerate().skip(450).take(10) {
        let st = status(
            &format!("node{k:04}"),
            &format!("g{}", k % 5),
            "1.0",
            "2.0",
            AgentState::UpdateAvailable,
            "staging-failed",
        );
        a.report(st).await.unwrap();
    }
    for (k, a) in agents.iter_mut().enumerate().skip(460).take(20) {
        let st = status(
            &format!("node{k:04}"),
            &format!("g{}", k % 5),
            "2.0",
            "",
            AgentState::ReportingSteady,
            "",
        );
        a.report(st).await.unwrap();
    }

    let text = s.scrape().await;
    let m = parse(&text);
    let hosts = "upshift_telemetry_hosts";
    assert_eq!(sum(&m, hosts, &[]), HOSTS as f64, "{text}");
    assert_eq!(
        sum(&m, hosts, &[("version", "1.0"), ("state", "idle")]),
        300.0
    );
    assert_eq!(
        sum(&m, hosts, &[("version", "2.0"), ("state", "idle")]),
        150.0
    );
    assert_eq!(
        sum(
            &m,
            hosts,
            &[("version", "2.0"), ("state", "reporting-steady")]
        ),
        20.0
    );
    assert_eq!(
        sum(&m, hosts, &[("version", "1.0"), ("state", "staged")]),
        20.0
    );
    assert_eq!(
        sum(
            &m,
            hosts,
            &[("version", "1.0"), ("state", "update-available")]
        ),
        10.0
    );
    for g in 0..5 {
        assert_eq!(sum(&m, hosts, &[("group", &format!("g{g}"))]), 100.0);
    }
    assert_eq!(
        sum(
            &m,
            "upshift_telemetry_update_attempts_total",
            &[("target_version", "2.0")]
        ),
        50.0
    );
    assert_eq!(
        sum(
            &m,
            "upshift_telemetry_update_failures_total",
            &[("target_version", "2.0"), ("error_kind", "staging-failed")]
        ),
        10.0
    );
    assert_eq!(
        sum(
            &m,
            "upshift_telemetry_staged_to_steady_seconds_count",
            &[("stream", "stable")]
        ),
        20.0
    );
    assert_eq!(sum(&m, "upshift_telemetry_stale_hosts", &[]), 0.0);
    assert!(!text.contains("node0"), "node ids must not be labels");
    upshift_common::testing::promtool_check_metrics(&text);

    let summary = s.summary(pb::HostFilter::default()).await;
    assert_eq!(
        (summary.total_hosts, summary.stale_hosts),
        (HOSTS as u32, 0)
    );
    let g2 = s
        .summary(pb::HostFilter {
            group: "g2".into(),
            version: "2.0".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(g2.total_hosts, 30 + 4);

    // Paging: every host once, in node id order, filtered.
    let mut client = s.client().await;
    let mut token = String::new();
    let mut ids = Vec::new();
    loop {
        let page = client
            .get_fleet(pb::GetFleetRequest {
                filter: Some(pb::HostFilter {
                    version: "1.0".into(),
                    ..Default::default()
                }),
                page_size: 64,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.hosts.len() <= 64);
        ids.extend(
            page.hosts
                .iter()
                .map(|h| h.status.as_ref().unwrap().node_uuid.clone()),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids.len(), 330);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let bad = client
        .get_fleet(pb::GetFleetRequest {
            page_token: "not a token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    s.stop().await;
}
stores::on_each_store!(many_agents_on, many_agents_make_the_gauges);

async fn watch_and_replicas(open: stores::Opener) {
    let a = Server::start("watch_coalesce = \"50ms\"", open(), SystemClock::shared()).await;
    let b = Server::start("watch_coalesce = \"50ms\"", open(), SystemClock::shared()).await;
    let mut watch = b
        .client()
        .await
        .watch_fleet(pb::WatchFleetRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap().summary.unwrap();
    assert_eq!(first.total_hosts, 0);

    // Reports go to replica A; replica B's watchers see them through the store.
    let mut client = a.client().await;
    let mut agent = Agent::connect(&mut client).await;
    for i in 0..3 {
        agent
            .report(status(
                &format!("w{i}"),
                "default",
                "1.0",
                "",
                AgentState::Idle,
                "",
            ))
            .await
            .unwrap();
    }
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("a summary within 10s")
            .unwrap()
            .unwrap()
            .summary
            .unwrap();
        if next.total_hosts == 3 {
            assert_eq!(next.counts.len(), 1);
            assert_eq!(next.counts[0].hosts, 3);
            break;
        }
    }
    // A bad report ends the stream with INVALID_ARGUMENT and is not stored.
    let err = agent
        .report(status(
            "bad id!",
            "default",
            "1.0",
            "",
            AgentState::Idle,
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(a.summary(pb::HostFilter::default()).await.total_hosts, 3);
    a.stop().await;
    b.stop().await;
}
stores::on_each_store!(watch_and_replicas_on, watch_and_replicas);

async fn restart_keeps_the_view(open: stores::Opener) {
    let s = Server::start("", open(), SystemClock::shared()).await;
    let mut client = s.client().await;
    let mut agent = Agent::connect(&mut client).await;
    for i in 0..20 {
        let st = if i < 5 {
            status(
                &format!("r{i:02}"),
                "default",
                "1.0",
                "2.0",
                AgentState::Staging,
                "",
            )
        } else {
            status(
                &format!("r{i:02}"),
                "default",
                "1.0",
                "",
                AgentState::Idle,
                "",
            )
        };
        agent.report(st).await.unwrap();
    }
    drop(agent);
    s.stop().await;

    let s = Server::start("", open(), SystemClock::shared()).await;
    let summary = s.summary(pb::HostFilter::default()).await;
    assert_eq!(summary.total_hosts, 20);
    let staging = s
        .summary(pb::HostFilter {
            state: AgentState::Staging as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(staging.total_hosts, 5);
    let m = parse(&s.scrape().await);
    assert_eq!(
        sum(&m, "upshift_telemetry_hosts", &[("state", "idle")]),
        15.0
    );
    s.stop().await;
}
stores::on_each_store!(restart_on, restart_keeps_the_view);

/// The embedded store closed and opened again from its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_reopened_keeps_the_view() {
    use std::sync::Arc;
    use upshift_store::embedded::EmbeddedStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store: upshift_store::SharedStore = Arc::new(EmbeddedStore::open(&path).unwrap());
    let weak = Arc::downgrade(&store);
    let s = Server::start("", store, SystemClock::shared()).await;
    let mut client = s.client().await;
    let mut agent = Agent::connect(&mut client).await;
    for i in 0..10 {
        agent
            .report(status(
                &format!("e{i}"),
                "default",
                "1.0",
                "",
                AgentState::Idle,
                "",
            ))
            .await
            .unwrap();
    }
    drop(agent);
    drop(client);
    s.stop().await;
    // Wait for the stopped service's tasks to let go of the database.
    for _ in 0..200 {
        if weak.strong_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        weak.strong_count(),
        0,
        "the stopped service still holds the store"
    );
    let store: upshift_store::SharedStore = Arc::new(EmbeddedStore::open(&path).unwrap());
    let s = Server::start("", store, SystemClock::shared()).await;
    assert_eq!(s.summary(pb::HostFilter::default()).await.total_hosts, 10);
    s.stop().await;
}

/// The agent reports only its latest state: 12 of 20 hosts go from staging
/// to waiting-for-gates, finalizing or rebooting without a `staged` report.
/// Every host that reaches steady is in the staged-to-steady histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_to_steady_counts_hosts_never_reported_staged() {
    let s = Server::start("", harness::mem_store(), SystemClock::shared()).await;
    let mut client = s.client().await;
    let past_staged = [
        AgentState::Staged,
        AgentState::WaitingForGates,
        AgentState::Finalizing,
        AgentState::Rebooting,
        AgentState::Staged,
    ];
    for i in 0..20 {
        let id = format!("q{i:02}");
        let mut a = Agent::connect(&mut client).await;
        for (booted, target, state) in [
            ("1.0", "2.0", AgentState::Staging),
            ("1.0", "2.0", past_staged[i % past_staged.len()]),
            ("2.0", "", AgentState::ReportingSteady),
        ] {
            let st = status(&id, "default", booted, target, state, "");
            a.report(st).await.unwrap();
        }
    }
    let m = parse(&s.scrape().await);
    let count = "upshift_telemetry_staged_to_steady_seconds_count";
    assert_eq!(sum(&m, count, &[("stream", "stable")]), 20.0);
    s.stop().await;
}
