//! The service's own database: PostgreSQL in the mesh, SQLite on a laptop.
//!
//! Every change goes through a [`WriteTx`]. On SQLite it holds the process's one
//! write permit and starts with BEGIN IMMEDIATE, so concurrent requests queue
//! instead of failing with SQLITE_BUSY; on PostgreSQL rows are serialised per
//! key with transaction-scoped advisory locks ([`WriteTx::lock`]).
//!
//! Waiting for the database is bounded: [`Db::begin`] gives up by the
//! deadline of the request being served (set by the server with
//! [`with_deadline`]), and refuses at once while the health check finds the
//! database unreachable, so a hung database costs callers no more than their
//! own deadline.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnAcquireErr, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

mod group;

tokio::task_local! {
    /// When the request being served must have its answer.
    static DEADLINE: Instant;
}

/// Runs `fut` (a request's handling) with its deadline, which then bounds
/// every wait for a database transaction inside it.
pub async fn with_deadline<F: Future>(deadline: Option<Instant>, fut: F) -> F::Output {
    match deadline {
        Some(deadline) => DEADLINE.scope(deadline, fut).await,
        None => fut.await,
    }
}

/// The most a request keeps of its remaining time to send its answer after
/// giving up on the database, so that the answer arrives before the caller's
/// deadline cancels the call. On a busy node the answer can take tens of
/// milliseconds to be scheduled, encoded and sent: 100 ms was seen to be
/// too little there.
const ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// When a wait for the database must give up: a little before the deadline
/// of the request being served, if there is one.
fn give_up_at() -> Option<Instant> {
    let deadline = DEADLINE.try_with(|d| *d).ok()?;
    let left = deadline.saturating_duration_since(Instant::now());
    Some(deadline - (left / 4).min(ANSWER_MARGIN))
}

/// Each SQLite connection's page cache, in KiB (as a negative `cache_size`).
/// SQLite's default is about 2 MiB per connection; with a pool of 8 per
/// database and five databases in the all-in-one that grew the process by
/// tens of MiB under load. The files stay in the operating system's cache,
/// so a smaller page cache cost no throughput in the benchmarks.
const SQLITE_CACHE_KIB: &str = "-256";

/// The page cache of SQLite's one writing connection, in KiB: it stays
/// valid between write transactions, so the pages every write touches (the
/// tables' and indexes' upper levels, the outbox) are read once.
const SQLITE_WRITER_CACHE_KIB: &str = "-2048";

/// A pooled connection idle at least this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The counter of what is asked of a database: every statement sent through
/// sea-orm, and each write transaction's BEGIN and COMMIT (or ROLLBACK). On
/// PostgreSQL each is a round trip to the server; on SQLite a hand-off to the
/// connection's thread. Labelled `db` with the database's name.
pub const STATEMENTS_METRIC: &str = "db_statements_total";

/// Microseconds writers waited to start: for SQLite's one write permit
/// and, in a transaction, for its BEGIN. Labelled `db`.
pub const WRITER_WAIT_METRIC: &str = "db_writer_wait_microseconds_total";

/// Microseconds writers held the database, from the start of a write
/// transaction (or a single write statement) to its end: on SQLite the
/// time the one writer's permit was taken, so over a span of time the
/// share of it the database could not take another write. Labelled `db`.
pub const WRITER_HELD_METRIC: &str = "db_writer_held_microseconds_total";

/// Microseconds of that spent in COMMIT. Labelled `db`.
pub const COMMIT_METRIC: &str = "db_commit_microseconds_total";

/// Transactions of group commit ([`Db::grouped`]) that ended in COMMIT.
/// Labelled `db`.
pub const GROUP_COMMITS_METRIC: &str = "db_group_commits_total";

/// Requests that took part in those transactions, refused ones included:
/// over the commits, how many requests a group held on average. Labelled
/// `db`.
pub const GROUPED_REQUESTS_METRIC: &str = "db_grouped_requests_total";

/// The counters of one database's writers.
#[derive(Clone)]
struct Counters {
    statements: metrics::Counter,
    wait_us: metrics::Counter,
    held_us: metrics::Counter,
    commit_us: metrics::Counter,
    group_commits: metrics::Counter,
    grouped_requests: metrics::Counter,
}

impl Counters {
    fn of(db: String) -> Self {
        Self {
            statements: metrics::counter!(STATEMENTS_METRIC, "db" => db.clone()),
            wait_us: metrics::counter!(WRITER_WAIT_METRIC, "db" => db.clone()),
            held_us: metrics::counter!(WRITER_HELD_METRIC, "db" => db.clone()),
            commit_us: metrics::counter!(COMMIT_METRIC, "db" => db.clone()),
            group_commits: metrics::counter!(GROUP_COMMITS_METRIC, "db" => db.clone()),
            grouped_requests: metrics::counter!(GROUPED_REQUESTS_METRIC, "db" => db),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Adds the time from its making to its drop to the writers' held time.
struct Holding {
    since: std::time::Instant,
    held_us: metrics::Counter,
}

impl Holding {
    fn new(counters: &Counters) -> Self {
        Self {
            since: std::time::Instant::now(),
            held_us: counters.held_us.clone(),
        }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.held_us.increment(micros(self.since.elapsed()));
    }
}

/// A pool on the service's database plus what its writers share.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    /// Where writes go: on SQLite a connection of its own, on PostgreSQL
    /// the pool.
    writes: DatabaseConnection,
    /// SQLite only: one writer at a time.
    writer: Option<Arc<Semaphore>>,
    /// Woken after a commit that staged events, so the relay publishes at once.
    outbox_signal: Arc<Notify>,
    /// Parts of the service (event consumers) that cannot use the database
    /// right now; the service is NOT_SERVING while any is here.
    stalled: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// False while the health check's ping fails: transactions are refused
    /// at once instead of waiting for a database that does not answer.
    reachable: Arc<AtomicBool>,
    /// [`STATEMENTS_METRIC`] and the writers' times of this database.
    counters: Counters,
    /// Group commit's groups (`group`).
    groups: Arc<group::Groups>,
}

impl Db {
    /// Connects, creating the PostgreSQL database or the SQLite file when missing.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let is_sqlite = url.starts_with("sqlite:");
        if !is_sqlite {
            ensure_postgres_database(url).await;
        }
        let url = if is_sqlite && !url.contains("mode=") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        } else {
            url.to_owned()
        };
        let counters = Counters::of(database_name(&url));
        let counted = |conn: &mut DatabaseConnection| {
            let statements = counters.statements.clone();
            conn.set_metric_callback(move |_| statements.increment(1));
        };
        let pool = if is_sqlite { 8 } else { max_connections };
        let mut conn = Database::connect(connect_options(&url, pool, SQLITE_CACHE_KIB))
            .await
            .with_context(|| format!("connecting to the database {}", redact(&url)))?;
        counted(&mut conn);
        // SQLite: every write goes through one connection of its own, kept
        // open, so that its page cache stays valid from one transaction to
        // the next (a connection's cache is dropped whenever another
        // connection has written) and writes never wait for the readers'
        // pool. An in-memory database lives in its pool, so it has none.
        let own_writer = is_sqlite && !url.contains(":memory:") && !url.contains("mode=memory");
        let writes = if own_writer {
            let mut writes = Database::connect(connect_options(&url, 1, SQLITE_WRITER_CACHE_KIB))
                .await
                .with_context(|| format!("connecting to the database {}", redact(&url)))?;
            counted(&mut writes);
            writes
        } else {
            // A copy made after the counter is set, so it counts too.
            conn.clone()
        };
        Ok(Self {
            counters,
            writes,
            writer: is_sqlite.then(|| Arc::new(Semaphore::new(1))),
            groups: Arc::new(group::Groups::new(conn.get_database_backend())),
            conn,
            outbox_signal: Arc::new(Notify::new()),
            stalled: Arc::default(),
            reachable: Arc::new(AtomicBool::new(true)),
        })
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    pub fn backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    pub fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox_signal.clone()
    }

    /// Starts a write transaction. Refused at once while the database is
    /// known to be unreachable; inside a request, the wait for a connection
    /// (and SQLite's writer permit) ends before the request's deadline.
    pub async fn begin(&self) -> Result<WriteTx, DbErr> {
        let (tx, permit) = self
            .as_writer(async || {
                let permit = self.writer_permit().await?;
                let tx = self
                    .writes
                    .begin_with_options(TransactionOptions {
                        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                        ..Default::default()
                    })
                    .await?;
                Ok((tx, permit))
            })
            .await?;
        // BEGIN, and the COMMIT or ROLLBACK that ends it.
        self.counters.statements.increment(2);
        Ok(WriteTx {
            tx,
            _holding: Some(Holding::new(&self.counters)),
            commit_us: self.counters.commit_us.clone(),
            exclusive: permit.is_some(),
            permit,
            staged_events: false,
            outbox_signal: self.outbox_signal.clone(),
            held: Default::default(),
            tries_locks: false,
            lock_busy: AtomicBool::new(false),
        })
    }

    /// Runs one statement that needs no transaction of its own (a single
    /// INSERT, UPDATE or DELETE is atomic by itself) as a writer: on SQLite
    /// it waits for the write permit as [`Db::begin`] does, and saves the
    /// BEGIN and COMMIT a transaction would cost.
    pub async fn write_one<T, F>(&self, f: F) -> Result<T, DbErr>
    where
        F: AsyncFnOnce(&DatabaseConnection) -> Result<T, DbErr>,
    {
        let _permit = self.as_writer(async || self.writer_permit().await).await?;
        let _holding = Holding::new(&self.counters);
        f(&self.writes).await
    }

    /// Waits for what a writer needs (`start`), refused at once while the
    /// database is known to be unreachable and bounded by the deadline of
    /// the request being served.
    async fn as_writer<T>(
        &self,
        start: impl AsyncFnOnce() -> Result<T, DbErr>,
    ) -> Result<T, DbErr> {
        if !self.reachable() {
            return Err(DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed));
        }
        let since = std::time::Instant::now();
        let started = match give_up_at() {
            Some(at) => tokio::time::timeout_at(at, start())
                .await
                .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))?,
            None => start().await,
        };
        self.counters.wait_us.increment(micros(since.elapsed()));
        started
    }

    /// SQLite's one write permit; nothing on PostgreSQL.
    async fn writer_permit(&self) -> Result<Option<OwnedSemaphorePermit>, DbErr> {
        let Some(writer) = &self.writer else {
            return Ok(None);
        };
        writer
            .clone()
            .acquire_owned()
            .await
            .map(Some)
            .map_err(|_| DbErr::Custom("database closed".into()))
    }

    /// Whether the database answered the health check's last ping.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Records the health check's finding.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    /// A lock only one holder at a time may have across replicas, without
    /// waiting: None while another holds it (PostgreSQL advisory lock). On
    /// SQLite the one process is the only holder. Released on drop.
    pub async fn exclusive(&self, scope: &str) -> Result<Option<Exclusive>, DbErr> {
        if self.backend() != DbBackend::Postgres {
            return Ok(Some(Exclusive { _tx: None }));
        }
        let tx = self.conn.begin().await?;
        Ok(try_advisory_lock(&tx, scope)
            .await?
            .then_some(Exclusive { _tx: Some(tx) }))
    }

    /// Tells the health service that `who` cannot apply its work to the
    /// database (a consumer retrying through an outage), or can again.
    pub fn set_stalled(&self, who: &str, stalled: bool) {
        let mut set = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        if stalled {
            set.insert(who.to_owned());
        } else {
            set.remove(who);
        }
    }

    /// The parts of the service that reported they cannot use the database.
    pub fn stalled(&self) -> Vec<String> {
        let set = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        set.iter().cloned().collect()
    }

    /// Whether the database answers, for the health service.
    pub async fn ping(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.conn.ping())
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A write transaction. Derefs to sea-orm's transaction for queries.
pub struct WriteTx {
    tx: DatabaseTransaction,
    /// Counts the transaction's time until it ends. Declared after `tx`
    /// and before `permit`, so that it is dropped after the rollback of a
    /// dropped transaction has been started and before the permit goes.
    /// None in a group, whose batch counts its time.
    _holding: Option<Holding>,
    commit_us: metrics::Counter,
    permit: Option<OwnedSemaphorePermit>,
    /// See [`WriteTx::is_exclusive`].
    exclusive: bool,
    staged_events: bool,
    outbox_signal: Arc<Notify>,
    /// The locks this transaction holds already: asking again is free
    /// instead of a round trip. A group's first request shares its group's;
    /// a later one's starts as a copy and joins the group's when kept.
    held: HeldLocks,
    /// A later request of a group: it only tries locks ([`WriteTx::lock_all`]).
    tries_locks: bool,
    /// Set when a tried lock was held by another transaction.
    lock_busy: AtomicBool,
}

/// The locks a transaction holds, by name.
type HeldLocks = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// The set of `held`, also after a panic elsewhere while it was locked (a
/// set of names is never left half changed).
fn names_in(held: &HeldLocks) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
    held.lock().unwrap_or_else(|e| e.into_inner())
}

impl Deref for WriteTx {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.tx
    }
}

impl WriteTx {
    /// Serialises this transaction with every other one locking the same key
    /// until commit or rollback. SQLite has one writer, so it needs nothing more.
    pub async fn lock(&self, scope: &str, key: &str) -> Result<(), DbErr> {
        self.lock_all(&[(scope, key)]).await
    }

    fn holds(&self, name: &str) -> bool {
        names_in(&self.held).contains(name)
    }

    /// Takes several locks in one round trip, in the order given (callers
    /// sort them, so that two transactions never wait for each other in a
    /// circle). Those already held are skipped. In a later request of a
    /// group (`Db::grouped`) the locks are only tried, so that it never
    /// waits holding other requests' locks: one held by another
    /// transaction fails the request with a database error.
    pub async fn lock_all(&self, locks: &[(&str, &str)]) -> Result<(), DbErr> {
        if self.tx.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        if self.tries_locks {
            if group::try_lock_all(&self.tx, &self.held, locks).await? {
                return Ok(());
            }
            self.lock_busy.store(true, Ordering::Relaxed);
            return Err(DbErr::Custom(
                "a lock this request needs is held by another transaction".into(),
            ));
        }
        let names: Vec<String> = lock_names(locks)
            .into_iter()
            .filter(|name| !self.holds(name))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        // One SELECT evaluates its target list left to right.
        let calls: Vec<String> = (1..=names.len())
            .map(|i| format!("pg_advisory_xact_lock(hashtextextended(${i}, 0))"))
            .collect();
        self.tx
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!("SELECT {}", calls.join(", ")),
                names.iter().map(|n| n.clone().into()),
            ))
            .await?;
        names_in(&self.held).extend(names);
        Ok(())
    }

    /// True the first time `what` is asked in this transaction: for work a
    /// transaction needs once however many events it applies.
    pub fn first_time(&self, what: &str) -> bool {
        names_in(&self.held).insert(format!("once:{what}"))
    }

    /// Takes a lock only one transaction at a time can hold, without waiting:
    /// false when another replica has it (PostgreSQL). Used so that one sweep or
    /// relay works at a time.
    pub async fn try_lock(&self, scope: &str) -> Result<bool, DbErr> {
        if self.tx.get_database_backend() != DbBackend::Postgres {
            return Ok(true);
        }
        try_advisory_lock(&self.tx, scope).await
    }

    /// Whether no other writer can have changed anything since this
    /// transaction began (SQLite: its one writer, taken at BEGIN IMMEDIATE),
    /// so that a row read before a lock was taken needs no second read.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    pub(crate) fn mark_staged(&mut self) {
        self.staged_events = true;
    }

    pub async fn commit(self) -> Result<(), DbErr> {
        let since = std::time::Instant::now();
        let committed = self.tx.commit().await;
        self.commit_us.increment(micros(since.elapsed()));
        committed?;
        if self.staged_events {
            self.outbox_signal.notify_one();
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), DbErr> {
        self.tx.rollback().await
    }
}

/// The names a transaction's locks are known by.
fn lock_names(locks: &[(&str, &str)]) -> Vec<String> {
    locks
        .iter()
        .map(|(scope, key)| format!("{scope}:{key}"))
        .collect()
}

/// Held by [`Db::exclusive`]'s winner until dropped.
pub struct Exclusive {
    _tx: Option<DatabaseTransaction>,
}

async fn try_advisory_lock(tx: &DatabaseTransaction, scope: &str) -> Result<bool, DbErr> {
    let row = tx
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS locked",
            [scope.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<bool>("", "locked")?,
        None => false,
    })
}

/// The options of a pool of `max` connections on `url`; on SQLite, WAL
/// mode with a page cache of `cache_kib` (a negative `cache_size`) each.
fn connect_options(url: &str, max: u32, cache_kib: &'static str) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(max)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        // A connection in use a moment ago is handed out as it is; one
        // idle for a while is pinged first, as it may have been dropped
        // (a restarted server, a proxy's timeout). A ping on every
        // acquire cost a round trip per transaction and per query.
        .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o: SqliteConnectOptions| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                .pragma("cache_size", cache_kib)
        });
    opts
}

/// Creates the database of a PostgreSQL URL when it does not exist, so a new
/// service starts on a bare server. Best effort: without the rights to create
/// it, the connect that follows says what is wrong.
async fn ensure_postgres_database(url: &str) {
    let Some((server, rest)) = url.rsplit_once('/') else {
        return;
    };
    let name = rest.split('?').next().unwrap_or_default();
    if name.is_empty() || name == "postgres" || !server.contains("://") {
        return;
    }
    let query = rest.find('?').map(|i| &rest[i..]).unwrap_or("");
    let mut opts = ConnectOptions::new(format!("{server}/postgres{query}"));
    opts.max_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let Ok(admin) = Database::connect(opts).await else {
        return;
    };
    let exists = admin
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS one FROM pg_database WHERE datname = $1",
            [name.into()],
        ))
        .await;
    if let Ok(None) = exists {
        let quoted = name.replace('"', "\"\"");
        // A concurrent creator may win the race; the connect that follows tells.
        let _ = admin
            .execute_unprepared(&format!("CREATE DATABASE \"{quoted}\""))
            .await;
    }
    let _ = admin.close().await;
}

/// A LIKE pattern matching values that contain `text` literally (`%`, `_`
/// and `\` in it are not wildcards).
pub fn like_containing(text: &str) -> sea_orm::sea_query::LikeExpr {
    sea_orm::sea_query::LikeExpr::new(format!("%{}%", like_escape(text))).escape('\\')
}

/// A LIKE pattern matching values that start with `text` literally.
pub fn like_starting_with(text: &str) -> sea_orm::sea_query::LikeExpr {
    sea_orm::sea_query::LikeExpr::new(format!("{}%", like_escape(text))).escape('\\')
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// The database a URL names: the last part of its path (PostgreSQL), or the
/// file's stem (SQLite).
fn database_name(url: &str) -> String {
    let path = url.split('?').next().unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or_default();
    let stem = last.rsplit_once('.').map_or(last, |(stem, _)| stem);
    if stem.is_empty() {
        "default".to_owned()
    } else {
        stem.to_owned()
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The statements counted so far on the database named `db` (as
/// [`STATEMENTS_METRIC`] renders them), for tests.
#[cfg(test)]
pub(crate) fn statements_counted(db: &str) -> f64 {
    let name = format!("{STATEMENTS_METRIC}{{db=\"{db}\"}} ");
    crate::telemetry::render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transaction_waits_no_longer_than_the_request_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = Db::connect(&url, 1).await.unwrap();
        let _writer = db.begin().await.unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let waited = with_deadline(Some(deadline), db.begin()).await;
        assert!(
            matches!(
                waited,
                Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))
            ),
            "gave up waiting for the writer"
        );
        // It gave up near the deadline, not after the pool's own 5 s: a
        // bound loose enough for a loaded machine's scheduling.
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(1300),
            "near the deadline, not the pool's timeout: {took:?}"
        );
    }

    #[tokio::test]
    async fn sqlite_writes_do_not_wait_for_the_readers_pool() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = Db::connect(&url, 1).await.unwrap();
        db.conn()
            .execute_unprepared("CREATE TABLE t (v INTEGER)")
            .await
            .unwrap();
        // Every connection of the readers' pool busy in a read.
        let mut readers = Vec::new();
        for _ in 0..8 {
            let tx = db.conn().begin().await.unwrap();
            tx.execute_unprepared("SELECT count(*) FROM t")
                .await
                .unwrap();
            readers.push(tx);
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        let tx = with_deadline(Some(deadline), db.begin())
            .await
            .expect("a write transaction begins while every reader is busy");
        tx.execute_unprepared("INSERT INTO t (v) VALUES (1)")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        drop(readers);
        let row = db
            .conn()
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT count(*) AS n FROM t",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get::<i64>("", "n").unwrap(), 1, "the write is seen");
    }

    /// The statements of write transactions and of single writes are
    /// counted on both backends, beside reads.
    #[tokio::test]
    async fn every_statement_is_counted_on_both_backends() {
        crate::telemetry::init_metrics(None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite://{}", dir.path().join("counted.db").display());
        let postgres = rentalbook_testkit::fresh_postgres_url().await;
        for url in [sqlite, postgres] {
            let db = Db::connect(&url, 2).await.unwrap();
            let counted = || statements_counted(&database_name(&url));
            db.conn()
                .execute_unprepared("CREATE TABLE t (v INTEGER)")
                .await
                .unwrap();
            let before = counted();
            let tx = db.begin().await.unwrap();
            let sql = |sql: String| Statement::from_string(db.backend(), sql);
            for v in 0..3 {
                tx.execute_raw(sql(format!("INSERT INTO t (v) VALUES ({v})")))
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
            db.write_one(async |c| c.execute_raw(sql("DELETE FROM t WHERE v = 0".into())).await)
                .await
                .unwrap();
            // BEGIN, three INSERTs, COMMIT and the DELETE.
            assert_eq!(counted() - before, 6.0, "{url}");
        }
    }

    #[test]
    fn a_database_is_named_by_its_url() {
        assert_eq!(
            database_name("postgres://u@h:5432/rb_reserve?x=1"),
            "rb_reserve"
        );
        assert_eq!(
            database_name("sqlite:///data/reserve.db?mode=rwc"),
            "reserve"
        );
        assert_eq!(database_name("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(database_name("postgres://u@h:5432/"), "default");
    }

    #[test]
    fn passwords_do_not_reach_messages() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
