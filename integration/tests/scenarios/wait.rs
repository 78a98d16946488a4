//! Bounded polling, the lock watcher, and what to report of the agents
//! when a wait fails.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinHandle;
use upshift_integration::agent::AgentProcess;
use upshift_proto::lock::v1 as lock_pb;
use upshift_proto::lock::v1::lock_service_client::LockServiceClient;

use crate::GROUP;

/// What the lock watcher saw.
#[derive(Debug, Default, Clone)]
pub struct LockRecord {
    /// Largest number of simultaneous holders.
    pub max_holders: usize,
    /// Largest configured slot count seen.
    pub slots: u32,
    /// Every holder id that ever held a slot.
    pub holders_seen: BTreeSet<String>,
    /// Group states received.
    pub updates: u64,
    /// Watch streams (re)opened.
    pub connections: u64,
}

/// Follows the group with `WatchGroup` (reconnecting across lock restarts)
/// and records the most holders at once.
pub fn watch_lock(url: String) -> (Arc<Mutex<LockRecord>>, JoinHandle<()>) {
    let record = Arc::new(Mutex::new(LockRecord::default()));
    let shared = record.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(mut client) = LockServiceClient::connect(url.clone()).await
                && let Ok(response) = client
                    .watch_group(lock_pb::WatchGroupRequest {
                        group: GROUP.into(),
                    })
                    .await
            {
                shared.lock().unwrap().connections += 1;
                let mut stream = response.into_inner();
                while let Ok(Some(message)) = stream.message().await {
                    if let Some(group) = message.group {
                        let mut r = shared.lock().unwrap();
                        r.updates += 1;
                        r.max_holders = r.max_holders.max(group.holders.len());
                        r.slots = r.slots.max(group.total_slots);
                        for h in group.holders {
                            r.holders_seen.insert(h.id);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (record, task)
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after
/// `limit` with `what` and the last observation.
pub async fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) if e.is::<Fatal>() => return Err(e.context(format!("waiting for {what}"))),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn describe(agents: &[AgentProcess]) -> String {
    agents
        .iter()
        .map(|a| {
            format!(
                "{}: booted {:?} staged {:?} boots {:?} exits {:?}",
                a.name(),
                a.booted().unwrap_or_default(),
                a.staged().ok().flatten(),
                a.boot_versions(),
                a.exits()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An error that ends [`wait_for`] at once instead of being retried.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Fails (fatally for [`wait_for`]) when an agent stopped with anything
/// but a simulated reboot.
pub fn check_alive(agents: &[AgentProcess]) -> Result<()> {
    for agent in agents {
        if agent.finished() {
            return Err(Fatal(format!(
                "{} stopped: exits {:?}\n{}",
                agent.name(),
                agent.exits(),
                agent.log_tail()
            ))
            .into());
        }
    }
    Ok(())
}

/// Waits until every agent booted `version` and is idle again (steady
/// reported, no slot held).
pub async fn wait_converged(agents: &[AgentProcess], version: &str, limit: Duration) -> Result<()> {
    wait_for(
        limit,
        &format!("every host idle on {version}"),
        async || {
            check_alive(agents)?;
            for agent in agents {
                if agent.booted()? != version {
                    return Ok(None);
                }
                let status = agent.status()?;
                if status.state() != "idle" || status.get("lock held") != "false" {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .with_context(|| describe(agents))
}
