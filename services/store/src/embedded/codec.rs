//! Binary encoding of the embedded store's records.
//!
//! A key record is `create_rev u64 | mod_rev u64 | lease i64 (0 = none) | value`.
//! A history record (all events of one revision) is a sequence of
//! `kind u8 | key_len u32 | key` followed, for puts, by
//! `create_rev u64 | lease i64 | value_len u32 | value`. Integers are big-endian.

use crate::{KeyValue, LeaseId, StoreError, WatchEvent};

const PUT: u8 = 1;
const DELETE: u8 = 2;

/// What a key record holds besides its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) value: Vec<u8>,
    pub(crate) create_revision: u64,
    pub(crate) mod_revision: u64,
    pub(crate) lease: Option<LeaseId>,
}

impl Record {
    pub(crate) fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

pub(crate) fn encode_record(
    create: u64,
    modified: u64,
    lease: Option<LeaseId>,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + value.len());
    out.extend_from_slice(&create.to_be_bytes());
    out.extend_from_slice(&modified.to_be_bytes());
    out.extend_from_slice(&lease.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(value);
    out
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, StoreError> {
    let mut r = Reader(bytes);
    let create_revision = r.u64()?;
    let mod_revision = r.u64()?;
    let lease = r.i64()?;
    Ok(Record {
        value: r.0.to_vec(),
        create_revision,
        mod_revision,
        lease: (lease != 0).then_some(lease),
    })
}

pub(crate) fn encode_events(events: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        let key = event.key().as_bytes();
        out.push(if matches!(event, WatchEvent::Put(_)) {
            PUT
        } else {
            DELETE
        });
        out.extend_from_slice(&len32(key.len()).to_be_bytes());
        out.extend_from_slice(key);
        if let WatchEvent::Put(kv) = event {
            out.extend_from_slice(&kv.create_revision.to_be_bytes());
            out.extend_from_slice(&kv.lease.unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&len32(kv.value.len()).to_be_bytes());
            out.extend_from_slice(&kv.value);
        }
    }
    out
}

pub(crate) fn decode_events(revision: u64, bytes: &[u8]) -> Result<Vec<WatchEvent>, StoreError> {
    let mut r = Reader(bytes);
    let mut events = Vec::new();
    while !r.0.is_empty() {
        let kind = r.take(1)?[0];
        let key_len = r.u32()? as usize;
        let key = String::from_utf8(r.take(key_len)?.to_vec())
            .map_err(|_| corrupt("history key is not UTF-8"))?;
        events.push(match kind {
            PUT => {
                let create_revision = r.u64()?;
                let lease = r.i64()?;
                let value_len = r.u32()? as usize;
                let value = r.take(value_len)?.to_vec();
                let lease = (lease != 0).then_some(lease);
                WatchEvent::Put(KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision: revision,
                    lease,
                })
            }
            DELETE => WatchEvent::Delete { key, revision },
            other => return Err(corrupt(&format!("unknown history event kind {other}"))),
        });
    }
    Ok(events)
}

fn len32(len: usize) -> u32 {
    // Keys and values are bounded far below 4 GiB by redb's own limits.
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("truncated record"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| corrupt("bad u64"))?,
        ))
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| corrupt("bad i64"))?,
        ))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| corrupt("bad u32"))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let events = vec![
            WatchEvent::Put(KeyValue {
                key: "a/b".into(),
                value: b"v".to_vec(),
                create_revision: 3,
                mod_revision: 7,
                lease: Some(9),
            }),
            WatchEvent::Delete {
                key: "a/c".into(),
                revision: 7,
            },
        ];
        assert_eq!(decode_events(7, &encode_events(&events)).unwrap(), events);
    }

    #[test]
    fn record_round_trip() {
        let r = decode_record(&encode_record(1, 2, None, b"xyz")).unwrap();
        assert_eq!(
            r,
            Record {
                value: b"xyz".to_vec(),
                create_revision: 1,
                mod_revision: 2,
                lease: None
            }
        );
        assert!(decode_record(b"short").is_err());
    }
}
