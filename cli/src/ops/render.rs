//! Output helpers: aligned plain-text tables, times, ages and shares, and
//! printing either a table or JSON.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use upshift_proto::prost_types;

use super::client::{Format, OpsError};

/// A plain table: upper-case headers, columns separated by two spaces,
/// padded to the widest cell; empty cells print as "-".
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells print as "-").
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the table, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let cell = |row: &Vec<String>, i: usize| -> String {
            match row.get(i) {
                Some(c) if !c.is_empty() => c.clone(),
                _ => "-".to_string(),
            }
        };
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, width) in widths.iter_mut().enumerate() {
                *width = (*width).max(cell(row, i).chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: Vec<String>| {
            let mut text = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(c);
                } else {
                    let _ = write!(text, "{c:<width$}  ", width = widths[i]);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(self.headers.iter().map(|h| h.to_string()).collect());
        for row in &self.rows {
            line((0..widths.len()).map(|i| cell(row, i)).collect());
        }
        out
    }
}

/// Prints `value` as pretty JSON, or the text `table` renders from it.
pub fn emit<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<(), OpsError> {
    match format {
        Format::Json => {
            let text = serde_json::to_string_pretty(value)
                .map_err(|e| OpsError::Usage(format!("cannot encode JSON: {e}")))?;
            println!("{text}");
        }
        Format::Table => print!("{}", table(value)),
    }
    Ok(())
}

/// RFC 3339 UTC, whole seconds (`2021-11-02T16:00:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A protobuf timestamp as RFC 3339, `None` when absent.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.map(|ts| rfc3339(upshift_common::grpc::from_timestamp(ts)))
}

/// A compact age: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A share in [0, 1] as a percentage with one decimal (`37.5%`).
pub fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// "yes" or "no".
pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_fills_empty_cells() {
        let mut t = Table::new(&["NAME", "SLOTS", "HOLDERS"]);
        t.row(vec!["workers".into(), "2".into(), "a, b".into()]);
        t.row(vec!["db".into(), "10".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAME     SLOTS  HOLDERS\nworkers  2      a, b\ndb       10     -\n"
        );
    }

    #[test]
    fn ages_and_times() {
        assert_eq!(age(Duration::from_secs(45)), "45s");
        assert_eq!(age(Duration::from_secs(192)), "3m12s");
        assert_eq!(age(Duration::from_secs(7500)), "2h05m");
        assert_eq!(age(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d04h");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_635_868_800);
        assert_eq!(rfc3339(t), "2021-11-02T16:00:00Z");
        assert_eq!(percent(0.375), "37.5%");
    }
}
