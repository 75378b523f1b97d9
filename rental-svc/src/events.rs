//! ReturnRecorded from the lending desk confirms a return here: a PENDING
//! confirmation becomes CONFIRMED, and a rental the desk took back while this
//! service missed the answer becomes RETURNED. ItemLost closes the rental of
//! a copy lost on loan (R13). BooksMerged moves the merged books' rentals
//! to the book they were merged into.

use async_trait::async_trait;
use rentalbook_plumbing::consumer::EventHandler;
use rentalbook_plumbing::db::WriteTx;
use rentalbook_plumbing::{merged, time};
use rentalbook_proto::events::v1::{Envelope, envelope::Body};

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::lending::Lending;
use crate::store::rentals;

pub struct ReturnConfirmations(pub Lending);

#[async_trait]
impl EventHandler for ReturnConfirmations {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        let Some(Body::ReturnRecorded(e)) = &event.body else {
            return Ok(());
        };
        let at = event
            .occurred_at
            .as_ref()
            .and_then(time::from_proto)
            .unwrap_or_else(time::now);
        self.0.mark_returned(tx, &e.rental_id, at, true).await?;
        Ok(())
    }

    fn locks(&self, event: &Envelope) -> Vec<(&'static str, String)> {
        match &event.body {
            Some(Body::ReturnRecorded(e)) => vec![("rental", e.rental_id.clone())],
            _ => Vec::new(),
        }
    }
}

/// ItemLost: the desk marked a copy lost; its loan, if it had one, ends.
pub struct Losses(pub Lending);

#[async_trait]
impl EventHandler for Losses {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        let Some(Body::ItemLost(e)) = &event.body else {
            return Ok(());
        };
        if e.rental_id.is_empty() {
            return Ok(());
        }
        let at = event
            .occurred_at
            .as_ref()
            .and_then(time::from_proto)
            .unwrap_or_else(time::now);
        self.0.lost(tx, &e.rental_id, at).await?;
        Ok(())
    }

    fn locks(&self, event: &Envelope) -> Vec<(&'static str, String)> {
        match &event.body {
            Some(Body::ItemLost(e)) if !e.rental_id.is_empty() => {
                vec![("rental", e.rental_id.clone())]
            }
            _ => Vec::new(),
        }
    }
}

/// BooksMerged: rentals of the merged books are the kept book's now.
pub struct Books;

#[async_trait]
impl EventHandler for Books {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        let Some(Body::BooksMerged(e)) = &event.body else {
            return Ok(());
        };
        merged::record(&**tx, &e.into_book_id, &e.merged_book_ids).await?;
        rentals::Entity::update_many()
            .col_expr(rentals::Column::BookId, Expr::val(&e.into_book_id))
            .filter(rentals::Column::BookId.is_in(e.merged_book_ids.clone()))
            .exec(&**tx)
            .await?;
        Ok(())
    }
}
