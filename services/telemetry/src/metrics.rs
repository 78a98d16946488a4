//! Fleet metrics (OpenTelemetry instruments rendered by upshift-common's
//! `Metrics` on `/metrics`). Label values come from agent reports, so each
//! dimension keeps at most `max_label_values` distinct values for the life
//! of the process; later values are exported as `other`. No node ids.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use upshift_common::clock::SharedClock;

use crate::fleet::{Fleet, duration_ms};
use crate::record::{AttemptEvent, epoch_ms, state_name};

/// The label value used once a dimension is full.
pub const OTHER: &str = "other";

/// Caps the distinct values of each label dimension.
#[derive(Debug)]
pub struct LabelBudget {
    cap: usize,
    seen: Mutex<HashMap<&'static str, HashSet<String>>>,
}

impl LabelBudget {
    /// At most `cap` values per dimension.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: Mutex::default(),
        }
    }

    /// `value` if it is known or fits, else [`OTHER`].
    pub fn label(&self, dim: &'static str, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let set = seen.entry(dim).or_default();
        if set.contains(value) {
            return value.to_string();
        }
        if set.len() < self.cap {
            set.insert(value.to_string());
            return value.to_string();
        }
        OTHER.to_string()
    }
}

/// Instruments of the telemetry service.
#[derive(Debug, Clone)]
pub struct TelemetryMetrics {
    meter: Meter,
    budget: Arc<LabelBudget>,
    reports: Counter<u64>,
    attempts: Counter<u64>,
    failures: Counter<u64>,
    errors: Counter<u64>,
    staged_to_steady: Histogram<f64>,
    store_errors: Counter<u64>,
    pause_calls: Counter<u64>,
}

impl TelemetryMetrics {
    /// Creates the instruments on `meter`.
    pub fn new(meter: Meter, max_label_values: usize) -> Self {
        Self {
            budget: Arc::new(LabelBudget::new(max_label_values)),
            reports: meter
                .u64_counter("upshift_telemetry_reports")
                .with_description("Agent reports received, by result.")
                .build(),
            attempts: meter
                .u64_counter("upshift_telemetry_update_attempts")
                .with_description("Update attempts started, by stream and target version.")
                .build(),
            failures: meter
                .u64_counter("upshift_telemetry_update_failures")
                .with_description(
                    "Update attempts failed (release failure kinds only), by stream, target version and error kind.",
                )
                .build(),
            errors: meter
                .u64_counter("upshift_telemetry_agent_errors")
                .with_description(
                    "New errors reported by agents, by stream and error kind (release failures and outages).",
                )
                .build(),
            staged_to_steady: meter
                .f64_histogram("upshift_telemetry_staged_to_steady")
                .with_description("Time from staged to steady on the new release, by stream.")
                .with_unit("s")
                .with_boundaries(vec![
                    60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
                ])
                .build(),
            store_errors: meter
                .u64_counter("upshift_telemetry_store_errors")
                .with_description("Store operations that failed, by operation.")
                .build(),
            pause_calls: meter
                .u64_counter("upshift_telemetry_pause_calls")
                .with_description("PauseRollout calls to the policy service, by result.")
                .build(),
            meter,
        }
    }

    /// Counts one report.
    pub fn report(&self, result: &'static str) {
        self.reports.add(1, &[KeyValue::new("result", result)]);
    }

    /// Counts a store failure.
    pub fn store_error(&self, op: &'static str) {
        self.store_errors.add(1, &[KeyValue::new("op", op)]);
    }

    /// Counts a pause call.
    pub fn pause_call(&self, result: &'static str) {
        self.pause_calls.add(1, &[KeyValue::new("result", result)]);
    }

    /// Records the attempt events of one report.
    pub fn attempt_events(&self, events: &[AttemptEvent]) {
        let b = &self.budget;
        for e in events {
            match e {
                AttemptEvent::Started { stream, version } => self.attempts.add(
                    1,
                    &[
                        KeyValue::new("stream", b.label("stream", stream)),
                        KeyValue::new("target_version", b.label("version", version)),
                    ],
                ),
                AttemptEvent::ErrorReported { stream, kind } => self.errors.add(
                    1,
                    &[
                        KeyValue::new("stream", b.label("stream", stream)),
                        KeyValue::new("error_kind", b.label("error_kind", kind)),
                    ],
                ),
                AttemptEvent::Failed {
                    stream,
                    version,
                    kind,
                } => self.failures.add(
                    1,
                    &[
                        KeyValue::new("stream", b.label("stream", stream)),
                        KeyValue::new("target_version", b.label("version", version)),
                        KeyValue::new("error_kind", b.label("error_kind", kind)),
                    ],
                ),
                AttemptEvent::Steady {
                    stream,
                    staged_for: Some(d),
                    ..
                } => self.staged_to_steady.record(
                    d.as_secs_f64(),
                    &[KeyValue::new("stream", b.label("stream", stream))],
                ),
                AttemptEvent::Steady { .. } => {}
            }
        }
    }

    /// Registers the gauges read from the fleet view at scrape time.
    pub fn observe(&self, fleet: Arc<Mutex<Fleet>>, clock: SharedClock, stale_after: Duration) {
        self.observe_hosts(fleet.clone(), clock.clone(), stale_after);
        self.observe_stale(fleet.clone(), clock, stale_after);
        self.observe_halts(fleet);
    }

    fn observe_hosts(&self, fleet: Arc<Mutex<Fleet>>, clock: SharedClock, stale_after: Duration) {
        let budget = self.budget.clone();
        let f = fleet;
        let c = clock;
        self.meter
            .u64_observable_gauge("upshift_telemetry_hosts")
            .with_description("Fresh hosts by stream, booted version, state and group.")
            .with_callback(move |o| {
                let cutoff = epoch_ms(c.now()).saturating_sub(duration_ms(stale_after));
                let mut counts: BTreeMap<[String; 4], u64> = BTreeMap::new();
                let fleet = f.lock().unwrap_or_else(|p| p.into_inner());
                for h in fleet.hosts().filter(|h| h.last_seen_ms > cutoff) {
                    let s = &h.status;
                    let key = [
                        budget.label("stream", &s.stream),
                        budget.label("version", &s.booted_version),
                        state_name(s.state()).to_string(),
                        budget.label("group", &s.group),
                    ];
                    *counts.entry(key).or_default() += 1;
                }
                drop(fleet);
                for ([stream, version, state, group], n) in counts {
                    o.observe(
                        n,
                        &[
                            KeyValue::new("stream", stream),
                            KeyValue::new("version", version),
                            KeyValue::new("state", state),
                            KeyValue::new("group", group),
                        ],
                    );
                }
            })
            .build();
    }

    fn observe_stale(&self, fleet: Arc<Mutex<Fleet>>, clock: SharedClock, stale_after: Duration) {
        let budget = self.budget.clone();
        let f = fleet;
        self.meter
            .u64_observable_gauge("upshift_telemetry_stale_hosts")
            .with_description("Hosts that stopped reporting (not yet dropped), by stream.")
            .with_callback(move |o| {
                let cutoff = epoch_ms(clock.now()).saturating_sub(duration_ms(stale_after));
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                let fleet = f.lock().unwrap_or_else(|p| p.into_inner());
                for h in fleet.hosts().filter(|h| h.last_seen_ms <= cutoff) {
                    *counts
                        .entry(budget.label("stream", &h.status.stream))
                        .or_default() += 1;
                }
                drop(fleet);
                for (stream, n) in counts {
                    o.observe(n, &[KeyValue::new("stream", stream)]);
                }
            })
            .build();
    }

    fn observe_halts(&self, fleet: Arc<Mutex<Fleet>>) {
        self.meter
            .u64_observable_gauge("upshift_telemetry_halts")
            .with_description("Automatic rollout halts in force, by stream and version.")
            .with_callback(move |o| {
                let fleet = fleet.lock().unwrap_or_else(|p| p.into_inner());
                for h in fleet.halts() {
                    o.observe(
                        u64::from(h.in_force()),
                        &[
                            KeyValue::new("stream", h.stream.clone()),
                            KeyValue::new("version", h.version.clone()),
                        ],
                    );
                }
            })
            .build();
    }

    /// Registers the write-behind backlog gauge.
    pub fn observe_pending(&self, pending: Arc<dyn Fn() -> u64 + Send + Sync>) {
        self.meter
            .u64_observable_gauge("upshift_telemetry_pending_writes")
            .with_description("Host records accepted but not yet stored.")
            .with_callback(move |o| o.observe(pending(), &[]))
            .build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn events_become_bounded_series() {
        let m = upshift_common::telemetry::Metrics::new("t");
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
}
