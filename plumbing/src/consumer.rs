//! Durable consumers that apply each event exactly once (SPEC §4 E2): the
//! event id goes into the inbox in the same transaction as the effect, so a
//! redelivered event changes nothing. A failing event is retried with backoff
//! a bounded number of times, then moved to the dead-letter stream. Events that
//! are waiting when the consumer looks are applied in one transaction and
//! acknowledged together; a batch that fails is applied again event by event.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use rentalbook_proto::events::v1::Envelope;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
use tokio_util::sync::CancellationToken;

use crate::bus::{ConsumerSpec, Delivery, EventBus, Subscription};
use crate::db::{Db, WriteTx};
use crate::schema::inbox;

#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Applies one event inside the transaction that records it as processed.
    /// An error rolls both back and the event is delivered again.
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()>;

    /// Runs once the effect of a newly applied event has committed (to tell
    /// watchers, say). Not run for duplicates.
    async fn after_commit(&self, _event: &Envelope) {}
}

/// Events a consumer takes at once when they are waiting: applied in one
/// transaction and acknowledged together.
const MAX_BATCH: usize = 64;

/// How an event was settled.
enum Settled {
    /// Applied (or a duplicate, or dead-lettered) and acknowledged.
    Done,
    /// Handed back to come again later; those behind it wait for it.
    Later,
}

pub struct Consumer {
    db: Db,
    bus: Arc<dyn EventBus>,
    spec: ConsumerSpec,
    handler: Arc<dyn EventHandler>,
}

impl Consumer {
    pub fn new(
        db: Db,
        bus: Arc<dyn EventBus>,
        spec: ConsumerSpec,
        handler: Arc<dyn EventHandler>,
    ) -> Self {
        Self {
            db,
            bus,
            spec,
            handler,
        }
    }

    /// Consumes until `shutdown`, reopening the subscription whenever the bus
    /// goes away.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = crate::time::Backoff::new(Duration::from_millis(100));
        while !shutdown.is_cancelled() {
            let mut sub = match tokio::select! {
                s = self.bus.subscribe(&self.spec) => s,
                _ = shutdown.cancelled() => break,
            } {
                Ok(sub) => {
                    backoff.reset();
                    sub
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(consumer = %self.spec.durable, error = format!("{e:#}"), retry_in = ?delay, "cannot subscribe");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    n = sub.next_batch(MAX_BATCH) => n,
                    _ = shutdown.cancelled() => return,
                };
                match next {
                    Ok(Some(batch)) => self.settle(sub.as_mut(), batch).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(consumer = %self.spec.durable, error = format!("{e:#}"), "event stream interrupted");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
            }
        }
    }

    /// Applies a batch in one transaction; if that fails, event by event,
    /// so that only a failing event is retried or dead-lettered. Events
    /// behind one that will come again are handed back too, so none is
    /// acknowledged before an earlier one.
    async fn settle(&self, sub: &mut dyn Subscription, batch: Vec<Box<dyn Delivery>>) {
        if batch.len() > 1 {
            match self.apply_batch(&batch).await {
                Ok(()) => {
                    if let Err(e) = sub.ack_batch(&batch).await {
                        tracing::warn!(consumer = %self.spec.durable, error = format!("{e:#}"), "could not acknowledge a batch; its events will come again");
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(consumer = %self.spec.durable, events = batch.len(), error = format!("{e:#}"), "a batch was not applied; applying its events one by one");
                }
            }
        }
        let mut rest = batch.iter();
        for delivery in rest.by_ref() {
            match self.process(delivery.as_ref()).await {
                Ok(Settled::Done) => {}
                Ok(Settled::Later) => break,
                Err(e) => {
                    tracing::warn!(consumer = %self.spec.durable, error = format!("{e:#}"), "could not settle an event; it will come again");
                    break;
                }
            }
        }
        for delivery in rest {
            if let Err(e) = delivery.nak(Duration::ZERO).await {
                tracing::debug!(consumer = %self.spec.durable, error = format!("{e:#}"), "could not hand an event back; it comes again after the ack wait");
            }
        }
    }

    /// Every event of the batch, applied once, in one transaction. Fails
    /// (changing nothing) if any of them is not an event or is not applied.
    async fn apply_batch(&self, batch: &[Box<dyn Delivery>]) -> anyhow::Result<()> {
        let mut events = Vec::with_capacity(batch.len());
        for delivery in batch {
            let envelope = envelope_of(delivery.as_ref())
                .ok_or_else(|| anyhow::anyhow!("not an event envelope"))?;
            events.push((envelope, delivery.as_ref()));
        }
        let (applied, duplicates) = self.apply_all(&events).await?;
        let consumer = self.spec.durable.clone();
        metrics::counter!("events_consumed_total", "consumer" => consumer.clone(), "outcome" => "applied").increment(applied);
        metrics::counter!("events_consumed_total", "consumer" => consumer, "outcome" => "duplicate").increment(duplicates);
        Ok(())
    }

    /// Applies the events not in the inbox yet, each once, in one
    /// transaction with their inbox rows, then runs `after_commit` for them.
    /// Returns how many were applied and how many were duplicates.
    async fn apply_all(&self, events: &[(Envelope, &dyn Delivery)]) -> anyhow::Result<(u64, u64)> {
        let mut tx = self.db.begin().await?;
        let mut seen: HashSet<String> = inbox::Entity::find()
            .filter(inbox::Column::EventId.is_in(events.iter().map(|(e, _)| e.event_id.clone())))
            .all(&*tx)
            .await?
            .into_iter()
            .map(|row| row.event_id)
            .collect();
        // A batch may hold an event twice (a redelivery behind the first).
        let fresh: Vec<&(Envelope, &dyn Delivery)> = events
            .iter()
            .filter(|(e, _)| seen.insert(e.event_id.clone()))
            .collect();
        let duplicates = (events.len() - fresh.len()) as u64;
        if fresh.is_empty() {
            tx.rollback().await?;
            return Ok((0, duplicates));
        }
        let now = crate::time::now();
        inbox::Entity::insert_many(fresh.iter().map(|(e, _)| inbox::ActiveModel {
            event_id: Set(e.event_id.clone()),
            consumer: Set(self.spec.durable.clone()),
            processed_at: Set(now),
        }))
        .exec(&*tx)
        .await?;
        for (envelope, delivery) in &fresh {
            let span = self.span(*delivery, envelope);
            tracing::Instrument::instrument(self.handler.apply(&mut tx, envelope), span).await?;
        }
        tx.commit().await?;
        for (envelope, _) in &fresh {
            self.handler.after_commit(envelope).await;
        }
        Ok((fresh.len() as u64, duplicates))
    }

    fn span(&self, delivery: &dyn Delivery, envelope: &Envelope) -> tracing::Span {
        let span = tracing::info_span!("event", subject = delivery.subject(), event_id = %envelope.event_id, consumer = %self.spec.durable);
        crate::propagation::set_parent(&span, delivery.traceparent().as_deref());
        span
    }

    async fn process(&self, delivery: &dyn Delivery) -> anyhow::Result<Settled> {
        let consumer = self.spec.durable.clone();
        let Some(envelope) = envelope_of(delivery) else {
            metrics::counter!("events_consumed_total", "consumer" => consumer, "outcome" => "dead_letter").increment(1);
            tracing::error!(
                subject = delivery.subject(),
                "not an event envelope; moved to the dead-letter stream"
            );
            return delivery
                .dead_letter("not a rentalbook event envelope")
                .await
                .map(|()| Settled::Done);
        };
        let event_id = envelope.event_id.clone();
        match self.apply_all(&[(envelope, delivery)]).await {
            Ok((applied, _)) => {
                let outcome = if applied > 0 { "applied" } else { "duplicate" };
                metrics::counter!("events_consumed_total", "consumer" => consumer, "outcome" => outcome).increment(1);
                delivery.ack().await.map(|()| Settled::Done)
            }
            Err(e) if delivery.delivered() >= self.spec.max_deliver => {
                metrics::counter!("events_consumed_total", "consumer" => consumer, "outcome" => "dead_letter").increment(1);
                tracing::error!(event_id = %event_id, error = format!("{e:#}"), "event failed every delivery; moved to the dead-letter stream");
                delivery
                    .dead_letter(&format!("{e:#}"))
                    .await
                    .map(|()| Settled::Done)
            }
            Err(e) => {
                metrics::counter!("events_consumed_total", "consumer" => consumer, "outcome" => "retry").increment(1);
                let delay =
                    Duration::from_millis(100 * 2u64.pow(delivery.delivered().clamp(0, 7) as u32));
                tracing::warn!(event_id = %event_id, error = format!("{e:#}"), retry_in = ?delay, "event not applied");
                delivery.nak(delay).await.map(|()| Settled::Later)
            }
        }
    }
}

/// The delivery's event; `None` when it is not a rentalbook event envelope.
fn envelope_of(delivery: &dyn Delivery) -> Option<Envelope> {
    Envelope::decode(delivery.payload())
        .ok()
        .filter(|e| !e.event_id.is_empty() && e.body.is_some())
}
