//! Lock service metrics (OpenTelemetry, exported by upshift-common's `Metrics`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use upshift_common::clock::SharedClock;

use crate::semaphore::SemaphoreState;
use crate::service::{Cache, epoch_secs};

/// Instruments of the lock service.
#[derive(Debug, Clone)]
pub struct LockMetrics {
    meter: Meter,
    requests: Counter<u64>,
    latency: Histogram<f64>,
    store_errors: Counter<u64>,
    cas_conflicts: Counter<u64>,
}

impl LockMetrics {
    /// Creates the instruments on `meter`.
    pub fn new(meter: Meter) -> Self {
        Self {
            requests: meter
                .u64_counter("upshift_lock_requests")
                .with_description("Lock requests by API and result kind.")
                .build(),
            latency: meter
                .f64_histogram("upshift_lock_request_duration")
                .with_description("Lock request latency by API.")
                .with_unit("s")
                .build(),
            store_errors: meter
                .u64_counter("upshift_lock_store_errors")
                .with_description("Store operations that failed, by operation.")
                .build(),
            cas_conflicts: meter
                .u64_counter("upshift_lock_cas_conflicts")
                .with_description("Compare-and-swap conflicts retried.")
                .build(),
            meter,
        }
    }

    /// Records one request.
    pub fn request(&self, api: &'static str, result: &'static str, elapsed: Duration) {
        let api = KeyValue::new("api", api);
        self.requests
            .add(1, &[api.clone(), KeyValue::new("result", result)]);
        self.latency.record(elapsed.as_secs_f64(), &[api]);
    }

    pub(crate) fn store_error(&self, op: &'static str) {
        self.store_errors.add(1, &[KeyValue::new("op", op)]);
    }

    pub(crate) fn cas_conflict(&self) {
        self.cas_conflicts.add(1, &[]);
    }

    /// Registers the per-group gauges, read from the cache at scrape time.
    /// Configured groups (`configured`: name and slot count) are exported
    /// even before their record exists, with their configured slots, no
    /// holder and an empty queue.
    pub(crate) fn observe(
        &self,
        cache: Cache,
        queues: Arc<Mutex<HashMap<String, VecDeque<u64>>>>,
        clock: SharedClock,
        configured: BTreeMap<String, u32>,
    ) {
        let view = GroupView {
            cache,
            configured: Arc::new(configured),
        };
        let v = view.clone();
        self.meter
            .u64_observable_gauge("upshift_lock_slots")
            .with_description("Slot count per group.")
            .with_callback(move |o| {
                v.each(|g, s| o.observe(u64::from(s.total_slots), &[group(g)]));
            })
            .build();
        let v = view.clone();
        self.meter
            .u64_observable_gauge("upshift_lock_holders")
            .with_description("Slot holders per group.")
            .with_callback(move |o| {
                v.each(|g, s| o.observe(s.holders.len() as u64, &[group(g)]));
            })
            .build();
        let v = view.clone();
        self.meter
            .u64_observable_gauge("upshift_lock_oldest_holder_age")
            .with_description("Age of the oldest hold per group.")
            .with_unit("s")
            .with_callback(move |o| {
                let now = epoch_secs(clock.now());
                v.each(|g, s| {
                    let oldest = s.holders.iter().map(|h| h.acquired_at).min();
                    o.observe(oldest.map_or(0, |t| now.saturating_sub(t)), &[group(g)]);
                });
            })
            .build();
        self.meter
            .u64_observable_gauge("upshift_lock_queue_length")
            .with_description("gRPC waiters queued per group on this instance.")
            .with_callback(move |o| {
                let queues = queues.lock().unwrap_or_else(|p| p.into_inner());
                for (g, q) in queues.iter() {
                    o.observe(q.len() as u64, &[group(g)]);
                }
                for g in view.configured.keys().filter(|g| !queues.contains_key(*g)) {
                    o.observe(0, &[group(g)]);
                }
            })
            .build();
    }
}

fn group(name: &str) -> KeyValue {
    KeyValue::new("group", name.to_string())
}

/// The groups the gauges report: every cached record, and the configured
/// groups that have none yet.
#[derive(Debug, Clone)]
struct GroupView {
    cache: Cache,
    configured: Arc<BTreeMap<String, u32>>,
}

impl GroupView {
    fn each(&self, mut f: impl FnMut(&str, &SemaphoreState)) {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for (g, s) in cache.iter() {
            f(g, s);
        }
        for (g, slots) in self.configured.iter() {
            if !cache.contains_key(g) {
                f(g, &SemaphoreState::new(*slots));
            }
        }
    }
}
