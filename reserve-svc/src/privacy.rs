//! Erasing finished history (SPEC §10, privacy): a member's HistoryErased
//! and the `HISTORY_RETENTION` sweep anonymise the reservations that
//! finished by a moment ([`domain::finished_at`]): the member on them
//! becomes [`ERASED_MEMBER`], which no member id can be. The rows stay, so
//! the books' counts and each item's history (the copy held or lent) do
//! too. Open reservations are never touched: a WAITING or READY hold, and a
//! loan whose copy is still out, which the desk still decides on.
//!
//! Only the member column changes, on rows no rule changes any more, so an
//! erasure needs no lock: one statement, whose conditions are checked again
//! on each row it changes.

use rentalbook_plumbing::consumer::{EventHandler, Poison};
use rentalbook_plumbing::db::{Db, WriteTx};
use rentalbook_plumbing::ids::{ERASED_MEMBER, MemberId};
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::{Envelope, envelope::Body};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect,
};

use crate::store::{reservations, status};

/// Reservations one transaction of the sweep anonymises.
const SWEEP_BATCH: u64 = 500;

/// The reservations of [`crate::domain::finished_at`] finished at or
/// before `up_to`, as a query condition.
fn finished_by(up_to: Timestamp) -> Condition {
    Condition::any()
        .add(
            Condition::all()
                .add(reservations::Column::Status.is_in([status::CANCELLED, status::EXPIRED]))
                .add(reservations::Column::UpdatedAt.lte(up_to)),
        )
        .add(
            Condition::all()
                .add(reservations::Column::Status.eq(status::FULFILLED))
                .add(reservations::Column::ReturnedAt.lte(up_to)),
        )
}

/// Anonymises the member's reservations finished at or before `up_to`;
/// returns how many.
pub async fn erase_member<C: ConnectionTrait>(
    db: &C,
    member: &MemberId,
    up_to: Timestamp,
) -> Result<u64, DbErr> {
    Ok(reservations::Entity::update_many()
        .col_expr(reservations::Column::MemberId, Expr::value(ERASED_MEMBER))
        .filter(reservations::Column::MemberId.eq(member.as_str()))
        .filter(finished_by(up_to))
        .exec(db)
        .await?
        .rows_affected)
}

/// The `HISTORY_RETENTION` sweep: every member's reservations finished at
/// or before `cutoff` are anonymised, as their HistoryErased would, a batch
/// per transaction. One replica sweeps at a time. Returns how many.
pub async fn sweep(db: &Db, cutoff: Timestamp) -> Result<u64, DbErr> {
    let Some(_one) = db.exclusive("reserve-svc:history-sweep").await? else {
        return Ok(0);
    };
    let mut swept = 0;
    loop {
        let tx = db.begin().await?;
        let batch: Vec<String> = reservations::Entity::find()
            .select_only()
            .column(reservations::Column::ReservationId)
            .filter(reservations::Column::MemberId.ne(ERASED_MEMBER))
            .filter(finished_by(cutoff))
            .limit(SWEEP_BATCH)
            .into_tuple()
            .all(&*tx)
            .await?;
        let n = batch.len() as u64;
        if n > 0 {
            swept += reservations::Entity::update_many()
                .col_expr(reservations::Column::MemberId, Expr::value(ERASED_MEMBER))
                .filter(reservations::Column::ReservationId.is_in(batch))
                .filter(finished_by(cutoff))
                .exec(&*tx)
                .await?
                .rows_affected;
        }
        tx.commit().await?;
        if n < SWEEP_BATCH {
            return Ok(swept);
        }
    }
}

/// HistoryErased: the member erased their finished history.
pub struct Erasures;

#[async_trait::async_trait]
impl EventHandler for Erasures {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        let Some(Body::HistoryErased(e)) = &event.body else {
            return Ok(());
        };
        let member = MemberId::parse(&e.member_id)
            .map_err(|why| Poison::error(format!("HistoryErased: {why}")))?;
        let up_to = e
            .up_to
            .as_ref()
            .and_then(time::from_proto)
            .ok_or_else(|| Poison::error("HistoryErased without the moment it erases up to"))?;
        erase_member(&**tx, &member, up_to).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use rentalbook_plumbing::db::Db;
    use sea_orm::{ActiveModelTrait, Set};
    use sea_orm_migration::MigratorTrait;

    use super::*;
    use crate::domain;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    /// Every status with its copy out or back, changed or returned before,
    /// at and after 10 s, for alice and bob.
    async fn desk() -> (Db, Vec<reservations::Model>) {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        crate::store::Migrator::up(db.conn(), None).await.unwrap();
        let mut rows = Vec::new();
        let mut n = 0;
        for member in ["alice", "bob"] {
            for s in [
                status::WAITING,
                status::READY,
                status::FULFILLED,
                status::CANCELLED,
                status::EXPIRED,
            ] {
                for (returned, updated) in [
                    (None, 5),
                    (Some(5), 6),
                    (Some(10), 10),
                    (Some(12), 12),
                    (None, 15),
                ] {
                    n += 1;
                    let row = reservations::ActiveModel {
                        reservation_id: Set(format!("r{n:03}")),
                        book_id: Set(format!("b{n:03}")),
                        member_id: Set(member.into()),
                        status: Set(s.into()),
                        queue_seq: Set(n),
                        pickup_deadline: Set(None),
                        rental_id: Set((s == status::FULFILLED).then(|| format!("l{n:03}"))),
                        returned_at: Set(returned.map(t)),
                        barcode: Set(Some(format!("c{n:03}"))),
                        created_at: Set(t(0)),
                        updated_at: Set(t(updated)),
                    };
                    rows.push(row.insert(db.conn()).await.unwrap());
                }
            }
        }
        (db, rows)
    }

    /// The members the rows name now, by id.
    async fn members(db: &Db) -> Vec<(String, String)> {
        let mut rows = reservations::Entity::find().all(db.conn()).await.unwrap();
        rows.sort_by(|a, b| a.reservation_id.cmp(&b.reservation_id));
        rows.into_iter()
            .map(|r| (r.reservation_id, r.member_id))
            .collect()
    }

    /// What the rules say each row's member is after erasing `who`'s
    /// history (everyone's for None) up to 10 s.
    fn expected(rows: &[reservations::Model], who: Option<&str>) -> Vec<(String, String)> {
        rows.iter()
            .map(|r| {
                let theirs = who.is_none_or(|m| m == r.member_id);
                let finished = domain::finished_at(&r.status, r.returned_at, r.updated_at)
                    .is_some_and(|f| f <= t(10));
                let member = if theirs && finished {
                    ERASED_MEMBER.to_owned()
                } else {
                    r.member_id.clone()
                };
                (r.reservation_id.clone(), member)
            })
            .collect()
    }

    #[tokio::test]
    async fn an_erasure_anonymises_only_the_members_finished_reservations() {
        let (db, rows) = desk().await;
        let alice = MemberId::parse("alice").unwrap();
        let tx = db.begin().await.unwrap();
        let n = erase_member(&*tx, &alice, t(10)).await.unwrap();
        tx.commit().await.unwrap();
        let want = expected(&rows, Some("alice"));
        assert_eq!(members(&db).await, want);
        let erased = want.iter().filter(|(_, m)| m == ERASED_MEMBER).count();
        assert_eq!(n, erased as u64);
        // Cancelled and expired by 10 s (3 each), and loans back by then (2).
        assert_eq!(erased, 8);
        for (r, (_, m)) in rows.iter().zip(&want) {
            if m == ERASED_MEMBER {
                assert!(r.status != status::WAITING && r.status != status::READY);
                assert!(r.status != status::FULFILLED || r.returned_at.is_some());
            }
        }
    }

    #[tokio::test]
    async fn the_sweep_anonymises_everyones_finished_reservations_once() {
        let (db, rows) = desk().await;
        assert_eq!(sweep(&db, t(10)).await.unwrap(), 16);
        assert_eq!(members(&db).await, expected(&rows, None));
        assert_eq!(sweep(&db, t(10)).await.unwrap(), 0);
    }
}
