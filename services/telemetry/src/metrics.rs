//! Fleet metrics (OpenTelemetry instruments rendered by upshift-common's
//! `Metrics` on `/metrics`). Label values come from agent reports, so each
//! dimension names at most `max_label_values` values at a time (see
//! [`budget`]): versions and groups are named again at each collection, the
//! ones with the most hosts in the view first, so versions that left the
//! fleet free their slot; the rest are `other`. No node ids.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use upshift_common::clock::SharedClock;

use crate::fleet::{Fleet, duration_ms};
use crate::record::{AttemptEvent, epoch_ms, state_name};

pub mod budget;

pub use budget::{LabelBudget, OTHER, Tally};

/// Labels of the attempts counter (label, budget dimension).
const ATTEMPT_KEYS: &[(&str, &str)] = &[("stream", "stream"), ("target_version", "version")];
/// Labels of the failures counter.
const FAILURE_KEYS: &[(&str, &str)] = &[
    ("stream", "stream"),
    ("target_version", "version"),
    ("error_kind", "error_kind"),
];

/// Instruments of the telemetry service.
#[derive(Debug, Clone)]
pub struct TelemetryMetrics {
    meter: Meter,
    budget: Arc<LabelBudget>,
    reports: Counter<u64>,
    attempts: Arc<Tally>,
    failures: Arc<Tally>,
    errors: Counter<u64>,
    staged_to_steady: Histogram<f64>,
    store_errors: Counter<u64>,
    pause_calls: Counter<u64>,
}

impl TelemetryMetrics {
    /// Creates the instruments on `meter`.
    pub fn new(meter: Meter, max_label_values: usize) -> Self {
        let m = Self {
            budget: Arc::new(LabelBudget::new(max_label_values)),
            reports: meter
                .u64_counter("upshift_telemetry_reports")
                .with_description("Agent reports received, by result.")
                .build(),
            attempts: Arc::new(Tally::new(ATTEMPT_KEYS)),
            failures: Arc::new(Tally::new(FAILURE_KEYS)),
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
        };
        m.observe_tally(
            "upshift_telemetry_update_attempts",
            "Update attempts started, by stream and target version.",
            m.attempts.clone(),
        );
        m.observe_tally(
            "upshift_telemetry_update_failures",
            "Update attempts failed (release failure kinds only), by stream, target version and error kind.",
            m.failures.clone(),
        );
        m
    }

    fn observe_tally(&self, name: &'static str, description: &'static str, tally: Arc<Tally>) {
        let budget = self.budget.clone();
        self.meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| {
                for (attrs, n) in tally.export(&budget) {
                    o.observe(n, &attrs);
                }
            })
            .build();
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
                AttemptEvent::Started { stream, version } => {
                    self.attempts.add(b, &[stream, version]);
                }
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
                } => self.failures.add(b, &[stream, version, kind]),
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
        self.meter
            .u64_observable_gauge("upshift_telemetry_hosts")
            .with_description("Fresh hosts by stream, booted version, state and group.")
            .with_callback(move |o| {
                let cutoff = epoch_ms(clock.now()).saturating_sub(duration_ms(stale_after));
                let counts = {
                    let fleet = fleet.lock().unwrap_or_else(|p| p.into_inner());
                    rerank(&budget, &fleet);
                    host_counts(&budget, &fleet, cutoff)
                };
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

/// Names versions and groups again from the view (once per collection: the
/// hosts gauge's callback). A version's weight is the hosts booted on it
/// plus the hosts working towards it, stale hosts included until dropped.
fn rerank(budget: &LabelBudget, fleet: &Fleet) {
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut groups: HashMap<&str, u64> = HashMap::new();
    for h in fleet.hosts() {
        let s = &h.status;
        *versions.entry(&s.booted_version).or_default() += 1;
        if !s.target_version.is_empty() && s.target_version != s.booted_version {
            *versions.entry(&s.target_version).or_default() += 1;
        }
        *groups.entry(&s.group).or_default() += 1;
    }
    budget.rerank("version", &versions);
    budget.rerank("group", &groups);
}

/// Fresh hosts (seen after `cutoff`) by stream, version, state and group labels.
fn host_counts(budget: &LabelBudget, fleet: &Fleet, cutoff: u64) -> BTreeMap<[String; 4], u64> {
    let mut counts: BTreeMap<[String; 4], u64> = BTreeMap::new();
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
    counts
}

#[cfg(test)]
mod tests;
