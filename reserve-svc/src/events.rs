//! What the desk learns from events: copy totals from the catalogue, and
//! returns whose synchronous RecordReturn failed (R8's fallback).

use async_trait::async_trait;
use rentalbook_plumbing::consumer::{EventHandler, Poison};
use rentalbook_plumbing::db::WriteTx;
use rentalbook_plumbing::error::ServiceError;
use rentalbook_plumbing::ids::Id;
use rentalbook_proto::events::v1::{Envelope, envelope::Body};

use crate::desk::Desk;

/// BookRegistered, CopiesAdded, ItemsRegistered and BooksMerged.
pub struct Catalogue(pub Desk);

#[async_trait]
impl EventHandler for Catalogue {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        match &event.body {
            Some(Body::BookRegistered(e)) => {
                self.0
                    .catalogue_copies(tx, &e.book_id, Some(e.total_copies), &e.items)
                    .await?
            }
            Some(Body::CopiesAdded(e)) => {
                self.0
                    .catalogue_copies(tx, &e.book_id, Some(e.total_copies), &e.items)
                    .await?
            }
            Some(Body::ItemsRegistered(e)) => {
                self.0
                    .catalogue_copies(tx, &e.book_id, None, &e.items)
                    .await?
            }
            Some(Body::BooksMerged(e)) => self.0.merge_books(tx, e).await?,
            _ => {}
        }
        Ok(())
    }

    fn locks(&self, event: &Envelope) -> Vec<(&'static str, String)> {
        match &event.body {
            Some(Body::BookRegistered(e)) => vec![("book", e.book_id.clone())],
            Some(Body::CopiesAdded(e)) => vec![("book", e.book_id.clone())],
            Some(Body::ItemsRegistered(e)) => vec![("book", e.book_id.clone())],
            Some(Body::BooksMerged(e)) => std::iter::once(&e.into_book_id)
                .chain(&e.merged_book_ids)
                .map(|id| ("book", id.clone()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// BookReturned: records the return unless the RPC already did.
pub struct Returns(pub Desk);

#[async_trait]
impl EventHandler for Returns {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        let Some(Body::BookReturned(e)) = &event.body else {
            return Ok(());
        };
        let Some(rental_id) = Id::parse(&e.rental_id) else {
            return Err(Poison::error(format!(
                "BookReturned with a malformed rental_id `{}`",
                e.rental_id
            )));
        };
        match self.0.record_return_in(tx, rental_id).await {
            Ok(_) => Ok(()),
            Err(ServiceError::Status(s)) if s.code() == tonic::Code::NotFound => {
                tracing::warn!(rental_id = %rental_id, "returned rental has no fulfilled reservation; nothing to record");
                Ok(())
            }
            // The desk's rules refuse this return: trying again cannot help.
            Err(ServiceError::Status(s)) => Err(Poison::error(s.message().to_owned())),
            Err(ServiceError::Db(e)) => Err(e.into()),
            Err(ServiceError::Other(e)) => Err(e),
        }
    }

    fn locks(&self, event: &Envelope) -> Vec<(&'static str, String)> {
        match &event.body {
            Some(Body::BookReturned(e)) => vec![("book", e.book_id.clone())],
            _ => Vec::new(),
        }
    }
}
