//! Group commit: write requests that queue for the same database (SQLite)
//! or the same group of keys (PostgreSQL) share one transaction, one BEGIN
//! and one COMMIT for many, each request in a savepoint of its own so that
//! one request's refusal never undoes another's.
//!
//! A group is a slot that one request at a time holds. The first request
//! into an empty slot begins the transaction (taking its locks the way a
//! lone transaction would, waiting for them in the caller's order) and
//! works in it directly. A request that finds the transaction open works in
//! a savepoint; its locks are only *tried*: if another transaction holds
//! one, the open transaction commits first and the request begins a fresh
//! one. A lock its work takes beyond those it named is tried too; when
//! another transaction holds it, the request's part is undone and its work
//! runs again in a transaction of its own, which waits. A transaction that
//! waits for a lock therefore holds no other request's locks, so groups
//! cannot deadlock with each other or with lone transactions more than lone
//! transactions could. The locks a later request took join the group's only
//! when its work is kept (PostgreSQL releases those taken in a savepoint
//! rolled back).
//!
//! A statement that fails outside a request's savepoint (SAVEPOINT,
//! RELEASE, ROLLBACK TO) breaks the transaction: it is rolled back and every
//! request in it fails, never committed in part (PostgreSQL would answer
//! that COMMIT with a rollback, not an error). Joining and leaving run as
//! tasks of their own, so a caller that goes away cannot stop them half
//! way; one that goes away during its own work has its savepoint rolled
//! back, and the transaction is checked before its COMMIT.
//!
//! The request that leaves the slot with nobody queued behind it commits
//! the transaction, so a lone request is never kept waiting for company:
//! a group forms only from requests that queued while the slot was held.
//! A group holds at most [`MAX_MEMBERS`] requests. Every request answers
//! only once the transaction it wrote in has committed, and a failed
//! COMMIT fails every request in it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement, TransactionTrait,
};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, watch};

use super::{Counters, Db, HeldLocks, Holding, WriteTx, lock_names, micros, names_in};

/// The most requests one transaction takes: the first of them waits for
/// the others' work before it answers.
pub const MAX_MEMBERS: usize = 16;

/// How many groups a PostgreSQL database's keys are spread over. Keys that
/// share a group may share a transaction, which is safe (their locks are
/// tried, never waited for) and merely less parallel.
const SHARDS: usize = 64;

/// How a group's transaction ended, told to every request in it.
type Outcome = Option<Result<(), Arc<str>>>;

/// The groups of one database.
pub(super) struct Groups {
    shards: Vec<Arc<Group>>,
}

impl Groups {
    /// SQLite has one writer, so one group; PostgreSQL one per shard of keys.
    pub(super) fn new(backend: DbBackend) -> Self {
        let n = if backend == DbBackend::Postgres {
            SHARDS
        } else {
            1
        };
        Self {
            shards: (0..n).map(|_| Arc::new(Group::default())).collect(),
        }
    }

    fn of(&self, key: &str) -> Arc<Group> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let i = usize::try_from(h.finish() % self.shards.len() as u64).unwrap_or(0);
        self.shards[i].clone()
    }
}

#[derive(Default)]
struct Group {
    slot: Arc<Mutex<Option<Batch>>>,
    /// Requests waiting for the slot: the one leaving it commits only when
    /// none is.
    queued: AtomicUsize,
}

/// A group's open transaction.
struct Batch {
    /// None while the first request works in it.
    tx: Option<DatabaseTransaction>,
    _permit: Option<OwnedSemaphorePermit>,
    held: HeldLocks,
    members: usize,
    staged_events: bool,
    /// A statement outside any request's savepoint failed (a SAVEPOINT, a
    /// RELEASE, a ROLLBACK TO): the transaction is rolled back, not
    /// committed, and every request in it fails.
    broken: bool,
    /// A request was dropped in its work: its savepoint's rollback was only
    /// queued, so the transaction is checked before COMMIT.
    check: bool,
    outcome: watch::Sender<Outcome>,
    /// The batch's time from BEGIN to COMMIT counts as held.
    _holding: Holding,
}

/// Counts a request as queued for the slot until dropped; one that gives
/// up (its deadline) makes sure the open transaction does not wait for it.
struct Queued<'a> {
    db: &'a Db,
    group: &'a Arc<Group>,
    seated: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let left = self.group.queued.fetch_sub(1, Ordering::AcqRel) - 1;
        if !self.seated && left == 0 {
            close_when_free(self.db, self.group);
        }
    }
}

/// Commits the group's open transaction, if any, once the slot is free.
fn close_when_free(db: &Db, group: &Arc<Group>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let slot = group.slot.clone();
    let counters = db.counters.clone();
    let signal = db.outbox_signal.clone();
    runtime.spawn(async move {
        let mut batch = slot.lock_owned().await;
        close(&mut batch, &counters, &signal).await;
    });
}

/// Ends the open transaction (COMMIT, or ROLLBACK when it is broken) and
/// tells its requests how it went.
async fn close(slot: &mut Option<Batch>, counters: &Counters, signal: &tokio::sync::Notify) {
    let Some(mut batch) = slot.take() else {
        return;
    };
    let Some(tx) = batch.tx.take() else {
        return;
    };
    // PostgreSQL answers the COMMIT of a transaction in which a statement
    // failed with a rollback, not an error: ask it first.
    if batch.check && !batch.broken {
        batch.broken = tx.execute_unprepared("SELECT 1").await.is_err();
    }
    if batch.broken {
        let _ = tx.rollback().await;
        batch.outcome.send_replace(Some(Err(Arc::from(
            "a statement of the shared transaction failed, so none of it was kept",
        ))));
        return;
    }
    let since = std::time::Instant::now();
    let committed = tx.commit().await;
    counters.commit_us.increment(micros(since.elapsed()));
    if committed.is_ok() {
        counters.group_commits.increment(1);
        counters.grouped_requests.increment(batch.members as u64);
        if batch.staged_events {
            signal.notify_one();
        }
    }
    let outcome = committed.map_err(|e| Arc::from(e.to_string()));
    batch.outcome.send_replace(Some(outcome));
}

/// A request's place in a group, from its joining to its leaving.
struct Seat {
    db: Db,
    group: Arc<Group>,
    slot: OwnedMutexGuard<Option<Batch>>,
    /// The request's transaction: the group's own for the first request,
    /// a savepoint of it for the others.
    tx: Option<WriteTx>,
    first: bool,
    outcome: watch::Receiver<Outcome>,
}

impl Drop for Seat {
    /// A request dropped in its work (its caller gone): its work is
    /// undone, and the transaction does not wait for it.
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        drop(tx);
        if self.first {
            // Nobody else has written in it yet.
            *self.slot = None;
            return;
        }
        if let Some(batch) = self.slot.as_mut() {
            batch.check = true;
        }
        if self.group.queued.load(Ordering::Acquire) == 0 {
            close_when_free(&self.db, &self.group);
        }
    }
}

impl Db {
    /// Runs `work` as one request of a group commit (see the module): in a
    /// transaction shared with the requests queued with it for `key`'s
    /// group, after taking `locks` (in the order given, as
    /// [`WriteTx::lock_all`]). The answer is `work`'s once the transaction
    /// has committed; a failed COMMIT fails it. A refusal (`Err`) undoes
    /// only this request's work. A lock `work` takes beyond `locks` is only
    /// tried when the request joined an open transaction; when another
    /// transaction holds it, the request's part is undone and `work` runs
    /// again, once, in a transaction of its own that waits for the lock.
    ///
    /// Joining and leaving run as tasks of their own, so that a caller
    /// that goes away meanwhile cannot leave the group half done.
    pub async fn grouped<T, E, K: AsRef<str>>(
        &self,
        key: &str,
        locks: &[(&str, K)],
        work: impl AsyncFnOnce(&mut WriteTx) -> Result<T, E> + Clone,
    ) -> Result<T, E>
    where
        E: From<DbErr>,
    {
        let locks: Vec<(String, String)> = locks
            .iter()
            .map(|(s, k)| ((*s).to_owned(), k.as_ref().to_owned()))
            .collect();
        let mut alone = false;
        let (result, outcome) = loop {
            let join = tokio::spawn(self.clone().join(key.to_owned(), locks.clone(), alone));
            let mut seat = join.await.map_err(lost)??;
            let Some(tx) = seat.tx.as_mut() else {
                return Err(lost("a seat without its transaction").into());
            };
            let result = work.clone()(tx).await;
            // A lock its work tried was held by another transaction: its
            // part is undone, and it runs again in a transaction of its
            // own, waiting for that lock as a lone transaction would.
            let busy = tx.lock_busy.load(Ordering::Relaxed);
            let leave = tokio::spawn(seat.leave(result.is_ok()));
            let outcome = leave.await.map_err(lost)??;
            if busy && result.is_err() && !alone {
                alone = true;
                continue;
            }
            break (result, outcome);
        };
        let Some(mut outcome) = outcome else {
            return result;
        };
        let told = outcome
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .ok()
            .flatten();
        match told {
            Some(Ok(())) => result,
            Some(Err(e)) => Err(lost(format!("the shared transaction failed: {e}")).into()),
            None => Err(lost("the shared transaction was rolled back").into()),
        }
    }

    /// Whether requests with different keys may go to different groups:
    /// PostgreSQL's; SQLite has one writer, so one group whatever the key.
    pub fn groups_by_key(&self) -> bool {
        self.groups.shards.len() > 1
    }

    /// How many requests are waiting to join `key`'s group.
    pub fn queued_for_group(&self, key: &str) -> usize {
        self.groups.of(key).queued.load(Ordering::Acquire)
    }

    /// A seat in `key`'s group: in its open transaction when there is one
    /// with room and `locks` are free, else (and always when `alone`) in a
    /// new one.
    async fn join(
        self,
        key: String,
        locks: Vec<(String, String)>,
        alone: bool,
    ) -> Result<Seat, DbErr> {
        let locks: Vec<(&str, &str)> = locks
            .iter()
            .map(|(s, k)| (s.as_str(), k.as_str()))
            .collect();
        let group = self.groups.of(&key);
        group.queued.fetch_add(1, Ordering::AcqRel);
        let mut queued = Queued {
            db: &self,
            group: &group,
            seated: false,
        };
        let mut slot = self
            .as_writer(async || Ok(group.slot.clone().lock_owned().await))
            .await?;
        queued.seated = true;
        drop(queued);
        if let Some(batch) = slot.as_mut().filter(|_| !alone) {
            match self.savepoint_in(batch, &locks).await {
                Ok(Some(tx)) => {
                    let outcome = batch.outcome.subscribe();
                    return Ok(Seat {
                        db: self.clone(),
                        group,
                        slot,
                        tx: Some(tx),
                        first: false,
                        outcome,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    batch.broken = true;
                    close(&mut slot, &self.counters, &self.outbox_signal).await;
                    return Err(e);
                }
            }
        }
        close(&mut slot, &self.counters, &self.outbox_signal).await;
        let mut tx = self.begin().await?;
        tx.lock_all(&locks).await?;
        let (outcome, receiver) = watch::channel(None);
        let batch = Batch {
            tx: None,
            _permit: tx.permit.take(),
            held: tx.held.clone(),
            members: 1,
            staged_events: false,
            broken: false,
            check: false,
            outcome,
            _holding: tx
                ._holding
                .take()
                .unwrap_or_else(|| Holding::new(&self.counters)),
        };
        *slot = Some(batch);
        Ok(Seat {
            db: self.clone(),
            group,
            slot,
            tx: Some(tx),
            first: true,
            outcome: receiver,
        })
    }

    /// A later request's transaction, a savepoint of the open one holding
    /// `locks`; None when the open one is full or another transaction
    /// holds one of `locks`. An error leaves the open transaction broken.
    async fn savepoint_in(
        &self,
        batch: &mut Batch,
        locks: &[(&str, &str)],
    ) -> Result<Option<WriteTx>, DbErr> {
        let Some(tx) = batch.tx.as_ref() else {
            return Ok(None);
        };
        if batch.members >= MAX_MEMBERS {
            return Ok(None);
        }
        let savepoint = tx.begin().await?;
        // SAVEPOINT, and the RELEASE or ROLLBACK TO that ends it.
        self.counters.statements.increment(2);
        let held = names_in(&batch.held).clone();
        let member = WriteTx {
            tx: savepoint,
            _holding: None,
            commit_us: self.counters.commit_us.clone(),
            permit: None,
            exclusive: batch._permit.is_some(),
            staged_events: false,
            outbox_signal: self.outbox_signal.clone(),
            held: Arc::new(std::sync::Mutex::new(held)),
            tries_locks: true,
            lock_busy: Default::default(),
        };
        match member.lock_all(locks).await {
            Ok(()) => {
                batch.members += 1;
                Ok(Some(member))
            }
            Err(_) if member.lock_busy.load(Ordering::Relaxed) => {
                member.tx.rollback().await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// A lost task or a broken group, as the database error its request gets.
fn lost(e: impl std::fmt::Display) -> DbErr {
    DbErr::Custom(format!("group commit: {e}"))
}

impl Seat {
    /// Ends the request's part: its work kept (`keep`) or undone. Commits
    /// the transaction when nobody is queued for it, when it is full or
    /// broken. None when the request's own work was the whole transaction
    /// and is undone, so there is nothing to wait for.
    async fn leave(mut self, keep: bool) -> Result<Option<watch::Receiver<Outcome>>, DbErr> {
        let Some(tx) = self.tx.take() else {
            return Ok(None);
        };
        let staged = tx.staged_events && keep;
        let WriteTx { tx, held, .. } = tx;
        if self.first && !keep {
            let undone = tx.rollback().await;
            *self.slot = None;
            undone?;
            return Ok(None);
        }
        let ended = if self.first {
            if let Some(batch) = self.slot.as_mut() {
                batch.tx = Some(tx);
            }
            Ok(())
        } else if keep {
            tx.commit().await
        } else {
            tx.rollback().await
        };
        if let Some(batch) = self.slot.as_mut() {
            if ended.is_err() {
                batch.broken = true;
            } else if keep && !self.first {
                let mine = names_in(&held).clone();
                names_in(&batch.held).extend(mine);
            }
            batch.staged_events |= staged;
            let full = batch.members >= MAX_MEMBERS;
            if batch.broken || full || self.group.queued.load(Ordering::Acquire) == 0 {
                close(&mut self.slot, &self.db.counters, &self.db.outbox_signal).await;
            }
        }
        ended?;
        Ok(Some(self.outcome.clone()))
    }
}

/// Tries to take the locks not yet held, without waiting: false when
/// another transaction holds one of them. SQLite's one writer needs none.
pub(super) async fn try_lock_all(
    tx: &DatabaseTransaction,
    held: &HeldLocks,
    locks: &[(&str, &str)],
) -> Result<bool, DbErr> {
    if tx.get_database_backend() != DbBackend::Postgres {
        return Ok(true);
    }
    let names: Vec<String> = {
        let held = names_in(held);
        lock_names(locks)
            .into_iter()
            .filter(|n| !held.contains(n))
            .collect()
    };
    if names.is_empty() {
        return Ok(true);
    }
    let calls: Vec<String> = (1..=names.len())
        .map(|i| format!("pg_try_advisory_xact_lock(hashtextextended(${i}, 0)) AS l{i}"))
        .collect();
    let row = tx
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("SELECT {}", calls.join(", ")),
            names.iter().map(|n| n.clone().into()),
        ))
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    for i in 1..=names.len() {
        if !row.try_get::<bool>("", &format!("l{i}"))? {
            return Ok(false);
        }
    }
    names_in(held).extend(names);
    Ok(true)
}
