//! ReturnRecorded from the lending desk confirms a return here: a PENDING
//! confirmation becomes CONFIRMED, and a rental the desk took back while this
//! service missed the answer becomes RETURNED. ItemLost closes the rental of
//! a copy lost on loan (R13).

use async_trait::async_trait;
use rentalbook_plumbing::consumer::EventHandler;
use rentalbook_plumbing::db::WriteTx;
use rentalbook_plumbing::time;
use rentalbook_proto::events::v1::{Envelope, envelope::Body};

use crate::lending::Lending;

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
