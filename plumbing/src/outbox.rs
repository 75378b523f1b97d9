//! The transactional outbox (SPEC §4 E1): a change and its events commit in
//! one local transaction; the relay publishes them in commit order and deletes
//! them once the bus has acknowledged them. Nothing is published for a change
//! that rolled back, and nothing acknowledged is lost while the bus is away.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rentalbook_proto::events::v1::{Envelope, envelope::Body};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use tokio_util::sync::CancellationToken;

use crate::bus::{EventBus, Outgoing};
use crate::db::{Db, WriteTx};
use crate::ids::Id;
use crate::schema::outbox;
use crate::time::{self, Timestamp};

/// Stages an event in the transaction of the change it describes.
pub async fn stage(
    tx: &mut WriteTx,
    producer: &str,
    at: Timestamp,
    body: Body,
) -> Result<String, DbErr> {
    let event_id = Id::new().to_string();
    let subject = body.subject_suffix().to_owned();
    let envelope = Envelope {
        event_id: event_id.clone(),
        occurred_at: Some(time::to_proto(at)),
        producer: producer.to_owned(),
        body: Some(body),
    };
    outbox::ActiveModel {
        event_id: Set(event_id.clone()),
        subject: Set(subject),
        payload: Set(envelope.encode_to_vec()),
        traceparent: Set(crate::propagation::current_traceparent()),
        created_at: Set(at),
        ..Default::default()
    }
    .insert(&**tx)
    .await?;
    tx.mark_staged();
    Ok(event_id)
}

/// Publishes staged events. One relay works at a time per database (an
/// advisory lock on PostgreSQL, the single process on SQLite), so events leave
/// in commit order; a replica's relay woken by its own commit waits for
/// another's to finish instead of sleeping until its next poll.
pub struct Relay {
    db: Db,
    bus: Arc<dyn EventBus>,
    service: &'static str,
    batch_size: u64,
}

impl Relay {
    pub fn new(db: Db, bus: Arc<dyn EventBus>, service: &'static str) -> Self {
        Self {
            db,
            bus,
            service,
            batch_size: 256,
        }
    }

    /// Runs until `shutdown`, then makes one last attempt to flush.
    pub async fn run(self, shutdown: CancellationToken) {
        let signal = self.db.outbox_signal();
        let mut backoff = crate::time::Backoff::new(Duration::from_millis(100));
        loop {
            match self.publish_batch().await {
                Ok(n) if n as u64 == self.batch_size => continue,
                Ok(_) => {
                    backoff.reset();
                    tokio::select! {
                        _ = signal.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(service = self.service, error = format!("{e:#}"), retry_in = ?delay, "outbox relay cannot publish");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        let flush = async {
            while let Ok(n) = self.publish_batch().await {
                if n == 0 {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), flush)
            .await
            .is_err()
        {
            tracing::warn!(
                service = self.service,
                "outbox not flushed at shutdown; it will be published on the next start"
            );
        }
    }

    /// Publishes up to one batch; returns how many events left.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        if self.db.backend() == DbBackend::Postgres {
            // The transaction only holds the relay lock: writers are not
            // blocked. While another replica's relay holds it, wait for it
            // rather than give up: that relay may have read the outbox before
            // this replica's commit, and this replica's signal is spent.
            let tx = self.db.begin().await?;
            tx.lock("outbox", "relay").await?;
            let n = self.publish_from(&*tx).await?;
            tx.commit().await?;
            Ok(n)
        } else {
            // SQLite has one writer: read and publish outside a transaction,
            // delete in a short one.
            self.publish_from(self.db.conn()).await
        }
    }

    async fn publish_from<C: ConnectionTrait>(&self, conn: &C) -> anyhow::Result<usize> {
        let rows = outbox::Entity::find()
            .order_by_asc(outbox::Column::Id)
            .limit(self.batch_size)
            .all(conn)
            .await?;
        if rows.is_empty() {
            metrics::gauge!("outbox_backlog", "service" => self.service).set(0.0);
            return Ok(0);
        }
        let events: Vec<Outgoing> = rows
            .iter()
            .map(|r| Outgoing {
                event_id: r.event_id.clone(),
                subject: r.subject.clone(),
                payload: r.payload.clone().into(),
                traceparent: r.traceparent.clone(),
            })
            .collect();
        self.bus.publish(&events).await?;
        // By id, not by range: on PostgreSQL a smaller id may commit later.
        let delete = outbox::Entity::delete_many()
            .filter(outbox::Column::Id.is_in(rows.iter().map(|r| r.id)));
        if self.db.backend() == DbBackend::Postgres {
            delete.exec(conn).await?;
        } else {
            // One statement is atomic: no transaction of its own needed.
            self.db.write_one(async |db| delete.exec(db).await).await?;
        }
        metrics::counter!("outbox_published_total", "service" => self.service)
            .increment(rows.len() as u64);
        // A short batch was everything committed when it was read; what
        // committed since signals the relay, whose next pass reads it. Only
        // a full batch leaves a backlog worth counting.
        let backlog = if rows.len() as u64 == self.batch_size {
            outbox::Entity::find().count(conn).await?
        } else {
            0
        };
        metrics::gauge!("outbox_backlog", "service" => self.service).set(backlog as f64);
        Ok(rows.len())
    }
}
