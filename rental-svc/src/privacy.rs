//! Erasing finished history (SPEC §10, privacy): a member's HistoryErased
//! and the `HISTORY_RETENTION` sweep anonymise the rentals that finished by
//! a moment ([`domain::finished_at`]): the member on them becomes
//! [`ERASED_MEMBER`], which no member id can be. The rows stay, so counts
//! and each item's loans do too. Open rentals are never touched: PENDING
//! (the saga is settling it) and ACTIVE.
//!
//! Only the member column changes, in one statement whose conditions are
//! checked again on each row it changes, so an erasure needs no lock. A
//! refused rental that the desk fulfilled after all (a racing settle)
//! becomes ACTIVE with its member again ([`crate::lending`]).

use rentalbook_plumbing::consumer::{EventHandler, Poison};
use rentalbook_plumbing::db::{Db, WriteTx};
use rentalbook_plumbing::ids::{ERASED_MEMBER, MemberId};
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::{Envelope, envelope::Body};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect,
};

use crate::domain::status;
use crate::store::rentals;

/// Rentals one transaction of the sweep anonymises.
const SWEEP_BATCH: u64 = 500;

/// The rentals of [`crate::domain::finished_at`] finished at or before
/// `up_to`, as a query condition.
fn finished_by(up_to: Timestamp) -> Condition {
    Condition::any()
        .add(
            Condition::all()
                .add(rentals::Column::Status.eq(status::RETURNED))
                .add(rentals::Column::ReturnedAt.lte(up_to)),
        )
        .add(
            Condition::all()
                .add(rentals::Column::Status.is_in([status::LOST, status::REJECTED]))
                .add(rentals::Column::UpdatedAt.lte(up_to)),
        )
}

/// Anonymises the member's rentals finished at or before `up_to`; returns
/// how many.
pub async fn erase_member<C: ConnectionTrait>(
    db: &C,
    member: &MemberId,
    up_to: Timestamp,
) -> Result<u64, DbErr> {
    Ok(rentals::Entity::update_many()
        .col_expr(rentals::Column::MemberId, Expr::value(ERASED_MEMBER))
        .filter(rentals::Column::MemberId.eq(member.as_str()))
        .filter(finished_by(up_to))
        .exec(db)
        .await?
        .rows_affected)
}

/// The `HISTORY_RETENTION` sweep: every member's rentals finished at or
/// before `cutoff` are anonymised, as their HistoryErased would, a batch
/// per transaction. One replica sweeps at a time. Returns how many.
pub async fn sweep(db: &Db, cutoff: Timestamp) -> Result<u64, DbErr> {
    let Some(_one) = db.exclusive("rental-svc:history-sweep").await? else {
        return Ok(0);
    };
    let mut swept = 0;
    loop {
        let tx = db.begin().await?;
        let batch: Vec<String> = rentals::Entity::find()
            .select_only()
            .column(rentals::Column::RentalId)
            .filter(rentals::Column::MemberId.ne(ERASED_MEMBER))
            .filter(finished_by(cutoff))
            .limit(SWEEP_BATCH)
            .into_tuple()
            .all(&*tx)
            .await?;
        let n = batch.len() as u64;
        if n > 0 {
            swept += rentals::Entity::update_many()
                .col_expr(rentals::Column::MemberId, Expr::value(ERASED_MEMBER))
                .filter(rentals::Column::RentalId.is_in(batch))
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

    /// Every status, returned and changed before, at and after 10 s, for
    /// alice and bob.
    async fn loans() -> (Db, Vec<rentals::Model>) {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        crate::store::Migrator::up(db.conn(), None).await.unwrap();
        let mut rows = Vec::new();
        let mut n = 0;
        for member in ["alice", "bob"] {
            for s in [
                status::PENDING,
                status::ACTIVE,
                status::RETURNED,
                status::REJECTED,
                status::LOST,
            ] {
                for (returned, updated) in [(Some(5), 6), (Some(10), 10), (Some(12), 12), (None, 5)]
                {
                    n += 1;
                    let row = rentals::ActiveModel {
                        rental_id: Set(format!("l{n:03}")),
                        reservation_id: Set(Some(format!("r{n:03}"))),
                        book_id: Set(format!("b{n:03}")),
                        member_id: Set(member.into()),
                        status: Set(s.into()),
                        rented_at: Set(Some(t(0))),
                        due_at: Set(Some(t(100))),
                        returned_at: Set(returned.map(t)),
                        return_confirmation: Set(None),
                        barcode: Set(Some(format!("c{n:03}"))),
                        renewals: Set(0),
                        created_at: Set(t(0)),
                        updated_at: Set(t(updated)),
                    };
                    rows.push(row.insert(db.conn()).await.unwrap());
                }
            }
        }
        (db, rows)
    }

    async fn members(db: &Db) -> Vec<(String, String)> {
        let mut rows = rentals::Entity::find().all(db.conn()).await.unwrap();
        rows.sort_by(|a, b| a.rental_id.cmp(&b.rental_id));
        rows.into_iter()
            .map(|r| (r.rental_id, r.member_id))
            .collect()
    }

    /// What the rules say each row's member is after erasing `who`'s
    /// history (everyone's for None) up to 10 s.
    fn expected(rows: &[rentals::Model], who: Option<&str>) -> Vec<(String, String)> {
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
                (r.rental_id.clone(), member)
            })
            .collect()
    }

    #[tokio::test]
    async fn an_erasure_anonymises_only_the_members_finished_rentals() {
        let (db, rows) = loans().await;
        let alice = MemberId::parse("alice").unwrap();
        let tx = db.begin().await.unwrap();
        let n = erase_member(&*tx, &alice, t(10)).await.unwrap();
        tx.commit().await.unwrap();
        let want = expected(&rows, Some("alice"));
        assert_eq!(members(&db).await, want);
        // Returned by 10 s (2), refused and lost by then (3 each).
        assert_eq!(n, 8);
        for (r, (_, m)) in rows.iter().zip(&want) {
            if m == ERASED_MEMBER {
                assert!(r.status != status::PENDING && r.status != status::ACTIVE);
            }
        }
    }

    #[tokio::test]
    async fn the_sweep_anonymises_everyones_finished_rentals_once() {
        let (db, rows) = loans().await;
        assert_eq!(sweep(&db, t(10)).await.unwrap(), 16);
        assert_eq!(members(&db).await, expected(&rows, None));
        assert_eq!(sweep(&db, t(10)).await.unwrap(), 0);
    }
}
