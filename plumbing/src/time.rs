//! Timestamps: the database keeps UTC `DateTime`s, the contracts carry
//! `google.protobuf.Timestamp`.

use chrono::{DateTime, TimeZone, Utc};

pub type Timestamp = DateTime<Utc>;

/// Now, truncated to microseconds so a value read back from PostgreSQL equals
/// the one written.
pub fn now() -> Timestamp {
    let t = Utc::now();
    let micros = t.timestamp_micros();
    Utc.timestamp_micros(micros).single().unwrap_or(t)
}

pub fn to_proto(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn opt_to_proto(t: Option<Timestamp>) -> Option<prost_types::Timestamp> {
    t.map(to_proto)
}

/// None for a timestamp outside chrono's range (only a forged message has one).
pub fn from_proto(t: &prost_types::Timestamp) -> Option<Timestamp> {
    Utc.timestamp_opt(t.seconds, t.nanos.max(0) as u32).single()
}

/// The time a caller gave an RPC (its `grpc-timeout`), so calls made on its
/// behalf can finish within it.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        m.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(
            grpc_timeout(&m),
            Some(std::time::Duration::from_millis(250))
        );
        m.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(std::time::Duration::from_secs(3)));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }

    #[test]
    fn timestamps_round_trip() {
        let t = now();
        assert_eq!(from_proto(&to_proto(t)), Some(t));
    }
}
