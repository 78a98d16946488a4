//! Published policy state: one precomputed [`ScopeView`] per scope, shared by
//! every request and stream (no per-stream copy of a graph).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use upshift_cincinnati::graph::{Graph, PayloadScheme};
use upshift_cincinnati::rollout::RolloutSpec;
use upshift_cincinnati::target::filtered_graph;

/// Identifies a graph: stream x basearch x payload scheme.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    /// Update stream.
    pub stream: String,
    /// Base architecture.
    pub basearch: String,
    /// Payload scheme.
    pub scheme: PayloadScheme,
}

/// One rollout node of a scope.
#[derive(Debug, Clone)]
pub struct RolloutNode {
    /// Node index in the graph.
    pub index: u32,
    /// Release version.
    pub version: String,
    /// Throttle parameters.
    pub spec: RolloutSpec,
}

/// A pre-serialized Cincinnati graph for one set of hidden rollout nodes.
#[derive(Debug)]
pub struct Variant {
    /// The JSON body.
    pub body: Bytes,
    /// Strong ETag (quoted), derived from the body.
    pub etag: http::HeaderValue,
}

/// A set of rollout positions (in `ScopeView::rollouts`): the rollout nodes
/// hidden from (or throttled for) a client. Two words inline; any number of
/// rollouts is supported. Words grow only to hold a set bit, so equal sets
/// compare and hash equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HiddenMask(SmallVec<[u64; 2]>);

impl HiddenMask {
    /// Adds position `p`.
    pub fn set(&mut self, p: usize) {
        let w = p / 64;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (p % 64);
    }

    /// Whether position `p` is in the set.
    pub fn contains(&self, p: usize) -> bool {
        self.0.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0)
    }
}

/// Which pre-serialized graph a client gets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VariantKey {
    /// These rollout nodes hidden.
    Hidden(HiddenMask),
    /// A frozen stream: no edges at all.
    Frozen,
}

/// Most variants cached per view; more are built per request (the number of
/// distinct variants is about the number of rollout nodes plus one).
pub const MAX_CACHED_VARIANTS: usize = 256;

/// A scope's graph at one revision with everything the hot paths need.
#[derive(Debug)]
pub struct ScopeView {
    /// Scope.
    pub key: ScopeKey,
    /// Graph revision.
    pub revision: u64,
    /// The graph.
    pub graph: Graph,
    /// Payload -> node index.
    pub by_payload: HashMap<String, u32>,
    /// Rollout nodes, in graph order.
    pub rollouts: Vec<RolloutNode>,
    /// Node index -> position in `rollouts`.
    pub rollout_pos: HashMap<u32, usize>,
    variants: RwLock<HashMap<VariantKey, Arc<Variant>>>,
}

impl ScopeView {
    /// Precomputes the lookups of `graph`. Rollout metadata that does not
    /// parse is logged and the node treated as not throttled.
    pub fn new(key: ScopeKey, revision: u64, graph: Graph) -> Self {
        let by_payload = graph
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.payload.clone(), i as u32))
            .collect();
        let mut rollouts = Vec::new();
        for (i, n) in graph.nodes().iter().enumerate() {
            match RolloutSpec::from_metadata(&n.metadata) {
                Ok(Some(spec)) => rollouts.push(RolloutNode {
                    index: i as u32,
                    version: n.version.clone(),
                    spec,
                }),
                Ok(None) => {}
                Err(e) => tracing::warn!(version = %n.version, error = %e, "ignoring rollout"),
            }
        }
        let rollout_pos = rollouts
            .iter()
            .enumerate()
            .map(|(p, r)| (r.index, p))
            .collect();
        Self {
            key,
            revision,
            graph,
            by_payload,
            rollouts,
            rollout_pos,
            variants: RwLock::new(HashMap::new()),
        }
    }

    /// The rollout node at graph index `i`, if it is one.
    pub fn rollout(&self, i: u32) -> Option<&RolloutNode> {
        self.rollout_pos.get(&i).map(|&p| &self.rollouts[p])
    }

    /// The serialized graph for `key`, built once per key and revision.
    pub fn variant(&self, key: VariantKey) -> Arc<Variant> {
        if let Some(v) = self.variants.read().ok().and_then(|m| m.get(&key).cloned()) {
            return v;
        }
        let v = Arc::new(self.build_variant(&key));
        if let Ok(mut m) = self.variants.write()
            && m.len() < MAX_CACHED_VARIANTS
        {
            m.entry(key).or_insert_with(|| v.clone());
        }
        v
    }

    fn build_variant(&self, key: &VariantKey) -> Variant {
        let hidden: BTreeSet<u32> = match key {
            VariantKey::Hidden(mask) => self
                .rollouts
                .iter()
                .enumerate()
                .filter(|(p, _)| mask.contains(*p))
                .map(|(_, r)| r.index)
                .collect(),
            VariantKey::Frozen => BTreeSet::new(),
        };
        let mut g = filtered_graph(&self.graph, &hidden);
        if *key == VariantKey::Frozen {
            g.edges.clear();
        }
        let body = Bytes::from(g.to_json_bytes());
        let digest = Sha256::digest(&body);
        let etag = format!("\"{}\"", hex::encode(&digest[..12]));
        Variant {
            body,
            etag: http::HeaderValue::from_str(&etag)
                .unwrap_or(http::HeaderValue::from_static("\"0\"")),
        }
    }
}

/// Everything the follower publishes.
#[derive(Debug, Default)]
pub struct PolicyState {
    /// Views by scope.
    pub scopes: HashMap<ScopeKey, Arc<ScopeView>>,
    /// Highest graph revision seen.
    pub revision: u64,
}

impl PolicyState {
    /// Whether any view of `stream` exists.
    pub fn knows_stream(&self, stream: &str) -> bool {
        self.scopes.keys().any(|k| k.stream == stream)
    }
}
