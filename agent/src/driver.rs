//! The run loop: drives [`crate::machine`] with the simulated OS backend,
//! Cincinnati polling and the immediate or FleetLock gate.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use upshift_common::clock::Clock;

use crate::cincinnati::{Choice, Query, choose};
use crate::machine::{Action, Event, State, transition};
use crate::os::{OsBackend, Release, Simulated};
use crate::persist::{self, Persisted};
use crate::settings::{LockKind, Settings};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The OS was rebooted (simulated: exit with `EXIT_SIMULATED_REBOOT`).
    Rebooted,
}

/// Run-loop errors.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("state file: {0}")]
    Persist(#[from] std::io::Error),
    #[error("os: {0}")]
    Os(#[from] crate::os::OsError),
    #[error("illegal transition: {0}")]
    Transition(#[from] crate::machine::TransitionError),
    #[error("configuration: {0}")]
    Config(String),
}

/// Agent identity values used on the wire.
#[derive(Debug, Clone)]
pub struct Ident {
    pub node_uuid: String,
    pub platform: String,
    /// Dead-end notice file (`<root>/run/motd.d/85-upshift-deadend.motd`).
    pub motd_path: Option<std::path::PathBuf>,
}

/// Longest re-check interval while waiting for gates (or the poll interval if shorter).
pub const GATE_RETRY: Duration = Duration::from_secs(10);

fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.9..1.1);
    d.mul_f64(f)
}

/// Runs the agent until it reboots the (simulated) OS.
pub async fn run(
    settings: &Settings,
    ident: &Ident,
    os: &Simulated,
    clock: &dyn Clock,
) -> Result<Exit, DriverError> {
    let http = reqwest::Client::new();
    let dir = settings.state_dir.as_path();
    let mut p = persist::load(dir)?;
    let booted = os.booted().await?;
    let mut targets: HashMap<String, Release> = HashMap::new();
    let mut state = State::Start;
    let mut event = Event::Started {
        booted: booted.version.clone(),
        pending_target: p.pending_target.clone(),
    };
    loop {
        let now = clock.now();
        let (next, actions) = transition(&state, &event, now)?;
        tracing::info!(from = ?state, ?event, to = ?next, "transition");
        state = next;
        let mut next_event = None;
        for a in actions {
            if let Some(e) = act(
                a,
                settings,
                ident,
                os,
                &http,
                dir,
                &mut p,
                &mut targets,
                clock,
            )
            .await?
            {
                next_event = Some(e);
            }
            if matches!(state, State::Rebooting { .. }) {
                return Ok(Exit::Rebooted);
            }
        }
        event = match next_event {
            Some(e) => e,
            None => match &state {
                State::Idle | State::DeadEnd { .. } => {
                    poll(settings, ident, os, &http, &p, &mut targets).await?
                }
                State::WaitingForGates { .. } => {
                    tokio::time::sleep(jitter(settings.poll_interval.min(GATE_RETRY))).await;
                    Event::RetryDue
                }
                s => return Err(DriverError::Config(format!("stuck in {s:?}"))),
            },
        };
        if matches!(event, Event::NoUpdate | Event::DeadEndFound { .. }) {
            tokio::time::sleep(jitter(settings.poll_interval)).await;
        }
    }
}

async fn poll(
    settings: &Settings,
    ident: &Ident,
    os: &Simulated,
    http: &reqwest::Client,
    p: &Persisted,
    targets: &mut HashMap<String, Release>,
) -> Result<Event, DriverError> {
    let Some(base) = &settings.cincinnati_url else {
        return Err(DriverError::Config(
            "updates.cincinnati_url is not set".into(),
        ));
    };
    let booted = os.booted().await?;
    let q = Query {
        basearch: settings.basearch.clone(),
        stream: settings.stream.clone(),
        rollout_wariness: settings.rollout_wariness,
        node_uuid: ident.node_uuid.clone(),
        os_version: booted.version.clone(),
        os_checksum: booted.payload.clone(),
        group: settings.group.clone(),
        platform: ident.platform.clone(),
        oci: false,
    };
    let url = format!("{}/v1/graph", base.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .header("accept", "application/json")
        .query(&q.pairs())
        .send()
        .await
        .and_then(|r| r.error_for_status());
    let body = match resp {
        Ok(r) => r.bytes().await.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "graph poll failed");
            return Ok(Event::NoUpdate);
        }
    };
    let denied: Vec<String> = p.deny_list.iter().cloned().collect();
    Ok(
        match choose(&body, &booted, &denied, settings.allow_downgrade) {
            Choice::Update(r) => {
                let v = r.version.clone();
                targets.insert(v.clone(), r);
                Event::UpdateFound { target: v }
            }
            Choice::UpToDate => Event::NoUpdate,
            Choice::DeadEnd { reason } => Event::DeadEndFound { reason },
            Choice::Unknown(why) => {
                tracing::warn!(%why, "no usable graph");
                Event::NoUpdate
            }
        },
    )
}

#[allow(clippy::too_many_arguments)]
async fn act(
    a: Action,
    settings: &Settings,
    ident: &Ident,
    os: &Simulated,
    http: &reqwest::Client,
    dir: &Path,
    p: &mut Persisted,
    targets: &mut HashMap<String, Release>,
    clock: &dyn Clock,
) -> Result<Option<Event>, DriverError> {
    Ok(match a {
        Action::ReleaseLockIfHeld => {
            if p.lock_held {
                if settings.lock_kind == LockKind::Fleetlock
                    && !fleetlock(settings, ident, http, "steady-state").await
                {
                    return Err(DriverError::Config("fleetlock steady-state failed".into()));
                }
                p.lock_held = false;
            }
            p.pending_target = None;
            persist::save(dir, p)?;
            Some(Event::SteadyReported)
        }
        Action::Stage { target } => {
            let rel = match targets.get(&target) {
                Some(r) => r.clone(),
                None => return Ok(Some(Event::StageFailed)),
            };
            match os.stage(&rel).await {
                Ok(()) => {
                    p.pending_target = Some(target);
                    persist::save(dir, p)?;
                    Some(Event::StageSucceeded)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "staging failed");
                    *p.failure_counts.entry(target).or_default() += 1;
                    persist::save(dir, p)?;
                    Some(Event::StageFailed)
                }
            }
        }
        Action::ScheduleRetry { at } => {
            let wait = at.duration_since(clock.now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            Some(Event::RetryDue)
        }
        Action::DenyRelease { target } => {
            p.deny_list.insert(target);
            persist::save(dir, p)?;
            None
        }
        Action::CheckGates => Some(match settings.lock_kind {
            LockKind::Immediate => Event::GatesPassed,
            LockKind::Fleetlock => {
                if fleetlock(settings, ident, http, "pre-reboot").await {
                    p.lock_held = true;
                    persist::save(dir, p)?;
                    Event::GatesPassed
                } else {
                    Event::GatesRefused
                }
            }
            LockKind::Grpc => Event::GateCheckFailed,
        }),
        Action::Finalize { .. } => match os.finalize().await {
            Ok(()) => Some(Event::Finalized),
            Err(e) => {
                tracing::warn!(error = %e, "finalize failed");
                Some(Event::FinalizeFailed)
            }
        },
        Action::Reboot => {
            os.reboot().await?;
            None
        }
        Action::WriteDeadEndNotice { reason } => {
            if let Some(m) = &ident.motd_path {
                if let Some(d) = m.parent() {
                    std::fs::create_dir_all(d)?;
                }
                std::fs::write(
                    m,
                    format!(
                        "This host runs a dead-end release and will not be updated: {reason}\n"
                    ),
                )?;
            }
            None
        }
        Action::ClearDeadEndNotice => {
            if let Some(m) = &ident.motd_path {
                let _ = std::fs::remove_file(m);
            }
            None
        }
    })
}

/// FleetLock `POST <base>/v1/<op>`; true on 200.
async fn fleetlock(settings: &Settings, ident: &Ident, http: &reqwest::Client, op: &str) -> bool {
    let Some(base) = &settings.lock_url else {
        return false;
    };
    let body =
        serde_json::json!({"client_params": {"id": ident.node_uuid, "group": settings.group}});
    http.post(format!("{}/v1/{op}", base.trim_end_matches('/')))
        .header("fleet-lock-protocol", "true")
        .json(&body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}
