//! Bounded label values. Versions and groups come and go with the fleet, so
//! the values that get their own label are chosen again at each collection
//! from the fleet view ([`LabelBudget::rerank`]): the `cap` values held by
//! the most hosts. Streams and error kinds are closed sets in practice (the
//! graph's streams, the agent's error kinds): they keep the first `cap`
//! values seen for the life of the process. Anything else is [`OTHER`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use opentelemetry::KeyValue;

/// The label value of every value without a name of its own.
pub const OTHER: &str = "other";

/// The dimensions named again from the fleet view at each collection.
pub const CURRENT_DIMS: [&str; 2] = ["version", "group"];

/// Caps the named values of each label dimension.
#[derive(Debug)]
pub struct LabelBudget {
    cap: usize,
    named: Mutex<HashMap<&'static str, HashSet<String>>>,
}

impl LabelBudget {
    /// At most `cap` named values per dimension.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            named: Mutex::default(),
        }
    }

    fn named(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, HashSet<String>>> {
        self.named.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `value` if it has a name or a slot is free (it takes it), else [`OTHER`].
    pub fn label(&self, dim: &'static str, value: &str) -> String {
        let mut named = self.named();
        let set = named.entry(dim).or_default();
        if set.contains(value) {
            return value.to_string();
        }
        if set.len() < self.cap {
            set.insert(value.to_string());
            return value.to_string();
        }
        OTHER.to_string()
    }

    /// Whether `value` of `dim` has a name now.
    pub fn is_named(&self, dim: &str, value: &str) -> bool {
        self.named().get(dim).is_some_and(|s| s.contains(value))
    }

    /// Names the values of `dim` present now (value, hosts): the `cap` with
    /// the most hosts; ties go to values already named, then to the lower
    /// value. Every other value, present or gone, loses its name.
    pub fn rerank(&self, dim: &'static str, present: &HashMap<&str, u64>) {
        let mut named = self.named();
        let set = named.entry(dim).or_default();
        let mut ranked: Vec<(&str, u64)> = present.iter().map(|(v, n)| (*v, *n)).collect();
        ranked.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| set.contains(b.0).cmp(&set.contains(a.0)))
                .then_with(|| a.0.cmp(b.0))
        });
        *set = ranked
            .into_iter()
            .take(self.cap)
            .map(|(v, _)| v.to_string())
            .collect();
    }
}

/// A counter kept by label values and exported through an observable
/// counter, so that a series whose value lost its name can end (a
/// synchronous instrument keeps every series it ever had).
#[derive(Debug)]
pub struct Tally {
    /// (label name, budget dimension) of each label, in order.
    keys: &'static [(&'static str, &'static str)],
    counts: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Tally {
    /// A tally with these labels.
    pub fn new(keys: &'static [(&'static str, &'static str)]) -> Self {
        Self {
            keys,
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<String>, u64>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one event; `values` are the raw values, in key order.
    pub fn add(&self, budget: &LabelBudget, values: &[&str]) {
        let labels = self
            .keys
            .iter()
            .zip(values)
            .map(|((_, dim), v)| budget.label(dim, v))
            .collect();
        *self.counts().entry(labels).or_default() += 1;
    }

    /// The series to export. Series with a value of a [`CURRENT_DIMS`]
    /// dimension that lost its name are dropped: they end, and later events
    /// of that value count under [`OTHER`].
    pub fn export(&self, budget: &LabelBudget) -> Vec<(Vec<KeyValue>, u64)> {
        let mut counts = self.counts();
        counts.retain(|labels, _| {
            self.keys.iter().zip(labels).all(|((_, dim), v)| {
                !CURRENT_DIMS.contains(dim) || v == OTHER || budget.is_named(dim, v)
            })
        });
        counts
            .iter()
            .map(|(labels, n)| {
                let attrs = self
                    .keys
                    .iter()
                    .zip(labels)
                    .map(|((key, _), v)| KeyValue::new(*key, v.clone()))
                    .collect();
                (attrs, *n)
            })
            .collect()
    }
}
