//! Plumbing shared by every rentalbook service. It holds no lending rules; it
//! is the machinery the services stand on:
//!
//! - [`config`]: settings from flags and environment, durations like `14d`.
//! - [`auth`]: bearer JWT verification in every service, token minting.
//! - [`ids`]: parsing of the ids and member names that cross the boundary.
//! - [`error`]: how refusals and faults become gRPC statuses, the retry hint.
//! - [`db`]: connections to PostgreSQL or SQLite, write transactions, per-key locks.
//! - [`schema`]: the tables every service has (outbox, inbox, idempotency keys).
//! - [`merged`]: where the ids of merged books lead.
//! - [`outbox`]: events staged in the transaction of the change, and the relay.
//! - [`bus`]: the event bus behind a trait, with NATS JetStream as one implementation.
//! - [`embedded_bus`]: the same contract on a SQLite file, for one process.
//! - [`consumer`]: durable consumers that apply each event exactly once.
//! - [`idempotency`]: client request ids that make a retried mutation safe.
//! - [`retention`]: how far back a retention sweep reaches and how often it runs.
//! - [`propagation`]: W3C traceparent across calls and events.
//! - [`serve`]: the gRPC server every service runs (health, reflection, metrics, shutdown).
//! - [`telemetry`]: JSON logs and the Prometheus endpoint.
//!
//! Errors: business refusals are built by each service as precise
//! `tonic::Status` codes; infrastructure failures travel as `anyhow::Error` or
//! `DbErr` and become UNAVAILABLE (the caller may retry) through [`error::Fault`].

pub mod auth;
pub mod bus;
pub mod config;
pub mod consumer;
pub mod db;
pub mod embedded_bus;
pub mod error;
pub mod idempotency;
pub mod ids;
pub mod merged;
pub mod outbox;
pub mod propagation;
pub mod retention;
pub mod schema;
pub mod serve;
pub mod telemetry;
pub mod time;
