//! An event bus inside the process, for the all-in-one binary: the contract of
//! [`EventBus`] (SPEC §4) on a SQLite file instead of NATS JetStream.
//!
//! - Durable: events are rows of `bus_events`, committed before `publish`
//!   returns; a second publish of an event id is ignored.
//! - Per-consumer positions: `bus_consumers` holds each durable consumer's
//!   last acknowledged sequence; a consumer sees events after it, in order.
//! - At-least-once: an event is delivered again until acknowledged (after a
//!   nak, after `ack_wait`, and after a restart); the consumer's inbox makes
//!   the effect happen once.
//! - Dead letters go to `bus_dead_letters`, with the reason, never dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, sea_query::Expr,
};
use sea_orm_migration::prelude::*;
use tokio::sync::watch;

use crate::bus::{ConsumerSpec, DeadLetter, Delivery, EventBus, Outgoing, Stored, Subscription};
use crate::db::Db;
use crate::schema::create_entity_table;

pub mod events {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bus_events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub seq: i64,
        #[sea_orm(unique)]
        pub event_id: String,
        pub subject: String,
        pub payload: Vec<u8>,
        pub traceparent: Option<String>,
        pub stored_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod consumers {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bus_consumers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub durable: String,
        /// Last acknowledged sequence.
        pub position: i64,
        /// The subjects it reads (see [`super::subject_matches`]).
        pub filter: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod dead_letters {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bus_dead_letters")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub durable: String,
        pub seq: i64,
        pub subject: String,
        pub payload: Vec<u8>,
        pub reason: String,
        pub stored_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

struct CreateBusTables;

impl MigrationName for CreateBusTables {
    fn name(&self) -> &str {
        "m0001_create_bus_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateBusTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, events::Entity).await?;
        create_entity_table(manager, consumers::Entity).await?;
        create_entity_table(manager, dead_letters::Entity).await
    }
}

struct BusTraceparent;

impl MigrationName for BusTraceparent {
    fn name(&self) -> &str {
        "m0002_bus_events_traceparent"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for BusTraceparent {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::schema::add_text_column_if_missing(manager, "bus_events", "traceparent").await
    }
}

struct ConsumerFilter;

impl MigrationName for ConsumerFilter {
    fn name(&self) -> &str {
        "m0003_bus_consumers_filter"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ConsumerFilter {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::schema::add_text_column_if_missing(manager, "bus_consumers", "filter").await
    }
}

struct BusMigrator;

impl MigratorTrait for BusMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateBusTables),
            Box::new(BusTraceparent),
            Box::new(ConsumerFilter),
        ]
    }
}

/// The events after `position` on the subjects of `filter`, in order.
fn after_position(position: i64, filter: &str) -> sea_orm::Select<events::Entity> {
    let query = events::Entity::find()
        .filter(events::Column::Seq.gt(position))
        .order_by_asc(events::Column::Seq);
    match filter.strip_suffix('>') {
        _ if filter.is_empty() => query,
        Some(prefix) => query
            .filter(Expr::col(events::Column::Subject).like(crate::db::like_starting_with(prefix))),
        None => query.filter(events::Column::Subject.eq(filter)),
    }
}

/// Whether a subject (below the prefix) matches a consumer filter: empty
/// matches everything, `a.>` everything below `a`, otherwise exact.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    match filter.strip_suffix('>') {
        _ if filter.is_empty() => true,
        Some(prefix) => subject.starts_with(prefix) && subject.len() > prefix.len(),
        None => filter == subject,
    }
}

pub struct EmbeddedBus {
    db: Db,
    /// The last stored sequence, so waiting consumers wake at once.
    latest: watch::Sender<i64>,
    /// The latest events, so that a consumer woken by events of no subject
    /// of its own goes back to sleep without a query, and one woken by its
    /// own takes them from here.
    recent: Arc<Recent>,
}

/// The last [`RECENT`] events stored, in order, written (under the bus's
/// write permit) after they committed and before consumers are woken. They
/// are every event after the oldest of them: a publish here tells what
/// another process appended as well.
#[derive(Default)]
struct Recent(std::sync::Mutex<VecDeque<Arc<events::Model>>>);

/// How many events [`Recent`] keeps.
const RECENT: usize = 1024;

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<events::Model>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stored(&self, events: impl IntoIterator<Item = Arc<events::Model>>) {
        let mut recent = self.lock();
        recent.extend(events);
        let excess = recent.len().saturating_sub(RECENT);
        recent.drain(..excess);
    }

    /// The events on `filter`'s subjects after `from` up to `last`, at most
    /// `max`, if every event after `from` is known here.
    fn after(
        &self,
        filter: &str,
        from: i64,
        last: i64,
        max: usize,
    ) -> Option<Vec<Arc<events::Model>>> {
        let recent = self.lock();
        match recent.front() {
            Some(oldest) if oldest.seq <= from + 1 => Some(
                recent
                    .iter()
                    .filter(|e| e.seq > from && e.seq <= last)
                    .filter(|e| subject_matches(filter, &e.subject))
                    .take(max)
                    .cloned()
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Whether every event after `from` up to `last` is known, and none is
    /// on `filter`'s subjects.
    fn none_for(&self, filter: &str, from: i64, last: i64) -> bool {
        self.after(filter, from, last, 1)
            .is_some_and(|events| events.is_empty())
    }
}

impl EmbeddedBus {
    /// Opens (creating) the bus at a SQLite URL such as `sqlite://data/events.db`.
    pub async fn open(url: &str) -> anyhow::Result<Arc<Self>> {
        let db = Db::connect(url, 4).await?;
        BusMigrator::up(db.conn(), None).await?;
        let last = events::Entity::find()
            .order_by_desc(events::Column::Seq)
            .one(db.conn())
            .await?
            .map_or(0, |e| e.seq);
        let bus = Arc::new(Self {
            db,
            latest: watch::channel(last).0,
            recent: Arc::default(),
        });
        tokio::spawn(watch_other_writers(Arc::downgrade(&bus)));
        Ok(bus)
    }

    /// Whether another process appended to the log after the last event the
    /// consumers were told of; if so, tells them.
    async fn look_for_other_writers(&self) -> Result<(), DbErr> {
        let newest = events::Entity::find()
            .select_only()
            .column(events::Column::Seq)
            .order_by_desc(events::Column::Seq)
            .into_tuple::<i64>()
            .one(self.db.conn())
            .await?;
        if newest.is_some_and(|seq| seq > *self.latest.borrow()) {
            self.db
                .write_one(async |db| self.tell_new(db).await)
                .await?;
        }
        Ok(())
    }

    /// Appends `rows` to the log in one statement, skipping those stored
    /// before, then tells the consumers. Called under the write permit.
    async fn append(
        &self,
        db: &DatabaseConnection,
        rows: impl IntoIterator<Item = events::ActiveModel>,
    ) -> Result<(), DbErr> {
        events::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([events::Column::EventId])
            .exec_without_returning(db)
            .await?;
        self.tell_new(db).await
    }

    /// Tells the consumers what the log holds after the last event they
    /// were told of: what this process appended, and anything another
    /// process appended meanwhile, so that [`Recent`] misses none. Called
    /// under the write permit, so the newest sequence only grows.
    async fn tell_new(&self, db: &DatabaseConnection) -> Result<(), DbErr> {
        let after = *self.latest.borrow();
        let stored = events::Entity::find()
            .filter(events::Column::Seq.gt(after))
            .order_by_asc(events::Column::Seq)
            .all(db)
            .await?;
        self.told(stored);
        Ok(())
    }

    /// Records events just stored and wakes the consumers.
    fn told(&self, stored: Vec<events::Model>) {
        let Some(last) = stored.last().map(|e| e.seq) else {
            return;
        };
        self.recent.stored(stored.into_iter().map(Arc::new));
        self.latest.send_replace(last);
    }

    /// Dead letters so far, as stored, for tests.
    pub async fn dead_letter_rows(&self) -> anyhow::Result<Vec<dead_letters::Model>> {
        Ok(dead_letters::Entity::find()
            .order_by_asc(dead_letters::Column::Id)
            .all(self.db.conn())
            .await?)
    }
}

#[async_trait]
impl EventBus for EmbeddedBus {
    async fn publish(&self, batch: &[Outgoing]) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let now = crate::time::now();
        let rows = batch.iter().map(|e| events::ActiveModel {
            event_id: Set(e.event_id.clone()),
            subject: Set(e.subject.clone()),
            payload: Set(e.payload.to_vec()),
            traceparent: Set(e.traceparent.clone()),
            stored_at: Set(now),
            ..Default::default()
        });
        // The batch in one statement, atomic by itself; an event stored
        // before (the relay published it and crashed before its delete) is
        // skipped.
        self.db
            .write_one(async |db| self.append(db, rows).await)
            .await?;
        Ok(())
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> anyhow::Result<Box<dyn Subscription>> {
        let tx = self.db.begin().await?;
        consumers::Entity::insert(consumers::ActiveModel {
            durable: Set(spec.durable.clone()),
            position: Set(0),
            filter: Set(Some(spec.filter.clone())),
        })
        .on_conflict(
            OnConflict::column(consumers::Column::Durable)
                .update_column(consumers::Column::Filter)
                .to_owned(),
        )
        .exec(&*tx)
        .await?;
        tx.commit().await?;
        Ok(Box::new(EmbeddedSubscription {
            shared: Arc::new(Shared {
                db: self.db.clone(),
                durable: spec.durable.clone(),
                state: Mutex::new(InFlight::default()),
            }),
            filter: spec.filter.clone(),
            ack_wait: spec.ack_wait,
            wake: self.latest.subscribe(),
            recent: self.recent.clone(),
            position: 0,
            scanned: 0,
        }))
    }

    async fn pending(&self, durable: &str) -> anyhow::Result<Option<u64>> {
        let Some(consumer) = consumers::Entity::find_by_id(durable.to_owned())
            .one(self.db.conn())
            .await?
        else {
            return Ok(None);
        };
        let filter = consumer.filter.unwrap_or_default();
        let subjects: Vec<String> = after_position(consumer.position, &filter)
            .select_only()
            .column(events::Column::Subject)
            .into_tuple()
            .all(self.db.conn())
            .await?;
        Ok(Some(
            subjects
                .iter()
                .filter(|s| subject_matches(&filter, s))
                .count() as u64,
        ))
    }

    async fn history(&self, after: u64, max: usize) -> anyhow::Result<Vec<Stored>> {
        Ok(after_position(
            <i64 as TryFrom<u64>>::try_from(after).unwrap_or(i64::MAX),
            "",
        )
        .limit(max.min(i64::MAX as usize) as u64)
        .all(self.db.conn())
        .await?
        .into_iter()
        .map(|e| Stored {
            seq: e.seq as u64,
            subject: e.subject,
            payload: e.payload.into(),
        })
        .collect())
    }

    async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        Ok(self
            .dead_letter_rows()
            .await?
            .into_iter()
            .map(|row| DeadLetter {
                id: row.id as u64,
                consumer: row.durable,
                subject: row.subject,
                reason: row.reason,
                payload: row.payload.into(),
                stored_at: Some(row.stored_at),
            })
            .collect())
    }

    async fn replay_dead_letter(&self, id: u64) -> anyhow::Result<bool> {
        let Ok(id) = <i64 as TryFrom<u64>>::try_from(id) else {
            return Ok(false);
        };
        let Some(letter) = dead_letters::Entity::find_by_id(id)
            .one(self.db.conn())
            .await?
        else {
            return Ok(false);
        };
        let event_id = format!("replay-{id}");
        // A new entry of the log, after everything there; its own publish
        // id, since the original's is taken by the original entry. Then the
        // letter goes. A crash between the two leaves the letter, and
        // replaying it again stores nothing twice (the same publish id).
        let row = events::ActiveModel {
            event_id: Set(event_id),
            subject: Set(letter.subject),
            payload: Set(letter.payload),
            traceparent: Set(None),
            stored_at: Set(crate::time::now()),
            ..Default::default()
        };
        self.db
            .write_one(async |db| {
                self.append(db, [row]).await?;
                dead_letters::Entity::delete_by_id(id).exec(db).await?;
                Ok(())
            })
            .await?;
        Ok(true)
    }

    async fn reset(&self, durable: &str) -> anyhow::Result<()> {
        let tx = self.db.begin().await?;
        consumers::Entity::delete_by_id(durable.to_owned())
            .exec(&*tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Another process may append to the log: `rentalbook dead-letters replay`
/// beside a running all-in-one. Nothing tells this one, so once a second it
/// looks for events after the last it knows of, until the bus is dropped.
async fn watch_other_writers(bus: std::sync::Weak<EmbeddedBus>) {
    loop {
        tokio::time::sleep(OTHER_WRITERS_POLL).await;
        let Some(bus) = bus.upgrade() else {
            return;
        };
        if let Err(e) = bus.look_for_other_writers().await {
            tracing::debug!(error = %e, "looking for events another process appended");
        }
    }
}

/// How often [`watch_other_writers`] looks.
const OTHER_WRITERS_POLL: Duration = Duration::from_secs(1);

/// The events a consumer holds (a batch, in order) and how often it had the
/// first of them.
#[derive(Default)]
struct InFlight {
    first: i64,
    last: i64,
    delivered: i64,
    /// Not before this instant (a nak's delay, or the ack wait).
    not_before: Option<Instant>,
}

struct Shared {
    db: Db,
    durable: String,
    state: Mutex<InFlight>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the position to `seq`: every event up to it is done.
    async fn acknowledge(&self, seq: i64) -> anyhow::Result<()> {
        // One UPDATE, atomic by itself.
        self.db
            .write_one(async |db| {
                consumers::Entity::update_many()
                    .col_expr(consumers::Column::Position, Expr::value(seq))
                    .filter(consumers::Column::Durable.eq(&self.durable))
                    .filter(consumers::Column::Position.lt(seq))
                    .exec(db)
                    .await
            })
            .await?;
        let mut state = self.lock();
        if seq >= state.last {
            *state = InFlight::default();
        } else if seq >= state.first {
            // The rest of the batch stays held; its first event has been
            // delivered once.
            state.first = seq + 1;
            state.delivered = 1;
        }
        Ok(())
    }
}

struct EmbeddedSubscription {
    shared: Arc<Shared>,
    filter: String,
    ack_wait: Duration,
    wake: watch::Receiver<i64>,
    recent: Arc<Recent>,
    /// The position as last read from the store.
    position: i64,
    /// Every event up to this sequence has been looked at: none after the
    /// position up to here is on the consumer's subjects. A consumer of
    /// rare subjects (a merge, an erasure) keeps its position far behind;
    /// without this, each publish would have it scan the log from there.
    scanned: i64,
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> anyhow::Result<Option<Box<dyn Delivery>>> {
        Ok(self.next_batch(1).await?.and_then(|b| b.into_iter().next()))
    }

    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Option<Vec<Box<dyn Delivery>>>> {
        // The stored position is read on the way in and after a quiet
        // second, which is also how a reset (the consumer's row deleted) is
        // noticed; a wake-up by events of no subject of this consumer's costs
        // no query at all.
        let mut look = true;
        loop {
            let wait_until = self.shared.lock().not_before;
            if let Some(t) = wait_until {
                tokio::time::sleep_until(t.into()).await;
            }
            // Everything up to `last` has committed: it was told after.
            let last = *self.wake.borrow_and_update();
            let known = Ord::max(self.position, self.scanned);
            let quiet = last <= known || self.recent.none_for(&self.filter, known, last);
            let batch: Vec<Arc<events::Model>> = if quiet && !look {
                Vec::new()
            } else {
                let Some(position) = consumers::Entity::find_by_id(self.shared.durable.clone())
                    .one(self.shared.db.conn())
                    .await?
                    .map(|c| c.position)
                else {
                    // Reset under us: start again from the beginning.
                    return Ok(None);
                };
                self.position = position;
                let from = Ord::max(position, self.scanned);
                let max = max.max(1);
                if last <= from {
                    Vec::new()
                } else if let Some(recent) = self.recent.after(&self.filter, from, last, max) {
                    // Stored lately: no need to read them back.
                    recent
                } else {
                    after_position(from, &self.filter)
                        .limit(max as u64)
                        .all(self.shared.db.conn())
                        .await?
                        .into_iter()
                        .filter(|e| subject_matches(&self.filter, &e.subject))
                        .map(Arc::new)
                        .collect()
                }
            };
            let (Some(first), Some(last_of_batch)) = (batch.first(), batch.last()) else {
                self.scanned = Ord::max(self.scanned, last);
                // Nothing new: wait for a publish (or poll now and then).
                look = tokio::select! {
                    _ = self.wake.changed() => false,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => true,
                };
                continue;
            };
            let delivered = {
                let mut state = self.shared.lock();
                let delivered = if state.first == first.seq {
                    state.delivered + 1
                } else {
                    1
                };
                *state = InFlight {
                    first: first.seq,
                    last: last_of_batch.seq,
                    delivered,
                    // Unacknowledged, they come again after the ack wait.
                    not_before: Some(Instant::now() + self.ack_wait),
                };
                delivered
            };
            let first_seq = first.seq;
            return Ok(Some(
                batch
                    .into_iter()
                    .map(|event| {
                        let delivered = if event.seq == first_seq { delivered } else { 1 };
                        Box::new(EmbeddedDelivery {
                            shared: self.shared.clone(),
                            event,
                            delivered,
                        }) as Box<dyn Delivery>
                    })
                    .collect(),
            ));
        }
    }

    async fn ack_batch(&mut self, batch: &[Box<dyn Delivery>]) -> anyhow::Result<()> {
        // Positions are in order: acknowledging the last acknowledges all.
        match batch.last() {
            Some(last) => last.ack().await,
            None => Ok(()),
        }
    }
}

struct EmbeddedDelivery {
    shared: Arc<Shared>,
    event: Arc<events::Model>,
    delivered: i64,
}

#[async_trait]
impl Delivery for EmbeddedDelivery {
    fn payload(&self) -> &[u8] {
        &self.event.payload
    }

    fn subject(&self) -> &str {
        &self.event.subject
    }

    fn delivered(&self) -> i64 {
        self.delivered
    }

    fn traceparent(&self) -> Option<String> {
        self.event.traceparent.clone()
    }

    async fn ack(&self) -> anyhow::Result<()> {
        self.shared.acknowledge(self.event.seq).await
    }

    async fn nak(&self, delay: Duration) -> anyhow::Result<()> {
        // Events come in order: the first one held decides when they come
        // again, and those behind it come with it.
        let mut state = self.shared.lock();
        if state.first == self.event.seq {
            state.not_before = Some(Instant::now() + delay);
        }
        Ok(())
    }

    async fn dead_letter(&self, reason: &str) -> anyhow::Result<()> {
        let tx = self.shared.db.begin().await?;
        dead_letters::ActiveModel {
            durable: Set(self.shared.durable.clone()),
            seq: Set(self.event.seq),
            subject: Set(self.event.subject.clone()),
            payload: Set(self.event.payload.clone()),
            reason: Set(reason.chars().take(1000).collect()),
            stored_at: Set(crate::time::now()),
            ..Default::default()
        }
        .insert(&*tx)
        .await?;
        tx.commit().await?;
        self.shared.acknowledge(self.event.seq).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Outgoing;

    fn out(id: &str, subject: &str) -> Outgoing {
        Outgoing {
            event_id: id.into(),
            subject: subject.into(),
            payload: bytes::Bytes::from(id.as_bytes().to_vec()),
            traceparent: None,
        }
    }

    /// The next delivery, within `secs` seconds; its payload is `expected`.
    /// Acknowledged.
    async fn acked_within(sub: &mut Box<dyn Subscription>, secs: u64, what: &str, expected: &[u8]) {
        let d = tokio::time::timeout(Duration::from_secs(secs), sub.next())
            .await
            .expect(what)
            .unwrap()
            .unwrap();
        assert_eq!(d.payload(), expected, "{what}");
        d.ack().await.unwrap();
    }

    fn spec(durable: &str, filter: &str) -> ConsumerSpec {
        ConsumerSpec {
            durable: durable.into(),
            filter: filter.into(),
            max_deliver: 3,
            ack_wait: Duration::from_millis(200),
        }
    }

    #[test]
    fn filters_match_like_nats_subjects() {
        assert!(subject_matches("", "book.registered"));
        assert!(subject_matches("book.>", "book.registered"));
        assert!(!subject_matches("book.>", "book"));
        assert!(!subject_matches("book.>", "rental.returned"));
        assert!(subject_matches("rental.returned", "rental.returned"));
        assert!(!subject_matches("rental.returned", "rental.rented"));
    }

    #[tokio::test]
    async fn delivers_in_order_once_acked_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bus.db").display());
        let bus = EmbeddedBus::open(&url).await.unwrap();
        bus.publish(&[
            out("e1", "book.registered"),
            out("e2", "rental.returned"),
            out("e3", "book.copies_added"),
        ])
        .await
        .unwrap();
        bus.publish(&[out("e1", "book.registered")]).await.unwrap();

        let mut books = bus.subscribe(&spec("books", "book.>")).await.unwrap();
        let d = books.next().await.unwrap().unwrap();
        assert_eq!(d.payload(), b"e1");
        d.ack().await.unwrap();
        let d = books.next().await.unwrap().unwrap();
        assert_eq!(
            d.payload(),
            b"e3",
            "filtered, and the duplicate publish was ignored"
        );
        // Not acknowledged: after a reopen it comes again.
        drop(books);
        drop(bus);
        let bus = EmbeddedBus::open(&url).await.unwrap();
        let mut books = bus.subscribe(&spec("books", "book.>")).await.unwrap();
        let d = books.next().await.unwrap().unwrap();
        assert_eq!(d.payload(), b"e3");
        assert_eq!(d.delivered(), 1);
        d.nak(Duration::from_millis(10)).await.unwrap();
        let again = books.next().await.unwrap().unwrap();
        assert_eq!(again.payload(), b"e3");
        assert_eq!(again.delivered(), 2);
        again.dead_letter("poison").await.unwrap();
        let letters = bus.dead_letters().await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (letters[0].consumer.as_str(), letters[0].reason.as_str()),
            ("books", "poison")
        );
        // Replayed, it comes to the consumer once more, and only once.
        assert!(bus.replay_dead_letter(letters[0].id).await.unwrap());
        assert!(!bus.replay_dead_letter(letters[0].id).await.unwrap());
        assert!(bus.dead_letters().await.unwrap().is_empty());
        let replayed = books.next().await.unwrap().unwrap();
        assert_eq!(replayed.payload(), b"e3");
        replayed.ack().await.unwrap();

        // A waiting consumer wakes on publish.
        let waiter =
            tokio::spawn(async move { books.next().await.unwrap().unwrap().payload().to_vec() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        bus.publish(&[out("e4", "book.registered")]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"e4");

        // Reset starts over.
        bus.reset("books").await.unwrap();
        let mut books = bus.subscribe(&spec("books", "book.>")).await.unwrap();
        assert_eq!(books.next().await.unwrap().unwrap().payload(), b"e1");
    }

    #[tokio::test]
    async fn batches_come_in_order_and_an_ack_of_the_last_settles_them() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bus.db").display());
        let bus = EmbeddedBus::open(&url).await.unwrap();
        let ids = ["e1", "e2", "e3", "e4", "e5"];
        bus.publish(&ids.map(|id| out(id, "book.registered")))
            .await
            .unwrap();
        let mut sub = bus.subscribe(&spec("books", "")).await.unwrap();

        let batch = sub.next_batch(3).await.unwrap().unwrap();
        let got: Vec<&[u8]> = batch.iter().map(|d| d.payload()).collect();
        assert_eq!(got, [b"e1", b"e2", b"e3"]);
        sub.ack_batch(&batch).await.unwrap();

        // e4 is applied, e5 fails: only e5 comes again, after the nak's delay.
        let batch = sub.next_batch(10).await.unwrap().unwrap();
        assert_eq!(batch.len(), 2);
        batch[0].ack().await.unwrap();
        assert_eq!(batch[1].delivered(), 1);
        batch[1].nak(Duration::from_millis(30)).await.unwrap();
        let again = sub.next_batch(10).await.unwrap().unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].payload(), b"e5");
        assert_eq!(again[0].delivered(), 2);

        // Once it is settled, what follows comes.
        bus.publish(&[out("e6", "book.registered")]).await.unwrap();
        again[0].ack().await.unwrap();
        let batch = sub.next_batch(10).await.unwrap().unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].payload(), b"e6");
        batch[0].ack().await.unwrap();

        // A nak of an event behind the first changes nothing; unacknowledged,
        // the whole batch comes again after the ack wait.
        bus.publish(&[out("e7", "book.registered"), out("e8", "book.registered")])
            .await
            .unwrap();
        let batch = sub.next_batch(10).await.unwrap().unwrap();
        assert_eq!(batch.len(), 2);
        batch[1].nak(Duration::ZERO).await.unwrap();
        drop(batch);
        let again = sub.next_batch(10).await.unwrap().unwrap();
        let got: Vec<&[u8]> = again.iter().map(|d| d.payload()).collect();
        assert_eq!(got, [b"e7", b"e8"]);
        assert_eq!(again[0].delivered(), 2);
    }

    #[tokio::test]
    async fn a_consumer_of_a_rare_subject_gets_it_among_many_others() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bus.db").display());
        let bus = EmbeddedBus::open(&url).await.unwrap();
        let mut rare = bus
            .subscribe(&spec("erasures", "member.history_erased"))
            .await
            .unwrap();
        let waiter = tokio::spawn(async move {
            let d = rare.next().await.unwrap().unwrap();
            let got = d.payload().to_vec();
            d.ack().await.unwrap();
            (got, rare)
        });
        // Two publishers at once, as two services' relays: the rare event
        // is in the middle of one batch while the other's lands beside it.
        let others = |from: usize| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in from..from + 40 {
                    bus.publish(&[out(&format!("o{i}"), "reservation.placed")])
                        .await
                        .unwrap();
                }
            })
        };
        let (a, b) = (others(0), others(100));
        tokio::time::sleep(Duration::from_millis(5)).await;
        bus.publish(&[
            out("x1", "reservation.placed"),
            out("r1", "member.history_erased"),
            out("x2", "book.registered"),
        ])
        .await
        .unwrap();
        a.await.unwrap();
        b.await.unwrap();
        let (got, mut rare) = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken for its subject at once, not after a poll")
            .unwrap();
        assert_eq!(got, b"r1");

        // More events than the bus remembers the subjects of go by before
        // the next one of its own: it is found all the same.
        let many: Vec<Outgoing> = (0..RECENT + 10)
            .map(|i| out(&format!("m{i}"), "rental.rented"))
            .collect();
        bus.publish(&many).await.unwrap();
        bus.publish(&[out("r2", "member.history_erased")])
            .await
            .unwrap();
        acked_within(&mut rare, 2, "the next one of its own", b"r2").await;

        // Quiet, it still notices a reset within its poll.
        bus.reset("erasures").await.unwrap();
        let reset = tokio::time::timeout(Duration::from_secs(3), rare.next())
            .await
            .expect("a reset is noticed while quiet")
            .unwrap();
        assert!(reset.is_none(), "told to start over");
    }

    #[tokio::test]
    async fn events_another_process_appends_reach_the_consumers_here() {
        // `rentalbook dead-letters replay` appends to the log of a running
        // all-in-one from a process of its own: a second bus on the file.
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bus.db").display());
        let bus = EmbeddedBus::open(&url).await.unwrap();
        let other = EmbeddedBus::open(&url).await.unwrap();
        let mut rare = bus
            .subscribe(&spec("erasures", "member.history_erased"))
            .await
            .unwrap();

        // Nothing is published here: found by the bus's look for other
        // writers.
        other
            .publish(&[out("r1", "member.history_erased")])
            .await
            .unwrap();
        let found = "another process's event, found while quiet";
        acked_within(&mut rare, 3, found, b"r1").await;

        // Between two events of other subjects stored here, which the
        // consumer is woken for.
        bus.publish(&[out("x1", "reservation.placed")])
            .await
            .unwrap();
        let woken = tokio::time::timeout(Duration::from_millis(300), rare.next()).await;
        assert!(woken.is_err(), "nothing of its own yet");
        other
            .publish(&[out("r2", "member.history_erased")])
            .await
            .unwrap();
        bus.publish(&[out("x2", "reservation.placed")])
            .await
            .unwrap();
        let found = "another process's event among this one's";
        acked_within(&mut rare, 3, found, b"r2").await;
    }

    #[tokio::test]
    async fn a_consumer_that_keeps_up_reads_no_event_back_from_the_log() {
        crate::telemetry::init_metrics(None).unwrap();
        let statements = || crate::db::statements_counted("keeping");
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("keeping.db").display());
        let bus = EmbeddedBus::open(&url).await.unwrap();
        let mut sub = bus.subscribe(&spec("books", "book.>")).await.unwrap();
        let rounds = 20;
        let before = statements();
        for i in 0..rounds {
            bus.publish(&[
                out(&format!("b{i}"), "book.registered"),
                out(&format!("o{i}"), "rental.rented"),
            ])
            .await
            .unwrap();
            let batch = sub.next_batch(10).await.unwrap().unwrap();
            let got: Vec<&[u8]> = batch.iter().map(|d| d.payload()).collect();
            assert_eq!(got, [format!("b{i}").as_bytes()]);
            sub.ack_batch(&batch).await.unwrap();
        }
        // Per round: the publish's INSERT and its read of what it stored,
        // the consumer's read of its position and its acknowledgement; the
        // bus's look for other writers at most once a second besides.
        let asked = statements() - before;
        assert!(asked <= f64::from(rounds * 4 + 2), "{asked} statements");

        // Reopened, the bus knows no event yet: an old one comes from the log.
        drop(sub);
        drop(bus);
        let bus = EmbeddedBus::open(&url).await.unwrap();
        bus.reset("books").await.unwrap();
        let mut sub = bus.subscribe(&spec("books", "book.>")).await.unwrap();
        let batch = sub.next_batch(100).await.unwrap().unwrap();
        assert_eq!(batch.len(), rounds as usize);
        assert_eq!(batch[0].payload(), b"b0");
    }
}
