//! The status projection: the lending desk's availability snapshots, applied
//! only when newer than the last one (per-book book_seq), so redelivery and
//! reordering never move a count backwards.

use std::sync::Arc;

use async_trait::async_trait;
use rentalbook_plumbing::consumer::EventHandler;
use rentalbook_plumbing::db::WriteTx;
use rentalbook_proto::events::v1::{Availability, Envelope, envelope::Body};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::cache::BookCache;
use crate::store::books;

pub struct StatusProjection {
    /// Told of every book whose counts change.
    pub cache: Arc<BookCache>,
}

/// The book and its availability a desk event carries, if it carries them.
pub fn snapshot(body: &Body) -> Option<(&str, &Availability)> {
    let (book_id, availability) = match body {
        Body::ReservationPlaced(e) => (&e.book_id, &e.availability),
        Body::ReservationReady(e) => (&e.book_id, &e.availability),
        Body::ReservationCancelled(e) => (&e.book_id, &e.availability),
        Body::ReservationExpired(e) => (&e.book_id, &e.availability),
        Body::ReservationFulfilled(e) => (&e.book_id, &e.availability),
        Body::ReturnRecorded(e) => (&e.book_id, &e.availability),
        Body::ReservationRequeued(e) => (&e.book_id, &e.availability),
        Body::ReservationRetrapped(e) => (&e.book_id, &e.availability),
        Body::ItemWithdrawn(e) => (&e.book_id, &e.availability),
        Body::ItemLost(e) => (&e.book_id, &e.availability),
        Body::ItemFound(e) => (&e.book_id, &e.availability),
        _ => return None,
    };
    availability.as_ref().map(|a| (book_id.as_str(), a))
}

#[async_trait]
impl EventHandler for StatusProjection {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        let Some((book_id, a)) = event.body.as_ref().and_then(snapshot) else {
            return Ok(());
        };
        tx.lock("book", book_id).await?;
        // One statement: only a newer snapshot moves the counts. A book the
        // catalogue does not have (the desk only knows books registered
        // here) or an older snapshot changes no row.
        books::Entity::update_many()
            .col_expr(books::Column::CirculatingCopies, Expr::value(a.total))
            .col_expr(books::Column::HeldCopies, Expr::value(a.held))
            .col_expr(books::Column::OnLoanCopies, Expr::value(a.on_loan))
            .col_expr(books::Column::Waiting, Expr::value(a.waiting))
            .col_expr(books::Column::AvailabilitySeq, Expr::value(a.book_seq))
            .filter(books::Column::BookId.eq(book_id))
            .filter(books::Column::AvailabilitySeq.lt(a.book_seq))
            .exec(&**tx)
            .await?;
        Ok(())
    }

    fn locks(&self, event: &Envelope) -> Vec<(&'static str, String)> {
        event
            .body
            .as_ref()
            .and_then(snapshot)
            .map(|(book_id, _)| ("book", book_id.to_owned()))
            .into_iter()
            .collect()
    }

    async fn after_commit(&self, event: &Envelope) {
        if let Some((book_id, _)) = event.body.as_ref().and_then(snapshot) {
            self.cache.forget(book_id);
        }
    }
}
