//! The in-memory fleet view: hosts by node id, an index by last report for
//! ageing, and per-release attempt aggregates for the halt rules. Pure data:
//! every time-dependent answer takes `now`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use upshift_common::grpc::timestamp;
use upshift_proto::telemetry::v1 as pb;

use crate::config::HaltRule;
use crate::record::{Attempt, HaltRecord, HostRecord, epoch_ms, from_epoch_ms};

/// Attempt figures of one release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseStats {
    /// Hosts with an attempt on the release.
    pub attempted: u32,
    /// Hosts that failed on it.
    pub failed: u32,
    /// Hosts steady on it.
    pub steady: u32,
    /// Start instants (ms) of attempts neither failed nor steady, with counts.
    open_starts: BTreeMap<u64, u32>,
}

impl ReleaseStats {
    /// Attempts neither failed nor steady that started at or before `cutoff_ms`.
    pub fn overdue(&self, cutoff_ms: u64) -> u32 {
        self.open_starts.range(..=cutoff_ms).map(|(_, n)| *n).sum()
    }

    /// The earliest start of an open attempt after `cutoff_ms` (the next to become overdue).
    pub fn next_open_start_after(&self, cutoff_ms: u64) -> Option<u64> {
        self.open_starts
            .range(cutoff_ms.saturating_add(1)..)
            .next()
            .map(|(t, _)| *t)
    }

    fn add(&mut self, a: &Attempt, sign: i64) {
        let bump = |v: &mut u32| *v = (i64::from(*v) + sign).max(0) as u32;
        bump(&mut self.attempted);
        if a.failed.is_some() {
            bump(&mut self.failed);
        } else if a.steady_ms.is_some() {
            bump(&mut self.steady);
        } else {
            let n = self.open_starts.entry(a.started_ms).or_default();
            bump(n);
            if *n == 0 {
                self.open_starts.remove(&a.started_ms);
            }
        }
    }
}

/// A halt decision: the release crossed its rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    /// Stream.
    pub stream: String,
    /// Release.
    pub version: String,
    /// Human-readable reason with the figures.
    pub reason: String,
}

/// The fleet view.
#[derive(Debug, Default)]
pub struct Fleet {
    hosts: BTreeMap<String, HostRecord>,
    by_seen: BTreeSet<(u64, String)>,
    releases: HashMap<(String, String), ReleaseStats>,
    halts: BTreeMap<String, HaltRecord>,
}

impl Fleet {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of hosts (fresh and stale).
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// A host's record.
    pub fn get(&self, node_uuid: &str) -> Option<&HostRecord> {
        self.hosts.get(node_uuid)
    }

    /// Every host, by node id.
    pub fn hosts(&self) -> impl Iterator<Item = &HostRecord> {
        self.hosts.values()
    }

    /// Inserts or replaces a host.
    pub fn put(&mut self, rec: HostRecord) {
        let id = rec.status.node_uuid.clone();
        self.remove(&id);
        self.by_seen.insert((rec.last_seen_ms, id.clone()));
        for a in &rec.attempts {
            self.stats_mut(a).add(a, 1);
        }
        self.hosts.insert(id, rec);
    }

    /// Removes a host; returns it.
    pub fn remove(&mut self, node_uuid: &str) -> Option<HostRecord> {
        let old = self.hosts.remove(node_uuid)?;
        self.by_seen
            .remove(&(old.last_seen_ms, node_uuid.to_string()));
        for a in &old.attempts {
            let key = (a.stream.clone(), a.version.clone());
            if let Some(s) = self.releases.get_mut(&key) {
                s.add(a, -1);
                if s.attempted == 0 {
                    self.releases.remove(&key);
                }
            }
        }
        Some(old)
    }

    fn stats_mut(&mut self, a: &Attempt) -> &mut ReleaseStats {
        self.releases
            .entry((a.stream.clone(), a.version.clone()))
            .or_default()
    }

    /// Attempt figures of a release.
    pub fn release(&self, stream: &str, version: &str) -> Option<&ReleaseStats> {
        self.releases
            .get(&(stream.to_string(), version.to_string()))
    }

    /// Releases of `stream` with attempts.
    pub fn releases_of<'a>(&'a self, stream: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.releases
            .keys()
            .filter(move |(s, _)| s == stream)
            .map(|(_, v)| v.as_str())
    }

    /// The next instant (epoch ms) at which an attempt turns overdue under
    /// `rule_of(stream)`'s `steady_within`, for releases without a halt.
    pub fn next_overdue(&self, now_ms: u64, rule_of: impl Fn(&str) -> HaltRule) -> Option<u64> {
        self.releases
            .iter()
            .filter(|((s, v), _)| self.halt(s, v).is_none())
            .filter_map(|((s, _), stats)| {
                let rule = rule_of(s);
                let d = duration_ms(rule.steady_within.filter(|_| rule.enabled)?);
                stats
                    .next_open_start_after(now_ms.saturating_sub(d))
                    .map(|t| t.saturating_add(d))
            })
            .min()
    }

    /// Every (stream, version) with attempts.
    pub fn release_keys(&self) -> Vec<(String, String)> {
        self.releases.keys().cloned().collect()
    }

    /// Hosts whose last report is at or before `cutoff_ms`, oldest first.
    pub fn seen_at_or_before(&self, cutoff_ms: u64) -> Vec<String> {
        self.by_seen
            .iter()
            .take_while(|(t, _)| *t <= cutoff_ms)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// The earliest last-report instant after `after_ms` (the next host to age).
    pub fn next_seen_after(&self, after_ms: u64) -> Option<u64> {
        self.by_seen
            .range((after_ms + 1, String::new())..)
            .next()
            .map(|(t, _)| *t)
    }

    /// The earliest last-report instant of any host.
    pub fn oldest_seen(&self) -> Option<u64> {
        self.by_seen.first().map(|(t, _)| *t)
    }

    /// Records a halt (replacing the stored one).
    pub fn put_halt(&mut self, halt: HaltRecord) {
        self.halts.insert(halt.key(), halt);
    }

    /// Forgets a halt record.
    pub fn remove_halt(&mut self, key: &str) {
        self.halts.remove(key);
    }

    /// A halt record by key.
    pub fn halt(&self, stream: &str, version: &str) -> Option<&HaltRecord> {
        self.halts.get(&crate::record::halt_key(stream, version))
    }

    /// Every halt record.
    pub fn halts(&self) -> impl Iterator<Item = &HaltRecord> {
        self.halts.values()
    }

    /// Whether the release crosses `rule` now (and has no halt record yet).
    pub fn crossing(
        &self,
        stream: &str,
        version: &str,
        rule: &HaltRule,
        now: SystemTime,
    ) -> Option<Crossing> {
        if !rule.enabled || self.halt(stream, version).is_some() {
            return None;
        }
        let stats = self.release(stream, version)?;
        let overdue = rule.steady_within.map_or(0, |d| {
            stats.overdue(epoch_ms(now).saturating_sub(duration_ms(d)))
        });
        let failed = stats.failed + overdue;
        let attempted = stats.attempted;
        let ratio = f64::from(failed) / f64::from(attempted.max(1));
        let figures = format!(
            "{failed} of {attempted} hosts that attempted {version} failed ({:.1}%: {} errors, {overdue} not steady within {})",
            ratio * 100.0,
            stats.failed,
            rule.steady_within.map_or_else(
                || "-".to_string(),
                |d| humantime::format_duration(d).to_string()
            ),
        );
        let why = if rule.max_failures.is_some_and(|m| failed > m) {
            format!("more than {} failures", rule.max_failures.unwrap_or(0))
        } else if attempted >= rule.min_attempts && ratio > rule.max_failure_ratio {
            format!(
                "failure ratio above {:.1}% with at least {} attempts",
                rule.max_failure_ratio * 100.0,
                rule.min_attempts
            )
        } else {
            return None;
        };
        Some(Crossing {
            stream: stream.to_string(),
            version: version.to_string(),
            reason: format!("automatic halt by upshift-telemetry: {why}: {figures}"),
        })
    }

    /// Whether a host matches a filter (staleness aside).
    fn matches(rec: &HostRecord, f: &pb::HostFilter) -> bool {
        let s = &rec.status;
        (f.stream.is_empty() || f.stream == s.stream)
            && (f.version.is_empty() || f.version == s.booted_version)
            && (f.state == 0 || f.state == s.state)
            && (f.group.is_empty() || f.group == s.group)
    }

    /// The fleet summary of the hosts matching `filter`.
    pub fn summary(
        &self,
        filter: &pb::HostFilter,
        now: SystemTime,
        stale_after: Duration,
    ) -> pb::FleetSummary {
        let stale_cutoff = epoch_ms(now).saturating_sub(duration_ms(stale_after));
        let mut counts: BTreeMap<(&str, &str, i32, &str), u32> = BTreeMap::new();
        let (mut total, mut stale) = (0u32, 0u32);
        for rec in self.hosts.values().filter(|r| Self::matches(r, filter)) {
            if rec.last_seen_ms <= stale_cutoff {
                stale += 1;
                continue;
            }
            total += 1;
            let s = &rec.status;
            *counts
                .entry((&s.stream, &s.booted_version, s.state, &s.group))
                .or_default() += 1;
        }
        pb::FleetSummary {
            counts: counts
                .into_iter()
                .map(|((stream, version, state, group), hosts)| pb::FleetCount {
                    stream: stream.to_string(),
                    version: version.to_string(),
                    state,
                    group: group.to_string(),
                    hosts,
                })
                .collect(),
            total_hosts: total,
            stale_hosts: stale,
            halts: self
                .halts
                .values()
                .filter(|h| h.in_force())
                .filter(|h| filter.stream.is_empty() || filter.stream == h.stream)
                .map(HaltRecord::to_pb)
                .collect(),
            at: Some(timestamp(now)),
        }
    }

    /// One page of hosts matching `filter`, after node id `after`.
    pub fn page(
        &self,
        filter: &pb::HostFilter,
        after: &str,
        size: usize,
        now: SystemTime,
        stale_after: Duration,
    ) -> (Vec<pb::Host>, Option<String>) {
        let stale_cutoff = epoch_ms(now).saturating_sub(duration_ms(stale_after));
        let start = if after.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(after.to_string())
        };
        let mut hosts = Vec::new();
        let mut iter = self
            .hosts
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, r)| r)
            .filter(|r| Self::matches(r, filter))
            .filter(|r| filter.include_stale || r.last_seen_ms > stale_cutoff);
        for rec in iter.by_ref().take(size) {
            hosts.push(pb::Host {
                status: Some(rec.status.to_pb()),
                last_seen: Some(timestamp(from_epoch_ms(rec.last_seen_ms))),
                stale: rec.last_seen_ms <= stale_cutoff,
            });
        }
        let more = iter.next().is_some();
        let next = more
            .then(|| {
                hosts.last().map(|h| {
                    h.status
                        .as_ref()
                        .map(|s| s.node_uuid.clone())
                        .unwrap_or_default()
                })
            })
            .flatten();
        (hosts, next)
    }
}

/// Milliseconds of a duration, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
