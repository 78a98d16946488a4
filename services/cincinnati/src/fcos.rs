//! Serde types for the Fedora CoreOS release index and update metadata.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Error parsing a Fedora CoreOS input document.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The document is not valid JSON of the expected shape.
    #[error("invalid {what}")]
    Json {
        /// Which document failed to parse.
        what: &'static str,
        /// The serde_json cause, with line and column.
        #[source]
        source: serde_json::Error,
    },
}

/// The release index (`releases.json`); order is release age.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReleaseIndex {
    /// Releases, oldest first.
    pub releases: Vec<IndexRelease>,
}

/// One release of the index.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IndexRelease {
    /// Release version, e.g. `34.20211016.3.0`.
    pub version: String,
    /// OSTree commits, one per architecture.
    #[serde(default)]
    pub commits: Vec<Commit>,
    /// OCI images, one per architecture.
    #[serde(default, rename = "oci-images")]
    pub oci_images: Vec<OciImage>,
    /// URL of the release metadata.
    #[serde(default)]
    pub metadata: Option<String>,
}

/// An OSTree commit for one architecture.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Commit {
    /// Base architecture, e.g. `x86_64`.
    pub architecture: String,
    /// OSTree commit checksum.
    pub checksum: String,
}

/// An OCI image for one architecture.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OciImage {
    /// Base architecture, e.g. `x86_64`.
    pub architecture: String,
    /// Image name.
    pub image: String,
    /// Pinned pull spec (`image@sha256:...`).
    #[serde(rename = "digest-ref")]
    pub digest_ref: String,
}

/// The update metadata of a stream (`updates.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpdatesMetadata {
    /// Stream name.
    pub stream: String,
    /// Free-form document metadata (e.g. `last-modified`).
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Per-release update directives.
    #[serde(default)]
    pub releases: Vec<UpdateRelease>,
}

/// Update directives for one release.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpdateRelease {
    /// Release version the directives apply to.
    pub version: String,
    /// The directives.
    #[serde(default)]
    pub metadata: UpdateDirectives,
}

/// Barrier, dead-end and rollout directives of a release.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct UpdateDirectives {
    /// All updates must pass through this release.
    pub barrier: Option<Reason>,
    /// No update out of this release.
    pub deadend: Option<Reason>,
    /// Progressive rollout of this release.
    pub rollout: Option<Rollout>,
}

/// A reason attached to a barrier or dead-end.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Reason {
    /// Free-form reason, usually a URL; may be empty.
    #[serde(default)]
    pub reason: String,
}

/// Rollout parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Rollout {
    /// Start of the rollout, seconds since the epoch.
    pub start_epoch: Option<i64>,
    /// Fraction (0.0-1.0) of clients eligible at the start.
    pub start_percentage: Option<f64>,
    /// Minutes until everyone is eligible.
    pub duration_minutes: Option<u64>,
}

impl ReleaseIndex {
    /// Parses a `releases.json` document.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ParseError> {
        serde_json::from_slice(bytes).map_err(|source| ParseError::Json {
            what: "release index",
            source,
        })
    }
}

impl UpdatesMetadata {
    /// Parses an `updates.json` document.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ParseError> {
        serde_json::from_slice(bytes).map_err(|source| ParseError::Json {
            what: "update metadata",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_type_is_an_error_with_position() {
        let err = UpdatesMetadata::from_slice(br#"{"stream": 3}"#).unwrap_err();
        let ParseError::Json { source, .. } = err;
        assert!(source.to_string().contains("line 1"), "{source}");
    }

    #[test]
    fn extra_fields_are_tolerated() {
        let idx = ReleaseIndex::from_slice(
            br#"{"note":"x","releases":[{"version":"1","extra":1,"commits":[]}]}"#,
        )
        .unwrap();
        assert_eq!(idx.releases[0].version, "1");
    }
}
