use std::time::{SystemTime, UNIX_EPOCH};

use upshift_common::clock::ScaledClock;
use upshift_common::telemetry::Metrics;
use upshift_proto::telemetry::v1::AgentState;

use super::*;
use crate::record::{StatusRecord, apply_status};

const T0: u64 = 1_700_000_000;

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + s)
}

/// A service's instruments over a fleet view; every report is fresh.
struct Rig {
    metrics: Metrics,
    tm: TelemetryMetrics,
    fleet: Arc<Mutex<Fleet>>,
}

impl Rig {
    fn new(cap: usize) -> Self {
        let metrics = Metrics::new("t");
        let tm = TelemetryMetrics::new(metrics.meter(), cap);
        let fleet = Arc::new(Mutex::new(Fleet::new()));
        let clock = ScaledClock::shared(at(1_000_000), 1.0);
        tm.observe(fleet.clone(), clock, Duration::from_secs(10_000_000));
        Self { metrics, tm, fleet }
    }

    /// Applies a report at `t` to the view and records its events.
    fn report(&self, id: &str, t: u64, booted: &str, target: &str, state: AgentState, err: &str) {
        let status = StatusRecord {
            node_uuid: id.into(),
            stream: "stable".into(),
            group: "g".into(),
            booted_version: booted.into(),
            target_version: target.into(),
            state: state as i32,
            last_error_kind: err.into(),
            ..Default::default()
        };
        let mut fleet = self.fleet.lock().unwrap();
        let (rec, events) = apply_status(fleet.get(id), status, at(t));
        fleet.put(rec);
        drop(fleet);
        self.tm.attempt_events(&events);
    }

    /// The samples of `metric` (a scrape, so also a collection).
    fn samples(&self, metric: &str) -> Vec<(String, f64)> {
        let prefix = format!("{metric}{{");
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| {
                let (series, v) = l.rsplit_once(' ').unwrap();
                (series.to_string(), v.parse().unwrap())
            })
            .collect()
    }
}

/// Sum of the samples whose series contains `label`.
fn total(samples: &[(String, f64)], label: &str) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s.contains(label))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn label_values_are_capped_per_dimension() {
    let b = LabelBudget::new(2);
    assert_eq!(b.label("version", "1"), "1");
    assert_eq!(b.label("version", "2"), "2");
    assert_eq!(b.label("version", "3"), OTHER);
    assert_eq!(b.label("version", "1"), "1", "known values stay");
    assert_eq!(b.label("group", "3"), "3", "dimensions are separate");
}

#[test]
fn rerank_names_the_values_with_the_most_hosts() {
    let b = LabelBudget::new(2);
    assert_eq!(b.label("version", "a"), "a");
    assert_eq!(b.label("version", "b"), "b");
    assert_eq!(b.label("version", "c"), OTHER);
    b.rerank("version", &HashMap::from([("a", 1), ("b", 5), ("c", 3)]));
    assert_eq!(b.label("version", "a"), OTHER);
    assert_eq!(b.label("version", "b"), "b");
    assert_eq!(b.label("version", "c"), "c");
    // A tie keeps the value already named.
    b.rerank("version", &HashMap::from([("a", 3), ("b", 5), ("c", 3)]));
    assert_eq!(b.label("version", "c"), "c");
    assert_eq!(b.label("version", "a"), OTHER);
    // Values that left free their slot for newcomers.
    b.rerank("version", &HashMap::from([("b", 5)]));
    assert_eq!(b.label("version", "d"), "d");
    assert_eq!(b.label("version", "e"), OTHER);
}

#[test]
fn events_become_bounded_series() {
    let m = Metrics::new("t");
    let tm = TelemetryMetrics::new(m.meter(), 1);
    let failed = |v: &str| AttemptEvent::Failed {
        stream: "stable".into(),
        version: v.into(),
        kind: "staging-failed".into(),
    };
    tm.attempt_events(&[failed("1"), failed("2"), failed("3")]);
    let text = m.render();
    assert!(text.contains(r#"target_version="1""#), "{text}");
    assert!(text.contains(r#"target_version="other""#), "{text}");
    assert!(!text.contains(r#"target_version="2""#), "{text}");
}

/// 30 hosts move through 120 releases, one after the other (a couple of
/// years of weekly releases), with a scrape after each. The budget is 50:
/// the current releases are still exported by name, and the series stay
/// bounded.
#[test]
fn a_fleet_moving_through_120_versions_keeps_current_names() {
    let rig = Rig::new(50);
    let hosts: Vec<String> = (0..30).map(|i| format!("h{i}")).collect();
    for h in &hosts {
        rig.report(h, 0, "0", "", AgentState::Idle, "");
    }
    for v in 1..=120u64 {
        let (old, new) = ((v - 1).to_string(), v.to_string());
        let t = v * 100;
        for (i, h) in hosts.iter().enumerate() {
            rig.report(h, t, &old, &new, AgentState::Staging, "");
            // Two hosts fail once on every release, then retry.
            if i < 2 {
                let e = "staging-failed";
                rig.report(h, t + 1, &old, &new, AgentState::UpdateAvailable, e);
                rig.report(h, t + 2, &old, &new, AgentState::Staging, e);
            }
            rig.report(h, t + 10, &new, "", AgentState::Idle, "");
        }
        let hosts_gauge = rig.samples("upshift_telemetry_hosts");
        assert_eq!(total(&hosts_gauge, &format!("version=\"{v}\"")), 30.0);
        assert_eq!(total(&hosts_gauge, "version=\"other\""), 0.0, "{v}");
    }
    // The last releases by name, the first ones gone.
    rig.report("h0", 20_000, "120", "121", AgentState::Staging, "");
    let attempts = rig.samples("upshift_telemetry_update_attempts_total");
    assert_eq!(total(&attempts, "target_version=\"121\""), 1.0);
    assert_eq!(total(&attempts, "target_version=\"120\""), 32.0);
    assert_eq!(total(&attempts, "target_version=\"other\""), 0.0);
    assert!(
        !attempts
            .iter()
            .any(|(s, _)| s.contains("target_version=\"1\""))
    );
    assert!(attempts.len() <= 50, "{attempts:?}");
    let failures = rig.samples("upshift_telemetry_update_failures_total");
    assert_eq!(total(&failures, "target_version=\"120\""), 2.0);
    assert!(failures.len() <= 50, "{failures:?}");
    let hosts_gauge = rig.samples("upshift_telemetry_hosts");
    assert_eq!(total(&hosts_gauge, "version=\"120\""), 30.0);
}

/// More versions present than the budget: the ones with the most hosts are
/// named, the rest are `other`, and the sum of every series is the fleet.
#[test]
fn crowded_dimension_names_the_biggest_versions() {
    let rig = Rig::new(2);
    let mut n = 0;
    for (version, hosts) in [("a", 1), ("b", 2), ("c", 5), ("d", 3)] {
        for _ in 0..hosts {
            rig.report(&format!("h{n}"), 0, version, "", AgentState::Idle, "");
            n += 1;
        }
    }
    let hosts = rig.samples("upshift_telemetry_hosts");
    assert_eq!(total(&hosts, "version=\"c\""), 5.0);
    assert_eq!(total(&hosts, "version=\"d\""), 3.0);
    assert_eq!(total(&hosts, "version=\"other\""), 3.0);
    assert_eq!(total(&hosts, "version="), 11.0);
    assert_eq!(hosts.len(), 3, "{hosts:?}");
}
