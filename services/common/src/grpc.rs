//! Small conversions between std time types and protobuf well-known types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts a `SystemTime` to a protobuf `Timestamp`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// Converts a protobuf `Timestamp` to a `SystemTime` (clamped to the epoch when invalid).
pub fn from_timestamp(ts: &prost_types::Timestamp) -> SystemTime {
    SystemTime::try_from(*ts).unwrap_or(UNIX_EPOCH)
}

/// Converts a std `Duration` to a protobuf `Duration`.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

/// Converts a protobuf `Duration` to a std `Duration`; negative values become zero.
pub fn from_duration(d: &prost_types::Duration) -> Duration {
    Duration::try_from(*d).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(from_timestamp(&timestamp(t)), t);
        let d = Duration::from_millis(1500);
        assert_eq!(from_duration(&duration(d)), d);
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(from_duration(&neg), Duration::ZERO);
    }
}
