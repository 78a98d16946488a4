//! Restarting the agent (a crash, `systemctl restart`) in every state of
//! the machine, against the real policy and lock services in process: it
//! resumes without a second deploy or a lost lock slot. Also the restarts
//! after a rollback, during a staging backoff, and right after a grant.

#[path = "support/mesh.rs"]
mod mesh;

use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh::*;
use upshift_agent::driver::{Command, Exit};
use upshift_agent::os::OsBackend;
use upshift_agent::status::{ErrorKind, STATE_NAMES};
use upshift_cincinnati::graph::Graph;
use upshift_common::clock::SystemClock;

/// The states the tests below restart the agent in: all of them.
#[test]
fn every_state_has_a_restart_test() {
    let covered = [
        "start",             // restart_while_starting
        "reporting-steady",  // restart_while_reporting_steady_keeps_the_lock_until_released
        "idle",              // restart_while_idle
        "dead-end",          // restart_while_dead_end
        "update-available",  // restart_while_update_available
        "staging",           // restart_while_staging
        "staged",            // restart_while_staged
        "waiting-for-gates", // restart_while_waiting_for_the_lock
        "finalizing",        // restart_while_finalizing_keeps_the_one_slot
        "rebooting",         // restart_while_rebooting
    ];
    assert_eq!(covered, STATE_NAMES);
}

fn kind_is(s: &upshift_agent::status::Status, k: ErrorKind) -> bool {
    s.last_error.as_ref().is_some_and(|e| e.kind == k)
}

/// Stops the agent in a state, restarts it, and checks it completes with
/// one deploy and one lock slot.
async fn restart_in(hold: Hold, state: &'static str) {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let l = lock().await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, Some(&l.url));
    let os = Counting::new(t.path(), &[]);
    *os.hold.lock().unwrap() = Some(hold);
    let run = start(&s, &os, SystemClock::shared());
    os.wait_held().await;
    assert_eq!(run.status.borrow().state, state);
    run.stop().await;
    *os.hold.lock().unwrap() = None;
    let run = start(&s, &os, SystemClock::shared());
    assert_eq!(run.finished().await, Exit::Rebooted, "{state}");
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1, "{state}");
    assert_eq!(l.holders().await, vec!["agent-1".to_string()], "{state}");
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("idle", |s| s.state == "idle").await;
    run.stop().await;
    assert!(l.holders().await.is_empty(), "{state}");
    assert_eq!(os.booted().await.unwrap(), rel("2"));
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_starting() {
    restart_in(Hold::Booted, "start").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_staging() {
    restart_in(Hold::Stage, "staging").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_staged() {
    restart_in(Hold::Sessions, "staged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_finalizing_keeps_the_one_slot() {
    restart_in(Hold::Finalize, "finalizing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_rebooting() {
    restart_in(Hold::Reboot, "rebooting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_waiting_for_the_lock() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let l = lock().await;
    l.take("other-node").await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, Some(&l.url));
    let os = Counting::new(t.path(), &[]);
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("queued", |s| s.lock_queue_position == Some(1))
        .await;
    run.stop().await;
    // The cancelled Acquire left the queue; the restarted agent queues again
    // without deploying again.
    let mut run = start(&s, &os, SystemClock::shared());
    let st = run
        .until("queued again", |s| s.lock_queue_position == Some(1))
        .await;
    assert_eq!(st.target.as_deref(), Some("2"));
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
    l.release("other-node").await;
    assert_eq!(run.finished().await, Exit::Rebooted);
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_reporting_steady_keeps_the_lock_until_released() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let l = lock().await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, Some(&l.url));
    let os = Counting::new(t.path(), &[]);
    assert_eq!(
        start(&s, &os, SystemClock::shared()).finished().await,
        Exit::Rebooted
    );
    assert_eq!(l.holders().await, vec!["agent-1".to_string()]);
    // Booted into 2, but the lock service cannot be reached: the agent keeps
    // reporting steady state and remembers the slot.
    let mut down = s.clone();
    down.lock_url = Some(closed_url());
    let mut run = start(&down, &os, SystemClock::shared());
    run.until("steady state failing", |s| {
        s.state == "reporting-steady"
            && s.last_error
                .as_ref()
                .is_some_and(|e| e.kind == upshift_agent::status::ErrorKind::SteadyStateFailed)
    })
    .await;
    run.stop().await;
    assert!(
        upshift_agent::persist::load(&s.state_dir)
            .unwrap()
            .lock_held
    );
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("idle", |s| s.state == "idle").await;
    run.stop().await;
    assert!(l.holders().await.is_empty());
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_idle() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1"], &[]));
    let l = lock().await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, Some(&l.url));
    let os = Counting::new(t.path(), &[]);
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("idle", |s| s.state == "idle" && s.checks >= 1)
        .await;
    run.stop().await;
    // The update is published while the agent is down: the restarted one
    // takes it from the stream's first hint.
    p.service.publish(key(), 2, graph(&["1", "2"], &[(0, 1)]));
    let run = start(&s, &os, SystemClock::shared());
    assert_eq!(run.finished().await, Exit::Rebooted);
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("idle on 2", |s| s.state == "idle" && s.booted == "2")
        .await;
    run.stop().await;
    assert!(l.holders().await.is_empty());
}

fn dead_end_graph() -> Graph {
    let mut dead = node("1", 0);
    dead.metadata.insert(
        "org.fedoraproject.coreos.updates.deadend".into(),
        "true".into(),
    );
    dead.metadata.insert(
        "org.fedoraproject.coreos.updates.deadend_reason".into(),
        "see issue 42".into(),
    );
    Graph::new(vec![dead], vec![]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_dead_end() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, dead_end_graph());
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, None);
    let os = Counting::new(t.path(), &[]);
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("dead-end", |s| s.state == "dead-end").await;
    run.stop().await;
    let mut run = start(&s, &os, SystemClock::shared());
    let st = run.until("dead-end again", |s| s.state == "dead-end").await;
    assert_eq!(st.dead_end.as_deref(), Some("see issue 42"));
    // The dead-end is lifted and an update published: it is taken.
    p.service.publish(key(), 2, graph(&["1", "2"], &[(0, 1)]));
    assert_eq!(run.finished().await, Exit::Rebooted);
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_update_available() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1"], &[]));
    let l = lock().await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, Some(&l.url));
    let os = Counting::new(t.path(), &[]);
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("idle", |s| s.state == "idle" && s.checks >= 1)
        .await;
    assert!(run.control.send(Command::Pause).await.is_ok());
    p.service.publish(key(), 2, graph(&["1", "2"], &[(0, 1)]));
    run.until("update-available", |s| s.state == "update-available")
        .await;
    run.stop().await;
    // Still paused after the restart: the target is known, nothing staged.
    let mut run = start(&s, &os, SystemClock::shared());
    let st = run
        .until("update-available again", |s| s.state == "update-available")
        .await;
    assert!(st.paused);
    assert_eq!(st.target.as_deref(), Some("2"));
    assert_eq!(os.stages.load(Ordering::SeqCst), 0);
    assert!(run.control.send(Command::Resume).await.is_ok());
    assert_eq!(run.finished().await, Exit::Rebooted);
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
    assert_eq!(l.holders().await, vec!["agent-1".to_string()]);
}

/// A simulated host whose boot of 2 fails: every reboot into it comes back
/// on 1 with nothing staged.
fn rolling_back(dir: &std::path::Path) -> Counting {
    let mut os = Counting::new(dir, &[]);
    os.inner.fail_boot_versions = vec!["2".into()];
    os
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_a_rollback_releases_the_slot_and_counts_the_attempt() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let l = lock().await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, Some(&l.url));
    let os = rolling_back(t.path());
    assert_eq!(
        start(&s, &os, SystemClock::shared()).finished().await,
        Exit::Rebooted
    );
    assert_eq!(os.booted().await.unwrap(), rel("1"));
    assert_eq!(l.holders().await, vec!["agent-1".to_string()]);
    let mut run = start(&s, &os, SystemClock::shared());
    // Back on 1: the attempt failed, the slot is given back, and the next
    // attempt waits for its backoff instead of looping on the gates.
    let st = run
        .until("rolled back", |s| {
            s.state == "update-available" && kind_is(s, ErrorKind::RolledBack)
        })
        .await;
    assert!(!st.lock_held);
    assert_eq!(st.target.as_deref(), Some("2"));
    assert!(
        l.holders().await.is_empty(),
        "the lock service saw the release"
    );
    let saved = persisted(&s);
    assert!(!saved.lock_held);
    assert_eq!(saved.pending_target, None);
    assert_eq!(saved.failure_counts.get("2"), Some(&1));
    assert_eq!(os.deploys.load(Ordering::SeqCst), 1);
    run.stop().await;

    // Two more rollbacks spend the budget: 2 is denied, the slot is free.
    let mut reboots = 0;
    loop {
        let mut run = start(&s, &os, fast_clock());
        let st = run
            .until("rebooted or denied", |s| {
                s.state == "rebooting" || s.deny_list.contains(&"2".to_string())
            })
            .await;
        if st.state != "rebooting" {
            run.until("idle", |s| s.state == "idle").await;
            run.stop().await;
            break;
        }
        assert_eq!(run.finished().await, Exit::Rebooted);
        reboots += 1;
        assert!(reboots < 5, "no end to the rollbacks");
    }
    assert_eq!(reboots, 2);
    assert_eq!(os.deploys.load(Ordering::SeqCst), 3);
    assert!(persisted(&s).deny_list.contains("2"));
    assert!(l.holders().await.is_empty());
    assert_eq!(os.booted().await.unwrap(), rel("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_with_nothing_staged_gives_the_slot_back() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let l = lock().await;
    l.take("other-node").await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, Some(&l.url));
    let os = Counting::new(t.path(), &[]);
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("queued", |s| s.lock_queue_position == Some(1))
        .await;
    // Someone removes the staged deployment while the agent waits.
    os.inner.cleanup().await.unwrap();
    l.release("other-node").await;
    let st = run
        .until("gave up on the attempt", |s| {
            s.state == "update-available" && kind_is(s, ErrorKind::FinalizeFailed)
        })
        .await;
    assert!(!st.lock_held);
    assert!(l.holders().await.is_empty());
    assert_eq!(persisted(&s).failure_counts.get("2"), Some(&1));
    assert_eq!(os.booted().await.unwrap(), rel("1"));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_a_staging_backoff_keeps_the_retry_budget() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, None);
    let os = Counting::new(t.path(), &["2"]);
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("first attempt failed", |s| {
        s.state == "staging" && kind_is(s, ErrorKind::StagingFailed)
    })
    .await;
    run.stop().await;
    assert_eq!(os.stages.load(Ordering::SeqCst), 1);
    // Restarted during the 30 s backoff: the backoff starts again, the
    // next attempt is the second.
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("backoff", |s| s.state == "update-available")
        .await;
    run.stop().await;
    assert_eq!(os.stages.load(Ordering::SeqCst), 1);
    // On a fast clock (backoffs of 30 and 60 ms): attempt 2, a restart,
    // attempt 3, denied.
    let run = start(&s, &os, fast_clock());
    let t0 = tokio::time::Instant::now();
    while os.stages.load(Ordering::SeqCst) < 2 {
        assert!(t0.elapsed() < WAIT, "no second attempt");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    run.stop().await;
    let mut run = start(&s, &os, fast_clock());
    run.until("denied", |s| s.deny_list.contains(&"2".to_string()))
        .await;
    run.stop().await;
    assert_eq!(
        os.stages.load(Ordering::SeqCst),
        upshift_agent::machine::MAX_STAGE_ATTEMPTS as usize
    );
    assert!(persisted(&s).deny_list.contains("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_the_grant_does_not_leak_the_slot() {
    let p = policy(Duration::from_secs(1800)).await;
    p.service.publish(key(), 1, graph(&["1", "2"], &[(0, 1)]));
    let l = lock().await;
    l.take("other-node").await;
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path(), &p.url, Some(&l.url));
    let os = Counting::new(t.path(), &[]);
    *os.hold.lock().unwrap() = Some(Hold::Finalize);
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("queued", |s| s.lock_queue_position == Some(1))
        .await;
    // The state file while the agent waits for the grant: what a crash
    // right after the grant, before `lock_held` is saved, leaves on disk.
    let file = upshift_agent::persist::path(&s.state_dir);
    let asking = std::fs::read(&file).unwrap();
    l.release("other-node").await;
    os.wait_held().await;
    run.stop().await;
    assert_eq!(l.holders().await, vec!["agent-1".to_string()]);
    std::fs::write(&file, &asking).unwrap();
    assert!(!persisted(&s).lock_held);
    // The restarted agent goes to steady state (the staged deployment is
    // gone): it releases the slot it may have been granted.
    *os.hold.lock().unwrap() = None;
    os.inner.cleanup().await.unwrap();
    let mut run = start(&s, &os, SystemClock::shared());
    run.until("steady on 1", |s| {
        s.state == "update-available" && kind_is(s, ErrorKind::RolledBack)
    })
    .await;
    run.stop().await;
    assert!(
        l.holders().await.is_empty(),
        "the granted slot was released"
    );
    let saved = persisted(&s);
    assert!(!saved.lock_held && !saved.lock_acquiring);
}
