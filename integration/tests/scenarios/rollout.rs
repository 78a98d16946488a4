//! Scenario 1: a rollout reaches every host in wariness order, never more
//! lock holders than the group's slots.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use upshift_integration::agent::AgentProcess;

use crate::mesh::{Mesh, MeshOptions};
use crate::metadata::{rollout_started, set_last_rollout};
use crate::wait::{LockRecord, describe, wait_converged, watch_lock};
use crate::{NEW, OLD, SERIAL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_reaches_every_host_in_wariness_order_within_the_slots() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Started 15 s ago over one minute: the throttle is at 25% and opens
    // the rest of the wariness space over the next 45 s.
    let mesh = Mesh::start(&MeshOptions::embedded(), |updates| {
        set_last_rollout(updates, rollout_started(15, 1))
    })
    .await?;
    let old = mesh.release(OLD)?;
    // Four hosts are eligible at once (a tie, contending for 2 slots), the
    // others open about 12 s apart.
    let wariness = [0.0, 0.05, 0.1, 0.15, 0.4, 0.6, 0.8, 1.0];
    let (record, watcher) = watch_lock(mesh.lock.url());
    let agents = mesh.start_agents(&wariness, &old)?;
    wait_converged(&agents, NEW, Duration::from_secs(120)).await?;
    watcher.abort();

    // Every host went OLD -> NEW in one reboot.
    for agent in &agents {
        assert_eq!(agent.boot_versions(), [OLD, NEW], "{}", describe(&agents));
    }
    assert_wariness_order(&agents, wariness);
    assert_within_the_slots(&mesh, &record, agents.len()).await?;

    // Telemetry sees the whole fleet steady on NEW.
    mesh.wait_fleet_on_new(agents.len()).await?;
    Ok(())
}

/// Hosts reach NEW in wariness order; hosts whose eligibility is less
/// than 0.2 of the wariness space (12 s) apart may tie.
fn assert_wariness_order(agents: &[AgentProcess], wariness: [f64; 8]) {
    let reached: Vec<(f64, Instant, &str)> = agents
        .iter()
        .zip(wariness)
        .map(|(a, w)| {
            let at = a
                .boots()
                .iter()
                .find(|b| b.version == NEW)
                .map(|b| b.at)
                .expect("booted NEW");
            (w, at, a.name())
        })
        .collect();
    for (wa, at_a, a) in &reached {
        for (wb, at_b, b) in &reached {
            if wb - wa >= 0.2 {
                assert!(
                    at_a < at_b,
                    "{a} (wariness {wa}) reached {NEW} after {b} (wariness {wb})"
                );
            }
        }
    }
    let mut order: Vec<_> = reached.clone();
    order.sort_by_key(|(_, at, _)| *at);
    eprintln!(
        "order reached: {:?}",
        order.iter().map(|(w, _, n)| (*n, *w)).collect::<Vec<_>>()
    );
}

/// The reboot slots bound the hosts rebooting at once, and every one of
/// the `hosts` held one.
async fn assert_within_the_slots(
    mesh: &Mesh,
    record: &Arc<Mutex<LockRecord>>,
    hosts: usize,
) -> Result<()> {
    let record = record.lock().unwrap().clone();
    eprintln!("lock record: {record:?}");
    assert_eq!(record.slots, 2);
    assert!(record.max_holders <= 2, "{record:?}");
    assert_eq!(record.holders_seen.len(), hosts, "{record:?}");
    let group = mesh.group().await?;
    assert!(group.holders.is_empty(), "{group:?}");
    let rollout = mesh.new_rollout().await?;
    assert!(!rollout.paused, "{rollout:?}");
    let audit = mesh.lock_audit().await?;
    eprintln!("lock audit: max {} holders at once", audit.max_concurrent);
    assert!(audit.max_concurrent <= 2, "{audit:#?}");
    assert_eq!(audit.grants.len(), hosts, "{audit:#?}");
    assert_eq!(audit.grants, audit.releases, "{audit:#?}");
    Ok(())
}
