//! Maintenance windows: weekly local-time intervals in an IANA time zone.
//!
//! A window opens at `start` local time on each listed day and stays open for
//! `length` of real (absolute) time, so a window spanning a DST change is as
//! long as configured. A start inside a DST gap (a local time that does not
//! exist that day) opens at the first instant after the gap; an ambiguous
//! start (a repeated hour) opens at its first occurrence.

use std::time::Duration;

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::Deserialize;

use crate::config::ConfigErrors;

/// A maintenance window as written in TOML:
///
/// ```toml
/// [[windows]]
/// days = ["Sat", "Sun"]        # empty or absent: every day
/// start = "22:00"              # local time
/// length = "3h"
/// time_zone = "Europe/Berlin"  # IANA name, default "UTC"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// "Mon".."Sun"; empty means every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Local "HH:MM".
    pub start: String,
    /// Length, e.g. "3h".
    #[serde(with = "humantime_serde")]
    pub length: Duration,
    /// IANA time zone (default "UTC").
    pub time_zone: Option<String>,
}

impl WindowConfig {
    /// Validates the window; every problem is pushed to `errors` under
    /// `key` (e.g. `groups.workers.windows[0]`), and `None` is returned when
    /// there was any.
    pub fn validate(&self, key: &str, errors: &mut ConfigErrors) -> Option<Window> {
        let before = errors.errors().len();
        let mut days = Vec::new();
        for d in &self.days {
            match parse_day(d) {
                Some(day) => days.push(day),
                None => errors.push(
                    format!("{key}.days"),
                    format!("unknown day {d:?} (use Mon..Sun)"),
                ),
            }
        }
        let start = NaiveTime::parse_from_str(&self.start, "%H:%M")
            .map_err(|_| errors.push(format!("{key}.start"), "must be local time \"HH:MM\""))
            .ok();
        if self.length < Duration::from_secs(1) || self.length > Duration::from_secs(7 * 86_400) {
            errors.push(format!("{key}.length"), "must be between 1s and 7 days");
        }
        let tz_name = self.time_zone.as_deref().unwrap_or("UTC");
        let time_zone = tz_name
            .parse::<Tz>()
            .map_err(|_| {
                errors.push(
                    format!("{key}.time_zone"),
                    format!("unknown IANA time zone {tz_name:?}"),
                )
            })
            .ok();
        if errors.errors().len() != before {
            return None;
        }
        Some(Window {
            days,
            start: start?,
            length: self.length,
            time_zone: time_zone?,
        })
    }
}

/// One validated maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Days the window opens; empty means every day.
    pub days: Vec<Weekday>,
    /// Local opening time.
    pub start: NaiveTime,
    /// How long it stays open.
    pub length: Duration,
    /// Time zone of `start` and `days`.
    pub time_zone: Tz,
}

/// Parses "Mon".."Sun" (any case, also full names).
pub fn parse_day(s: &str) -> Option<Weekday> {
    s.parse::<Weekday>().ok()
}

impl Window {
    /// Opening instants whose window could contain instants from `from` to
    /// `from + horizon_days`, in order.
    fn openings(
        &self,
        from: DateTime<Utc>,
        horizon_days: u64,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let back = self.length.as_secs().div_ceil(86_400) + 1;
        let today = from.with_timezone(&self.time_zone).date_naive();
        let first = today.checked_sub_days(Days::new(back)).unwrap_or(today);
        (0..=back + horizon_days)
            .filter_map(move |i| first.checked_add_days(Days::new(i)))
            .filter(|d| self.days.is_empty() || self.days.contains(&d.weekday()))
            .filter_map(|d| self.opening_on(d))
    }

    fn opening_on(&self, day: NaiveDate) -> Option<DateTime<Utc>> {
        let local = day.and_time(self.start);
        if let Some(t) = self.time_zone.from_local_datetime(&local).earliest() {
            return Some(t.with_timezone(&Utc));
        }
        // In a DST gap: step forward minute by minute to the first valid time.
        (1..=180).find_map(|m| {
            let l = local + chrono::Duration::minutes(m);
            self.time_zone
                .from_local_datetime(&l)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        })
    }

    fn length(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.length).unwrap_or(chrono::Duration::MAX)
    }

    /// Whether the window is open at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.openings(now, 0)
            .any(|start| start <= now && now < start + self.length())
    }

    /// The next opening at or after `now` (`now` when open).
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_open(now) {
            return Some(now);
        }
        self.openings(now, 8).find(|start| *start > now)
    }
}

/// Whether grants are allowed at `now`: no windows, or any one open.
pub fn any_open(windows: &[Window], now: DateTime<Utc>) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.is_open(now))
}

/// The earliest opening of any window at or after `now`.
pub fn next_open(windows: &[Window], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    windows.iter().filter_map(|w| w.next_open(now)).min()
}

#[cfg(test)]
mod tests;
