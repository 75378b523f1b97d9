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
