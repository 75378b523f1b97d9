//! Durable consumers that apply each event exactly once (SPEC §4 E2): the
//! event id goes into the inbox in the same transaction as the effect, so a
//! redelivered event changes nothing. A failing event is retried with backoff
//! a bounded number of times, then moved to the dead-letter stream.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use rentalbook_proto::events::v1::Envelope;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use tokio_util::sync::CancellationToken;

use crate::bus::{ConsumerSpec, Delivery, EventBus};
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
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let mut sub = match tokio::select! {
                s = self.bus.subscribe(&self.spec) => s,
                _ = shutdown.cancelled() => break,
            } {
                Ok(sub) => {
                    backoff = Duration::from_millis(100);
                    sub
                }
                Err(e) => {
                    tracing::warn!(consumer = %self.spec.durable, error = format!("{e:#}"), retry_in = ?backoff, "cannot subscribe");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    n = sub.next() => n,
                    _ = shutdown.cancelled() => return,
                };
                match next {
                    Ok(Some(delivery)) => {
                        if let Err(e) = self.process(delivery.as_ref()).await {
                            tracing::warn!(consumer = %self.spec.durable, error = format!("{e:#}"), "could not settle an event; it will come again");
                        }
                    }
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

    async fn process(&self, delivery: &dyn Delivery) -> anyhow::Result<()> {
        let consumer = self.spec.durable.clone();
        let envelope = match Envelope::decode(delivery.payload()) {
            Ok(e) if !e.event_id.is_empty() && e.body.is_some() => e,
            _ => {
                metrics::counter!("events_consumed_total", "consumer" => consumer, "outcome" => "dead_letter").increment(1);
                tracing::error!(
                    subject = delivery.subject(),
                    "not an event envelope; moved to the dead-letter stream"
                );
                return delivery
                    .dead_letter("not a rentalbook event envelope")
                    .await;
            }
        };
        let span = tracing::info_span!("event", subject = delivery.subject(), event_id = %envelope.event_id, consumer = %self.spec.durable);
        crate::propagation::set_parent(&span, delivery.traceparent().as_deref());
        match tracing::Instrument::instrument(self.apply_once(&envelope), span).await {
            Ok(outcome) => {
                metrics::counter!("events_consumed_total", "consumer" => consumer, "outcome" => outcome).increment(1);
                delivery.ack().await
            }
            Err(e) if delivery.delivered() >= self.spec.max_deliver => {
                metrics::counter!("events_consumed_total", "consumer" => consumer, "outcome" => "dead_letter").increment(1);
                tracing::error!(event_id = %envelope.event_id, error = format!("{e:#}"), "event failed every delivery; moved to the dead-letter stream");
                delivery.dead_letter(&format!("{e:#}")).await
            }
            Err(e) => {
                metrics::counter!("events_consumed_total", "consumer" => consumer, "outcome" => "retry").increment(1);
                let delay =
                    Duration::from_millis(100 * 2u64.pow(delivery.delivered().clamp(0, 7) as u32));
                tracing::warn!(event_id = %envelope.event_id, error = format!("{e:#}"), retry_in = ?delay, "event not applied");
                delivery.nak(delay).await
            }
        }
    }

    async fn apply_once(&self, envelope: &Envelope) -> anyhow::Result<&'static str> {
        let mut tx = self.db.begin().await?;
        let seen = inbox::Entity::find_by_id(envelope.event_id.clone())
            .one(&*tx)
            .await?
            .is_some();
        if seen {
            tx.rollback().await?;
            return Ok("duplicate");
        }
        inbox::ActiveModel {
            event_id: Set(envelope.event_id.clone()),
            consumer: Set(self.spec.durable.clone()),
            processed_at: Set(crate::time::now()),
        }
        .insert(&*tx)
        .await?;
        self.handler.apply(&mut tx, envelope).await?;
        tx.commit().await?;
        self.handler.after_commit(envelope).await;
        Ok("applied")
    }
}
