//! BooksMerged on the desk's side: the merged books' items, reservations
//! and loans become the kept book's, their hold queues one queue (each in
//! its order, interleaved by when members joined), a member's second open
//! reservation for the book is cancelled, and free copies go to the queue.
//!
//! The kept book's book_seq jumps past every merged book's, so each
//! reservation's later events carry a higher book_seq than any it had
//! before, and consumers keep applying them in order.

use rentalbook_plumbing::db::WriteTx;
use rentalbook_plumbing::{merged, outbox, time};
use rentalbook_proto::events::v1::{
    BooksMerged, QueuePlace, QueuesMerged, ReservationCancelled, envelope::Body,
};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, IntoActiveModel, ModelTrait, QueryFilter,
    QueryOrder, Set,
};

use super::{Book, Desk, PRODUCER, open, proto_status, set_status};
use crate::domain::{self, OpenHold};
use crate::items;
use crate::store::{book_stock, items as stored_items, reservations, status};

impl Desk {
    /// Applies a BooksMerged in the consumer's transaction, which holds
    /// every book's lock.
    pub async fn merge_books(&self, tx: &mut WriteTx, e: &BooksMerged) -> Result<(), DbErr> {
        let now = time::now();
        let into = e.into_book_id.as_str();
        let mut others = Vec::new();
        for id in e.merged_book_ids.iter().filter(|id| id.as_str() != into) {
            if let Some(row) = book_stock::Entity::find_by_id(id.clone())
                .one(&**tx)
                .await?
            {
                others.push(row);
            }
        }
        merged::record(&**tx, into, &e.merged_book_ids).await?;
        // The kept book as the desk knows it; made now if its registration
        // has not been applied (it always comes first on the bus).
        let kept = match book_stock::Entity::find_by_id(into.to_owned())
            .one(&**tx)
            .await?
        {
            Some(kept) => kept,
            None => {
                book_stock::ActiveModel {
                    book_id: Set(into.to_owned()),
                    total_copies: Set(0),
                    registered_copies: Set(0),
                    book_seq: Set(0),
                }
                .insert(&**tx)
                .await?
            }
        };
        if others.is_empty() {
            // Applied before, or the merged books had nothing at the desk.
            items::register(&**tx, into, &e.items, now).await?;
            return Ok(());
        }
        let all_ids: Vec<String> = std::iter::once(kept.book_id.clone())
            .chain(others.iter().map(|b| b.book_id.clone()))
            .collect();

        // A member's second open reservation for the book is cancelled.
        let open_rows = reservations::Entity::find()
            .filter(reservations::Column::BookId.is_in(all_ids.clone()))
            .filter(open())
            .all(&**tx)
            .await?;
        let holds: Vec<OpenHold> = open_rows
            .iter()
            .map(|r| OpenHold {
                reservation_id: r.reservation_id.clone(),
                member_id: r.member_id.clone(),
                ready: r.status == status::READY,
                placed_at: r.created_at,
            })
            .collect();
        let second = domain::duplicate_holds(&holds);
        let mut cancelled = Vec::with_capacity(second.len());
        for r in open_rows
            .into_iter()
            .filter(|r| second.contains(&r.reservation_id))
        {
            let previous = r.status.clone();
            items::release(&**tx, &r.reservation_id, now).await?;
            cancelled.push((
                set_status(tx, r, status::CANCELLED, now, |_| {}).await?,
                previous,
            ));
        }

        // Each book's queue in its order, then the merged one.
        let mut queues = Vec::with_capacity(all_ids.len());
        for id in &all_ids {
            queues.push(
                reservations::Entity::find()
                    .filter(reservations::Column::BookId.eq(id))
                    .filter(reservations::Column::Status.eq(status::WAITING))
                    .order_by_asc(reservations::Column::QueueSeq)
                    .all(&**tx)
                    .await?,
            );
        }
        let queue = domain::merge_queues(queues, |r| (r.created_at, r.reservation_id.clone()));

        // Everything of the merged books is the kept book's now.
        let merged_ids: Vec<String> = others.iter().map(|b| b.book_id.clone()).collect();
        reservations::Entity::update_many()
            .col_expr(reservations::Column::BookId, Expr::val(into))
            .filter(reservations::Column::BookId.is_in(merged_ids.clone()))
            .exec(&**tx)
            .await?;
        items::register(&**tx, into, &e.items, now).await?;
        stored_items::Entity::update_many()
            .col_expr(stored_items::Column::BookId, Expr::val(into))
            .filter(stored_items::Column::BookId.is_in(merged_ids.clone()))
            .exec(&**tx)
            .await?;
        let top = others
            .iter()
            .map(|b| b.book_seq)
            .fold(kept.book_seq, i64::max);
        let mut waiting = Vec::with_capacity(queue.len());
        for (place, r) in (top + 1..).zip(queue) {
            waiting.push(QueuePlace {
                reservation_id: r.reservation_id.clone(),
                queue_seq: place,
            });
            let mut am = r.into_active_model();
            am.queue_seq = Set(place);
            am.update(&**tx).await?;
        }
        let registered: i32 = others.iter().map(|b| b.registered_copies).sum();
        let circulating: i32 = others.iter().map(|b| b.total_copies).sum();
        let mut row = kept.clone().into_active_model();
        row.registered_copies = Set(e.total_copies.max(kept.registered_copies + registered));
        row.total_copies = Set(kept.total_copies + circulating);
        row.book_seq = Set(top + i64::try_from(waiting.len()).unwrap_or(0));
        row.update(&**tx).await?;
        for other in others {
            other.delete(&**tx).await?;
        }

        let mut book = Book::load(tx, into)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("book_stock {into}")))?;
        for (r, previous) in cancelled {
            let availability = book.advance(tx).await?;
            outbox::stage(
                tx,
                PRODUCER,
                now,
                Body::ReservationCancelled(ReservationCancelled {
                    reservation_id: r.reservation_id,
                    book_id: into.to_owned(),
                    member_id: r.member_id,
                    previous_status: proto_status(&previous) as i32,
                    cancelled_by: e.merged_by.clone(),
                    availability: Some(availability),
                }),
            )
            .await?;
        }
        let availability = book.advance(tx).await?;
        outbox::stage(
            tx,
            PRODUCER,
            now,
            Body::QueuesMerged(QueuesMerged {
                into_book_id: into.to_owned(),
                merged_book_ids: merged_ids,
                waiting,
                availability: Some(availability),
            }),
        )
        .await?;
        self.give_items_to_older_ones(tx, &mut book, now).await?;
        self.promote(tx, &mut book, now, None).await
    }
}
