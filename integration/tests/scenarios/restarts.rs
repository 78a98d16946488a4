//! Scenario 3: on a 3-member etcd cluster, SIGKILL and restart of lock,
//! policy, telemetry and the etcd leader mid-rollout lose and duplicate no
//! lock.

use std::time::Duration;

use anyhow::{Context, Result};
use upshift_integration::agent::AgentProcess;
use upshift_integration::etcd::EtcdCluster;
use upshift_proto::lock::v1 as lock_pb;

use crate::mesh::{Mesh, MeshOptions};
use crate::metadata::{rollout_started, set_last_rollout};
use crate::wait::{check_alive, describe, wait_converged, wait_for, watch_lock};
use crate::{NEW, OLD, READY, SERIAL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_policy_lock_telemetry_and_an_etcd_member_lose_no_lock() -> Result<()> {
    let _serial = SERIAL.lock().await;
    if upshift_store::testing::skip_etcd() {
        return Ok(());
    }
    let mut etcd = EtcdCluster::start(3).await?;
    // Started 15 s ago over one minute: three hosts are eligible at once,
    // the others in pairs over the next 45 s.
    let mut mesh = Mesh::start(
        &MeshOptions {
            etcd: Some(etcd.endpoints()),
            ..MeshOptions::embedded()
        },
        |updates| set_last_rollout(updates, rollout_started(15, 1)),
    )
    .await?;
    let old = mesh.release(OLD)?;
    let wariness = [0.0, 0.05, 0.1, 0.3, 0.35, 0.6, 0.65, 0.9];
    let (record, watcher) = watch_lock(mesh.lock.url());
    let agents = mesh.start_agents(&wariness, &old)?;

    let holding = wait_mid_rollout(&mesh, &agents).await?;
    let before = booted(&agents);
    let leader = restart_all(&mut etcd, &mut mesh).await?;
    let after = booted(&agents);
    eprintln!(
        "etcd leader killed: member {leader}\nholding at the restarts: {holding:?}\nbooted before the restarts: {before:?}\nbooted after: {after:?}"
    );
    assert!(
        after.iter().any(|v| v == OLD),
        "the restarts came after the rollout: {after:?}"
    );

    wait_converged(&agents, NEW, Duration::from_secs(120)).await?;
    watcher.abort();

    // One reboot each: no host rebooted twice or skipped.
    for agent in &agents {
        assert_eq!(agent.boot_versions(), [OLD, NEW], "{}", describe(&agents));
    }
    let record = record.lock().unwrap().clone();
    eprintln!("lock record: {record:?}");
    assert!(
        record.connections >= 2,
        "the watch never saw the restart: {record:?}"
    );
    assert!(record.max_holders <= 2, "{record:?}");
    let group = mesh.group().await?;
    assert!(group.holders.is_empty(), "holder left: {group:?}");
    assert_one_grant_and_release_each(&mesh, agents.len()).await?;

    // The restarted telemetry (on etcd) sees the whole fleet on NEW.
    mesh.wait_fleet_on_new(agents.len()).await?;
    Ok(())
}

/// Mid-rollout: waits until a host is through and another holds a slot;
/// returns the holders.
async fn wait_mid_rollout(mesh: &Mesh, agents: &[AgentProcess]) -> Result<Vec<lock_pb::Holder>> {
    wait_for(
        Duration::from_secs(60),
        "a host on NEW and a holder",
        async || {
            check_alive(agents)?;
            let done = agents
                .iter()
                .filter(|a| a.booted().is_ok_and(|v| v == NEW))
                .count();
            let holders = mesh.group().await?.holders;
            Ok((done >= 1 && !holders.is_empty()).then_some(holders))
        },
    )
    .await
    .with_context(|| describe(agents))
}

/// The release each agent has booted.
fn booted(agents: &[AgentProcess]) -> Vec<String> {
    agents
        .iter()
        .map(|a| a.booted().unwrap_or_default())
        .collect()
}

/// Kills the etcd leader, restarts lock, policy and telemetry, then the
/// leader; returns the leader's member number.
async fn restart_all(etcd: &mut EtcdCluster, mesh: &mut Mesh) -> Result<usize> {
    let leader = etcd.leader().await?;
    etcd.kill(leader);
    mesh.lock.restart()?;
    mesh.lock.wait_ready(READY).await?;
    mesh.policy.restart()?;
    mesh.policy.wait_ready(READY).await?;
    mesh.telemetry.restart()?;
    mesh.telemetry.wait_ready(READY).await?;
    etcd.restart(leader).await?;
    Ok(leader)
}

/// The audit (kept in etcd across the restart): every one of the `hosts`
/// was granted a slot exactly once and released it once, by itself at
/// steady state; no lease expired and nothing was force-released.
async fn assert_one_grant_and_release_each(mesh: &Mesh, hosts: usize) -> Result<()> {
    let audit = mesh.lock_audit().await?;
    eprintln!("lock audit: max {} holders at once", audit.max_concurrent);
    assert_eq!(audit.grants.len(), hosts, "{audit:#?}");
    assert!(audit.grants.values().all(|&n| n == 1), "{audit:#?}");
    assert_eq!(audit.grants, audit.releases, "{audit:#?}");
    assert!(audit.max_concurrent <= 2, "{audit:#?}");
    Ok(())
}
