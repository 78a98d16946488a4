//! `upshift rollout pause|resume|freeze|unfreeze` and the admin token.

use anyhow::Result;

use crate::support::{Mesh, NEW_ROLLOUT, TOKEN, golden, run_cli};

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
    pause_without_the_token_is_refused(&mesh, &pause)?;

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
    let policy_url = mesh.policy.url();
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

    freeze_and_unfreeze(&mesh, &urls)
}

/// `pause` without a token, and with a wrong one from the environment.
fn pause_without_the_token_is_refused(mesh: &Mesh, pause: &[&str]) -> Result<()> {
    let refused = mesh.cli(pause)?.expect(1)?;
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
    Ok(())
}

/// A stream freeze shows in `rollout list` and is lifted again.
fn freeze_and_unfreeze(mesh: &Mesh, urls: &[(String, &'static str)]) -> Result<()> {
    mesh.admin(&["rollout", "freeze", "stable", "--reason", "incident 42"])?
        .expect(0)?;
    let frozen = mesh.cli(&["rollout", "list"])?.expect(0)?;
    golden("rollout-list-frozen", &frozen.stdout, urls)?;
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
