//! The catalog: the current graph of every scope and the load state of every
//! source, published as immutable snapshots.
//!
//! A source event is accepted or rejected as a whole: every scope of the
//! stream is rebuilt, and if any file or any scope fails, the stream keeps
//! its last good graphs and records the rejection (naming the file by its
//! full path or URL). Accepted changes bump the service revision once;
//! scopes whose graph is unchanged keep theirs. A scope that goes away is
//! forgotten, also in the persisted state: if it comes back, even with the
//! very same graph, that is a change with a new revision.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::watch;
use upshift_cincinnati::codec::CincinnatiGraph;
use upshift_cincinnati::fcos::{ReleaseIndex, UpdatesMetadata};
use upshift_cincinnati::graph::{BuildError, Graph, PayloadScheme, build_graph};

use crate::persist::{PersistedScope, PersistedState};
use crate::source::{FailureKind, LoadFailure, RawMetadata, SourceEvent};

/// Identifies a scope: stream, basearch, scheme.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeKey {
    /// Stream.
    pub stream: String,
    /// Base architecture.
    pub basearch: String,
    /// Payload scheme.
    pub scheme: PayloadScheme,
}

impl std::fmt::Display for ScopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            PayloadScheme::Checksum => "checksum",
            PayloadScheme::Oci => "oci",
        };
        write!(f, "{}/{}/{}", self.stream, self.basearch, scheme)
    }
}

/// The current graph of one scope, with its pre-serialized forms.
#[derive(Debug)]
pub struct ScopeGraph {
    /// Scope.
    pub key: ScopeKey,
    /// Revision at which this graph last changed.
    pub revision: u64,
    /// The graph.
    pub graph: Arc<Graph>,
    /// Cincinnati JSON, served as is.
    pub json: Bytes,
    /// Hex SHA-256 of `json`.
    pub digest: String,
    /// When it was built.
    pub built_at: SystemTime,
}

impl ScopeGraph {
    /// The HTTP entity tag.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.digest)
    }
}

/// Load state of one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadState {
    /// Never accepted.
    NeverLoaded,
    /// Last attempt accepted.
    Ok,
    /// Last attempt rejected (last good graphs keep serving).
    Rejected,
}

/// Status of one stream's source.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    /// Stream.
    pub stream: String,
    /// Location, for display.
    pub location: String,
    /// State.
    pub state: LoadState,
    /// Last failure, if the last attempt failed.
    pub failure: Option<LoadFailure>,
    /// Last attempt.
    pub last_attempt: Option<SystemTime>,
    /// Last accepted attempt.
    pub last_success: Option<SystemTime>,
    /// Warnings of the last accepted load.
    pub warnings: Vec<String>,
    /// Architectures with graphs.
    pub architectures: Vec<String>,
}

/// An immutable view of the catalog.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Service revision (highest scope revision).
    pub revision: u64,
    /// Current graphs.
    pub scopes: BTreeMap<ScopeKey, Arc<ScopeGraph>>,
    /// Sources by stream.
    pub sources: BTreeMap<String, SourceStatus>,
}

impl Snapshot {
    /// Whether `stream` is configured.
    pub fn has_stream(&self, stream: &str) -> bool {
        self.sources.contains_key(stream)
    }
}

/// Owns the catalog state; applies source events and publishes snapshots.
#[derive(Debug)]
pub struct Catalog {
    tx: watch::Sender<Arc<Snapshot>>,
    /// Architectures configured per stream (empty: all in the index).
    architectures: BTreeMap<String, Vec<String>>,
    state_file: Option<PathBuf>,
    persisted: PersistedState,
}

/// Outcome of applying one event, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// New graphs at this revision, for these scopes.
    Changed(u64, Vec<ScopeKey>),
    /// Accepted, nothing changed.
    Unchanged,
    /// Rejected.
    Rejected(LoadFailure),
}

impl Catalog {
    /// A catalog for the given streams (`(name, location, architectures)`),
    /// persisting revisions in `state_file` when given.
    pub fn new(
        streams: impl IntoIterator<Item = (String, String, Vec<String>)>,
        state_file: Option<PathBuf>,
    ) -> Self {
        let persisted = state_file
            .as_deref()
            .map(PersistedState::load)
            .unwrap_or_default();
        let mut sources = BTreeMap::new();
        let mut architectures = BTreeMap::new();
        for (stream, location, archs) in streams {
            sources.insert(
                stream.clone(),
                SourceStatus {
                    stream: stream.clone(),
                    location,
                    state: LoadState::NeverLoaded,
                    failure: None,
                    last_attempt: None,
                    last_success: None,
                    warnings: Vec::new(),
                    architectures: Vec::new(),
                },
            );
            architectures.insert(stream, archs);
        }
        let snapshot = Snapshot {
            revision: persisted.revision,
            scopes: BTreeMap::new(),
            sources,
        };
        let (tx, _) = watch::channel(Arc::new(snapshot));
        Self {
            tx,
            architectures,
            state_file,
            persisted,
        }
    }

    /// A receiver of snapshots (the latest is always available).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Applies one source event at time `now`.
    pub fn apply(&mut self, event: SourceEvent, now: SystemTime) -> Applied {
        let current = self.snapshot();
        let archs = self
            .architectures
            .get(&event.stream)
            .cloned()
            .unwrap_or_default();
        let built = event
            .result
            .and_then(|raw| build_scopes(&event.stream, &raw, &archs));
        let mut next = Snapshot {
            revision: current.revision,
            scopes: current.scopes.clone(),
            sources: current.sources.clone(),
        };
        let status = next
            .sources
            .entry(event.stream.clone())
            .or_insert_with(|| SourceStatus {
                stream: event.stream.clone(),
                location: String::new(),
                state: LoadState::NeverLoaded,
                failure: None,
                last_attempt: None,
                last_success: None,
                warnings: Vec::new(),
                architectures: Vec::new(),
            });
        status.last_attempt = Some(now);
        let (graphs, warnings) = match built {
            Err(failure) => {
                if status.state != LoadState::NeverLoaded {
                    status.state = LoadState::Rejected;
                }
                status.failure = Some(failure.clone());
                self.tx.send_replace(Arc::new(next));
                return Applied::Rejected(failure);
            }
            Ok(built) => built,
        };
        status.state = LoadState::Ok;
        status.failure = None;
        status.last_success = Some(now);
        status.warnings = warnings;
        status.architectures = graphs.keys().map(|k| k.basearch.clone()).collect();
        status.architectures.dedup();
        let forgotten = self.forget_missing(&event.stream, &graphs);
        let changed = self.merge(&mut next, &event.stream, graphs, now);
        if forgotten || !changed.is_empty() {
            self.persist(&next);
        }
        let applied = if changed.is_empty() {
            Applied::Unchanged
        } else {
            Applied::Changed(next.revision, changed)
        };
        self.tx.send_replace(Arc::new(next));
        applied
    }

    /// Replaces `stream`'s scopes in `next`; returns the scopes that changed.
    fn merge(
        &mut self,
        next: &mut Snapshot,
        stream: &str,
        graphs: BTreeMap<ScopeKey, (Graph, Bytes, String)>,
        now: SystemTime,
    ) -> Vec<ScopeKey> {
        let mut changed: Vec<ScopeKey> = Vec::new();
        let removed: Vec<ScopeKey> = next
            .scopes
            .keys()
            .filter(|k| k.stream == stream && !graphs.contains_key(*k))
            .cloned()
            .collect();
        for key in &removed {
            next.scopes.remove(key);
        }
        let revision = next.revision + 1;
        for (key, (graph, json, digest)) in graphs {
            let same = next.scopes.get(&key).map(|g| g.digest == digest);
            if same == Some(true) {
                continue;
            }
            // After a restart, an unchanged graph keeps its persisted revision.
            let kept = self
                .persisted
                .scopes
                .get(&key.to_string())
                .filter(|p| same.is_none() && p.digest == digest)
                .map(|p| p.revision);
            let scope_revision = kept.unwrap_or(revision);
            if kept.is_none() {
                changed.push(key.clone());
            }
            next.scopes.insert(
                key.clone(),
                Arc::new(ScopeGraph {
                    key,
                    revision: scope_revision,
                    graph: Arc::new(graph),
                    json,
                    digest,
                    built_at: now,
                }),
            );
        }
        if !changed.is_empty() || !removed.is_empty() {
            next.revision = revision;
            changed.extend(removed);
        }
        changed
    }

    /// Drops the persisted revisions of `stream`'s scopes that the new
    /// graphs lack, so a scope that comes back is not given its old revision
    /// (which would hide it from watchers). Returns whether any went.
    fn forget_missing(
        &mut self,
        stream: &str,
        graphs: &BTreeMap<ScopeKey, (Graph, Bytes, String)>,
    ) -> bool {
        let present: Vec<String> = graphs.keys().map(ScopeKey::to_string).collect();
        let prefix = format!("{stream}/");
        let before = self.persisted.scopes.len();
        self.persisted
            .scopes
            .retain(|key, _| !key.starts_with(&prefix) || present.contains(key));
        self.persisted.scopes.len() != before
    }

    fn persist(&mut self, snapshot: &Snapshot) {
        self.persisted.revision = snapshot.revision;
        for (key, graph) in &snapshot.scopes {
            self.persisted.scopes.insert(
                key.to_string(),
                PersistedScope {
                    revision: graph.revision,
                    digest: graph.digest.clone(),
                },
            );
        }
        if let Some(path) = &self.state_file
            && let Err(err) = self.persisted.save(path)
        {
            tracing::warn!(path = %path.display(), %err, "cannot persist graph revisions");
        }
    }
}

type BuiltScopes = (BTreeMap<ScopeKey, (Graph, Bytes, String)>, Vec<String>);

/// Parses both files and builds every scope of a stream.
fn build_scopes(
    stream: &str,
    raw: &RawMetadata,
    archs: &[String],
) -> Result<BuiltScopes, LoadFailure> {
    let index: ReleaseIndex = parse(&raw.releases, &raw.releases_from)?;
    let updates: UpdatesMetadata = parse(&raw.updates, &raw.updates_from)?;
    let archs = if archs.is_empty() {
        index_architectures(&index)
    } else {
        archs.to_vec()
    };
    let mut graphs = BTreeMap::new();
    let mut warnings = Vec::new();
    for basearch in archs {
        for scheme in [PayloadScheme::Checksum, PayloadScheme::Oci] {
            let built =
                build_graph(&index, &updates, &basearch, scheme).map_err(|err| LoadFailure {
                    file: match err {
                        BuildError::DuplicateIndexVersion(_) => raw.releases_from.clone(),
                        _ => raw.updates_from.clone(),
                    },
                    kind: FailureKind::Invalid,
                    message: format!("{basearch}: {err}"),
                })?;
            for warning in built.warnings {
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
            let json = Bytes::from(CincinnatiGraph::from(&built.graph).to_json_bytes());
            let digest = built.graph.digest();
            let key = ScopeKey {
                stream: stream.to_string(),
                basearch: basearch.clone(),
                scheme,
            };
            graphs.insert(key, (built.graph, json, digest));
        }
    }
    Ok((graphs, warnings))
}

/// Every architecture with a payload in the index, sorted.
fn index_architectures(index: &ReleaseIndex) -> Vec<String> {
    let mut archs: Vec<String> = index
        .releases
        .iter()
        .flat_map(|r| {
            let commits = r.commits.iter().map(|c| c.architecture.clone());
            commits.chain(r.oci_images.iter().map(|o| o.architecture.clone()))
        })
        .collect();
    archs.sort();
    archs.dedup();
    archs
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], file: &str) -> Result<T, LoadFailure> {
    serde_json::from_slice(bytes).map_err(|err| LoadFailure {
        file: file.to_string(),
        kind: FailureKind::Parse,
        message: err.to_string(),
    })
}
