//! Whole-mesh scenarios: real `upshift serve graph|policy|lock|telemetry`
//! processes and real `upshift-agent` processes on the simulated OS backend
//! (streamed hints from the policy, gRPC reboot lock, telemetry reports),
//! supervised by [`AgentProcess`] (exit 100 = simulated reboot, restarted
//! with the new release booted), on a copy of the Fedora CoreOS stable
//! metadata (revision 58) whose last rollout is re-dated to run during the
//! test. Everything runs on the real clock, so the tests wait with bounded
//! polling and assert only on order and outcomes, never on elapsed time.
//!
//! 1. A rollout reaches 8 hosts in wariness order, never more lock holders
//!    than the group's 2 slots (`WatchGroup` and the lock audit).
//! 2. A release failing on the first hosts is halted by telemetry; the
//!    other hosts never stage it.
//! 3. On a 3-member etcd cluster: SIGKILL and restart of lock, policy,
//!    telemetry and the etcd leader mid-rollout lose and duplicate no lock.
//! 4. Hosts before a barrier go through the barrier release first.
//! 5. A host on a dead-end release stays put and says why (status, motd,
//!    telemetry `DEAD_END`).
//!
//! Run: `cargo build --bins && cargo test -p upshift-integration --test
//! scenarios` (etcd on PATH for 3, or `UPSHIFT_SKIP_ETCD=1`). The scenarios
//! run one at a time, about two minutes in all.
//!
//! [`AgentProcess`]: upshift_integration::agent::AgentProcess

use std::time::Duration;

// A test crate root resolves `mod x;` next to itself, so the modules under
// scenarios/ are named by path.
#[path = "scenarios/barrier.rs"]
mod barrier;
#[path = "scenarios/dead_end.rs"]
mod dead_end;
#[path = "scenarios/halt.rs"]
mod halt;
#[path = "scenarios/mesh.rs"]
mod mesh;
#[path = "scenarios/metadata.rs"]
mod metadata;
#[path = "scenarios/restarts.rs"]
mod restarts;
#[path = "scenarios/rollout.rs"]
mod rollout;
#[path = "scenarios/wait.rs"]
mod wait;

const TOKEN: &str = "scenario-admin-token-0123456789abcdef";
const READY: Duration = Duration::from_secs(30);
/// The release every scenario's fleet starts on (revision 58's second newest).
const OLD: &str = "34.20211004.3.1";
/// The newest release of revision 58: the rollout under test.
const NEW: &str = "34.20211016.3.0";
const GROUP: &str = "default";

/// The scenarios run one at a time: each starts a dozen processes, and
/// the rollouts' timing assumes a machine that is not running four other
/// meshes (2 cores).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
