//! Scenario 4: hosts before a barrier go through the barrier release first.

use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::mesh::{Mesh, MeshOptions};
use crate::metadata::{rollout_started, set_last_rollout};
use crate::wait::{describe, wait_converged, watch_lock};
use crate::{NEW, SERIAL};

/// The barrier of revision 58 (34.20210611.3.0, signing keys rotation).
const BARRIER: &str = "34.20210611.3.0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_is_passed_before_the_newest_release() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // The last rollout is complete: only the barrier stands between the
    // old hosts and NEW.
    let mesh = Mesh::start(&MeshOptions::embedded(), |updates| {
        let releases = updates["releases"].as_array().context("releases")?;
        let barrier = releases
            .iter()
            .find(|r| r["version"] == BARRIER)
            .context("no barrier release")?;
        ensure!(barrier["metadata"]["barrier"].is_object(), "{barrier}");
        set_last_rollout(updates, rollout_started(600, 1))
    })
    .await?;
    let starts = [
        "34.20210529.3.0",
        "34.20210529.3.0",
        "34.20210529.3.0",
        "34.20210427.3.0",
        "34.20210427.3.0",
    ];
    let (record, watcher) = watch_lock(mesh.lock.url());
    let mut agents = Vec::new();
    for (index, version) in starts.iter().enumerate() {
        let booted = mesh.release(version)?;
        // Wariness from the node id, as on a real host.
        agents.push(mesh.start_agent(&mesh.spec(index, None, &booted))?);
    }
    wait_converged(&agents, NEW, Duration::from_secs(90)).await?;
    watcher.abort();
    eprintln!("{}", describe(&agents));
    let record = record.lock().unwrap().clone();
    assert!(record.max_holders <= 2, "{record:?}");
    assert!(mesh.group().await?.holders.is_empty());
    for (agent, start) in agents.iter().zip(starts) {
        assert_eq!(
            agent.boot_versions(),
            [start, BARRIER, NEW],
            "{}",
            describe(&agents)
        );
        // One simulated reboot per update: two in all.
        assert_eq!(agent.exits(), [Some(100), Some(100)], "{}", agent.name());
    }
    Ok(())
}
