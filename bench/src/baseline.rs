//! The storage ceiling: single-row insert transactions, back to back from
//! the same number of workers, against the same database the services use
//! (a SQLite file beside theirs, or a database of its own on their
//! PostgreSQL server), through the same write path they take:
//! `rentalbook_plumbing::db::Db` (sea-orm, the same pool and SQLite
//! settings, BEGIN IMMEDIATE under the one-writer permit on SQLite).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rentalbook_plumbing::db::Db;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::client::CallError;
use crate::stats::Recorder;

pub const RPC: &str = "insert tx";

/// Connects and creates the table.
pub async fn prepare(url: &str) -> anyhow::Result<Arc<Db>> {
    let db = Db::connect(url, 16).await?;
    db.conn()
        .execute_unprepared(
            "CREATE TABLE IF NOT EXISTS bench_insert (\
               id TEXT PRIMARY KEY, worker INTEGER NOT NULL, seq BIGINT NOT NULL, payload TEXT NOT NULL)",
        )
        .await?;
    Ok(Arc::new(db))
}

async fn insert_one(db: &Db, worker: usize, seq: i64, payload: &str) -> Result<(), CallError> {
    let fail = |e: sea_orm::DbErr| CallError {
        code: tonic::Code::Internal,
        message: e.to_string(),
    };
    let backend = db.backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "INSERT INTO bench_insert (id, worker, seq, payload) VALUES ($1, $2, $3, $4)"
        }
        _ => "INSERT INTO bench_insert (id, worker, seq, payload) VALUES (?, ?, ?, ?)",
    };
    let tx = db.begin().await.map_err(fail)?;
    tx.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [
            uuid::Uuid::now_v7().to_string().into(),
            (worker as i64).into(),
            seq.into(),
            payload.into(),
        ],
    ))
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(fail)
}

/// One worker inserting until `until`.
pub async fn inserter(db: Arc<Db>, worker: usize, until: Instant) -> (Recorder, Instant) {
    let mut rec = Recorder::default();
    // About the size of a reservation row.
    let payload = "x".repeat(120);
    let mut seq = 0i64;
    while Instant::now() < until {
        seq += 1;
        let started = Instant::now();
        let r = insert_one(&db, worker, seq, &payload).await;
        rec.call(RPC, started, &r);
        if r.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    (rec, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inserts_commit_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("b.db").display());
        let db = prepare(&url).await.unwrap();
        let (rec, _) = inserter(db, 0, Instant::now() + Duration::from_millis(100)).await;
        assert!(rec.calls_of(RPC) > 0);
        assert_eq!(rec.total_errors(), 0);
    }
}
