//! Polling fallback: Zincati-compatible `/v1/graph` query and target choice
//! (via `upshift_cincinnati::target::select_target`).

use upshift_cincinnati::codec::CincinnatiGraph;
use upshift_cincinnati::graph::{Graph, Node};
use upshift_cincinnati::target::{TargetDecision, select_target};

use crate::os::Release;

/// Client parameters sent to a Cincinnati server.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub basearch: String,
    pub stream: String,
    pub rollout_wariness: Option<f64>,
    pub node_uuid: String,
    pub os_version: String,
    pub os_checksum: String,
    pub group: String,
    pub platform: String,
    pub oci: bool,
}

impl Query {
    /// Query pairs with Zincati's parameter names.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("basearch", self.basearch.clone()),
            ("stream", self.stream.clone()),
            ("node_uuid", self.node_uuid.clone()),
            ("os_version", self.os_version.clone()),
            ("os_checksum", self.os_checksum.clone()),
            ("group", self.group.clone()),
            ("platform", self.platform.clone()),
            ("oci", self.oci.to_string()),
        ];
        if let Some(w) = self.rollout_wariness {
            v.push(("rollout_wariness", format!("{w}")));
        }
        v
    }
}

/// What the graph says for this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Update(Release),
    UpToDate,
    DeadEnd {
        reason: String,
    },
    /// The booted payload is not in the graph, or the graph is invalid.
    Unknown(String),
}

/// Decodes a Cincinnati graph and chooses the target for `booted`.
pub fn choose(body: &[u8], booted: &Release, denied: &[String], allow_downgrade: bool) -> Choice {
    let wire = match CincinnatiGraph::from_slice(body) {
        Ok(g) => g,
        Err(e) => return Choice::Unknown(e.to_string()),
    };
    let nodes: Vec<Node> = wire
        .nodes
        .iter()
        .map(|n| Node {
            version: n.version.clone(),
            payload: n.payload.clone().unwrap_or_default(),
            metadata: n.metadata.clone().unwrap_or_default(),
        })
        .collect();
    let len = nodes.len() as u64;
    let edges: Vec<(u32, u32)> = wire
        .edges
        .iter()
        .filter(|[a, b]| *a < len && *b < len)
        .map(|[a, b]| (*a as u32, *b as u32))
        .collect();
    let graph = match Graph::new(nodes, edges) {
        Ok(g) => g,
        Err(e) => return Choice::Unknown(e.to_string()),
    };
    // A Cincinnati server already filters by rollout; every node it returns is visible.
    match select_target(&graph, &booted.payload, |_| true, denied, allow_downgrade) {
        TargetDecision::Update { index, .. } | TargetDecision::Throttled { next: index } => {
            let n = &graph.nodes()[index as usize];
            Choice::Update(Release {
                version: n.version.clone(),
                payload: n.payload.clone(),
            })
        }
        TargetDecision::UpToDate => Choice::UpToDate,
        TargetDecision::DeadEnd { reason } => Choice::DeadEnd { reason },
        TargetDecision::BootedUnknown => Choice::Unknown("booted payload not in graph".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Vec<u8> {
        let node = |v: &str, age: u32, extra: &str| {
            format!(
                r#"{{"version":"{v}","payload":"p{v}","metadata":{{"org.fedoraproject.coreos.releases.age_index":"{age}"{extra}}}}}"#
            )
        };
        format!(
            r#"{{"nodes":[{},{},{},{}],"edges":[[0,1],[0,2],[1,2]]}}"#,
            node("1", 0, ""),
            node("2", 1, ""),
            node("3", 2, ""),
            node("4", 3, r#","org.fedoraproject.coreos.updates.deadend":"true","org.fedoraproject.coreos.updates.deadend_reason":"see bug""#),
        )
        .into_bytes()
    }

    fn rel(v: &str) -> Release {
        Release {
            version: v.into(),
            payload: format!("p{v}"),
        }
    }

    #[test]
    fn choices() {
        let g = graph();
        assert_eq!(choose(&g, &rel("1"), &[], false), Choice::Update(rel("3")));
        assert_eq!(
            choose(&g, &rel("1"), &["3".into()], false),
            Choice::Update(rel("2"))
        );
        assert_eq!(choose(&g, &rel("3"), &[], false), Choice::UpToDate);
        assert_eq!(
            choose(&g, &rel("4"), &[], false),
            Choice::DeadEnd {
                reason: "see bug".into()
            }
        );
        assert!(matches!(
            choose(&g, &rel("9"), &[], false),
            Choice::Unknown(_)
        ));
        assert!(matches!(
            choose(b"nope", &rel("1"), &[], false),
            Choice::Unknown(_)
        ));
    }

    /// The response format of Fedora's public Cincinnati server (Zincati's
    /// own test fixture): the greatest release one edge away, by payload.
    #[test]
    fn fedora_coreos_response() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/cincinnati/zincati-response.json"
        );
        let body = std::fs::read(path).unwrap();
        let release = |version: &str, payload: &str| Release {
            version: version.into(),
            payload: payload.into(),
        };
        let oldest = release(
            "32.20200517.1.0",
            "7c23c4735fb3c541586f0a4d3ca956ef93ef7d76f00a19bccf51460bafa7ee97",
        );
        let newest = release(
            "32.20200601.1.1",
            "08040bebbab87a3343a281f94bb68010df618eb6ce6ac3d4230d2595959b5da1",
        );
        assert_eq!(
            choose(&body, &oldest, &[], false),
            Choice::Update(newest.clone())
        );
        assert_eq!(choose(&body, &newest, &[], false), Choice::UpToDate);
        // Its only edge leads to a denied release: nothing to do.
        assert_eq!(
            choose(&body, &oldest, std::slice::from_ref(&newest.version), false),
            Choice::UpToDate
        );
        // The host is found by its payload, not its version.
        let renamed = release("other", &oldest.payload);
        assert_eq!(choose(&body, &renamed, &[], false), Choice::Update(newest));
    }

    #[test]
    fn zincati_query_names() {
        let q = Query {
            basearch: "x86_64".into(),
            stream: "stable".into(),
            rollout_wariness: Some(0.5),
            node_uuid: "u".into(),
            os_version: "1".into(),
            os_checksum: "p1".into(),
            group: "default".into(),
            platform: "qemu".into(),
            oci: false,
        };
        let names: Vec<_> = q.pairs().iter().map(|(k, _)| *k).collect();
        for n in [
            "basearch",
            "stream",
            "rollout_wariness",
            "node_uuid",
            "os_version",
            "os_checksum",
            "group",
            "platform",
            "oci",
        ] {
            assert!(names.contains(&n), "{n}");
        }
    }
}
