//! The bridge's own metrics, rendered on `/metrics` by upshift-common's `Metrics`.
//!
//! Labels are bounded: `selector` only takes configured names, `result` and
//! `reason` come from closed sets; requests for unknown selectors are counted
//! without the name.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use crate::error::Reason;

/// Outcome of one scrape, the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrapeResult {
    /// The whole exposition was served.
    Ok,
    /// The source failed (502).
    Error,
    /// The source timed out (504).
    Timeout,
}

impl ScrapeResult {
    fn as_str(self) -> &'static str {
        match self {
            ScrapeResult::Ok => "ok",
            ScrapeResult::Error => "error",
            ScrapeResult::Timeout => "timeout",
        }
    }
}

/// Why a request was answered without scraping, the `reason` label of the
/// rejected-requests counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `selector` parameter (400).
    MissingSelector,
    /// No such selector (404).
    UnknownSelector,
    /// Not GET or HEAD (405).
    Method,
}

impl Rejection {
    fn as_str(self) -> &'static str {
        match self {
            Rejection::MissingSelector => "missing_selector",
            Rejection::UnknownSelector => "unknown_selector",
            Rejection::Method => "method_not_allowed",
        }
    }
}

/// Instruments of the bridge.
#[derive(Debug, Clone)]
pub struct BridgeMetrics {
    scrapes: Counter<u64>,
    errors: Counter<u64>,
    duration: Histogram<f64>,
    bytes: Counter<u64>,
    rejected: Counter<u64>,
}

impl BridgeMetrics {
    /// Creates the instruments on `meter` and the zero series of `selectors`,
    /// so every configured selector shows from the first scrape of `/metrics`.
    pub fn new<'a>(meter: &Meter, selectors: impl IntoIterator<Item = &'a str>) -> Self {
        let metrics = Self {
            scrapes: meter
                .u64_counter("upshift_bridge_scrapes")
                .with_description("Scrapes of a selector, by result (ok, error, timeout).")
                .build(),
            errors: meter
                .u64_counter("upshift_bridge_scrape_errors")
                .with_description("Failed scrapes of a selector, by reason.")
                .build(),
            duration: meter
                .f64_histogram("upshift_bridge_scrape_duration")
                .with_unit("s")
                .with_description("Time to read a selector's source, by selector.")
                .with_boundaries(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .build(),
            bytes: meter
                // No unit: the exporter would append a second `_bytes`.
                .u64_counter("upshift_bridge_scrape_bytes")
                .with_description("Exposition bytes served, by selector.")
                .build(),
            rejected: meter
                .u64_counter("upshift_bridge_rejected_requests")
                .with_description("Requests answered without a scrape, by reason.")
                .build(),
        };
        for selector in selectors {
            let name = KeyValue::new("selector", selector.to_string());
            for result in [ScrapeResult::Ok, ScrapeResult::Error, ScrapeResult::Timeout] {
                metrics
                    .scrapes
                    .add(0, &[name.clone(), KeyValue::new("result", result.as_str())]);
            }
            metrics.bytes.add(0, std::slice::from_ref(&name));
        }
        for rejection in [
            Rejection::MissingSelector,
            Rejection::UnknownSelector,
            Rejection::Method,
        ] {
            metrics
                .rejected
                .add(0, &[KeyValue::new("reason", rejection.as_str())]);
        }
        metrics
    }

    /// Records a served exposition.
    pub fn served(&self, selector: &str, bytes: usize, elapsed: Duration) {
        let name = KeyValue::new("selector", selector.to_string());
        self.scrapes.add(
            1,
            &[
                name.clone(),
                KeyValue::new("result", ScrapeResult::Ok.as_str()),
            ],
        );
        self.bytes.add(bytes as u64, std::slice::from_ref(&name));
        self.duration.record(elapsed.as_secs_f64(), &[name]);
    }

    /// Records a failed scrape.
    pub fn failed(&self, selector: &str, reason: Reason, elapsed: Duration) {
        let name = KeyValue::new("selector", selector.to_string());
        let result = if reason.is_timeout() {
            ScrapeResult::Timeout
        } else {
            ScrapeResult::Error
        };
        self.scrapes
            .add(1, &[name.clone(), KeyValue::new("result", result.as_str())]);
        self.errors
            .add(1, &[name.clone(), KeyValue::new("reason", reason.as_str())]);
        self.duration.record(elapsed.as_secs_f64(), &[name]);
    }

    /// Records a request answered without a scrape.
    pub fn rejected(&self, rejection: Rejection) {
        self.rejected
            .add(1, &[KeyValue::new("reason", rejection.as_str())]);
    }
}
