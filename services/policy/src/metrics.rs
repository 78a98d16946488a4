//! Policy service metrics (OpenTelemetry, exported by upshift-common's `Metrics`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, UpDownCounter};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use upshift_common::clock::SharedClock;

use crate::decide::throttle;
use crate::overrides::Overrides;
use crate::state::PolicyState;

/// Request latency buckets (seconds): `/v1/graph` answers in well under a
/// millisecond and its target is p99 under 5 ms, so the SDK's default
/// buckets (0, 5, 10, ... seconds) would put every request in the first one.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Push lag buckets (seconds), around the 1 s delivery target.
const PUSH_LAG_BUCKETS: [f64; 13] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Instruments of the policy service.
#[derive(Debug, Clone)]
pub struct PolicyMetrics {
    meter: Meter,
    requests: Counter<u64>,
    latency: Histogram<f64>,
    /// Open WatchUpdateHints streams.
    pub open_streams: UpDownCounter<i64>,
    /// Hints pushed on streams.
    pub pushes: Counter<u64>,
    /// Scheduled instant to send, for time-triggered pushes.
    pub push_lag: Histogram<f64>,
    nodes_seen: Arc<Mutex<HyperLogLog>>,
}

impl PolicyMetrics {
    /// Creates the instruments on `meter`.
    pub fn new(meter: Meter) -> Self {
        let nodes_seen = Arc::new(Mutex::new(HyperLogLog::default()));
        let hll = nodes_seen.clone();
        meter
            .f64_observable_gauge("upshift_policy_unique_nodes")
            .with_description("Estimated distinct node ids seen since start (HyperLogLog).")
            .with_callback(move |o| o.observe(hll.lock().map(|h| h.estimate()).unwrap_or(0.0), &[]))
            .build();
        Self {
            requests: meter
                .u64_counter("upshift_policy_requests")
                .with_description("Policy requests by route and result kind.")
                .build(),
            latency: meter
                .f64_histogram("upshift_policy_request_duration")
                .with_description("Policy request latency by route.")
                .with_unit("s")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            open_streams: meter
                .i64_up_down_counter("upshift_policy_open_streams")
                .with_description("Open WatchUpdateHints streams.")
                .build(),
            pushes: meter
                .u64_counter("upshift_policy_pushes")
                .with_description("Update hints pushed on streams.")
                .build(),
            push_lag: meter
                .f64_histogram("upshift_policy_push_lag")
                .with_description("Delay from a throttle-opening instant to the push.")
                .with_unit("s")
                .with_boundaries(PUSH_LAG_BUCKETS.to_vec())
                .build(),
            nodes_seen,
            meter,
        }
    }

    /// Records one request.
    pub fn request(&self, route: &'static str, result: &'static str, elapsed: Duration) {
        let route = KeyValue::new("route", route);
        self.requests
            .add(1, &[route.clone(), KeyValue::new("result", result)]);
        self.latency.record(elapsed.as_secs_f64(), &[route]);
    }

    /// Counts a node id into the distinct-nodes estimate.
    pub fn node_seen(&self, node_uuid: &str) {
        if node_uuid.is_empty() {
            return;
        }
        let d = Sha256::digest(node_uuid.as_bytes());
        let h = u64::from_be_bytes(d[..8].try_into().unwrap_or_default());
        if let Ok(mut hll) = self.nodes_seen.lock() {
            hll.insert(h);
        }
    }

    /// Registers the per-rollout gauges, read from the published state.
    pub fn observe(
        &self,
        state: watch::Receiver<Arc<PolicyState>>,
        overrides: watch::Receiver<Arc<Overrides>>,
        clock: SharedClock,
    ) {
        let (s, o) = (state.clone(), overrides.clone());
        self.meter
            .f64_observable_gauge("upshift_policy_rollout_throttle")
            .with_description("Rollout throttle now, per stream and version (first scope seen).")
            .with_callback(move |obs| {
                let (state, ov, now) = (s.borrow().clone(), o.borrow().clone(), clock.now());
                let mut seen = std::collections::HashSet::new();
                for view in state.scopes.values() {
                    for r in &view.rollouts {
                        if seen.insert((view.key.stream.clone(), r.version.clone())) {
                            let t = throttle(view, &r.spec, &r.version, &ov, now);
                            let labels = [
                                KeyValue::new("stream", view.key.stream.clone()),
                                KeyValue::new("version", r.version.clone()),
                            ];
                            obs.observe(t, &labels);
                        }
                    }
                }
            })
            .build();
        self.meter
            .u64_observable_gauge("upshift_policy_paused_rollouts")
            .with_description("Rollouts currently paused.")
            .with_callback(move |obs| {
                let n = overrides
                    .borrow()
                    .rollouts
                    .values()
                    .filter(|r| r.paused.is_some())
                    .count();
                obs.observe(n as u64, &[]);
            })
            .build();
    }
}

/// HyperLogLog with 2^12 registers (4 KiB, about 1.6% standard error).
#[derive(Debug, Clone)]
pub struct HyperLogLog {
    registers: Box<[u8; 4096]>,
}

impl Default for HyperLogLog {
    fn default() -> Self {
        Self {
            registers: Box::new([0; 4096]),
        }
    }
}

impl HyperLogLog {
    const P: u32 = 12;

    /// Adds a uniformly distributed 64-bit hash.
    pub fn insert(&mut self, hash: u64) {
        let idx = (hash >> (64 - Self::P)) as usize;
        let rest = hash << Self::P;
        let rank = (rest.leading_zeros() + 1).min(64 - Self::P + 1) as u8;
        let r = &mut self.registers[idx];
        *r = (*r).max(rank);
    }

    /// Estimated number of distinct hashes inserted.
    pub fn estimate(&self) -> f64 {
        let m = self.registers.len() as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self
            .registers
            .iter()
            .map(|&r| 2f64.powi(-i32::from(r)))
            .sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|&&r| r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperloglog_estimates_within_five_percent() {
        let mut h = HyperLogLog::default();
        for i in 0..50_000u32 {
            let d = Sha256::digest(i.to_be_bytes());
            h.insert(u64::from_be_bytes(d[..8].try_into().unwrap()));
            // Duplicates do not count.
            h.insert(u64::from_be_bytes(d[..8].try_into().unwrap()));
        }
        let e = h.estimate();
        assert!((e - 50_000.0).abs() < 2_500.0, "estimate {e}");
        assert_eq!(HyperLogLog::default().estimate(), 0.0);
    }
}
