//! `--rebuild` with several replicas on one database and one durable consumer.
//!
//! A rebuild empties the read model and the inbox and resets the durable
//! consumer, so that the stream is applied again from its first event. Were
//! another replica to apply events meanwhile, the rebuild could wipe effects
//! whose events were already acknowledged on the new consumer, and they would
//! never come again. So the rebuild and the applying of events exclude each
//! other through one PostgreSQL advisory lock:
//!
//! - every transaction that applies events takes it shared (replicas apply
//!   side by side) before it changes the read model; the inbox rows it wrote
//!   before are not seen by the rebuild until it commits, after the rebuild;
//! - the rebuild takes it exclusively, waiting for the transactions that
//!   hold it to end, empties the read model and resets the consumer inside
//!   that transaction, and commits, which lets the others go on.
//!
//! The wait is a blocking one rather than [`Db::exclusive`]'s try: once the
//! rebuild asks, PostgreSQL queues every new shared request behind it, so a
//! steady flow of events cannot starve it. What another replica applies
//! after the rebuild commits lands in the empty model with its inbox row;
//! the replay brings those events again and the inbox drops them, and since
//! the projection gives the same journey in any order of its events
//! ([`crate::projection`]), the result is the replay's. Each replica started
//! with `--rebuild` rebuilds once, one after the other; starting one is
//! enough. SQLite serves one process, whose rebuild runs before its
//! consumer starts, so it needs no lock.

use rentalbook_plumbing::bus::EventBus;
use rentalbook_plumbing::db::{Db, WriteTx};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

use crate::store;

/// The advisory lock's name.
const LOCK: &str = "view-svc:rebuild";

/// Waits while a rebuild runs, and keeps one from starting until `tx` ends.
pub async fn wait_for_rebuild(tx: &WriteTx) -> Result<(), DbErr> {
    // Held until the transaction ends: once is enough for a whole batch.
    if !tx.first_time("rebuild-shared") {
        return Ok(());
    }
    advisory_lock(tx, "pg_advisory_xact_lock_shared").await
}

/// Empties the read model and resets the durable consumer, so that it
/// applies the stream again from the first event; while no replica applies
/// events. Nothing changes when it fails.
pub async fn rebuild(db: &Db, bus: &dyn EventBus, durable: &str) -> anyhow::Result<()> {
    let tx = db.begin().await?;
    advisory_lock(&tx, "pg_advisory_xact_lock").await?;
    store::clear(&*tx).await?;
    // The reset goes last: if the commit then fails, the consumer replays
    // onto an untouched model whose inbox drops every event.
    bus.reset(durable).await?;
    tx.commit().await?;
    Ok(())
}

async fn advisory_lock(tx: &WriteTx, function: &str) -> Result<(), DbErr> {
    if tx.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    tx.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("SELECT {function}(hashtextextended($1, 0))"),
        [LOCK.into()],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rentalbook_plumbing::bus::{ConsumerSpec, Outgoing};
    use rentalbook_plumbing::embedded_bus::EmbeddedBus;
    use sea_orm::{ActiveModelTrait, EntityTrait, PaginatorTrait, Set};

    use super::*;
    use crate::store::titles;

    fn spec() -> ConsumerSpec {
        ConsumerSpec {
            durable: "view-svc".into(),
            filter: String::new(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
        }
    }

    /// What the next delivery of a fresh subscription carries.
    async fn first_payload(bus: &EmbeddedBus) -> Vec<u8> {
        let mut sub = bus.subscribe(&spec()).await.unwrap();
        let delivery = sub.next().await.unwrap().expect("an event");
        delivery.payload().to_vec()
    }

    #[tokio::test]
    async fn a_rebuild_empties_the_read_model_and_replays_from_the_first_event() {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        store::migrate(db.conn()).await.unwrap();
        let bus = EmbeddedBus::open("sqlite::memory:").await.unwrap();
        let events: Vec<Outgoing> = ["first", "second"]
            .into_iter()
            .map(|name| Outgoing {
                event_id: name.into(),
                subject: "book.registered".into(),
                payload: name.as_bytes().to_vec().into(),
                traceparent: None,
            })
            .collect();
        bus.publish(&events).await.unwrap();
        let mut sub = bus.subscribe(&spec()).await.unwrap();
        sub.next().await.unwrap().unwrap().ack().await.unwrap();
        drop(sub);
        assert_eq!(first_payload(&bus).await, b"second");
        titles::ActiveModel {
            book_id: Set("b1".into()),
            title: Set("A title".into()),
            revision: Set(0),
        }
        .insert(db.conn())
        .await
        .unwrap();

        rebuild(&db, bus.as_ref(), "view-svc").await.unwrap();
        assert_eq!(titles::Entity::find().count(db.conn()).await.unwrap(), 0);
        assert_eq!(first_payload(&bus).await, b"first");
    }
}
