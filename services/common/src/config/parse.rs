//! Reading TOML configuration so that every problem shows at once.
//!
//! The text is parsed once into a document that remembers where each key
//! is. Deserializing stops at the first problem; `serde_path_to_error`
//! names the key it happened at and the span gives its line. That key is
//! then removed from the document and the rest deserialized again, until it
//! goes through: every unknown key, wrongly typed value and missing field is
//! reported, and what is left is returned so that validation can still run
//! on it. Only a TOML syntax error (the document cannot be read) stops at
//! once.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{ConfigError, ConfigErrors};

/// More problems than this in one file are not worth listing.
const MAX_ERRORS: usize = 100;

/// What could be read of a configuration file.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The file without the keys that were rejected; `None` when nothing
    /// could be read (unreadable file, TOML syntax error).
    pub value: Option<T>,
    /// Every problem found.
    pub errors: ConfigErrors,
    /// Keys whose value was rejected and left out of `value` (unknown keys
    /// are not among them: leaving those out changes nothing).
    rejected: Vec<String>,
}

impl<T> Loaded<T> {
    /// A value that did not come from a file.
    pub fn of(value: T) -> Self {
        Self {
            value: Some(value),
            errors: ConfigErrors::new(),
            rejected: Vec::new(),
        }
    }

    /// `Ok(value)` when nothing was wrong, else every error.
    pub fn into_result(self) -> Result<T, ConfigErrors> {
        match self.value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(self.errors),
        }
    }

    /// Validation errors of `value`, without those about a rejected key, a
    /// key inside one or a table holding one: the validator saw that key
    /// missing, so they only repeat the rejection.
    pub fn validation_errors(&self, errors: ConfigErrors) -> ConfigErrors {
        ConfigErrors(
            errors
                .0
                .into_iter()
                .filter(|e| !self.rejected.iter().any(|r| related(r, &e.key)))
                .collect(),
        )
    }
}

/// Whether key paths `a` and `b` are the same or one contains the other.
fn related(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    !b.is_empty() && (within(a, b) || within(b, a))
}

/// Reads and deserializes a TOML file, every problem at once; errors name
/// the file.
pub fn load_toml_partial<T: DeserializeOwned>(path: impl AsRef<Path>) -> Loaded<T> {
    let path = path.as_ref();
    let mut loaded = match std::fs::read_to_string(path) {
        Ok(text) => parse_toml_partial(&text),
        Err(e) => {
            let mut errors = ConfigErrors::new();
            errors.push("", format!("cannot read config file: {e}"));
            Loaded {
                value: None,
                errors,
                rejected: Vec::new(),
            }
        }
    };
    loaded.errors = loaded.errors.in_file(path);
    loaded
}

/// Deserializes TOML text, every problem at once.
pub fn parse_toml_partial<T: DeserializeOwned>(text: &str) -> Loaded<T> {
    let mut loaded = Loaded {
        value: None,
        errors: ConfigErrors::new(),
        rejected: Vec::new(),
    };
    let mut doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            loaded.errors.0.push(ConfigError {
                file: None,
                key: String::new(),
                line: line_of(text, e.span()),
                message: e.message().trim().to_string(),
            });
            return loaded;
        }
    };
    while loaded.errors.0.len() < MAX_ERRORS {
        let de = toml::Deserializer::from(doc.clone());
        let e = match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(value) => {
                loaded.value = Some(value);
                break;
            }
            Err(e) => e,
        };
        let mut segments: Vec<Segment> = e.path().iter().cloned().collect();
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        let unknown = quoted_after(&message, "unknown field ");
        if let Some(name) = &unknown
            && !matches!(segments.last(), Some(Segment::Map { key }) if key == name)
        {
            segments.push(Segment::Map { key: name.clone() });
        }
        let key = key_path(&segments);
        // A field rejected earlier shows up once more as missing: not news.
        let repeat = quoted_after(&message, "missing field ")
            .is_some_and(|field| loaded.rejected.contains(&join(&key, &field)));
        if !repeat {
            loaded.errors.0.push(ConfigError {
                file: None,
                key: key.clone(),
                line: line_of(text, inner.span()),
                message,
            });
        }
        if unknown.is_none() {
            loaded.rejected.push(key);
        }
        if !remove(doc.get_mut(), &segments) {
            break;
        }
    }
    // Found in key order; read in file order.
    loaded
        .errors
        .0
        .sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    loaded
}

/// Reads and deserializes a TOML file; every problem is reported with its
/// key path and line, all at once.
pub fn load_toml<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, ConfigErrors> {
    load_toml_partial(path).into_result()
}

/// Deserializes TOML text; every problem is reported with its key path and
/// line, all at once.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    parse_toml_partial(text).into_result()
}

/// The text between the backticks following `lead` in a serde message
/// (``unknown field `lisen`, expected ...`` gives `lisen`).
fn quoted_after(message: &str, lead: &str) -> Option<String> {
    let rest = message.strip_prefix(lead)?.strip_prefix('`')?;
    Some(rest[..rest.find('`')?].to_string())
}

fn join(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// `server.tls.cert`, `groups.a.windows[0].days`.
fn key_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Map { key } => out = join(&out, key),
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// 1-based line of the start of `span`.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> Option<usize> {
    let start = span?.start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

/// Removes the value at `segments` from `table`; an array element goes with
/// its whole array. False when there is nothing to remove (the problem is
/// the document as a whole).
fn remove(table: &mut DeTable<'_>, segments: &[Segment]) -> bool {
    // Only map keys can be removed: cut the path after its last one.
    let Some(last) = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))
    else {
        return false;
    };
    let Segment::Map { key } = &segments[last] else {
        return false;
    };
    match container(table, &segments[..last]) {
        Some(parent) => parent.remove(key.as_str()).is_some(),
        None => false,
    }
}

/// The table at `segments` (map keys and array indices).
fn container<'t, 'i>(
    table: &'t mut DeTable<'i>,
    segments: &[Segment],
) -> Option<&'t mut DeTable<'i>> {
    let Some((first, rest)) = segments.split_first() else {
        return Some(table);
    };
    let Segment::Map { key } = first else {
        return None;
    };
    let mut value: &mut Spanned<DeValue<'i>> = table.get_mut(key.as_str())?;
    let mut rest = rest;
    while let Some(Segment::Seq { index }) = rest.first() {
        let DeValue::Array(items) = value.get_mut() else {
            return None;
        };
        value = items.get_mut(*index)?;
        rest = &rest[1..];
    }
    match value.get_mut() {
        DeValue::Table(inner) => container(inner, rest),
        _ => None,
    }
}
