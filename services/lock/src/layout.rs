//! Store keys and value encodings of group records and audit entries.
//!
//! - `upshift` layout: `upshift/lock/groups/<group>` holds a
//!   [`SemaphoreState`] as JSON.
//! - `airlock` layout: `com.coreos.airlock/groups/<group>/v1/semaphore` holds
//!   Airlock's `{"total_slots":N,"holders":["id",...]}` (ids sorted, as Airlock
//!   binary-searches them) with our fields alongside (`upshift_holders`,
//!   `upshift_paused`); unknown fields written by others are kept.
//!
//! Audit entries live under `upshift/lock/audit/` in both layouts.

use serde::{Deserialize, Serialize};

use crate::config::StoreLayout;
use crate::semaphore::{HolderRecord, Method, SemaphoreState};

/// Prefix of audit entries.
pub const AUDIT_PREFIX: &str = "upshift/lock/audit/";

const UPSHIFT_PREFIX: &str = "upshift/lock/groups/";
const AIRLOCK_PREFIX: &str = "com.coreos.airlock/groups/";
const AIRLOCK_SUFFIX: &str = "/v1/semaphore";

/// A stored value that is not a group record this version understands.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode group record")]
pub struct DecodeError(#[source] serde_json::Error);

#[derive(Debug, Serialize, Deserialize)]
struct AirlockDoc {
    total_slots: u64,
    #[serde(default)]
    holders: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    upshift_holders: Vec<HolderRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upshift_paused: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl StoreLayout {
    /// Prefix every group key starts with (the watch prefix).
    pub fn groups_prefix(self) -> &'static str {
        match self {
            StoreLayout::Upshift => UPSHIFT_PREFIX,
            StoreLayout::Airlock => AIRLOCK_PREFIX,
        }
    }

    /// Key of `group`'s record.
    pub fn group_key(self, group: &str) -> String {
        match self {
            StoreLayout::Upshift => format!("{UPSHIFT_PREFIX}{group}"),
            StoreLayout::Airlock => format!("{AIRLOCK_PREFIX}{group}{AIRLOCK_SUFFIX}"),
        }
    }

    /// The group a key belongs to, if it is a group record key.
    pub fn group_of(self, key: &str) -> Option<&str> {
        let rest = key.strip_prefix(self.groups_prefix())?;
        let group = match self {
            StoreLayout::Upshift => rest,
            StoreLayout::Airlock => rest.strip_suffix(AIRLOCK_SUFFIX)?,
        };
        (!group.is_empty() && !group.contains('/')).then_some(group)
    }

    /// Decodes a stored record.
    pub fn decode(self, raw: &[u8]) -> Result<SemaphoreState, DecodeError> {
        match self {
            StoreLayout::Upshift => serde_json::from_slice(raw).map_err(DecodeError),
            StoreLayout::Airlock => {
                let doc: AirlockDoc = serde_json::from_slice(raw).map_err(DecodeError)?;
                // Airlock's list is authoritative; ids it wrote have no record of ours.
                let holders = doc
                    .holders
                    .iter()
                    .map(|id| {
                        doc.upshift_holders
                            .iter()
                            .find(|h| &h.id == id)
                            .cloned()
                            .unwrap_or_else(|| HolderRecord {
                                id: id.clone(),
                                acquired_at: 0,
                                method: Method::Fleetlock,
                                lease: None,
                            })
                    })
                    .collect::<Vec<_>>();
                let mut holders = holders;
                holders.sort_by_key(|h| h.acquired_at);
                Ok(SemaphoreState {
                    total_slots: u32::try_from(doc.total_slots).unwrap_or(u32::MAX).max(1),
                    holders,
                    paused: doc.upshift_paused,
                })
            }
        }
    }

    /// Encodes a record; `previous` keeps foreign fields of the Airlock layout.
    pub fn encode(self, state: &SemaphoreState, previous: Option<&[u8]>) -> Vec<u8> {
        match self {
            StoreLayout::Upshift => serde_json::to_vec(state).unwrap_or_default(),
            StoreLayout::Airlock => {
                let other = previous
                    .and_then(|p| serde_json::from_slice::<AirlockDoc>(p).ok())
                    .map(|d| d.other)
                    .unwrap_or_default();
                let mut ids: Vec<String> = state.holders.iter().map(|h| h.id.clone()).collect();
                ids.sort();
                let doc = AirlockDoc {
                    total_slots: u64::from(state.total_slots),
                    holders: ids,
                    upshift_holders: state.holders.clone(),
                    upshift_paused: state.paused.clone(),
                    other,
                };
                serde_json::to_vec(&doc).unwrap_or_default()
            }
        }
    }
}

/// One audit log entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, epoch milliseconds.
    pub at_ms: u64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Group.
    pub group: String,
    /// Holder id or new value.
    pub target: String,
    /// Why.
    pub reason: String,
}

static AUDIT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Key of a new audit entry: time-ordered, then ordered within this process
/// by a sequence number, with a random tail against collisions across replicas.
pub fn audit_key(at_ms: u64) -> String {
    let seq = AUDIT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{AUDIT_PREFIX}{at_ms:020}-{seq:012}-{:08x}",
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn airlock_value_round_trips_and_keeps_foreign_fields() {
        let airlock = br#"{"total_slots":2,"holders":["b","a"],"comment":"ops"}"#;
        let layout = StoreLayout::Airlock;
        let mut s = layout.decode(airlock).unwrap();
        assert_eq!(s.total_slots, 2);
        assert_eq!(s.holders.len(), 2);
        s.unlock("b");
        let out: serde_json::Value =
            serde_json::from_slice(&layout.encode(&s, Some(airlock))).unwrap();
        assert_eq!(out["total_slots"], 2);
        assert_eq!(out["holders"], serde_json::json!(["a"]));
        assert_eq!(out["comment"], "ops");
        assert_eq!(out["upshift_holders"][0]["id"], "a");
    }

    #[test]
    fn keys() {
        let a = StoreLayout::Airlock;
        assert_eq!(
            a.group_key("default"),
            "com.coreos.airlock/groups/default/v1/semaphore"
        );
        assert_eq!(
            a.group_of("com.coreos.airlock/groups/default/v1/semaphore"),
            Some("default")
        );
        assert_eq!(a.group_of("com.coreos.airlock/groups/default/v2/x"), None);
        let u = StoreLayout::Upshift;
        assert_eq!(u.group_of(&u.group_key("web.eu-1")), Some("web.eu-1"));
    }
}
