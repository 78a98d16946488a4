//! Building the update graph of a scope from the release index and update metadata.

use crate::fcos::{IndexRelease, ReleaseIndex, UpdateDirectives, UpdatesMetadata};
use petgraph::graph::{DiGraph, NodeIndex};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

#[cfg(test)]
mod tests;

/// Metadata key prefix of update directives.
const UPDATES: &str = "org.fedoraproject.coreos.updates";
/// Metadata key of the position in the unfiltered index.
pub const AGE_INDEX: &str = "org.fedoraproject.coreos.releases.age_index";
/// Metadata key of the payload scheme.
pub const SCHEME: &str = "org.fedoraproject.coreos.scheme";

/// How a release's payload is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PayloadScheme {
    /// OSTree commit checksum.
    Checksum,
    /// OCI image digest reference.
    Oci,
}

impl PayloadScheme {
    /// The scheme's metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checksum => "checksum",
            Self::Oci => "oci",
        }
    }
}

/// The scope a graph is built for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Stream name.
    pub stream: String,
    /// Base architecture.
    pub basearch: String,
    /// Payload scheme.
    pub scheme: PayloadScheme,
}

/// Error building a graph.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A version appears twice in the release index.
    #[error("duplicate version {0} in release index")]
    DuplicateIndexVersion(String),
    /// A version appears twice in the update metadata.
    #[error("duplicate version {0} in update metadata")]
    DuplicateUpdateVersion(String),
    /// A rollout start percentage is not a number in 0..=1.
    #[error("rollout of {version} has start_percentage {value} outside 0..=1")]
    InvalidPercentage {
        /// Release version.
        version: String,
        /// Offending value.
        value: f64,
    },
    /// The built graph has a cycle (cannot happen with forward edges).
    #[error("graph has a cycle")]
    Cycle,
}

/// A release node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Release version.
    pub version: String,
    /// Payload for the scope.
    pub payload: String,
    /// Cincinnati metadata.
    pub metadata: BTreeMap<String, String>,
}

/// An immutable, acyclic update graph.
#[derive(Debug, Clone)]
pub struct Graph {
    nodes: Vec<Node>,
    edges: Vec<(u32, u32)>,
    dag: DiGraph<(), ()>,
}

/// A graph plus non-fatal warnings found while building it.
#[derive(Debug, Clone)]
pub struct BuiltGraph {
    /// The graph.
    pub graph: Graph,
    /// Warnings, e.g. update metadata naming unknown versions.
    pub warnings: Vec<String>,
}

impl Graph {
    /// Builds a graph from nodes and edges, sorting and deduplicating edges.
    pub fn new(nodes: Vec<Node>, mut edges: Vec<(u32, u32)>) -> Result<Self, BuildError> {
        edges.sort_unstable();
        edges.dedup();
        let mut dag = DiGraph::with_capacity(nodes.len(), edges.len());
        for _ in &nodes {
            dag.add_node(());
        }
        for &(a, b) in &edges {
            dag.add_edge(NodeIndex::new(a as usize), NodeIndex::new(b as usize), ());
        }
        if petgraph::algo::is_cyclic_directed(&dag) {
            return Err(BuildError::Cycle);
        }
        Ok(Self { nodes, edges, dag })
    }

    /// Nodes in index order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Sorted, deduplicated edges.
    pub fn edges(&self) -> &[(u32, u32)] {
        &self.edges
    }

    /// Direct successors of node `i`.
    pub fn successors(&self, i: u32) -> impl Iterator<Item = u32> + '_ {
        self.dag
            .neighbors(NodeIndex::new(i as usize))
            .map(|n| n.index() as u32)
    }

    /// Index of the node with this payload.
    pub fn node_by_payload(&self, payload: &str) -> Option<u32> {
        self.nodes
            .iter()
            .position(|n| n.payload == payload)
            .map(|i| i as u32)
    }

    /// Index of the node with this version.
    pub fn node_by_version(&self, version: &str) -> Option<u32> {
        self.nodes
            .iter()
            .position(|n| n.version == version)
            .map(|i| i as u32)
    }

    /// Hex SHA-256 of the graph's Cincinnati JSON serialization.
    pub fn digest(&self) -> String {
        let bytes = crate::codec::CincinnatiGraph::from(self).to_json_bytes();
        hex::encode(Sha256::digest(bytes))
    }
}

/// Builds the graph of one basearch and scheme.
pub fn build_graph(
    index: &ReleaseIndex,
    updates: &UpdatesMetadata,
    basearch: &str,
    scheme: PayloadScheme,
) -> Result<BuiltGraph, BuildError> {
    let directives = directives_by_version(index, updates)?;
    let mut warnings = directives.1;
    let mut nodes = Vec::new();
    let mut flags = Vec::new();
    for (age, rel) in index.releases.iter().enumerate() {
        let Some(payload) = payload_of(rel, basearch, scheme) else {
            continue;
        };
        let dir = directives.0.get(rel.version.as_str()).copied();
        let mut metadata = BTreeMap::new();
        metadata.insert(AGE_INDEX.to_owned(), age.to_string());
        metadata.insert(SCHEME.to_owned(), scheme.as_str().to_owned());
        if let Some(dir) = dir {
            add_directives(&mut metadata, dir);
        }
        flags.push(dir.map(Flags::of).unwrap_or_default());
        nodes.push(Node {
            version: rel.version.clone(),
            payload: payload.to_owned(),
            metadata,
        });
    }
    if nodes.is_empty() {
        warnings.push(format!("no release has a payload for {basearch}"));
    }
    let graph = Graph::new(nodes, compute_edges(&flags))?;
    Ok(BuiltGraph { graph, warnings })
}

/// Update directives by version, plus warnings for versions not in the index.
type Directives<'a> = (HashMap<&'a str, &'a UpdateDirectives>, Vec<String>);

fn directives_by_version<'a>(
    index: &ReleaseIndex,
    updates: &'a UpdatesMetadata,
) -> Result<Directives<'a>, BuildError> {
    let mut known = HashMap::new();
    for rel in &index.releases {
        if known.insert(rel.version.as_str(), ()).is_some() {
            return Err(BuildError::DuplicateIndexVersion(rel.version.clone()));
        }
    }
    let mut map = HashMap::new();
    let mut warnings = Vec::new();
    for rel in &updates.releases {
        if let Some(r) = &rel.metadata.rollout {
            let p = r.start_percentage.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&p) {
                return Err(BuildError::InvalidPercentage {
                    version: rel.version.clone(),
                    value: p,
                });
            }
        }
        if map.insert(rel.version.as_str(), &rel.metadata).is_some() {
            return Err(BuildError::DuplicateUpdateVersion(rel.version.clone()));
        }
        if !known.contains_key(rel.version.as_str()) {
            warnings.push(format!(
                "update metadata names {} which is not in the release index",
                rel.version
            ));
        }
    }
    Ok((map, warnings))
}

fn payload_of<'a>(rel: &'a IndexRelease, basearch: &str, scheme: PayloadScheme) -> Option<&'a str> {
    match scheme {
        PayloadScheme::Checksum => rel
            .commits
            .iter()
            .find(|c| c.architecture == basearch && !c.checksum.is_empty())
            .map(|c| c.checksum.as_str()),
        PayloadScheme::Oci => rel
            .oci_images
            .iter()
            .find(|c| c.architecture == basearch && !c.digest_ref.is_empty())
            .map(|c| c.digest_ref.as_str()),
    }
}

fn reason_or_generic(reason: &str) -> String {
    if reason.is_empty() {
        "generic".to_owned()
    } else {
        reason.to_owned()
    }
}

fn add_directives(metadata: &mut BTreeMap<String, String>, dir: &UpdateDirectives) {
    let mut put = |k: &str, v: String| {
        metadata.insert(format!("{UPDATES}.{k}"), v);
    };
    if let Some(b) = &dir.barrier {
        put("barrier", "true".to_owned());
        put("barrier_reason", reason_or_generic(&b.reason));
    }
    if let Some(d) = &dir.deadend {
        put("deadend", "true".to_owned());
        put("deadend_reason", reason_or_generic(&d.reason));
    }
    if let Some(r) = &dir.rollout {
        put("rollout", "true".to_owned());
        if let Some(e) = r.start_epoch {
            put("start_epoch", e.to_string());
        }
        // f64 Display matches Fedora's server: 0.0 -> "0", 0.5 -> "0.5".
        if let Some(p) = r.start_percentage {
            put("start_value", p.to_string());
        }
        if let Some(d) = r.duration_minutes {
            put("duration_minutes", d.to_string());
        }
    }
}

/// Directive flags of one node.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    barrier: bool,
    deadend: bool,
    rollout: bool,
}

impl Flags {
    fn of(dir: &UpdateDirectives) -> Self {
        Self {
            barrier: dir.barrier.is_some(),
            deadend: dir.deadend.is_some(),
            rollout: dir.rollout.is_some(),
        }
    }
}

/// Edges per DESIGN.md section 2, over the filtered node list.
fn compute_edges(flags: &[Flags]) -> Vec<(u32, u32)> {
    let mut edges = Vec::new();
    let mut last_barrier = 0u32;
    for (r, f) in flags.iter().enumerate() {
        let r = r as u32;
        // A rollout and a plain barrier both take edges from the previous barrier on.
        if f.rollout || f.barrier {
            edges.extend((last_barrier..r).map(|i| (i, r)));
        }
        if f.barrier {
            last_barrier = r;
        }
    }
    edges.retain(|&(from, _)| !flags[from as usize].deadend);
    edges
}
