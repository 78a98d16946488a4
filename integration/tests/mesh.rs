//! The policy and lock services as real processes next to the graph
//! service: the policy follows the graph over gRPC, serves Zincati's
//! `/v1/graph` and gRPC hints, audits admin calls; the lock speaks FleetLock
//! and gRPC, keeps holders across a restart, and runs on a real etcd.

use std::time::Duration;

use anyhow::{Context, Result};
use upshift_integration::tools::{grpcurl, promtool_check_metrics};
use upshift_integration::{ServiceProcess, Workdir, stable_metadata};

const TOKEN: &str = "integration-admin-token-0123456789";
const READY: Duration = Duration::from_secs(30);

fn arg(path: &std::path::Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

async fn start_graph(dir: &Workdir) -> Result<ServiceProcess> {
    let metadata = dir.path().join("metadata");
    stable_metadata(&metadata, 58)?;
    let data = dir.path().join("graph-data");
    let graph = ServiceProcess::start(
        "graph",
        dir.path(),
        &[
            "serve",
            "graph",
            "--metadata",
            arg(&metadata),
            "--data-dir",
            arg(&data),
        ],
    )?;
    graph.wait_ready(READY).await?;
    Ok(graph)
}

fn token_file(dir: &Workdir) -> Result<std::path::PathBuf> {
    let path = dir.path().join("admin-token");
    std::fs::write(&path, format!("{TOKEN}\n"))?;
    Ok(path)
}

async fn start_policy(dir: &Workdir, graph: &ServiceProcess) -> Result<ServiceProcess> {
    let data = dir.path().join("policy-data");
    let token = token_file(dir)?;
    let policy = ServiceProcess::start(
        "policy",
        dir.path(),
        &[
            "serve",
            "policy",
            "--graph",
            &graph.url(),
            "--data-dir",
            arg(&data),
            "--admin-token-file",
            arg(&token),
        ],
    )?;
    policy.wait_ready(READY).await?;
    Ok(policy)
}

/// Zincati's request: the query it builds and its Accept header.
async fn zincati_graph(policy: &ServiceProcess, wariness: f64) -> Result<serde_json::Value> {
    let url = format!(
        "{}/v1/graph?basearch=x86_64&stream=stable&rollout_wariness={wariness}\
         &node_uuid=c1f0a8d9f2c34b5e8e1d1b5e4f7a9c01&os_version=34.20211004.3.1\
         &os_checksum=deadbeef&group=default&platform=qemu",
        policy.url()
    );
    let response = reqwest::Client::new()
        .get(url)
        .header("accept", "application/json")
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    Ok(response.json().await?)
}

fn versions(graph: &serde_json::Value) -> Vec<String> {
    graph["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["version"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn policy_follows_graph_serves_zincati_and_audits_admin_calls() -> Result<()> {
    let dir = Workdir::new()?;
    let graph = start_graph(&dir).await?;
    let mut policy = start_policy(&dir, &graph).await?;

    // The fully rolled-out 34.20211004.3.1 is offered to everyone; the last
    // rollout (started in 2021 over 48 hours) is complete by now.
    let body = zincati_graph(&policy, 1.0).await?;
    let offered = versions(&body);
    assert!(
        offered.contains(&"34.20211004.3.1".to_string()),
        "{offered:?}"
    );
    assert!(
        offered.contains(&"34.20211016.3.0".to_string()),
        "{offered:?}"
    );

    let addr = policy.addr().to_string();
    let services = grpcurl(&[&addr, "list"])?;
    for service in [
        "upshift.policy.v1.PolicyService",
        "upshift.policy.v1.RolloutAdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(service), "{service} missing: {services}");
    }

    let hint = grpcurl(&[
        "-d",
        r#"{"identity":{"node_uuid":"c1f0a8d9f2c34b5e8e1d1b5e4f7a9c01","group":"default",
            "rollout_wariness":0.5,"stream":"stable","basearch":"x86_64",
            "booted_version":"34.20211004.3.1",
            "booted_payload":"a44c3b4d10b94db300d420cba76249b6c6de368fa1f93613796e50d3ee8b3568"}}"#,
        &addr,
        "upshift.policy.v1.PolicyService/GetUpdateHint",
    ])?;
    let hint: serde_json::Value = serde_json::from_str(&hint)?;
    assert_eq!(
        hint["hint"]["target"]["version"], "34.20211016.3.0",
        "{hint}"
    );

    // Admin calls need the token, and are refused without it.
    let pause = r#"{"stream":"stable","version":"34.20211016.3.0","reason":"integration test"}"#;
    let refused = grpcurl(&[
        "-d",
        pause,
        &addr,
        "upshift.policy.v1.RolloutAdminService/PauseRollout",
    ]);
    let message = format!("{:#}", refused.expect_err("no token must be refused"));
    assert!(message.contains("Unauthenticated"), "{message}");
    let authorization = format!("authorization: Bearer {TOKEN}");
    grpcurl(&[
        "-H",
        &authorization,
        "-d",
        pause,
        &addr,
        "upshift.policy.v1.RolloutAdminService/PauseRollout",
    ])?;
    let listed = grpcurl(&[
        "-H",
        &authorization,
        "-d",
        r#"{"stream":"stable"}"#,
        &addr,
        "upshift.policy.v1.RolloutAdminService/ListRollouts",
    ])?;
    assert!(listed.contains("integration test"), "{listed}");

    // The pause is kept in the store: a restarted policy still has it.
    policy.restart()?;
    policy.wait_ready(READY).await?;
    let listed = grpcurl(&[
        "-H",
        &authorization,
        "-d",
        r#"{"stream":"stable"}"#,
        policy.addr(),
        "upshift.policy.v1.RolloutAdminService/ListRollouts",
    ])?;
    assert!(listed.contains("integration test"), "{listed}");

    let metrics = reqwest::get(format!("{}/metrics", policy.url()))
        .await?
        .text()
        .await?;
    assert!(metrics.contains("upshift_policy"), "{metrics}");
    promtool_check_metrics(&metrics)?;

    assert_eq!(policy.terminate(Duration::from_secs(20))?, Some(0));
    Ok(())
}

fn lock_config(dir: &Workdir) -> Result<std::path::PathBuf> {
    let path = dir.path().join("lock.toml");
    std::fs::write(
        &path,
        "[groups.workers]\nslots = 1\n\n[default]\nslots = 2\n",
    )?;
    Ok(path)
}

async fn fleetlock(
    lock: &ServiceProcess,
    endpoint: &str,
    id: &str,
    group: &str,
) -> Result<(u16, String)> {
    // Exactly what Zincati sends: pretty-printed JSON, no Content-Type.
    let body = format!(
        "{{\n  \"client_params\": {{\n    \"id\": \"{id}\",\n    \"group\": \"{group}\"\n  }}\n}}"
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/{endpoint}", lock.url()))
        .header("fleet-lock-protocol", "true")
        .body(body)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

fn holders(lock: &ServiceProcess, group: &str) -> Result<String> {
    grpcurl(&[
        "-d",
        &format!(r#"{{"group":"{group}"}}"#),
        lock.addr(),
        "upshift.lock.v1.LockService/GetGroup",
    ])
}

#[tokio::test]
async fn lock_speaks_fleetlock_and_grpc_and_keeps_holders_across_restart() -> Result<()> {
    let dir = Workdir::new()?;
    let config = lock_config(&dir)?;
    let data = dir.path().join("lock-data");
    let mut lock = ServiceProcess::start(
        "lock",
        dir.path(),
        &[
            "serve",
            "lock",
            "--config",
            arg(&config),
            "--data-dir",
            arg(&data),
        ],
    )?;
    lock.wait_ready(READY).await?;

    assert_eq!(
        fleetlock(&lock, "pre-reboot", "node-a", "workers").await?.0,
        200
    );
    // Recursive: the holder asking again is fine.
    assert_eq!(
        fleetlock(&lock, "pre-reboot", "node-a", "workers").await?.0,
        200
    );
    let (status, body) = fleetlock(&lock, "pre-reboot", "node-b", "workers").await?;
    assert_eq!(status, 409, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body)?;
    assert!(
        error["kind"].is_string() && error["value"].is_string(),
        "{body}"
    );

    let services = grpcurl(&[lock.addr(), "list"])?;
    assert!(
        services.contains("upshift.lock.v1.LockService"),
        "{services}"
    );
    assert!(
        services.contains("upshift.lock.v1.LockAdminService"),
        "{services}"
    );
    assert!(holders(&lock, "workers")?.contains("node-a"));

    // Holders live in the embedded store: a restart keeps them.
    lock.restart()?;
    lock.wait_ready(READY).await?;
    assert!(holders(&lock, "workers")?.contains("node-a"));
    let (status, _) = fleetlock(&lock, "pre-reboot", "node-b", "workers").await?;
    assert_eq!(status, 409);

    assert_eq!(
        fleetlock(&lock, "steady-state", "node-a", "workers")
            .await?
            .0,
        200
    );
    assert_eq!(
        fleetlock(&lock, "pre-reboot", "node-b", "workers").await?.0,
        200
    );

    let described = grpcurl(&[lock.addr(), "describe", "upshift.lock.v1.LockService"])?;
    assert!(described.contains("rpc Acquire"), "{described}");
    let groups = grpcurl(&[lock.addr(), "upshift.lock.v1.LockService/ListGroups"])?;
    assert!(
        groups.contains("workers") && groups.contains("node-b"),
        "{groups}"
    );

    // An Acquire stream through grpcurl: queued behind node-b, granted once
    // node-b releases over FleetLock.
    let waiter = std::process::Command::new("grpcurl")
        .args(["-plaintext", "-d", r#"{"id":"node-c","group":"workers"}"#])
        .arg(lock.addr())
        .arg("upshift.lock.v1.LockService/Acquire")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running grpcurl")?;
    // Wait until the waiter is queued (the group shows it), then release.
    let mut queued = false;
    for _ in 0..200 {
        if holders(&lock, "workers")?.contains("\"queueLength\": 1") {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        queued,
        "the Acquire call never queued: {}",
        holders(&lock, "workers")?
    );
    assert_eq!(
        fleetlock(&lock, "steady-state", "node-b", "workers")
            .await?
            .0,
        200
    );
    let output = tokio::task::spawn_blocking(move || waiter.wait_with_output()).await??;
    let stream = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stream}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let queued_at = stream.find("queued").context("no queued message")?;
    let granted_at = stream.find("granted").context("no granted message")?;
    assert!(queued_at < granted_at, "{stream}");
    assert!(holders(&lock, "workers")?.contains("node-c"));

    // Every grant and release is logged at info level, in plain text (the
    // log is a file, not a terminal: no colour codes).
    let log = std::fs::read_to_string(lock.log_path())?;
    assert!(!log.contains('\u{1b}'), "ANSI codes in a log file:\n{log}");
    for (action, target, reason) in [
        ("grant", "node-a", "fleetlock"),
        ("release", "node-a", "steady-state"),
        ("grant", "node-b", "fleetlock"),
        ("release", "node-b", "steady-state"),
        ("grant", "node-c", "grpc"),
    ] {
        let fields = [
            format!("action=\"{action}\""),
            "group=\"workers\"".to_string(),
            format!("target=\"{target}\""),
            format!("reason=\"{reason}\""),
        ];
        assert!(
            log.lines().any(|l| l.contains(" INFO ")
                && l.contains("lock audit")
                && fields.iter().all(|f| l.contains(f.as_str()))),
            "no info line for {action} {target}:\n{log}"
        );
    }

    let metrics = reqwest::get(format!("{}/metrics", lock.url()))
        .await?
        .text()
        .await?;
    promtool_check_metrics(&metrics)?;
    assert_eq!(lock.terminate(Duration::from_secs(20))?, Some(0));
    Ok(())
}

#[tokio::test]
async fn two_lock_replicas_share_one_etcd() -> Result<()> {
    if upshift_store::testing::skip_etcd() {
        return Ok(());
    }
    let etcd = upshift_store::testing::EtcdServer::start()
        .await
        .context("etcd must be installed (cargo xtask test installs it)")?;
    let dir = Workdir::new()?;
    let config = lock_config(&dir)?;
    let mut replicas = Vec::new();
    for name in ["lock-1", "lock-2"] {
        let data = dir.path().join(name);
        let replica = ServiceProcess::start(
            name,
            dir.path(),
            &[
                "serve",
                "lock",
                "--config",
                arg(&config),
                "--data-dir",
                arg(&data),
                "--etcd",
                &etcd.endpoint(),
            ],
        )?;
        replica.wait_ready(READY).await?;
        replicas.push(replica);
    }
    let (one, two) = (&replicas[0], &replicas[1]);
    assert_eq!(
        fleetlock(one, "pre-reboot", "node-a", "workers").await?.0,
        200
    );
    // The other replica sees the holder and refuses a second one.
    assert!(holders(two, "workers")?.contains("node-a"));
    assert_eq!(
        fleetlock(two, "pre-reboot", "node-b", "workers").await?.0,
        409
    );
    assert_eq!(
        fleetlock(two, "steady-state", "node-a", "workers").await?.0,
        200
    );
    assert_eq!(
        fleetlock(one, "pre-reboot", "node-b", "workers").await?.0,
        200
    );
    Ok(())
}
