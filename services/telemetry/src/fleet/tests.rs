use std::time::UNIX_EPOCH;

use upshift_proto::telemetry::v1::AgentState;

use super::*;
use crate::record::{StatusRecord, apply_status};

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

fn report(
    fleet: &mut Fleet,
    id: &str,
    t: u64,
    booted: &str,
    target: &str,
    state: AgentState,
    err: &str,
) {
    let status = StatusRecord {
        node_uuid: id.into(),
        stream: "stable".into(),
        group: "default".into(),
        booted_version: booted.into(),
        target_version: target.into(),
        state: state as i32,
        last_error_kind: err.into(),
        ..Default::default()
    };
    let (rec, _) = apply_status(fleet.get(id), status, at(t));
    fleet.put(rec);
}

fn rule() -> HaltRule {
    HaltRule {
        enabled: true,
        max_failure_ratio: 0.2,
        min_attempts: 10,
        max_failures: None,
        steady_within: Some(Duration::from_secs(3600)),
    }
}

#[test]
fn ratio_rule_needs_min_attempts() {
    let mut f = Fleet::new();
    for i in 0..5 {
        report(
            &mut f,
            &format!("h{i}"),
            0,
            "1",
            "2",
            AgentState::Staging,
            "",
        );
    }
    report(
        &mut f,
        "h0",
        1,
        "1",
        "2",
        AgentState::UpdateAvailable,
        "staging-failed",
    );
    report(
        &mut f,
        "h1",
        1,
        "1",
        "2",
        AgentState::UpdateAvailable,
        "staging-failed",
    );
    // 2 of 5 failed (40%) but fewer than 10 attempts.
    assert!(f.crossing("stable", "2", &rule(), at(2)).is_none());
    for i in 5..10 {
        report(
            &mut f,
            &format!("h{i}"),
            3,
            "1",
            "2",
            AgentState::Staging,
            "",
        );
    }
    // 2 of 10 = 20%: not above.
    assert!(f.crossing("stable", "2", &rule(), at(4)).is_none());
    report(
        &mut f,
        "h2",
        5,
        "1",
        "2",
        AgentState::UpdateAvailable,
        "staging-failed",
    );
    let c = f.crossing("stable", "2", &rule(), at(6)).unwrap();
    assert!(c.reason.contains("3 of 10"), "{}", c.reason);
    // Re-reporting the same error does not count twice.
    report(
        &mut f,
        "h2",
        7,
        "1",
        "2",
        AgentState::UpdateAvailable,
        "staging-failed",
    );
    assert_eq!(f.release("stable", "2").unwrap().failed, 3);
}

#[test]
fn outages_reported_by_staged_hosts_do_not_cross() {
    let mut f = Fleet::new();
    let r = HaltRule {
        max_failures: Some(2),
        ..rule()
    };
    let hosts: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
    for h in &hosts {
        report(&mut f, h, 0, "1", "2", AgentState::Staged, "");
    }
    // The policy service restarts, then the lock service does.
    for h in &hosts {
        report(
            &mut f,
            h,
            10,
            "1",
            "2",
            AgentState::Staged,
            "hints-unavailable",
        );
    }
    for h in &hosts {
        let state = AgentState::WaitingForGates;
        report(&mut f, h, 20, "1", "2", state, "gate-check-failed");
    }
    let stats = f.release("stable", "2").unwrap();
    assert_eq!((stats.attempted, stats.failed), (20, 0));
    assert!(f.crossing("stable", "2", &r, at(30)).is_none());
    // Real failures on the same hosts still cross.
    for h in &hosts[..3] {
        let state = AgentState::WaitingForGates;
        report(&mut f, h, 40, "1", "2", state, "finalize-failed");
    }
    let c = f.crossing("stable", "2", &r, at(50)).unwrap();
    assert!(c.reason.contains("3 of 20"), "{}", c.reason);
}

#[test]
fn overdue_attempts_count_as_failed() {
    let mut f = Fleet::new();
    for i in 0..10 {
        report(
            &mut f,
            &format!("h{i}"),
            0,
            "1",
            "2",
            AgentState::Staged,
            "",
        );
    }
    for i in 0..7 {
        report(&mut f, &format!("h{i}"), 60, "2", "", AgentState::Idle, "");
    }
    assert!(f.crossing("stable", "2", &rule(), at(3599)).is_none());
    let c = f.crossing("stable", "2", &rule(), at(3600)).unwrap();
    assert!(c.reason.contains("3 not steady"), "{}", c.reason);
}

#[test]
fn absolute_rule_and_halt_record_stop_it() {
    let mut f = Fleet::new();
    let r = HaltRule {
        max_failures: Some(1),
        ..rule()
    };
    report(
        &mut f,
        "a",
        0,
        "1",
        "2",
        AgentState::Staging,
        "staging-failed",
    );
    assert!(f.crossing("stable", "2", &r, at(1)).is_none());
    report(
        &mut f,
        "b",
        0,
        "1",
        "2",
        AgentState::Staging,
        "staging-failed",
    );
    let c = f.crossing("stable", "2", &r, at(1)).unwrap();
    f.put_halt(HaltRecord {
        stream: c.stream,
        version: c.version,
        reason: c.reason,
        at_ms: 0,
        paused_at_ms: None,
        last_error: None,
        lifted_at_ms: None,
    });
    assert!(f.crossing("stable", "2", &r, at(1)).is_none());
}

#[test]
fn summary_paging_and_ageing() {
    let mut f = Fleet::new();
    for i in 0..25 {
        report(
            &mut f,
            &format!("h{i:02}"),
            i,
            "1",
            "",
            AgentState::Idle,
            "",
        );
    }
    let stale_after = Duration::from_secs(10);
    let s = f.summary(&pb::HostFilter::default(), at(20), stale_after);
    assert_eq!((s.total_hosts, s.stale_hosts), (14, 11));
    let mut after = String::new();
    let mut seen = 0;
    let filter = pb::HostFilter {
        include_stale: true,
        ..Default::default()
    };
    loop {
        let (page, next) = f.page(&filter, &after, 10, at(20), stale_after);
        seen += page.len();
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen, 25);
    assert_eq!(f.seen_at_or_before(epoch_ms(at(4))).len(), 5);
    assert_eq!(f.next_seen_after(epoch_ms(at(4))), Some(epoch_ms(at(5))));
    f.remove("h00");
    assert_eq!(f.oldest_seen(), Some(epoch_ms(at(1))));
}

#[test]
fn filters_match_stream_version_state_and_group() {
    let mut f = Fleet::new();
    let mut put = |id: &str, stream: &str, group: &str, booted: &str, state: AgentState| {
        let status = StatusRecord {
            node_uuid: id.into(),
            stream: stream.into(),
            group: group.into(),
            booted_version: booted.into(),
            state: state as i32,
            ..Default::default()
        };
        let (rec, _) = apply_status(f.get(id), status, at(0));
        f.put(rec);
    };
    put("a", "stable", "web", "1", AgentState::Idle);
    put("b", "stable", "db", "1", AgentState::Staging);
    put("c", "testing", "web", "2", AgentState::Idle);
    put("d", "testing", "db", "1", AgentState::Idle);
    let hour = Duration::from_secs(3600);
    let ids = |filter: pb::HostFilter| -> Vec<String> {
        let (page, _) = f.page(&filter, "", 100, at(1), hour);
        page.iter()
            .map(|h| h.status.as_ref().unwrap().node_uuid.clone())
            .collect()
    };
    let filter = |stream: &str, version: &str, state: AgentState, group: &str| pb::HostFilter {
        stream: stream.into(),
        version: version.into(),
        state: state as i32,
        group: group.into(),
        include_stale: false,
    };
    let any = AgentState::Unspecified;
    assert_eq!(ids(filter("", "", any, "")), ["a", "b", "c", "d"]);
    assert_eq!(ids(filter("testing", "", any, "")), ["c", "d"]);
    assert_eq!(ids(filter("", "1", any, "")), ["a", "b", "d"]);
    assert_eq!(ids(filter("", "", AgentState::Staging, "")), ["b"]);
    assert_eq!(ids(filter("", "", any, "web")), ["a", "c"]);
    assert_eq!(ids(filter("testing", "1", AgentState::Idle, "db")), ["d"]);
    let s = f.summary(&filter("testing", "", any, ""), at(1), hour);
    assert_eq!(s.total_hosts, 2);
    assert!(s.counts.iter().all(|c| c.stream == "testing"), "{s:?}");
}
