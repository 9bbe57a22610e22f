//! Conversions between `chrono` and protobuf timestamps.

use chrono::{DateTime, TimeZone, Utc};
use prost_types::Timestamp;

/// To a protobuf timestamp.
pub fn to_proto(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// From a protobuf timestamp; `None` when out of range.
pub fn from_proto(t: &Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Utc.timestamp_opt(t.seconds, t.nanos as u32).single()
}

/// Milliseconds since the epoch.
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// From milliseconds since the epoch.
pub fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let now = Utc::now();
        assert_eq!(from_proto(&to_proto(now)), Some(now));
        assert_eq!(
            from_proto(&Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
        assert_eq!(
            from_millis(to_millis(now)).map(to_millis),
            Some(to_millis(now))
        );
    }
}
