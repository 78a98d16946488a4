//! The operator CLI (`upshift graph|rollout|lock|fleet|status|health`)
//! against real service processes, with golden outputs.
//!
//! Human tables are compared with `tests/golden/*.txt` after replacing
//! what depends on the moment of the run (see [`placeholders`]) and
//! collapsing column padding; rewrite the
//! files with `UPSHIFT_BLESS=1 cargo test -p upshift-integration --test cli`.
//! JSON outputs are parsed with serde_json and checked field by field.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use upshift_integration::{ServiceProcess, Workdir};
use upshift_proto::telemetry::v1::AgentState;

#[path = "cli/support.rs"]
mod support;

use support::{
    Mesh, NEW_ROLLOUT, TOKEN, closed_port_url, collapse, fleetlock_pre_reboot, golden, host,
    make_certificates, placeholders, report, run_cli,
};

#[test]
fn placeholders_keep_fixture_times_and_replace_run_dependent_values() {
    let urls = vec![("http://127.0.0.1:4321".to_string(), "<lock-url>")];
    let text = "A     B  2021-11-02T16:00:00Z  2026-11-25T10:54:44Z  n (12s) 1m05s 2h03m 3d04h 2880m 34.20211016.3.0\nhttp://127.0.0.1:4321\n";
    assert_eq!(
        collapse(&placeholders(text, &urls)),
        "A  B  2021-11-02T16:00:00Z  ____-__-__T__:__:__Z  n (<age>) <age> <age> <age> 2880m 34.20211016.3.0\n<lock-url>\n"
    );
}

#[tokio::test]
async fn graph_show_and_rollout_list() -> Result<()> {
    let mesh = Mesh::start().await?;
    let urls = mesh.urls();
    let show = mesh
        .cli(&[
            "graph", "show", "--stream", "stable", "--arch", "x86_64", "--scheme", "checksum",
        ])?
        .expect(0)?;
    golden("graph-show", &show.stdout, &urls)?;

    let json = mesh
        .cli(&[
            "graph", "show", "--arch", "x86_64", "--scheme", "checksum", "-o", "json",
        ])?
        .expect(0)?
        .json()?;
    let scopes = json["scopes"].as_array().context("scopes")?;
    assert_eq!(scopes.len(), 1, "{json}");
    let scope = &scopes[0];
    assert_eq!(scope["stream"], "stable");
    assert_eq!(scope["scheme"], "checksum");
    assert!(scope["revision"].as_u64().is_some_and(|r| r > 0));
    let releases = scope["releases"].as_array().context("releases")?;
    let newest = releases.last().context("a release")?;
    assert_eq!(newest["version"], NEW_ROLLOUT);
    assert_eq!(newest["rollout"]["duration_minutes"], 2880);
    assert_eq!(newest["rollout"]["start"], "2021-11-02T16:00:00Z");
    assert_eq!(newest["rollout"]["throttle_now"], 1.0);
    let barriers: Vec<&Value> = releases.iter().filter(|r| r["barrier"] == true).collect();
    assert_eq!(barriers.len(), 5);
    assert!(
        barriers[0]["barrier_reason"]
            .as_str()
            .is_some_and(|r| r.contains("fedora-coreos-tracker"))
    );
    // A release before the last barrier updates to that barrier only.
    let first = &releases[0];
    assert_eq!(first["edges_out"], serde_json::json!(["31.20200517.3.0"]));

    let list = mesh.cli(&["rollout", "list"])?.expect(0)?;
    golden("rollout-list", &list.stdout, &urls)?;
    let json = mesh
        .cli(&["rollout", "list", "--output", "json"])?
        .expect(0)?
        .json()?;
    let rollouts = json["rollouts"].as_array().context("rollouts")?;
    assert_eq!(rollouts.len(), 2, "{json}");
    assert_eq!(rollouts[1]["version"], NEW_ROLLOUT);
    assert_eq!(rollouts[1]["throttle"], 1.0);
    assert_eq!(rollouts[1]["paused"], false);
    assert_eq!(json["freezes"], serde_json::json!([]));

    let tree = mesh
        .cli(&[
            "graph", "show", "--arch", "x86_64", "--scheme", "checksum", "--tree",
        ])?
        .expect(0)?;
    golden("graph-show-tree", &tree.stdout, &urls)?;

    // A filter matching nothing is a failed call, not an empty success.
    let none = mesh
        .cli(&["graph", "show", "--stream", "nope"])?
        .expect(1)?;
    assert!(
        none.stderr.contains("graph service at http://"),
        "{}",
        none.stderr
    );
    Ok(())
}

#[tokio::test]
async fn a_dead_end_edit_shows_in_graph_show_and_status() -> Result<()> {
    let mesh = Mesh::start().await?;
    let urls = mesh.urls();
    let before = mesh
        .cli(&["status", "--only", "graph,policy", "-o", "json"])?
        .expect(0)?
        .json()?;
    let first = before["services"][0]["details"]["revision"]
        .as_u64()
        .context("revision")?;

    // Edit the working copy of updates.json: one release becomes a dead-end.
    let updates = mesh.dir.path().join("metadata/stable/updates.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&updates)?)?;
    doc["releases"]
        .as_array_mut()
        .context("releases")?
        .push(serde_json::json!({
            "version": "34.20210919.3.0",
            "metadata": {"deadend": {"reason": "https://example.org/broken-bootloader"}}
        }));
    std::fs::write(&updates, serde_json::to_vec_pretty(&doc)?)?;

    // The graph service reloads and the policy follows: wait until status
    // shows both at a newer revision.
    let mut caught_up = None;
    for _ in 0..400 {
        let now = mesh
            .cli(&["status", "--only", "graph,policy", "-o", "json"])?
            .json()?;
        let scopes = now["scopes"].as_array().context("scopes")?;
        let x86 = scopes
            .iter()
            .find(|s| s["basearch"] == "x86_64" && s["scheme"] == "checksum")
            .context("the x86_64 scope")?;
        let latest = &now["services"][0]["details"]["revision"];
        if x86["graph_revision"].as_u64().is_some_and(|r| r > first)
            && x86["policy_revision"] == x86["graph_revision"]
            && now["services"][1]["details"]["graph_revision"] == *latest
        {
            caught_up = Some(now);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    caught_up.context("graph and policy never reached a new revision")?;

    let show = mesh
        .cli(&["graph", "show", "--arch", "x86_64", "--scheme", "checksum"])?
        .expect(0)?;
    golden("graph-show-dead-end", &show.stdout, &urls)?;
    let json = mesh
        .cli(&[
            "graph", "show", "--arch", "x86_64", "--scheme", "checksum", "-o", "json",
        ])?
        .expect(0)?
        .json()?;
    let releases = json["scopes"][0]["releases"]
        .as_array()
        .context("releases")?;
    let dead = releases
        .iter()
        .find(|r| r["version"] == "34.20210919.3.0")
        .context("the dead-end release")?;
    assert_eq!(dead["dead_end"], true);
    assert_eq!(
        dead["dead_end_reason"],
        "https://example.org/broken-bootloader"
    );
    assert_eq!(dead["edges_out"], serde_json::json!([]));
    Ok(())
}

#[tokio::test]
async fn rollout_pause_and_resume_need_the_admin_token() -> Result<()> {
    let mesh = Mesh::start().await?;
    let urls = mesh.urls();
    let pause = [
        "rollout",
        "pause",
        "stable",
        NEW_ROLLOUT,
        "--reason",
        "crash reports",
    ];

    let refused = mesh.cli(&pause)?.expect(1)?;
    assert!(
        refused
            .stderr
            .contains(&format!("policy service at {}", mesh.policy.url())),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("unauthenticated"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("--admin-token-file"),
        "{}",
        refused.stderr
    );
    assert!(refused.stdout.is_empty());

    let policy_url = mesh.policy.url();
    let mut wrong = pause.to_vec();
    wrong.extend(["--policy", &policy_url]);
    let wrong = run_cli(
        &wrong,
        &[("UPSHIFT_ADMIN_TOKEN", "not-the-admin-token-at-all".into())],
    )?
    .expect(1)?;
    assert!(
        wrong.stderr.contains("invalid admin token"),
        "{}",
        wrong.stderr
    );

    let paused = mesh.admin(&pause)?.expect(0)?;
    golden("rollout-pause", &paused.stdout, &urls)?;
    let json = mesh
        .cli(&["rollout", "list", "-o", "json"])?
        .expect(0)?
        .json()?;
    let rollout = &json["rollouts"][1];
    assert_eq!(rollout["paused"], true, "{json}");
    assert_eq!(rollout["pause_reason"], "crash reports (by token)");
    assert!(rollout["paused_at"].is_string());

    // The token from the environment works as well as the file.
    let mut resume = vec![
        "rollout",
        "resume",
        "stable",
        NEW_ROLLOUT,
        "--reason",
        "fixed",
    ];
    resume.extend(["--policy", &policy_url, "-o", "json"]);
    let resumed = run_cli(&resume, &[("UPSHIFT_ADMIN_TOKEN", TOKEN.into())])?.expect(0)?;
    assert_eq!(resumed.json()?["rollout"]["paused"], false);

    let unknown = mesh
        .admin(&["rollout", "pause", "stable", "1.2.3", "--reason", "x"])?
        .expect(1)?;
    assert!(unknown.stderr.contains("not_found"), "{}", unknown.stderr);

    mesh.admin(&["rollout", "freeze", "stable", "--reason", "incident 42"])?
        .expect(0)?;
    let frozen = mesh.cli(&["rollout", "list"])?.expect(0)?;
    golden("rollout-list-frozen", &frozen.stdout, &urls)?;
    let unfrozen = mesh
        .admin(&[
            "rollout", "unfreeze", "stable", "--reason", "over", "-o", "json",
        ])?
        .expect(0)?
        .json()?;
    assert_eq!(unfrozen["frozen"], false);
    let json = mesh
        .cli(&["rollout", "list", "-o", "json"])?
        .expect(0)?
        .json()?;
    assert_eq!(json["freezes"], serde_json::json!([]));
    Ok(())
}

#[tokio::test]
async fn lock_list_show_release_and_admin_changes() -> Result<()> {
    let mesh = Mesh::start().await?;
    let urls = mesh.urls();
    fleetlock_pre_reboot(&mesh.lock, "node-a", "workers").await?;
    fleetlock_pre_reboot(&mesh.lock, "node-b", "db").await?;

    let list = mesh.cli(&["lock", "list"])?.expect(0)?;
    golden("lock-list", &list.stdout, &urls)?;
    let show = mesh.cli(&["lock", "show", "workers"])?.expect(0)?;
    golden("lock-show", &show.stdout, &urls)?;
    let json = mesh
        .cli(&["lock", "list", "-o", "json"])?
        .expect(0)?
        .json()?;
    let groups = json["groups"].as_array().context("groups")?;
    let names: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names, ["db", "workers"]);
    let workers = &groups[1];
    assert_eq!(workers["total_slots"], 1);
    assert_eq!(workers["holders"][0]["id"], "node-a");
    assert_eq!(workers["holders"][0]["method"], "fleetlock");
    assert!(workers["holders"][0]["age_seconds"].is_u64());

    let release = [
        "lock",
        "release",
        "workers",
        "node-a",
        "--reason",
        "stuck host",
    ];
    let refused = mesh.cli(&release)?.expect(1)?;
    assert!(
        refused
            .stderr
            .contains(&format!("lock service at {}", mesh.lock.url())),
        "{}",
        refused.stderr
    );
    let released = mesh.admin(&release)?.expect(0)?;
    golden("lock-release", &released.stdout, &urls)?;
    let again = mesh.admin(&release)?.expect(0)?;
    assert_eq!(again.stdout, "node-a held no slot in workers\n");
    let json = mesh
        .cli(&["lock", "show", "workers", "-o", "json"])?
        .expect(0)?
        .json()?;
    assert_eq!(json["holders"], serde_json::json!([]));

    let slots = mesh
        .admin(&[
            "lock", "slots", "workers", "3", "--reason", "bigger", "-o", "json",
        ])?
        .expect(0)?
        .json()?;
    assert_eq!(slots["total_slots"], 3);
    mesh.cli(&["lock", "slots", "workers", "0", "--reason", "x"])?
        .expect(2)?;
    let paused = mesh
        .admin(&[
            "lock",
            "pause",
            "workers",
            "--reason",
            "change freeze",
            "-o",
            "json",
        ])?
        .expect(0)?
        .json()?;
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["pause_reason"], "change freeze");
    let resumed = mesh
        .admin(&[
            "lock", "resume", "workers", "--reason", "done", "-o", "json",
        ])?
        .expect(0)?
        .json()?;
    assert_eq!(resumed["paused"], false);
    let audit = mesh
        .admin(&["lock", "audit", "--group", "workers", "-o", "json"])?
        .expect(0)?
        .json()?;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["resume", "pause", "set-slots", "force-release", "grant"],
        "{audit}"
    );
    Ok(())
}

#[tokio::test]
async fn status_and_health() -> Result<()> {
    let mesh = Mesh::start().await?;
    let mut urls = mesh.urls();
    let status = mesh
        .cli(&["status", "--only", "graph,policy,lock"])?
        .expect(0)?;
    golden("status", &status.stdout, &urls)?;

    // The telemetry URL points at a closed port: exit 3, the rest still shown.
    let closed = closed_port_url()?;
    let all = mesh
        .cli(&["status", "--telemetry", &closed, "-o", "json"])?
        .expect(3)?;
    let json = all.json()?;
    let services = json["services"].as_array().context("services")?;
    let by_name = |n: &str| services.iter().find(|s| s["name"] == n).cloned().unwrap();
    assert_eq!(by_name("graph")["health"], "serving");
    assert_eq!(by_name("lock")["details"]["groups"], 0);
    assert_eq!(by_name("telemetry")["reachable"], false);
    assert!(
        by_name("telemetry")["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("telemetry service at {closed} is unreachable"))),
        "{json}"
    );
    let graph_revision = by_name("graph")["details"]["revision"].as_u64().unwrap();
    assert_eq!(
        by_name("policy")["details"]["graph_revision"],
        graph_revision
    );
    for scope in json["scopes"].as_array().context("scopes")? {
        assert_eq!(scope["policy_revision"], scope["graph_revision"], "{json}");
    }
    urls.push((closed.clone(), "<closed-url>"));
    let table = mesh.cli(&["status", "--telemetry", &closed])?.expect(3)?;
    golden("status-telemetry-down", &table.stdout, &urls)?;

    let lock_url = mesh.lock.url();
    let healthy = run_cli(&["health", &lock_url], &[])?.expect(0)?;
    assert_eq!(healthy.stdout, "SERVING\n");
    run_cli(
        &[
            "health",
            &lock_url,
            "--service",
            "upshift.lock.v1.LockService",
        ],
        &[],
    )?
    .expect(0)?;
    let unknown =
        run_cli(&["health", &lock_url, "--service", "no.such.Service"], &[])?.expect(1)?;
    assert!(unknown.stderr.contains(&lock_url), "{}", unknown.stderr);
    let down = run_cli(&["health", &closed], &[])?.expect(3)?;
    assert!(down.stderr.contains("is unreachable"), "{}", down.stderr);
    let json = run_cli(&["health", &mesh.policy.url(), "-o", "json"], &[])?
        .expect(0)?
        .json()?;
    assert_eq!(json["status"], "serving");
    Ok(())
}

#[test]
fn unreachable_services_exit_3_and_usage_errors_exit_2() -> Result<()> {
    let closed = closed_port_url()?;
    for (args, service) in [
        (vec!["graph", "show", "--graph", &closed], "graph"),
        (vec!["rollout", "list", "--policy", &closed], "policy"),
        (vec!["lock", "list", "--lock", &closed], "lock"),
        (
            vec!["fleet", "summary", "--telemetry", &closed],
            "telemetry",
        ),
    ] {
        let run = run_cli(&args, &[])?.expect(3)?;
        assert!(
            run.stderr
                .contains(&format!("{service} service at {closed} is unreachable")),
            "{args:?}: {}",
            run.stderr
        );
    }
    // A server that accepts connections and never answers runs into the deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent_url = format!("http://{}", silent.local_addr()?);
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().collect();
        drop(held);
    });
    let run = run_cli(
        &["lock", "list", "--lock", &silent_url, "--timeout", "1s"],
        &[],
    )?
    .expect(3)?;
    assert!(
        run.stderr.contains(&format!(
            "lock service at {silent_url} is unreachable: no answer within 1s"
        )),
        "{}",
        run.stderr
    );

    // Missing arguments, a bad URL and an unreadable token file are usage errors.
    run_cli(&["rollout", "pause", "stable"], &[])?.expect(2)?;
    let bad = run_cli(&["lock", "list", "--lock", "ftp://example.org"], &[])?.expect(2)?;
    assert!(bad.stderr.contains("http:// or https://"), "{}", bad.stderr);
    let no_token = ["--admin-token-file", "/nonexistent/token"];
    let mut admin = vec!["lock", "pause", "workers", "--reason", "x"];
    admin.extend(no_token);
    let missing = run_cli(&admin, &[])?.expect(2)?;
    assert!(
        missing.stderr.contains("/nonexistent/token"),
        "{}",
        missing.stderr
    );
    // Read-only commands and health checks do not read the token file.
    let mut health = vec!["health", &closed];
    health.extend(no_token);
    let down = run_cli(&health, &[])?.expect(3)?;
    assert!(down.stderr.contains("is unreachable"), "{}", down.stderr);
    Ok(())
}

#[test]
fn completions_include_the_operator_commands() -> Result<()> {
    let bash = run_cli(&["completions", "bash"], &[])?.expect(0)?;
    for word in [
        "rollout",
        "fleet",
        "status",
        "health",
        "--admin-token-file",
        "unfreeze",
    ] {
        assert!(bash.stdout.contains(word), "bash completions lack {word}");
    }
    Ok(())
}

#[tokio::test]
async fn fleet_summary_and_hosts_from_a_real_telemetry_service() -> Result<()> {
    let dir = Workdir::new()?;
    let data = dir.path().join("telemetry-data");
    let telemetry = ServiceProcess::start(
        "telemetry",
        dir.path(),
        &["serve", "telemetry", "--data-dir", data.to_str().unwrap()],
    )?;
    telemetry.wait_ready(Duration::from_secs(20)).await?;
    let old = "34.20211004.3.1";
    report(
        &telemetry,
        vec![
            host(
                "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
                "workers",
                NEW_ROLLOUT,
                AgentState::Idle as i32,
                "",
            ),
            host(
                "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
                "workers",
                old,
                AgentState::Rebooting as i32,
                NEW_ROLLOUT,
            ),
            host(
                "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c",
                "db",
                old,
                AgentState::Staging as i32,
                NEW_ROLLOUT,
            ),
        ],
    )
    .await?;
    let env = [("UPSHIFT_TELEMETRY_URL", telemetry.url())];
    let urls = vec![(telemetry.url(), "<telemetry-url>")];

    let summary = run_cli(&["fleet", "summary"], &env)?.expect(0)?;
    golden("fleet-summary", &summary.stdout, &urls)?;
    let json = run_cli(&["fleet", "summary", "-o", "json"], &env)?
        .expect(0)?
        .json()?;
    assert_eq!(json["total_hosts"], 3, "{json}");
    assert_eq!(json["stale_hosts"], 0);
    let rebooting: Vec<&Value> = json["counts"]
        .as_array()
        .context("counts")?
        .iter()
        .filter(|c| c["state"] == "rebooting")
        .collect();
    assert_eq!(rebooting.len(), 1, "{json}");
    assert_eq!(rebooting[0]["hosts"], 1);

    let hosts = run_cli(&["fleet", "hosts"], &env)?.expect(0)?;
    golden("fleet-hosts", &hosts.stdout, &urls)?;
    // One host per page: the pages are followed, and --limit stops early.
    let paged = run_cli(&["fleet", "hosts", "--page-size", "1", "-o", "json"], &env)?
        .expect(0)?
        .json()?;
    let ids: Vec<&str> = paged["hosts"]
        .as_array()
        .context("hosts")?
        .iter()
        .filter_map(|h| h["node_uuid"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c"
        ]
    );
    let limited = run_cli(
        &[
            "fleet",
            "hosts",
            "--page-size",
            "1",
            "--limit",
            "2",
            "-o",
            "json",
        ],
        &env,
    )?
    .expect(0)?
    .json()?;
    assert_eq!(limited["hosts"].as_array().map(Vec::len), Some(2));
    let filtered = run_cli(
        &[
            "fleet",
            "hosts",
            "--version",
            old,
            "--group",
            "workers",
            "-o",
            "json",
        ],
        &env,
    )?
    .expect(0)?
    .json()?;
    let hosts = filtered["hosts"].as_array().context("hosts")?;
    assert_eq!(hosts.len(), 1, "{filtered}");
    assert_eq!(hosts[0]["node_uuid"], "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
    assert_eq!(hosts[0]["state"], "rebooting");
    assert_eq!(hosts[0]["target_version"], NEW_ROLLOUT);
    assert_eq!(hosts[0]["lock_held"], true);
    let staging = run_cli(
        &["fleet", "hosts", "--state", "staging", "-o", "json"],
        &env,
    )?
    .expect(0)?
    .json()?;
    assert_eq!(
        staging["hosts"].as_array().map(Vec::len),
        Some(1),
        "{staging}"
    );
    let status = run_cli(&["status", "--only", "telemetry", "-o", "json"], &env)?
        .expect(0)?
        .json()?;
    assert_eq!(status["services"][0]["details"]["hosts"], 3, "{status}");
    Ok(())
}

#[tokio::test]
async fn https_with_a_private_ca_and_an_admin_client_certificate() -> Result<()> {
    if !upshift_integration::tools::on_path("openssl") {
        eprintln!("NOTICE: openssl not on PATH; skipping the TLS test");
        return Ok(());
    }
    let dir = Workdir::new()?;
    make_certificates(dir.path())?;
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let config = dir.path().join("lock.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nadmin_cert_names = [\"ops-admin\"]\ndata_dir = {:?}\n\
             [server.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             [default]\nslots = 1\n",
            file("lock-data"),
            file("server.pem"),
            file("server.key"),
            file("ca.pem"),
        ),
    )?;
    let lock = ServiceProcess::start(
        "lock",
        dir.path(),
        &["serve", "lock", "--config", config.to_str().unwrap()],
    )?;
    let https = format!("https://{}", lock.addr());
    let ca = file("ca.pem");
    let mut serving = false;
    for _ in 0..200 {
        if run_cli(&["health", &https, "--ca-file", &ca], &[])?.code == Some(0) {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving, "the TLS lock service never became healthy");

    let untrusted = run_cli(&["health", &https], &[])?.expect(3)?;
    assert!(
        untrusted.stderr.contains("--ca-file"),
        "{}",
        untrusted.stderr
    );
    let plain = run_cli(&["health", &lock.url(), "--timeout", "5s"], &[])?.expect(3)?;
    assert!(plain.stderr.contains(&lock.url()), "{}", plain.stderr);

    let pause = [
        "lock",
        "pause",
        "workers",
        "--reason",
        "tls test",
        "--lock",
        &https,
        "--ca-file",
        &ca,
    ];
    let refused = run_cli(&pause, &[])?.expect(1)?;
    assert!(
        refused.stderr.contains("unauthenticated"),
        "{}",
        refused.stderr
    );
    let mut with_cert = pause.to_vec();
    let (cert, key) = (file("client.pem"), file("client.key"));
    with_cert.extend(["--client-cert", &cert, "--client-key", &key, "-o", "json"]);
    let paused = run_cli(&with_cert, &[])?.expect(0)?.json()?;
    assert_eq!(paused["paused"], true);
    let audit = run_cli(
        &[
            "lock",
            "audit",
            "--lock",
            &https,
            "--ca-file",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
            "-o",
            "json",
        ],
        &[],
    )?
    .expect(0)?
    .json()?;
    assert_eq!(audit["entries"][0]["actor"], "cert:ops-admin", "{audit}");
    run_cli(
        &[
            "lock",
            "list",
            "--lock",
            &https,
            "--ca-file",
            &ca,
            "--client-cert",
            &cert,
        ],
        &[],
    )?
    .expect(2)?;
    Ok(())
}

#[tokio::test]
async fn an_automatic_halt_shows_in_fleet_summary_and_rollout_list() -> Result<()> {
    let mesh = Mesh::start().await?;
    let config = mesh.dir.path().join("telemetry.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\nurl = {:?}\nadmin_token_file = {:?}\n\
             [halt.default]\nmax_failure_ratio = 0.1\nmin_attempts = 2\n",
            mesh.policy.url(),
            mesh.token_file.to_str().unwrap(),
        ),
    )?;
    let data = mesh.dir.path().join("telemetry-data");
    let telemetry = ServiceProcess::start(
        "telemetry",
        mesh.dir.path(),
        &[
            "serve",
            "telemetry",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    )?;
    telemetry.wait_ready(Duration::from_secs(20)).await?;
    // Two hosts attempt the new release; one fails: 50% > 10%.
    let old = "34.20211004.3.1";
    let staging = AgentState::Staging as i32;
    let mut failing = host(
        "0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d",
        "workers",
        old,
        staging,
        NEW_ROLLOUT,
    );
    failing.last_error_kind = "staging-failed".into();
    failing.last_error = "no space left on device".into();
    report(
        &telemetry,
        vec![
            host(
                "0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e",
                "workers",
                old,
                staging,
                NEW_ROLLOUT,
            ),
            failing,
        ],
    )
    .await?;

    // The telemetry service pauses the rollout in the policy service.
    let mut paused = None;
    for _ in 0..400 {
        let list = mesh
            .cli(&["rollout", "list", "-o", "json"])?
            .expect(0)?
            .json()?;
        if list["rollouts"][1]["paused"] == true {
            paused = Some(list);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = paused.context("the rollout was never halted")?;
    let reason = list["rollouts"][1]["pause_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("automatic halt"), "{list}");

    let mut urls = mesh.urls();
    urls.push((telemetry.url(), "<telemetry-url>"));
    let env = [("UPSHIFT_TELEMETRY_URL", telemetry.url())];
    let summary = run_cli(&["fleet", "summary"], &env)?.expect(0)?;
    golden("fleet-summary-halted", &summary.stdout, &urls)?;
    let json = run_cli(&["fleet", "summary", "-o", "json"], &env)?
        .expect(0)?
        .json()?;
    assert_eq!(json["halts"][0]["version"], NEW_ROLLOUT, "{json}");
    let rollouts = mesh.cli(&["rollout", "list"])?.expect(0)?;
    golden("rollout-list-halted", &rollouts.stdout, &urls)?;
    let hosts = run_cli(&["fleet", "hosts", "--state", "staging"], &env)?.expect(0)?;
    assert!(hosts.stdout.contains("staging-failed"), "{}", hosts.stdout);
    Ok(())
}
