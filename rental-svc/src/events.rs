//! ReturnRecorded from the lending desk confirms a return here: a PENDING
//! confirmation becomes CONFIRMED, and a rental the desk took back while this
//! service missed the answer becomes RETURNED.

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
