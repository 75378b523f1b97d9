//! The events notice-svc learns from: a hold ready or expired is told at
//! once; a loan is kept (rented, renewed, closed) for the clock to tell of
//! it when due soon and overdue; titles name the books; HistoryErased
//! forgets the member's delivered notices and closed loans.

use async_trait::async_trait;
use rentalbook_plumbing::consumer::EventHandler;
use rentalbook_plumbing::db::WriteTx;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::{Availability, Envelope, envelope::Body};
use rentalbook_proto::notice::v1::NoticeKind;
use rentalbook_proto::reserve::v1::ReservationStatus;
use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, Set,
};

use crate::domain::{self, LoanNotices};
use crate::mailer::state;
use crate::notify::{Notices, Occasion};
use crate::store::{loans, notices, titles};

pub struct Events(pub Notices);

fn seq(a: &Option<Availability>) -> i64 {
    a.as_ref().map_or(0, |a| a.book_seq)
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<Timestamp> {
    t.as_ref().and_then(time::from_proto)
}

#[async_trait]
impl EventHandler for Events {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        let Some(body) = &event.body else {
            return Ok(());
        };
        let at = ts(&event.occurred_at).unwrap_or_else(time::now);
        match body {
            Body::BookRegistered(e) => set_title(tx, &e.book_id, &e.title, 0).await?,
            Body::BookUpdated(e) => set_title(tx, &e.book_id, &e.title, e.revision).await?,
            Body::ReservationPlaced(e) if e.status == ReservationStatus::Ready as i32 => {
                self.hold_ready(
                    tx,
                    &e.reservation_id,
                    &e.member_id,
                    &e.book_id,
                    &e.barcode,
                    ts(&e.pickup_deadline),
                    seq(&e.availability),
                    at,
                )
                .await?;
            }
            Body::ReservationReady(e) => {
                self.hold_ready(
                    tx,
                    &e.reservation_id,
                    &e.member_id,
                    &e.book_id,
                    &e.barcode,
                    ts(&e.pickup_deadline),
                    seq(&e.availability),
                    at,
                )
                .await?;
            }
            Body::ReservationExpired(e) => {
                // The deadline that passed, as the hold-ready notice said.
                let deadline = notices::Entity::find()
                    .filter(notices::Column::ReservationId.eq(&e.reservation_id))
                    .filter(notices::Column::Kind.eq(domain::kind_name(NoticeKind::HoldReady)))
                    .order_by_desc(notices::Column::CreatedAt)
                    .one(&**tx)
                    .await?
                    .and_then(|n| n.deadline)
                    .unwrap_or(at);
                self.0
                    .notify(
                        tx,
                        Occasion {
                            key: domain::hold_expired_key(&e.reservation_id),
                            kind: NoticeKind::HoldExpired,
                            member_id: &e.member_id,
                            book_id: &e.book_id,
                            barcode: "",
                            deadline: Some(deadline),
                            reservation_id: &e.reservation_id,
                            rental_id: "",
                            at,
                        },
                    )
                    .await?;
            }
            Body::BookRented(e) => {
                let Some(due_at) = ts(&e.due_at) else {
                    return Ok(());
                };
                loans::Entity::insert(loans::ActiveModel {
                    rental_id: Set(e.rental_id.clone()),
                    member_id: Set(e.member_id.clone()),
                    book_id: Set(e.book_id.clone()),
                    reservation_id: Set(e.reservation_id.clone()),
                    barcode: Set(e.barcode.clone()),
                    due_at: Set(due_at),
                    known_at: Set(at),
                    due_soon_done: Set(false),
                    overdue_done: Set(0),
                    next_at: Set(Some(at)),
                    closed_at: Set(None),
                })
                .on_conflict(
                    OnConflict::column(loans::Column::RentalId)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&**tx)
                .await?;
            }
            Body::LoanRenewed(e) => {
                let Some(due_at) = ts(&e.due_at) else {
                    return Ok(());
                };
                if let Some(row) = loans::Entity::find_by_id(e.rental_id.clone())
                    .one(&**tx)
                    .await?
                    .filter(|l| l.closed_at.is_none())
                {
                    let now = notices_of(&row);
                    let after = domain::renewed(now, due_at, at);
                    if after != now {
                        let mut active = row.into_active_model();
                        active.due_at = Set(after.due_at);
                        active.known_at = Set(after.known_at);
                        active.due_soon_done = Set(after.due_soon_done);
                        active.overdue_done = Set(after.overdue_done);
                        active.next_at = Set(Some(at));
                        active.update(&**tx).await?;
                    }
                }
            }
            Body::BookReturned(e) => close(tx, &e.rental_id, &e.member_id, at).await?,
            Body::RentalLost(e) => close(tx, &e.rental_id, &e.member_id, at).await?,
            Body::HistoryErased(e) => {
                let up_to = ts(&e.up_to).unwrap_or(at);
                erase(tx, Some(&e.member_id), up_to).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Every event comes here; most of the desk's (a reservation placed
    /// waiting, cancelled, fulfilled, a return recorded) tell nobody
    /// anything. The events [`Events::apply`] acts on, and only those.
    fn ignores(&self, event: &Envelope) -> bool {
        !match &event.body {
            Some(Body::ReservationPlaced(e)) => e.status == ReservationStatus::Ready as i32,
            Some(
                Body::BookRegistered(_)
                | Body::BookUpdated(_)
                | Body::ReservationReady(_)
                | Body::ReservationExpired(_)
                | Body::BookRented(_)
                | Body::LoanRenewed(_)
                | Body::BookReturned(_)
                | Body::RentalLost(_)
                | Body::HistoryErased(_),
            ) => true,
            _ => false,
        }
    }

    fn locks(&self, event: &Envelope) -> Vec<(&'static str, String)> {
        match &event.body {
            Some(Body::BookRented(e)) => vec![("loan", e.rental_id.clone())],
            Some(Body::LoanRenewed(e)) => vec![("loan", e.rental_id.clone())],
            Some(Body::BookReturned(e)) => vec![("loan", e.rental_id.clone())],
            Some(Body::RentalLost(e)) => vec![("loan", e.rental_id.clone())],
            _ => Vec::new(),
        }
    }

    async fn after_commit(&self, event: &Envelope) {
        if matches!(
            event.body,
            Some(
                Body::ReservationPlaced(_)
                    | Body::ReservationReady(_)
                    | Body::ReservationExpired(_)
            )
        ) {
            self.0.mail_waiting.notify_one();
        }
    }
}

impl Events {
    #[allow(clippy::too_many_arguments)]
    async fn hold_ready(
        &self,
        tx: &mut WriteTx,
        reservation_id: &str,
        member_id: &str,
        book_id: &str,
        barcode: &str,
        deadline: Option<Timestamp>,
        book_seq: i64,
        at: Timestamp,
    ) -> anyhow::Result<()> {
        self.0
            .notify(
                tx,
                Occasion {
                    key: domain::hold_ready_key(reservation_id, book_seq),
                    kind: NoticeKind::HoldReady,
                    member_id,
                    book_id,
                    barcode,
                    deadline,
                    reservation_id,
                    rental_id: "",
                    at,
                },
            )
            .await?;
        Ok(())
    }
}

pub fn notices_of(row: &loans::Model) -> LoanNotices {
    LoanNotices {
        due_at: row.due_at,
        known_at: row.known_at,
        due_soon_done: row.due_soon_done,
        overdue_done: row.overdue_done,
    }
}

async fn set_title(tx: &WriteTx, book_id: &str, title: &str, revision: i64) -> anyhow::Result<()> {
    titles::Entity::insert(titles::ActiveModel {
        book_id: Set(book_id.to_owned()),
        title: Set(title.to_owned()),
        revision: Set(revision),
    })
    .on_conflict(
        OnConflict::column(titles::Column::BookId)
            .update_columns([titles::Column::Title, titles::Column::Revision])
            .action_and_where(titles::Column::Revision.lt(revision))
            .to_owned(),
    )
    .exec_without_returning(&**tx)
    .await?;
    Ok(())
}

/// A loan returned or lost: no more notices. Closed even when its
/// BookRented is yet to come, so that it never opens.
async fn close(
    tx: &WriteTx,
    rental_id: &str,
    member_id: &str,
    at: Timestamp,
) -> anyhow::Result<()> {
    loans::Entity::insert(loans::ActiveModel {
        rental_id: Set(rental_id.to_owned()),
        member_id: Set(member_id.to_owned()),
        book_id: Set(String::new()),
        reservation_id: Set(String::new()),
        barcode: Set(String::new()),
        due_at: Set(at),
        known_at: Set(at),
        due_soon_done: Set(true),
        overdue_done: Set(0),
        next_at: Set(None),
        closed_at: Set(Some(at)),
    })
    .on_conflict(
        OnConflict::column(loans::Column::RentalId)
            .update_columns([loans::Column::NextAt, loans::Column::ClosedAt])
            .to_owned(),
    )
    .exec_without_returning(&**tx)
    .await?;
    Ok(())
}

/// Forgets the delivered notices made at or before `up_to` and the loans
/// closed by then, of one member (HistoryErased) or of everyone (the
/// retention sweep). Notices still to be e-mailed stay until they are, and
/// so do those about a loan still out.
pub async fn erase(tx: &WriteTx, member_id: Option<&str>, up_to: Timestamp) -> anyhow::Result<u64> {
    let open_loans = Query::select()
        .column(loans::Column::RentalId)
        .from(loans::Entity)
        .and_where(loans::Column::ClosedAt.is_null())
        .to_owned();
    let mut gone = notices::Entity::delete_many()
        .filter(notices::Column::CreatedAt.lte(up_to))
        .filter(notices::Column::EmailState.is_in([state::NONE, state::SENT, state::FAILED]))
        .filter(notices::Column::RentalId.not_in_subquery(open_loans));
    let mut closed = loans::Entity::delete_many().filter(loans::Column::ClosedAt.lte(up_to));
    if let Some(member) = member_id {
        gone = gone.filter(notices::Column::MemberId.eq(member));
        closed = closed.filter(loans::Column::MemberId.eq(member));
    }
    let n = gone.exec(&**tx).await?.rows_affected;
    closed.exec(&**tx).await?;
    Ok(n)
}
