//! Settings every service reads, from flags or the environment (flags win).
//! Each service flattens [`CommonArgs`] into its own clap command, so
//! `--help` on any binary lists all of them with their defaults.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

/// A policy duration written like `14d`, `72h`, `30s` or `250ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyDuration(Duration);

impl PolicyDuration {
    pub const fn from_duration(d: Duration) -> Self {
        Self(d)
    }

    pub fn get(self) -> Duration {
        self.0
    }

    pub fn as_chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl FromStr for PolicyDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("`{s}` is not a duration like 14d, 72h, 30s or 250ms: {e}"))?;
        if d.is_zero() {
            return Err(format!("`{s}` must be longer than zero"));
        }
        Ok(Self(d))
    }
}

impl fmt::Display for PolicyDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Settings shared by all services: event bus, identity, limits.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// NATS server with JetStream.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// JetStream stream that carries every domain event.
    #[arg(long, env = "NATS_STREAM", default_value = "RENTALBOOK")]
    pub nats_stream: String,

    /// First token of every event subject (`<prefix>.reservation.placed`, ...).
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "rentalbook")]
    pub nats_subject_prefix: String,

    /// Copies of the stream (and its dead-letter stream) kept across a NATS cluster.
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1)]
    pub nats_stream_replicas: usize,

    /// How long the stream keeps events; `0` keeps them all (needed to rebuild read models).
    #[arg(long, env = "NATS_STREAM_MAX_AGE", default_value = "0")]
    pub nats_stream_max_age: String,

    /// HS256 secret that verifies members' and librarians' tokens.
    #[arg(long, env = "RENTALBOOK_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JWKS file with the public keys (RS256, ES256, EdDSA) of an identity provider; used instead of the secret.
    #[arg(long, env = "RENTALBOOK_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// HS256 secret for service-to-service tokens (role `service`); defaults to the JWT secret.
    #[arg(long, env = "RENTALBOOK_SERVICE_SECRET", hide_env_values = true)]
    pub service_secret: Option<String>,

    #[command(flatten)]
    pub tokens: crate::auth::TokenRules,

    /// Requests served at once; beyond it requests are turned away at once with RESOURCE_EXHAUSTED and a retry hint.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,

    /// How long a client request id and its answer are kept (SPEC §5 promises at least 24h).
    #[arg(long, env = "REQUEST_ID_RETENTION", default_value = "24h")]
    pub request_id_retention: PolicyDuration,

    /// Deliveries of one event before it goes to the dead-letter stream.
    #[arg(long, env = "EVENT_MAX_DELIVER", default_value_t = 8)]
    pub event_max_deliver: i64,

    /// Time a consumer has to acknowledge an event before it is redelivered.
    #[arg(long, env = "EVENT_ACK_WAIT", default_value = "30s")]
    pub event_ack_wait: PolicyDuration,

    /// Log format: `json` or `text`.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: String,
}

impl CommonArgs {
    /// Connects to NATS JetStream as these settings say (in the background:
    /// a service starts while NATS is away).
    pub async fn nats_bus(
        &self,
        client_name: &str,
    ) -> anyhow::Result<std::sync::Arc<crate::bus::NatsBus>> {
        crate::bus::NatsBus::connect(crate::bus::NatsSettings {
            url: self.nats_url.clone(),
            stream: self.nats_stream.clone(),
            subject_prefix: self.nats_subject_prefix.clone(),
            max_age: self.stream_max_age()?,
            replicas: self.nats_stream_replicas.max(1),
            client_name: client_name.to_owned(),
        })
        .await
    }

    /// Stream retention; `None` keeps everything.
    pub fn stream_max_age(&self) -> anyhow::Result<Option<Duration>> {
        if self.nats_stream_max_age.trim() == "0" {
            return Ok(None);
        }
        let d: PolicyDuration = self
            .nats_stream_max_age
            .parse()
            .map_err(|e: String| anyhow::anyhow!("NATS_STREAM_MAX_AGE: {e}"))?;
        Ok(Some(d.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_policy_notation() {
        let d = |s: &str| s.parse::<PolicyDuration>().map(PolicyDuration::get);
        assert_eq!(d("14d"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(d("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert!(d("0s").is_err());
        assert!(d("soon").is_err());
        assert!(d("").is_err());
    }
}

/// A listen address where `off` means "do not listen".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<std::net::SocketAddr>);

impl FromStr for OptionalAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|e| format!("`{s}` is not an address like 0.0.0.0:9083 (or `off`): {e}"))
    }
}
