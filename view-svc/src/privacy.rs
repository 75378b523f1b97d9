//! Erasing finished history (SPEC §10, privacy). A member's HistoryErased
//! and the `HISTORY_RETENTION` sweep do one thing, [`erase_member`]: the
//! member's finished journeys (returned, lost, cancelled, expired) that
//! finished at or before a moment leave the read model with their steps,
//! and so do the member's notices made by then, except those about a
//! journey still open.
//!
//! The projection takes any event of a journey for its first and makes the
//! journey from it, so an erased journey is remembered by its reservation id
//! alone (`erased_journeys`): an event of it applied later, late or
//! redelivered, is dropped. And the member's latest erasure is remembered
//! (`history_erased`): a journey that an event applied after it finishes at
//! or before that moment (the two producers' events cross) is erased then.
//! Both are made again by a rebuild's replay, which applies HistoryErased
//! where the stream has it, so a rebuilt read model shows what the live one
//! did.
//!
//! The sweep erases each member's history up to `HISTORY_RETENTION` ago,
//! drops every notice older than that, and forgets the erasures it has
//! since covered itself. One replica sweeps at a time; each
//! member's erasure holds the member's lock, which every event of the
//! member's journeys and notices takes too.

use std::collections::HashSet;

use rentalbook_plumbing::db::{Db, WriteTx};
use rentalbook_plumbing::time::{self, Timestamp};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect, Set};

use crate::domain::{self, stage};
use crate::rebuild;
use crate::store::{erased_journeys, history_erased, journeys, notices, notices_read, steps};
use crate::watch::Watchers;

/// The scope of a member's lock: every change of the member's journeys and
/// notices takes it, and so does an erasure of the member's history.
pub const MEMBER_LOCK: &str = "member";

/// Members whose history one transaction of the sweep erases.
const SWEEP_MEMBERS: u64 = 100;

/// What an erasure took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Erased {
    pub journeys: u64,
    pub notices: u64,
}

/// Erases the member's journeys finished at or before `up_to` with their
/// steps, remembering each one erased, and the member's notices made by
/// then that are about no journey still open. The caller holds the member's
/// lock.
pub async fn erase_member(tx: &WriteTx, member: &str, up_to: Timestamp) -> Result<Erased, DbErr> {
    let db = &**tx;
    let rows = journeys::Entity::find()
        .filter(journeys::Column::MemberId.eq(member))
        .all(db)
        .await?;
    let mut gone = Vec::new();
    let mut open = HashSet::new();
    for j in rows {
        if domain::erased_by(&j.stage, j.finished_at, up_to) {
            gone.push(j.reservation_id);
        } else if !domain::is_finished(&j.stage) {
            // A notice is about a journey by its reservation or its rental.
            open.insert(j.reservation_id);
            open.extend(j.rental_id);
        }
    }
    if !gone.is_empty() {
        steps::Entity::delete_many()
            .filter(steps::Column::ReservationId.is_in(gone.iter().cloned()))
            .exec(db)
            .await?;
        journeys::Entity::delete_many()
            .filter(journeys::Column::ReservationId.is_in(gone.iter().cloned()))
            .exec(db)
            .await?;
        let now = time::now();
        erased_journeys::Entity::insert_many(gone.iter().map(|id| erased_journeys::ActiveModel {
            reservation_id: Set(id.clone()),
            erased_at: Set(now),
        }))
        .on_conflict(
            OnConflict::column(erased_journeys::Column::ReservationId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    }
    let about_open = |n: &notices::Model| {
        [&n.reservation_id, &n.rental_id]
            .into_iter()
            .any(|id| !id.is_empty() && open.contains(id))
    };
    let notices_gone: Vec<String> = notices::Entity::find()
        .filter(notices::Column::MemberId.eq(member))
        .filter(notices::Column::CreatedAt.lte(up_to))
        .all(db)
        .await?
        .into_iter()
        .filter(|n| domain::notice_erased_by(n.created_at, about_open(n), up_to))
        .map(|n| n.notice_id)
        .collect();
    if !notices_gone.is_empty() {
        notices::Entity::delete_many()
            .filter(notices::Column::NoticeId.is_in(notices_gone.iter().cloned()))
            .exec(db)
            .await?;
    }
    Ok(Erased {
        journeys: gone.len() as u64,
        notices: notices_gone.len() as u64,
    })
}

/// HistoryErased: remembers the member's erasure (the latest stands), then
/// erases up to it.
pub async fn history_erased(tx: &WriteTx, member: &str, up_to: Timestamp) -> Result<Erased, DbErr> {
    history_erased::Entity::insert(history_erased::ActiveModel {
        member_id: Set(member.to_owned()),
        up_to: Set(up_to),
    })
    .on_conflict(
        OnConflict::column(history_erased::Column::MemberId)
            .update_column(history_erased::Column::UpTo)
            .action_and_where(history_erased::Column::UpTo.lt(up_to))
            .to_owned(),
    )
    .exec_without_returning(&**tx)
    .await?;
    erase_member(tx, member, up_to).await
}

/// The moment up to which the member erased their history, if they did.
pub async fn erased_up_to<C: ConnectionTrait>(
    db: &C,
    member: &str,
) -> Result<Option<Timestamp>, DbErr> {
    Ok(history_erased::Entity::find_by_id(member.to_owned())
        .one(db)
        .await?
        .map(|e| e.up_to))
}

/// Whether the journey was erased (an event of it is then dropped).
pub async fn was_erased<C: ConnectionTrait>(db: &C, reservation_id: &str) -> Result<bool, DbErr> {
    Ok(
        erased_journeys::Entity::find_by_id(reservation_id.to_owned())
            .one(db)
            .await?
            .is_some(),
    )
}

/// The `HISTORY_RETENTION` sweep up to `cutoff`: every member's history as
/// their HistoryErased would erase it, then every notice made by then; the
/// erasures and notice readings older than that are forgotten, the sweep
/// covering them from now on (the erased journeys stay: they name nobody,
/// and a dead letter replayed long after must not bring one back). Tells
/// the members whose page changed. Returns how many journeys and notices
/// went.
pub async fn sweep(db: &Db, watchers: &Watchers, cutoff: Timestamp) -> Result<u64, DbErr> {
    let Some(_one) = db.exclusive("view-svc:history-sweep").await? else {
        return Ok(0);
    };
    let mut swept = 0;
    loop {
        let mut members: Vec<String> = journeys::Entity::find()
            .select_only()
            .column(journeys::Column::MemberId)
            .distinct()
            .filter(journeys::Column::Stage.is_in(stage::FINISHED))
            .filter(journeys::Column::FinishedAt.lte(cutoff))
            .limit(SWEEP_MEMBERS)
            .into_tuple()
            .all(db.conn())
            .await?;
        if members.is_empty() {
            break;
        }
        members.sort();
        let tx = db.begin().await?;
        // In the projection's order: the members' locks, then the rebuild's.
        for m in &members {
            tx.lock(MEMBER_LOCK, m).await?;
        }
        rebuild::wait_for_rebuild(&tx).await?;
        let mut journeys_erased = 0;
        for m in &members {
            let erased = erase_member(&tx, m, cutoff).await?;
            journeys_erased += erased.journeys;
            swept += erased.journeys + erased.notices;
        }
        tx.commit().await?;
        for m in &members {
            watchers.notify(m);
        }
        if journeys_erased == 0 {
            // Changed since they were found (a lost copy returned after
            // all): the next sweep looks again.
            break;
        }
    }
    let tx = db.begin().await?;
    rebuild::wait_for_rebuild(&tx).await?;
    let told: Vec<String> = notices::Entity::find()
        .select_only()
        .column(notices::Column::MemberId)
        .distinct()
        .filter(notices::Column::CreatedAt.lte(cutoff))
        .into_tuple()
        .all(&*tx)
        .await?;
    swept += notices::Entity::delete_many()
        .filter(notices::Column::CreatedAt.lte(cutoff))
        .exec(&*tx)
        .await?
        .rows_affected;
    notices_read::Entity::delete_many()
        .filter(notices_read::Column::UpTo.lte(cutoff))
        .exec(&*tx)
        .await?;
    history_erased::Entity::delete_many()
        .filter(history_erased::Column::UpTo.lte(cutoff))
        .exec(&*tx)
        .await?;
    tx.commit().await?;
    for m in &told {
        watchers.notify(m);
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use rentalbook_proto::events::v1::{
        BookRented, BookReturned, Envelope, HistoryErased, NoticeSent, ReservationCancelled,
        ReservationPlaced, envelope::Body,
    };
    use rentalbook_proto::reserve::v1::ReservationStatus;
    use sea_orm::PaginatorTrait;
    use sea_orm_migration::MigratorTrait;

    use super::*;
    use crate::projection::Projection;
    use rentalbook_plumbing::consumer::EventHandler;

    fn t(secs: i64) -> Timestamp {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn event(n: usize, secs: i64, body: Body) -> Envelope {
        Envelope {
            event_id: format!("e{n}"),
            occurred_at: Some(time::to_proto(t(secs))),
            producer: "test".into(),
            body: Some(body),
        }
    }

    /// A walk-in loan of `member`'s (`r`, rental `l`) at `secs`, returned
    /// at `returned` if it was.
    fn loan(member: &str, r: &str, secs: i64, returned: Option<i64>) -> Vec<Body> {
        let mut bodies = vec![
            Body::ReservationPlaced(ReservationPlaced {
                reservation_id: r.into(),
                book_id: "b1".into(),
                member_id: member.into(),
                status: ReservationStatus::Fulfilled as i32,
                rental_id: format!("l-{r}"),
                ..Default::default()
            }),
            Body::BookRented(BookRented {
                rental_id: format!("l-{r}"),
                reservation_id: r.into(),
                book_id: "b1".into(),
                member_id: member.into(),
                rented_at: Some(time::to_proto(t(secs))),
                due_at: Some(time::to_proto(t(secs + 1000))),
                barcode: String::new(),
            }),
        ];
        if let Some(back) = returned {
            bodies.push(Body::BookReturned(BookReturned {
                rental_id: format!("l-{r}"),
                reservation_id: r.into(),
                book_id: "b1".into(),
                member_id: member.into(),
                returned_at: Some(time::to_proto(t(back))),
                ..Default::default()
            }));
        }
        bodies
    }

    fn notice(id: &str, member: &str, rental: &str) -> Body {
        Body::NoticeSent(NoticeSent {
            notice_id: id.into(),
            member_id: member.into(),
            rental_id: rental.into(),
            ..Default::default()
        })
    }

    async fn count<E: EntityTrait>(db: &Db, _: E) -> u64
    where
        E::Model: Sync,
    {
        E::find().count(db.conn()).await.unwrap()
    }

    /// The sweep does to everyone what a HistoryErased up to its cutoff
    /// does, and drops every notice made by then, about a current loan too.
    #[tokio::test]
    async fn the_sweep_erases_everyones_finished_history_and_old_notices() {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        crate::store::Migrator::up(db.conn(), None).await.unwrap();
        let watchers = Arc::new(Watchers::new(db.clone()));
        let projection = Projection {
            watchers: watchers.clone(),
        };
        let mut bodies: Vec<(i64, Body)> = Vec::new();
        for (member, r, secs, back) in [
            ("alice", "r1", 1, Some(5)),
            ("alice", "r2", 2, None),
            ("alice", "r3", 3, Some(30)),
            ("bob", "r4", 4, Some(6)),
        ] {
            bodies.extend(loan(member, r, secs, back).into_iter().map(|b| (secs, b)));
        }
        bodies.push((
            8,
            Body::ReservationCancelled(ReservationCancelled {
                reservation_id: "r5".into(),
                book_id: "b1".into(),
                member_id: "bob".into(),
                ..Default::default()
            }),
        ));
        bodies.extend([
            (7, notice("n1", "alice", "l-r2")),
            (9, notice("n2", "bob", "")),
            (20, notice("n3", "bob", "")),
            (
                11,
                Body::HistoryErased(HistoryErased {
                    member_id: "carol".into(),
                    up_to: Some(time::to_proto(t(9))),
                }),
            ),
        ]);
        let mut tx = db.begin().await.unwrap();
        for (n, (secs, body)) in bodies.into_iter().enumerate() {
            projection
                .apply(&mut tx, &event(n, secs, body))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();

        let swept = sweep(&db, &watchers, t(10)).await.unwrap();
        let left: Vec<String> = journeys::Entity::find()
            .all(db.conn())
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.reservation_id)
            .collect();
        assert_eq!(
            left,
            ["r2", "r3"],
            "the loan out and the one returned later stay"
        );
        let notices_left: Vec<String> = notices::Entity::find()
            .all(db.conn())
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.notice_id)
            .collect();
        assert_eq!(notices_left, ["n3"], "every notice made by the cutoff goes");
        assert_eq!(swept, 3 + 2, "r1, r4, r5 and two notices");
        assert_eq!(count(&db, erased_journeys::Entity).await, 3);
        assert_eq!(
            count(&db, history_erased::Entity).await,
            0,
            "an erasure the sweep covers now is forgotten"
        );
        assert_eq!(sweep(&db, &watchers, t(10)).await.unwrap(), 0, "once");
    }
}
