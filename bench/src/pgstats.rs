//! What each statement costs PostgreSQL itself, from its
//! `pg_stat_statements` extension on the mesh's private server
//! (`--pg-statements`): reset before a phase, read once the phase's events
//! have all been applied. Planning and execution time only; what a
//! statement costs the server outside them (the protocol, waking the
//! backend for each round trip, the commit's WAL flush, which falls under
//! COMMIT) shows as the gap between the sum and the server's CPU.

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde::Serialize;

/// The server settings that load the extension and make it time planning too.
pub const SETTINGS: [&str; 3] = [
    "shared_preload_libraries=pg_stat_statements",
    "pg_stat_statements.track_planning=on",
    "pg_stat_statements.max=5000",
];

/// The statements a phase's report lists, by time.
const LISTED: usize = 14;

/// One statement's figures over a phase, summed over the databases that ran it.
#[derive(Clone, Debug, Serialize)]
pub struct PgStatement {
    /// The databases (services) that ran it.
    pub databases: String,
    /// As PostgreSQL normalises it (constants as `$n`), shortened.
    pub query: String,
    pub calls: u64,
    pub rows: u64,
    pub plan_ms: f64,
    pub exec_ms: f64,
}

/// All a phase's statements: the costliest listed, the rest summed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PgPhase {
    pub listed: Vec<PgStatement>,
    pub others_calls: u64,
    pub others_ms: f64,
    pub total_calls: u64,
    pub total_ms: f64,
}

/// A connection to the server's `postgres` database, where the extension lives.
pub struct PgStats {
    conn: DatabaseConnection,
}

impl PgStats {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let conn = Database::connect(url).await?;
        conn.execute_unprepared("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await?;
        Ok(Self { conn })
    }

    /// Forgets every statement's figures so far.
    pub async fn reset(&self) {
        let _ = self
            .conn
            .execute_unprepared("SELECT pg_stat_statements_reset()")
            .await;
    }

    /// The figures since the last reset, the harness's own queries left out.
    pub async fn read(&self) -> anyhow::Result<PgPhase> {
        let rows = self
            .conn
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT string_agg(DISTINCT d.datname, ' ') AS databases, s.query, \
                   sum(s.calls)::bigint AS calls, sum(s.rows)::bigint AS rows, \
                   sum(s.total_plan_time) AS plan_ms, sum(s.total_exec_time) AS exec_ms \
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname <> 'postgres' \
                 GROUP BY s.query \
                 ORDER BY sum(s.total_plan_time + s.total_exec_time) DESC",
            ))
            .await?;
        let mut phase = PgPhase::default();
        for row in rows {
            let s = PgStatement {
                databases: shorten_databases(&row.try_get::<String>("", "databases")?),
                query: shorten(&row.try_get::<String>("", "query")?),
                calls: row.try_get::<i64>("", "calls")?.max(0) as u64,
                rows: row.try_get::<i64>("", "rows")?.max(0) as u64,
                plan_ms: row.try_get::<f64>("", "plan_ms")?,
                exec_ms: row.try_get::<f64>("", "exec_ms")?,
            };
            phase.total_calls += s.calls;
            phase.total_ms += s.plan_ms + s.exec_ms;
            if phase.listed.len() < LISTED {
                phase.listed.push(s);
            } else {
                phase.others_calls += s.calls;
                phase.others_ms += s.plan_ms + s.exec_ms;
            }
        }
        Ok(phase)
    }
}

/// The bench's databases are `rb_bench_<run>_<service>`: the service is
/// what tells them apart.
fn shorten_databases(names: &str) -> String {
    names
        .split(' ')
        .map(|n| n.rsplit_once("_svc").map_or(n, |(head, _)| head))
        .map(|n| n.rsplit('_').next().unwrap_or(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line, at most 110 characters, for a table cell.
fn shorten(query: &str) -> String {
    let one_line: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
    let cell = one_line.replace('|', "\\|");
    if cell.chars().count() <= 110 {
        cell
    } else {
        format!("{}…", cell.chars().take(109).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn databases_are_named_by_their_service() {
        assert_eq!(
            shorten_databases("rb_bench_ab12_reserve_svc rb_bench_ab12_book_svc"),
            "reserve, book"
        );
        assert_eq!(shorten_databases("other"), "other");
    }

    #[test]
    fn a_query_fits_a_table_cell() {
        assert_eq!(shorten("SELECT a\n  FROM  t"), "SELECT a FROM t");
        assert_eq!(shorten("a | b"), "a \\| b");
        let long = "x".repeat(300);
        assert_eq!(shorten(&long).chars().count(), 110);
    }
}
