use super::*;
use crate::fcos::{Commit, Reason, Rollout, UpdateRelease};
use proptest::prelude::*;

fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/fcos"
    ))
}

fn stable_index() -> ReleaseIndex {
    ReleaseIndex::from_slice(&std::fs::read(fixtures().join("stable/releases.json")).unwrap())
        .unwrap()
}

fn updates(rel: &str) -> UpdatesMetadata {
    UpdatesMetadata::from_slice(&std::fs::read(fixtures().join(rel)).unwrap()).unwrap()
}

fn all_update_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures().join("stable/updates-history"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain(
            std::fs::read_dir(fixtures().join("latest"))
                .unwrap()
                .map(|e| e.unwrap().path()),
        )
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Edges (i, to) for every i in `from`.
fn span(from: std::ops::Range<u32>, to: u32) -> Vec<(u32, u32)> {
    from.map(|i| (i, to)).collect()
}

fn stable_edges(rev: &str) -> Vec<(u32, u32)> {
    let u = updates(&format!("stable/updates-history/{rev}.json"));
    let built = build_graph(&stable_index(), &u, "x86_64", PayloadScheme::Checksum).unwrap();
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
    built.graph.edges().to_vec()
}

#[test]
fn revision_001_single_rollout_at_oldest_has_no_edges() {
    // Only rollout is node 0: the range 0..0 is empty.
    assert_eq!(stable_edges("001"), vec![]);
}

#[test]
fn revision_010_two_rollouts() {
    // Rollouts at index 8 and 9, no barrier.
    let mut want = span(0..8, 8);
    want.extend(span(0..9, 9));
    want.sort_unstable();
    assert_eq!(stable_edges("010"), want);
}

#[test]
fn revision_058_barriers_and_rollouts() {
    // Barriers at 11, 13, 23, 24, 40; rollouts at 49, 50.
    let mut want = [
        span(0..11, 11),
        span(11..13, 13),
        span(13..23, 23),
        span(23..24, 24),
        span(24..40, 40),
        span(40..49, 49),
        span(40..50, 50),
    ]
    .concat();
    want.sort_unstable();
    assert_eq!(stable_edges("058"), want);
}

#[test]
fn revision_017_barrier_that_is_also_a_rollout() {
    // Rollout at 12; barrier + rollout at 13. No barrier lies below either,
    // so both take edges from node 0 on; 13 being a rollout, its barrier
    // rule adds nothing more.
    let mut want = [span(0..12, 12), span(0..13, 13)].concat();
    want.sort_unstable();
    assert_eq!(stable_edges("017"), want);
}

#[test]
fn revision_030_stacked_barriers_then_rollouts() {
    // Barriers at 11 and 13; rollout at 23; barrier + rollout at 24.
    // Barrier 11 from 0, barrier 13 from the previous barrier 11; both
    // rollouts from the highest barrier below them, 13.
    let mut want = [
        span(0..11, 11),
        span(11..13, 13),
        span(13..23, 23),
        span(13..24, 24),
    ]
    .concat();
    want.sort_unstable();
    assert_eq!(stable_edges("030"), want);
}

/// The stable index with an OCI image for x86_64 on every release from age
/// `from` on (the fixture has none).
fn index_with_oci_from(from: usize) -> ReleaseIndex {
    let mut index = stable_index();
    for rel in index.releases.iter_mut().skip(from) {
        rel.oci_images = vec![crate::fcos::OciImage {
            architecture: "x86_64".to_owned(),
            image: "quay.io/fedora/fedora-coreos".to_owned(),
            digest_ref: format!("quay.io/fedora/fedora-coreos@sha256:{}", rel.version),
        }];
    }
    index
}

#[test]
fn oci_scheme_nodes_carry_the_digest_ref_and_share_the_checksum_edges() {
    let u = updates("stable/updates-history/030.json");
    // Every release has both payloads: the same graph but for payloads and scheme.
    let index = index_with_oci_from(0);
    let oci = build_graph(&index, &u, "x86_64", PayloadScheme::Oci)
        .unwrap()
        .graph;
    let checksum = build_graph(&index, &u, "x86_64", PayloadScheme::Checksum)
        .unwrap()
        .graph;
    assert_eq!(oci.nodes().len(), 51);
    assert_eq!(oci.edges(), checksum.edges());
    for (o, c) in oci.nodes().iter().zip(checksum.nodes()) {
        assert_eq!(o.version, c.version);
        assert_eq!(
            o.payload,
            format!("quay.io/fedora/fedora-coreos@sha256:{}", o.version)
        );
        assert_eq!(o.metadata[SCHEME], "oci");
        assert_eq!(c.metadata[SCHEME], "checksum");
        assert_eq!(o.metadata[AGE_INDEX], c.metadata[AGE_INDEX]);
    }
    let aarch64 = build_graph(&index, &u, "aarch64", PayloadScheme::Oci).unwrap();
    assert!(aarch64.graph.nodes().is_empty(), "no aarch64 image");

    // Images only from age 20 on: nodes 0..=30 are ages 20..=50, so the
    // barriers 11 and 13 are not nodes; the rollouts 23 and 24 are nodes 3
    // and 4, with no barrier below them: edges from node 0 on.
    let index = index_with_oci_from(20);
    let oci = build_graph(&index, &u, "x86_64", PayloadScheme::Oci)
        .unwrap()
        .graph;
    assert_eq!(oci.nodes().len(), 31);
    assert_eq!(oci.nodes()[0].metadata[AGE_INDEX], "20");
    assert_eq!(oci.nodes()[3].metadata[AGE_INDEX], "23");
    let mut want = [span(0..3, 3), span(0..4, 4)].concat();
    want.sort_unstable();
    assert_eq!(oci.edges(), want);
    // The same edges as the checksum graph between releases having both.
    let versions = |g: &Graph, edges: &[(u32, u32)]| -> BTreeSet<(String, String)> {
        edges
            .iter()
            .map(|&(a, b)| {
                let v = |i: u32| g.nodes()[i as usize].version.clone();
                (v(a), v(b))
            })
            .collect()
    };
    let with_oci: BTreeSet<String> = oci.nodes().iter().map(|n| n.version.clone()).collect();
    let shared: Vec<(u32, u32)> = checksum
        .edges()
        .iter()
        .copied()
        .filter(|&(a, b)| {
            [a, b]
                .iter()
                .all(|i| with_oci.contains(&checksum.nodes()[*i as usize].version))
        })
        .collect();
    assert_eq!(versions(&oci, oci.edges()), versions(&checksum, &shared));
}

fn release(version: &str, arch: &str) -> IndexRelease {
    IndexRelease {
        version: version.to_owned(),
        commits: vec![Commit {
            architecture: arch.to_owned(),
            checksum: format!("sum-{version}"),
        }],
        oci_images: vec![],
        metadata: None,
    }
}

fn directive(version: &str, barrier: bool, deadend: bool, rollout: bool) -> UpdateRelease {
    let reason = || Reason {
        reason: String::new(),
    };
    UpdateRelease {
        version: version.to_owned(),
        metadata: UpdateDirectives {
            barrier: barrier.then(reason),
            deadend: deadend.then(|| Reason {
                reason: "bad".to_owned(),
            }),
            rollout: rollout.then_some(Rollout {
                start_epoch: Some(100),
                start_percentage: Some(0.0),
                duration_minutes: Some(5),
            }),
        },
    }
}

fn synthetic() -> BuiltGraph {
    let index = ReleaseIndex {
        releases: ["v0", "v1", "vA", "v2", "v3", "v4", "v5"]
            .iter()
            .map(|v| release(v, if *v == "vA" { "aarch64" } else { "x86_64" }))
            .collect(),
    };
    let updates = UpdatesMetadata {
        stream: "s".to_owned(),
        metadata: BTreeMap::new(),
        releases: vec![
            directive("v1", false, true, false),
            directive("v2", true, false, false),
            directive("v3", false, true, false),
            directive("v4", false, false, true),
            directive("v5", true, false, true),
            directive("gone", true, false, false),
        ],
    };
    build_graph(&index, &updates, "x86_64", PayloadScheme::Checksum).unwrap()
}

#[test]
fn synthetic_with_dead_ends() {
    let built = synthetic();
    // Filtered nodes v0 v1 v2 v3 v4 v5. Barrier 2: (0,2),(1,2). Rollout 4 from
    // barrier 2: (2,4),(3,4). Rollout+barrier 5 from barrier 2: (2,5),(3,5),(4,5).
    // Dead-ends 1 and 3 lose their outgoing edges.
    assert_eq!(built.graph.edges(), &[(0, 2), (2, 4), (2, 5), (4, 5)]);
    assert_eq!(built.warnings.len(), 1);
    let ages: Vec<_> = built
        .graph
        .nodes()
        .iter()
        .map(|n| n.metadata[AGE_INDEX].clone())
        .collect();
    assert_eq!(ages, ["0", "1", "3", "4", "5", "6"]);
    let v2 = &built.graph.nodes()[2].metadata;
    assert_eq!(
        v2["org.fedoraproject.coreos.updates.barrier_reason"],
        "generic"
    );
    let v4 = &built.graph.nodes()[4].metadata;
    assert_eq!(v4["org.fedoraproject.coreos.updates.start_value"], "0");
    assert_eq!(v4["org.fedoraproject.coreos.updates.start_epoch"], "100");
    assert_eq!(v4["org.fedoraproject.coreos.updates.duration_minutes"], "5");
    assert_eq!(
        built.graph.successors(2).collect::<BTreeSet<_>>(),
        BTreeSet::from([4, 5])
    );
    assert_eq!(built.graph.node_by_version("v3"), Some(3));
    assert_eq!(built.graph.node_by_payload("sum-v5"), Some(5));
}

use std::collections::BTreeSet;

#[test]
fn duplicates_and_bad_percentages_are_errors() {
    let index = ReleaseIndex {
        releases: vec![release("a", "x86_64"), release("a", "x86_64")],
    };
    let empty = UpdatesMetadata {
        stream: "s".into(),
        metadata: BTreeMap::new(),
        releases: vec![],
    };
    assert!(matches!(
        build_graph(&index, &empty, "x86_64", PayloadScheme::Checksum),
        Err(BuildError::DuplicateIndexVersion(_))
    ));
    let index = ReleaseIndex {
        releases: vec![release("a", "x86_64")],
    };
    let mut dup = empty.clone();
    dup.releases = vec![
        directive("a", true, false, false),
        directive("a", true, false, false),
    ];
    assert!(matches!(
        build_graph(&index, &dup, "x86_64", PayloadScheme::Checksum),
        Err(BuildError::DuplicateUpdateVersion(_))
    ));
    let mut bad = empty;
    let mut d = directive("a", false, false, true);
    d.metadata.rollout.as_mut().unwrap().start_percentage = Some(f64::NAN);
    bad.releases = vec![d];
    assert!(matches!(
        build_graph(&index, &bad, "x86_64", PayloadScheme::Checksum),
        Err(BuildError::InvalidPercentage { .. })
    ));
}

#[test]
fn digest_is_stable_hex() {
    let a = synthetic().graph.digest();
    assert_eq!(a.len(), 64);
    assert_eq!(a, synthetic().graph.digest());
}

/// Invariants every built graph must satisfy.
fn check_invariants(index: &ReleaseIndex, built: &BuiltGraph) -> Result<(), TestCaseError> {
    let g = &built.graph;
    let md = |i: u32, k: &str| g.nodes()[i as usize].metadata.get(k).map(String::as_str);
    let flag = |i: u32, k: &str| md(i, &format!("{UPDATES}.{k}")) == Some("true");
    for &(a, b) in g.edges() {
        prop_assert!(a < b);
        prop_assert!(flag(b, "barrier") || flag(b, "rollout"));
        prop_assert!(!flag(a, "deadend"));
    }
    prop_assert!(!petgraph::algo::is_cyclic_directed(&g.dag));
    let mut last = None;
    for (i, n) in g.nodes().iter().enumerate() {
        let age: usize = md(i as u32, AGE_INDEX).unwrap().parse().unwrap();
        prop_assert_eq!(&index.releases[age].version, &n.version);
        prop_assert!(last < Some(age));
        last = Some(age);
    }
    Ok(())
}

#[test]
fn every_fixture_revision_satisfies_invariants() {
    let index = stable_index();
    for path in all_update_files() {
        let u = UpdatesMetadata::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for arch in ["x86_64", "aarch64"] {
            let built = build_graph(&index, &u, arch, PayloadScheme::Checksum).unwrap();
            check_invariants(&index, &built).unwrap();
        }
    }
}

fn arb_case() -> impl Strategy<Value = (ReleaseIndex, UpdatesMetadata)> {
    prop::collection::vec((any::<bool>(), 0u8..16), 0..40).prop_map(|spec| {
        let releases = spec
            .iter()
            .enumerate()
            .map(|(i, (x86, _))| release(&format!("r{i}"), if *x86 { "x86_64" } else { "s390x" }))
            .collect();
        let updates = spec
            .iter()
            .enumerate()
            .filter(|(_, (_, bits))| *bits & 7 != 0)
            .map(|(i, (_, b))| directive(&format!("r{i}"), b & 1 != 0, b & 2 != 0, b & 4 != 0))
            .collect();
        (
            ReleaseIndex { releases },
            UpdatesMetadata {
                stream: "s".into(),
                metadata: BTreeMap::new(),
                releases: updates,
            },
        )
    })
}

proptest! {
    #[test]
    fn random_graphs_satisfy_invariants((index, updates) in arb_case()) {
        let built = build_graph(&index, &updates, "x86_64", PayloadScheme::Checksum).unwrap();
        check_invariants(&index, &built)?;
    }
}

/// The Fedora CoreOS graph-builder's rules (DESIGN.md section 2), written
/// out a second time over the raw JSON, independently of the serde types
/// and of `compute_edges`: nodes, their metadata and the edge set.
mod reference {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    pub type Nodes = Vec<(String, String, BTreeMap<String, String>)>;

    fn reason(v: &Value) -> String {
        match v["reason"].as_str() {
            None | Some("") => "generic".to_owned(),
            Some(r) => r.to_owned(),
        }
    }

    pub fn graph(
        index: &Value,
        updates: &Value,
        arch: &str,
        oci: bool,
    ) -> (Nodes, Vec<(u32, u32)>) {
        let p = "org.fedoraproject.coreos.updates";
        let mut nodes = Vec::new();
        for (age, rel) in index["releases"].as_array().unwrap().iter().enumerate() {
            let (list, field) = if oci {
                ("oci-images", "digest-ref")
            } else {
                ("commits", "checksum")
            };
            let payload = rel[list].as_array().into_iter().flatten().find_map(|c| {
                let payload = c[field].as_str().filter(|s| !s.is_empty())?;
                (c["architecture"] == arch).then(|| payload.to_owned())
            });
            let Some(payload) = payload else { continue };
            let version = rel["version"].as_str().unwrap().to_owned();
            let mut md = BTreeMap::new();
            md.insert(
                "org.fedoraproject.coreos.releases.age_index".into(),
                age.to_string(),
            );
            let scheme = if oci { "oci" } else { "checksum" };
            md.insert("org.fedoraproject.coreos.scheme".into(), scheme.into());
            for entry in updates["releases"].as_array().unwrap() {
                if entry["version"] != version.as_str() {
                    continue;
                }
                let m = &entry["metadata"];
                for kind in ["barrier", "deadend"] {
                    if m[kind].is_object() {
                        md.insert(format!("{p}.{kind}"), "true".into());
                        md.insert(format!("{p}.{kind}_reason"), reason(&m[kind]));
                    }
                }
                if let Some(r) = m["rollout"].as_object() {
                    md.insert(format!("{p}.rollout"), "true".into());
                    if let Some(e) = r.get("start_epoch").and_then(Value::as_i64) {
                        md.insert(format!("{p}.start_epoch"), e.to_string());
                    }
                    if let Some(v) = r.get("start_percentage").and_then(Value::as_f64) {
                        md.insert(format!("{p}.start_value"), v.to_string());
                    }
                    if let Some(d) = r.get("duration_minutes").and_then(Value::as_u64) {
                        md.insert(format!("{p}.duration_minutes"), d.to_string());
                    }
                }
            }
            nodes.push((version, payload, md));
        }
        let has = |i: usize, k: &str| nodes[i].2.contains_key(&format!("{p}.{k}"));
        let barriers: BTreeSet<u32> = (0..nodes.len())
            .filter(|&i| has(i, "barrier"))
            .map(|i| i as u32)
            .collect();
        let mut edges = BTreeSet::new();
        for r in (0..nodes.len()).filter(|&i| has(i, "rollout")) {
            let r = r as u32;
            let b = barriers.range(..r).next_back().copied().unwrap_or(0);
            edges.extend((b..r).map(|i| (i, r)));
        }
        let mut start = 0;
        for &t in &barriers {
            if !has(t as usize, "rollout") {
                edges.extend((start..t).map(|i| (i, t)));
            }
            start = t;
        }
        let edges = edges
            .into_iter()
            .filter(|&(from, _)| !has(from as usize, "deadend"))
            .collect();
        (nodes, edges)
    }
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `build_graph` against the reference rules, every scope of `index`.
fn assert_matches_reference(
    index: &serde_json::Value,
    updates: &serde_json::Value,
    what: &str,
) -> usize {
    let parsed_index = ReleaseIndex::from_slice(&serde_json::to_vec(index).unwrap()).unwrap();
    let parsed_updates =
        UpdatesMetadata::from_slice(&serde_json::to_vec(updates).unwrap()).unwrap();
    let mut edges = 0;
    for arch in ["x86_64", "aarch64"] {
        for (scheme, oci) in [(PayloadScheme::Checksum, false), (PayloadScheme::Oci, true)] {
            let built = build_graph(&parsed_index, &parsed_updates, arch, scheme).unwrap();
            let (nodes, want) = reference::graph(index, updates, arch, oci);
            let got: reference::Nodes = built
                .graph
                .nodes()
                .iter()
                .map(|n| (n.version.clone(), n.payload.clone(), n.metadata.clone()))
                .collect();
            assert_eq!(got, nodes, "{what} {arch} {scheme:?}: nodes");
            assert_eq!(
                built.graph.edges(),
                &want[..],
                "{what} {arch} {scheme:?}: edges"
            );
            edges += want.len();
        }
    }
    edges
}

#[test]
fn every_fixture_revision_matches_the_reference_rules() {
    let index = json(&fixtures().join("stable/releases.json"));
    let mut edges = 0;
    for path in all_update_files() {
        edges += assert_matches_reference(&index, &json(&path), &path.display().to_string());
    }
    assert!(
        edges > 1000,
        "the fixtures exercise the rules: {edges} edges"
    );
}

/// The `latest/` files name 2026 releases that the stable index lacks: build
/// an index of their own versions (ordered by the build date in the
/// version, x86_64 checksums and OCI digests), so their barriers, rollouts
/// and dead-ends all take part.
#[test]
fn latest_metadata_on_an_index_of_its_own_versions_matches_the_reference_rules() {
    let mut dead_ends = 0;
    for stream in ["stable", "testing", "next"] {
        let updates = json(&fixtures().join(format!("latest/updates-{stream}.json")));
        let mut versions: Vec<&str> = updates["releases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["version"].as_str().unwrap())
            .collect();
        versions.sort_by_key(|v| (v.split('.').nth(1).unwrap_or("").to_owned(), v.to_string()));
        let releases: Vec<serde_json::Value> = versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "version": v,
                    "commits": [{"architecture": "x86_64", "checksum": format!("c-{v}")}],
                    "oci-images": [{"architecture": "x86_64", "image": "quay.io/x", "digest-ref": format!("quay.io/x@sha256:{v}")}],
                })
            })
            .collect();
        let index = serde_json::json!({ "releases": releases });
        assert_matches_reference(&index, &updates, stream);
        let (nodes, _) = reference::graph(&index, &updates, "x86_64", false);
        dead_ends += nodes
            .iter()
            .filter(|n| n.2.contains_key("org.fedoraproject.coreos.updates.deadend"))
            .count();
    }
    assert!(dead_ends > 0, "dead-ends are exercised");
}
