//! Group commit (`Db::grouped`) on both backends: requests queued for the
//! same group share one transaction, a refusal undoes only its own
//! request's work, and a request that goes away does not hold up the others.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rentalbook_plumbing::db::{Db, WriteTx};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use tokio::sync::{Notify, mpsc};

#[derive(Debug)]
enum Answer {
    Db(#[allow(dead_code)] DbErr),
    Refused,
}

impl From<DbErr> for Answer {
    fn from(e: DbErr) -> Self {
        Answer::Db(e)
    }
}

/// A database of each kind with an empty table `t`.
async fn backends(dir: &tempfile::TempDir) -> Vec<Db> {
    let sqlite = format!("sqlite://{}", dir.path().join("group.db").display());
    let postgres = rentalbook_testkit::fresh_postgres_url().await;
    let mut dbs = Vec::new();
    for url in [sqlite, postgres] {
        let db = Db::connect(&url, 8).await.unwrap();
        db.conn()
            .execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .await
            .unwrap();
        dbs.push(db);
    }
    dbs
}

fn sql(db: &impl ConnectionTrait, sql: String) -> Statement {
    Statement::from_string(db.get_database_backend(), sql)
}

async fn insert(tx: &WriteTx, id: i32) -> Result<(), DbErr> {
    tx.execute_raw(sql(&**tx, format!("INSERT INTO t (id) VALUES ({id})")))
        .await
        .map(|_| ())
}

/// Whether row `id` is there, as `conn` sees it.
async fn has(conn: &impl ConnectionTrait, id: i32) -> bool {
    let count = if conn.get_database_backend() == DbBackend::Postgres {
        "COUNT(*)::int"
    } else {
        "COUNT(*)"
    };
    let row = conn
        .query_one_raw(sql(
            conn,
            format!("SELECT {count} AS n FROM t WHERE id = {id}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i32>("", "n").unwrap() == 1
}

async fn ids(db: &Db) -> Vec<i32> {
    let mut found = Vec::new();
    for id in 0..10 {
        if has(db.conn(), id).await {
            found.push(id);
        }
    }
    found
}

/// A request after a failed or broken one, inserting `id`: it commits.
async fn a_third_request(db: &Db, id: i32) {
    soon(
        "a third request",
        db.grouped("book-1", &[("book", "book-1")], async |tx| {
            insert(tx, id).await.map_err(Answer::from)
        }),
    )
    .await
    .unwrap();
}

/// Bounds a wait so that a hang fails the test instead of stalling it.
async fn soon<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen"))
}

/// Waits until `n` requests are queued for `key`'s group.
async fn queued(db: &Db, key: &str, n: usize) {
    soon("the requests queueing", async {
        while db.queued_for_group(key) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Starts a first request that writes and then holds the group until the
/// returned `go` is notified; returns once it has written.
async fn first_request(db: &Db) -> (tokio::task::JoinHandle<Result<(), Answer>>, Arc<Notify>) {
    let (started, mut has_started) = mpsc::unbounded_channel();
    let go = Arc::new(Notify::new());
    let db = db.clone();
    let hold = go.clone();
    let first = tokio::spawn(async move {
        db.grouped("book-1", &[("book", "book-1")], async |tx| {
            insert(tx, 0).await?;
            let _ = started.send(());
            hold.notified().await;
            Ok(())
        })
        .await
    });
    soon("the first request's write", has_started.recv())
        .await
        .unwrap();
    (first, go)
}

/// Behind a first request holding the group (until `go`), a second request
/// that gets in, inserts row `id` (whether or not that succeeds), and whose
/// caller then goes away while it works.
async fn second_request_gone_after_insert(db: &Db, go: &Notify, id: i32) {
    let (inside, mut is_inside) = mpsc::unbounded_channel();
    let second = {
        let db = db.clone();
        tokio::spawn(async move {
            db.grouped("book-1", &[("book", "book-1")], async |tx| {
                let _ = insert(tx, id).await;
                let _ = inside.send(());
                std::future::pending::<()>().await;
                Ok::<_, Answer>(())
            })
            .await
        })
    };
    queued(db, "book-1", 1).await;
    go.notify_one();
    soon("the second request's insert", is_inside.recv())
        .await
        .unwrap();
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_in_a_group_leaves_the_others_committed() {
    let dir = tempfile::tempdir().unwrap();
    for db in backends(&dir).await {
        let (first, go) = first_request(&db).await;

        // Four more queue while the first holds the group; the second of
        // them writes and then refuses.
        let mut later = Vec::new();
        for id in 1..=4 {
            let here = db.clone();
            later.push(tokio::spawn(async move {
                let db = here;
                db.grouped("book-1", &[("book", "book-1")], async |tx| {
                    insert(tx, id).await?;
                    // The first request's row: written in this transaction,
                    // not yet committed for anybody else.
                    let shared = (has(&**tx, 0).await, has(db.conn(), 0).await);
                    if id == 2 {
                        return Err(Answer::Refused);
                    }
                    Ok(shared)
                })
                .await
            }));
            queued(&db, "book-1", id as usize).await;
        }
        go.notify_one();

        soon("the first request", first).await.unwrap().unwrap();
        for (i, request) in later.into_iter().enumerate() {
            let id = i + 1;
            let answer = soon("a later request", request).await.unwrap();
            if id == 2 {
                assert!(
                    matches!(answer, Err(Answer::Refused)),
                    "{:?}: {answer:?}",
                    db.backend()
                );
            } else {
                assert_eq!(
                    answer.unwrap(),
                    (true, false),
                    "{:?}: request {id} saw the first one's row in its transaction and only there",
                    db.backend()
                );
            }
        }
        assert_eq!(ids(&db).await, [0, 1, 3, 4], "{:?}", db.backend());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gone_from_a_group_neither_writes_nor_holds_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    for db in backends(&dir).await {
        let (first, go) = first_request(&db).await;

        // A second request queues, gets in after the first, writes, and
        // then its caller goes away while it works.
        second_request_gone_after_insert(&db, &go, 1).await;

        // The first request's transaction commits without the second.
        soon("the first request", first).await.unwrap().unwrap();
        assert_eq!(ids(&db).await, [0], "{:?}", db.backend());
        // And the group takes the next request as usual.
        a_third_request(&db, 2).await;
        assert_eq!(ids(&db).await, [0, 2], "{:?}", db.backend());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_refused_request_writes_nothing_and_the_group_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    for db in backends(&dir).await {
        let refused = db
            .grouped("book-1", &[("book", "book-1")], async |tx| {
                insert(tx, 5).await?;
                Err::<(), _>(Answer::Refused)
            })
            .await;
        assert!(matches!(refused, Err(Answer::Refused)));
        db.grouped("book-1", &[("book", "book-1")], async |tx| {
            insert(tx, 6).await.map_err(Answer::from)
        })
        .await
        .unwrap();
        assert_eq!(ids(&db).await, [6], "{:?}", db.backend());
    }
}

/// PostgreSQL: a request whose lock another transaction holds does not
/// wait for it inside the open transaction (holding the group's locks): the
/// open transaction commits first, and the request waits in one of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_lock_is_taken_waits_outside_the_open_transaction() {
    let db = postgres().await;
    let elsewhere = db.begin().await.unwrap();
    elsewhere.lock("member", "m").await.unwrap();

    let (first, go) = first_request(&db).await;
    let second = {
        let db = db.clone();
        tokio::spawn(async move {
            db.grouped(
                "book-1",
                &[("member", "m"), ("book", "book-1")],
                async |tx| insert(tx, 1).await.map_err(Answer::from),
            )
            .await
        })
    };
    queued(&db, "book-1", 1).await;
    go.notify_one();

    // The first request's transaction commits while the second waits.
    soon("the first request", first).await.unwrap().unwrap();
    assert_eq!(ids(&db).await, [0]);
    assert!(!second.is_finished());
    elsewhere.rollback().await.unwrap();
    soon("the second request", second).await.unwrap().unwrap();
    assert_eq!(ids(&db).await, [0, 1]);
}

/// A PostgreSQL database with an empty table `t`.
async fn postgres() -> Db {
    let db = Db::connect(&rentalbook_testkit::fresh_postgres_url().await, 8)
        .await
        .unwrap();
    db.conn()
        .execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    db
}

/// PostgreSQL: a request whose work lets a failed statement pass (the
/// first request's row again) leaves its savepoint unable to end, so the
/// whole shared transaction is rolled back and every request in it is told
/// so, none told it committed; the request queued next starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_shared_transaction_fails_every_request_in_it() {
    let db = postgres().await;
    let (first, go) = first_request(&db).await;
    let second = {
        let db = db.clone();
        tokio::spawn(async move {
            db.grouped("book-1", &[("book", "book-1")], async |tx| {
                let _ = insert(tx, 0).await;
                Ok::<_, Answer>(())
            })
            .await
        })
    };
    queued(&db, "book-1", 1).await;
    let third = {
        let db = db.clone();
        tokio::spawn(async move {
            db.grouped("book-1", &[("book", "book-1")], async |tx| {
                insert(tx, 3).await.map_err(Answer::from)
            })
            .await
        })
    };
    queued(&db, "book-1", 2).await;
    go.notify_one();

    let first = soon("the first request", first).await.unwrap();
    assert!(matches!(first, Err(Answer::Db(_))), "{first:?}");
    let second = soon("the second request", second).await.unwrap();
    assert!(matches!(second, Err(Answer::Db(_))), "{second:?}");
    soon("the third request", third).await.unwrap().unwrap();
    assert_eq!(ids(&db).await, [3], "only the third request's row");
}

/// PostgreSQL: a request whose statement failed and whose caller then went
/// away: its savepoint is rolled back (or, failing that, the check before
/// COMMIT finds the transaction broken), the first request is told it
/// committed only if its row is there, and the group goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gone_after_a_failed_statement_leaves_no_false_commit() {
    let db = postgres().await;
    let (first, go) = first_request(&db).await;
    // The first request's row again: the INSERT fails.
    second_request_gone_after_insert(&db, &go, 0).await;

    let first = soon("the first request", first).await.unwrap();
    assert_eq!(
        first.is_ok(),
        ids(&db).await == [0],
        "told {first:?}, committed {:?}",
        ids(&db).await
    );
    // The group takes the next request as usual.
    a_third_request(&db, 3).await;
    assert!(ids(&db).await.contains(&3));
}

/// PostgreSQL: a lock a later request's work takes beyond those it named,
/// held by another transaction, does not fail the request: its part is
/// undone, the open transaction commits without it, and its work runs again
/// in a transaction of its own, which waits for the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_its_work_finds_taken_runs_the_request_again_on_its_own() {
    let db = postgres().await;
    let elsewhere = db.begin().await.unwrap();
    elsewhere.lock("book", "kept").await.unwrap();

    let (first, go) = first_request(&db).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let second = {
        let db = db.clone();
        let runs = runs.clone();
        tokio::spawn(async move {
            db.grouped("book-1", &[("book", "book-1")], async |tx| {
                runs.fetch_add(1, Ordering::SeqCst);
                tx.lock("book", "kept").await?;
                insert(tx, 1).await.map_err(Answer::from)
            })
            .await
        })
    };
    queued(&db, "book-1", 1).await;
    go.notify_one();

    soon("the first request", first).await.unwrap().unwrap();
    assert_eq!(ids(&db).await, [0], "committed without the second request");
    soon("the second request's second run", async {
        while runs.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(!second.is_finished(), "it waits for the lock");
    elsewhere.rollback().await.unwrap();
    soon("the second request", second).await.unwrap().unwrap();
    assert_eq!(ids(&db).await, [0, 1]);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
