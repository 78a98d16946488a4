//! Scenario 5: a host on a dead-end release stays put and says why (status,
//! motd, telemetry `DEAD_END`).

use std::time::Duration;

use anyhow::{Context, Result};
use upshift_proto::telemetry::v1 as telemetry_pb;

use crate::mesh::{Mesh, MeshOptions};
use crate::metadata::{rollout_started, set_last_rollout};
use crate::wait::{check_alive, describe, wait_converged, wait_for};
use crate::{NEW, OLD, SERIAL};

const REASON: &str = "https://example.org/upshift/dead-end-scenario";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_end_host_stays_put_and_says_why() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mesh = start_with_old_a_dead_end().await?;
    // A host on the dead-end release, and one on an earlier release that
    // still updates.
    let dead = mesh.start_agent(&mesh.spec(0, Some(0.5), &mesh.release(OLD)?))?;
    let earlier = "34.20210919.3.0";
    let other = mesh.start_agent(&mesh.spec(1, Some(0.5), &mesh.release(earlier)?))?;
    let agents = [dead, other];
    let [dead, other] = &agents;

    let status = wait_for(Duration::from_secs(60), "the dead-end status", async || {
        check_alive(&agents)?;
        let status = dead.status()?;
        Ok((status.state() == "dead-end").then_some(status))
    })
    .await
    .with_context(|| describe(&agents))?;
    assert!(status.get("dead-end").contains(REASON), "{status:?}");
    assert_eq!(status.get("target"), "", "{status:?}");
    let motd = dead.root().join("run/motd.d/85-upshift-deadend.motd");
    let notice =
        std::fs::read_to_string(&motd).with_context(|| format!("reading {}", motd.display()))?;
    assert!(notice.contains(REASON), "{notice}");

    // Telemetry shows the host in DEAD_END.
    let node = mesh.spec(0, None, &mesh.release(OLD)?).node_uuid;
    wait_for(Duration::from_secs(30), "telemetry DEAD_END", async || {
        let hosts = mesh.fleet().await?;
        Ok(hosts
            .iter()
            .any(|h| h.node_uuid == node && h.state == telemetry_pb::AgentState::DeadEnd as i32)
            .then_some(()))
    })
    .await?;

    // The other host updates meanwhile; the dead-end host stays put.
    wait_converged(std::slice::from_ref(other), NEW, Duration::from_secs(60)).await?;
    assert_eq!(other.boot_versions(), [earlier, NEW]);
    check_alive(&agents)?;
    assert_eq!(dead.boot_versions(), [OLD]);
    assert_eq!(dead.booted()?, OLD);
    assert_eq!(dead.staged()?, None);
    assert_eq!(dead.status()?.state(), "dead-end");
    Ok(())
}

/// A mesh where OLD is a dead-end and the last rollout is complete.
async fn start_with_old_a_dead_end() -> Result<Mesh> {
    Mesh::start(&MeshOptions::embedded(), |updates| {
        let releases = updates["releases"].as_array_mut().context("releases")?;
        let old = releases
            .iter_mut()
            .find(|r| r["version"] == OLD)
            .context("no OLD in updates.json")?;
        old["metadata"]["deadend"] = serde_json::json!({ "reason": REASON });
        set_last_rollout(updates, rollout_started(600, 1))
    })
    .await
}
