//! Store keys and value encodings of group records and audit entries.
//!
//! The service works on the store's root handle ([`upshift_store::Store::root`])
//! and spells out its keys itself, so a group record and its audit entries
//! go in one transaction even when they live under different prefixes:
//!
//! - `upshift` layout: `<key_prefix>upshift/lock/groups/<group>` holds a
//!   [`SemaphoreState`] as JSON.
//! - `airlock` layout: `com.coreos.airlock/groups/<group>/v1/semaphore`,
//!   exactly Airlock's key whatever `[store.etcd] key_prefix` is, holds
//!   Airlock's `{"total_slots":N,"holders":["id",...]}` (ids sorted, as Airlock
//!   binary-searches them) with our fields alongside (`upshift_holders`,
//!   `upshift_paused`); unknown fields written by others are kept. Ids Airlock
//!   wrote carry no acquisition time: they decode with `acquired_at = 0`
//!   (unknown), which the service replaces with the time it first saw them.
//!
//! Audit entries live under `<key_prefix>upshift/lock/audit/` in both layouts.

use serde::{Deserialize, Serialize};

use crate::config::StoreLayout;
use crate::semaphore::{HolderRecord, Method, SemaphoreState};

/// Prefix of audit entries, after the store's key prefix.
pub const AUDIT_PREFIX: &str = "upshift/lock/audit/";

/// `acquired_at` of a holder whose acquisition time is not known (one
/// Airlock wrote).
pub const UNKNOWN_ACQUIRED_AT: u64 = 0;

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

/// The keys of one lock service, as addressed on the store's root handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    layout: StoreLayout,
    groups: String,
    audit: String,
}

impl Keys {
    /// Keys of `layout`; `key_prefix` is the store's prefix for Upshift's
    /// own keys (the Airlock layout's group keys ignore it).
    pub fn new(layout: StoreLayout, key_prefix: &str) -> Self {
        let groups = match layout {
            StoreLayout::Upshift => format!("{key_prefix}{UPSHIFT_PREFIX}"),
            StoreLayout::Airlock => AIRLOCK_PREFIX.to_string(),
        };
        Self {
            layout,
            groups,
            audit: format!("{key_prefix}{AUDIT_PREFIX}"),
        }
    }

    /// The layout.
    pub fn layout(&self) -> StoreLayout {
        self.layout
    }

    /// Prefix every group key starts with (the watch prefix).
    pub fn groups_prefix(&self) -> &str {
        &self.groups
    }

    /// Key of `group`'s record.
    pub fn group_key(&self, group: &str) -> String {
        match self.layout {
            StoreLayout::Upshift => format!("{}{group}", self.groups),
            StoreLayout::Airlock => format!("{}{group}{AIRLOCK_SUFFIX}", self.groups),
        }
    }

    /// The group a key belongs to, if it is a group record key.
    pub fn group_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(self.groups.as_str())?;
        let group = match self.layout {
            StoreLayout::Upshift => rest,
            StoreLayout::Airlock => rest.strip_suffix(AIRLOCK_SUFFIX)?,
        };
        (!group.is_empty() && !group.contains('/')).then_some(group)
    }

    /// Prefix of the audit entries.
    pub fn audit_prefix(&self) -> &str {
        &self.audit
    }

    /// When the entry at `key` was written (epoch milliseconds), if `key` is
    /// an audit key.
    pub fn audit_time(&self, key: &str) -> Option<u64> {
        key.strip_prefix(self.audit.as_str())?
            .get(..20)?
            .parse()
            .ok()
    }

    /// Key of a new audit entry: time-ordered, then ordered within this
    /// process by a sequence number, with a random tail against collisions
    /// across replicas.
    pub fn audit_key(&self, at_ms: u64) -> String {
        let seq = AUDIT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(
            "{}{at_ms:020}-{seq:012}-{:08x}",
            self.audit,
            rand::random::<u32>()
        )
    }
}

impl StoreLayout {
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
                                acquired_at: UNKNOWN_ACQUIRED_AT,
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
    /// What came of an admin call ("released", "held nothing", "changed",
    /// "unchanged"); empty for grants and releases.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
}

static AUDIT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
    fn airlock_keys_ignore_the_store_prefix() {
        let a = Keys::new(StoreLayout::Airlock, "/upshift/");
        assert_eq!(
            a.group_key("default"),
            "com.coreos.airlock/groups/default/v1/semaphore"
        );
        assert_eq!(
            a.group_of("com.coreos.airlock/groups/default/v1/semaphore"),
            Some("default")
        );
        assert_eq!(a.group_of("com.coreos.airlock/groups/default/v2/x"), None);
        let key = a.audit_key(1_700_000_000_123);
        assert!(key.starts_with("/upshift/upshift/lock/audit/"));
        assert_eq!(a.audit_time(&key), Some(1_700_000_000_123));
        assert_eq!(
            a.audit_time("upshift/lock/audit/00000000000000000001"),
            None
        );
    }

    #[test]
    fn upshift_keys_carry_the_store_prefix() {
        let u = Keys::new(StoreLayout::Upshift, "/upshift/");
        assert_eq!(u.group_key("web"), "/upshift/upshift/lock/groups/web");
        assert_eq!(u.group_of(&u.group_key("web.eu-1")), Some("web.eu-1"));
        assert_eq!(u.group_of("upshift/lock/groups/web"), None);
        assert_eq!(u.audit_prefix(), "/upshift/upshift/lock/audit/");
    }

    #[test]
    fn airlock_holders_have_an_unknown_acquisition_time() {
        let s = StoreLayout::Airlock
            .decode(br#"{"total_slots":1,"holders":["airlock-node"]}"#)
            .unwrap();
        assert_eq!(s.holders[0].acquired_at, UNKNOWN_ACQUIRED_AT);
    }
}
