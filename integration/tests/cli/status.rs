//! `upshift status` and `upshift health`, unreachable services, usage
//! errors and shell completions.

use anyhow::{Context, Result};

use crate::support::{Mesh, closed_port_url, golden, run_cli};

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

    check_health(&mesh, &closed)
}

/// `upshift health` of the whole server, one gRPC service, an unknown
/// service and a closed port.
fn check_health(mesh: &Mesh, closed: &str) -> Result<()> {
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
    let down = run_cli(&["health", closed], &[])?.expect(3)?;
    assert!(down.stderr.contains("is unreachable"), "{}", down.stderr);
    let json = run_cli(&["health", &mesh.policy.url(), "-o", "json"], &[])?
        .expect(0)?
        .json()?;
    assert_eq!(json["status"], "serving");
    Ok(())
}

#[test]
fn unreachable_services_exit_3_and_usage_errors_exit_64() -> Result<()> {
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
    a_silent_server_runs_into_the_deadline()?;
    usage_errors_exit_64(&closed)
}

/// A server that accepts connections and never answers runs into the deadline.
fn a_silent_server_runs_into_the_deadline() -> Result<()> {
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
    Ok(())
}

/// Missing arguments, a bad URL and an unreadable token file are usage errors.
fn usage_errors_exit_64(closed: &str) -> Result<()> {
    run_cli(&["rollout", "pause", "stable"], &[])?.expect(64)?;
    let bad = run_cli(&["lock", "list", "--lock", "ftp://example.org"], &[])?.expect(64)?;
    assert!(bad.stderr.contains("http:// or https://"), "{}", bad.stderr);
    let no_token = ["--admin-token-file", "/nonexistent/token"];
    let mut admin = vec!["lock", "pause", "workers", "--reason", "x"];
    admin.extend(no_token);
    let missing = run_cli(&admin, &[])?.expect(64)?;
    assert!(
        missing.stderr.contains("/nonexistent/token"),
        "{}",
        missing.stderr
    );
    // Read-only commands and health checks do not read the token file.
    let mut health = vec!["health", closed];
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
