//! `upshift graph show` and `upshift rollout list`, before and after an
//! edit of the metadata.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::support::{Mesh, NEW_ROLLOUT, golden};

#[tokio::test]
async fn graph_show_and_rollout_list() -> Result<()> {
    let mesh = Mesh::start().await?;
    let urls = mesh.urls();
    check_graph_show(&mesh, &urls)?;
    check_rollout_list(&mesh, &urls)?;

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

/// `graph show` as a table and as JSON: the scope, the newest rollout and
/// the barriers.
fn check_graph_show(mesh: &Mesh, urls: &[(String, &'static str)]) -> Result<()> {
    let show = mesh
        .cli(&[
            "graph", "show", "--stream", "stable", "--arch", "x86_64", "--scheme", "checksum",
        ])?
        .expect(0)?;
    golden("graph-show", &show.stdout, urls)?;

    let json = graph_show_json(mesh)?;
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
    Ok(())
}

/// `graph show -o json` of the x86_64 checksum scope.
fn graph_show_json(mesh: &Mesh) -> Result<Value> {
    mesh.cli(&[
        "graph", "show", "--arch", "x86_64", "--scheme", "checksum", "-o", "json",
    ])?
    .expect(0)?
    .json()
}

/// `rollout list` as a table and as JSON.
fn check_rollout_list(mesh: &Mesh, urls: &[(String, &'static str)]) -> Result<()> {
    let list = mesh.cli(&["rollout", "list"])?.expect(0)?;
    golden("rollout-list", &list.stdout, urls)?;
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

    add_dead_end(&mesh)?;
    wait_caught_up(&mesh, first).await?;

    let show = mesh
        .cli(&["graph", "show", "--arch", "x86_64", "--scheme", "checksum"])?
        .expect(0)?;
    golden("graph-show-dead-end", &show.stdout, &urls)?;
    let json = graph_show_json(&mesh)?;
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

/// Edits the working copy of updates.json: one release becomes a dead-end.
fn add_dead_end(mesh: &Mesh) -> Result<()> {
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
    Ok(())
}

/// The graph service reloads and the policy follows: waits until status
/// shows both at a revision newer than `first`.
async fn wait_caught_up(mesh: &Mesh, first: u64) -> Result<()> {
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
    Ok(())
}
