//! Test support for rentalbook: real NATS JetStream and PostgreSQL servers for
//! tests, isolated per test.
//!
//! * [`nats_url`]: a NATS server with JetStream shared by the tests of one
//!   process (`$TEST_NATS_URL`, else a private nats-server started on first
//!   use). Isolate tests on it with [`unique_name`] for stream names and
//!   subject prefixes.
//! * [`fresh_postgres_url`]: a brand-new empty database per call, on
//!   `$TEST_DATABASE_URL`'s server, else on a private PostgreSQL started on
//!   first use.
//! * [`PrivateNats`] / [`PrivatePostgres`]: a server owned by one test, which
//!   it can stop and start again (same port, same data) for fault tests.
//! * [`SmtpSink`]: a real SMTP server (aiosmtpd) keeping what it receives,
//!   which a test reads, stops and starts again.
//!
//! Servers are started from the real binaries (`nats-server`; `initdb` and
//! `postgres` from `/usr/lib/postgresql/*/bin` or `PATH`), on free ports of
//! 127.0.0.1 with their data and logs in temp dirs; they never touch the
//! machine's own servers on 4222 or 5432. When the tests run as root,
//! PostgreSQL runs as the `postgres` system user. A server started by this
//! crate never outlives the test process, even when that process is killed.
//! `scripts/test` starts one NATS and one PostgreSQL for a whole run and sets
//! both variables, so each test process does not start its own.

use std::time::{Duration, Instant};

mod nats;
mod postgres;
mod process;
mod smtp;

pub use nats::PrivateNats;
pub use postgres::PrivatePostgres;
pub use smtp::{Mail, SmtpSink};

/// How long a server may take to become ready.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to stop before it is killed.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// NATS URL for a test: `$TEST_NATS_URL` if set, else a private nats-server
/// (JetStream on) started once per test process, on first use, shared by the
/// tests in that process and kept for the process lifetime.
///
/// Panics if the server cannot be started, with its log in the message.
pub async fn nats_url() -> String {
    match std::env::var("TEST_NATS_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ => nats::shared_url()
            .await
            .unwrap_or_else(|e| panic!("starting a private nats-server for tests: {e:#}")),
    }
}

/// A unique name for isolating a test on a shared server:
/// `unique_name("RB")` is `"RB_0193F2A9C4..."`, made of uppercase letters,
/// digits and underscores, so it is a valid JetStream stream or consumer name,
/// and `unique_name(..).to_lowercase()` a valid subject token or prefix.
/// Characters of `prefix` outside `[A-Za-z0-9_]` become `_`.
pub fn unique_name(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let id = uuid::Uuid::now_v7()
        .simple()
        .to_string()
        .to_ascii_uppercase();
    if prefix.is_empty() {
        id
    } else {
        format!("{prefix}_{id}")
    }
}

/// A brand-new empty PostgreSQL database for one test:
/// `postgres://postgres@127.0.0.1:PORT/t_0193f2a9...`.
///
/// It is created on the server of `$TEST_DATABASE_URL` if set (the database
/// named in that URL is only used for the admin connection; user, password
/// and query parameters are kept), else on a private PostgreSQL started once
/// per test process on first use and kept for the process lifetime.
///
/// Panics if the database cannot be created, with the reason in the message.
pub async fn fresh_postgres_url() -> String {
    postgres::fresh_database_url()
        .await
        .unwrap_or_else(|e| panic!("creating a fresh PostgreSQL database for a test: {e:#}"))
}

/// Where [`free_port`] looks: below Linux's ephemeral range (32768 and up),
/// from which the kernel picks the local port of every outgoing connection,
/// and below the 20000–31999 that `scripts/test` picks its servers from.
const FREE_PORTS: std::ops::Range<u16> = 10_000..20_000;

/// A TCP port on 127.0.0.1 that nothing listens on, for a server a test
/// starts. It is taken from below the ephemeral range, so no connection
/// anywhere on the machine can take it before the server binds it; and it
/// is handed out once per process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let span = u64::from(FREE_PORTS.end - FREE_PORTS.start);
    for _ in 0..1000 {
        let offset = (uuid::Uuid::new_v4().as_u128() % u128::from(span)) as u16;
        let port = FREE_PORTS.start + offset;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {FREE_PORTS:?} on 127.0.0.1")
}

/// Why a server did not start; `exited_early` when it exited by itself during
/// startup (e.g. its port was taken meanwhile), which is worth retrying on
/// another port.
pub(crate) struct StartFailure {
    pub exited_early: bool,
    pub error: anyhow::Error,
}

impl StartFailure {
    pub(crate) fn fatal(error: anyhow::Error) -> Self {
        Self {
            exited_early: false,
            error,
        }
    }
}

/// Waits until nothing accepts connections on `port` any more.
pub(crate) async fn wait_port_closed(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests;
