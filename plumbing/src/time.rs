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

/// The wait between attempts at something that fails while a dependency is
/// away: from `first`, doubling after each failure up to 5 s, and back to
/// `first` after a success.
pub struct Backoff {
    first: std::time::Duration,
    next: std::time::Duration,
}

impl Backoff {
    const MAX: std::time::Duration = std::time::Duration::from_secs(5);

    pub fn new(first: std::time::Duration) -> Self {
        Self { first, next: first }
    }

    /// The wait before the next attempt; the one after it is twice as long.
    pub fn next_delay(&mut self) -> std::time::Duration {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        delay
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
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

    #[test]
    fn backoff_doubles_up_to_five_seconds_and_resets() {
        use std::time::Duration;
        let mut b = Backoff::new(Duration::from_millis(100));
        let waits: Vec<_> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
