//! The Cincinnati JSON wire format.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Error decoding a Cincinnati graph document.
#[derive(Debug, thiserror::Error)]
#[error("invalid Cincinnati graph")]
pub struct DecodeError(#[source] serde_json::Error);

/// A Cincinnati graph as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CincinnatiGraph {
    /// Optional top-level format version (OpenShift), preserved when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Graph nodes.
    pub nodes: Vec<CincinnatiNode>,
    /// Edges as `[from, to]` node indices.
    pub edges: Vec<[u64; 2]>,
    /// OpenShift conditional edges, preserved verbatim.
    #[serde(
        default,
        rename = "conditionalEdges",
        skip_serializing_if = "Option::is_none"
    )]
    pub conditional_edges: Option<serde_json::Value>,
}

/// One node of a Cincinnati graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CincinnatiNode {
    /// Release version.
    pub version: String,
    /// Payload (checksum or pull spec); some OpenShift nodes have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// String metadata; `None` when the key is absent (some OpenShift nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl CincinnatiGraph {
    /// Serializes to compact JSON.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serializing plain strings, maps and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a JSON document.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(DecodeError)
    }
}

impl From<&crate::graph::Graph> for CincinnatiGraph {
    fn from(graph: &crate::graph::Graph) -> Self {
        Self {
            version: None,
            nodes: graph
                .nodes()
                .iter()
                .map(|n| CincinnatiNode {
                    version: n.version.clone(),
                    payload: Some(n.payload.clone()),
                    metadata: Some(n.metadata.clone()),
                })
                .collect(),
            edges: graph
                .edges()
                .iter()
                .map(|&(a, b)| [u64::from(a), u64::from(b)])
                .collect(),
            conditional_edges: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> std::path::PathBuf {
        std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/cincinnati"
        ))
    }

    #[test]
    fn round_trips_every_fixture() {
        let mut seen = 0;
        for entry in std::fs::read_dir(fixture_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let raw = std::fs::read(&path).unwrap();
            let parsed = CincinnatiGraph::from_slice(&raw).unwrap();
            let bytes = parsed.to_json_bytes();
            assert_eq!(CincinnatiGraph::from_slice(&bytes).unwrap(), parsed);
            let a: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            let b: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(a, b, "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 3);
    }

    #[test]
    fn openshift_nodes_without_payload_are_preserved() {
        let raw = std::fs::read(fixture_dir().join("openshift-graph-2021-11.json")).unwrap();
        let g = CincinnatiGraph::from_slice(&raw).unwrap();
        assert_eq!(g.nodes.len(), 1085);
        assert_eq!(g.edges.len(), 19478);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(CincinnatiGraph::from_slice(b"{\"nodes\":1}").is_err());
    }
}
