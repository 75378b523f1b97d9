//! The status projection: the lending desk's availability snapshots, applied
//! only when newer than the last one (per-book book_seq), so redelivery and
//! reordering never move a count backwards.

use std::sync::Arc;

use async_trait::async_trait;
use rentalbook_plumbing::consumer::EventHandler;
use rentalbook_plumbing::db::WriteTx;
use rentalbook_proto::events::v1::{Availability, Envelope, envelope::Body};
use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};

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
        let Some(book) = books::Entity::find_by_id(book_id.to_owned())
            .one(&**tx)
            .await?
        else {
            // The lending desk only knows books this service registered.
            tracing::warn!(book_id, "availability for an unknown book ignored");
            return Ok(());
        };
        if a.book_seq <= book.availability_seq {
            return Ok(());
        }
        let mut book = book.into_active_model();
        book.circulating_copies = Set(a.total);
        book.held_copies = Set(a.held);
        book.on_loan_copies = Set(a.on_loan);
        book.waiting = Set(a.waiting);
        book.availability_seq = Set(a.book_seq);
        book.update(&**tx).await?;
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
