//! Durable consumers that apply each event exactly once (SPEC §4 E2): the
//! event id goes into the inbox in the same transaction as the effect, so a
//! redelivered event changes nothing.
//!
//! Two kinds of failure are told apart, because they call for opposite
//! answers:
//! - A *poison* event (not an event envelope, or a handler says with
//!   [`Poison`] that the event itself is unacceptable) is tried again a few
//!   times (`max_deliver` in all), then moved to the dead-letter store.
//! - Anything else is the consumer's own trouble (its database is away, the
//!   pool timed out, a deadlock aborted the transaction): the event is kept
//!   and tried again with capped backoff for as long as the trouble lasts,
//!   the service reports NOT_SERVING meanwhile ([`Db::set_stalled`]), and
//!   no event is ever dead-lettered because of it.
//!
//! Either way the consumer stays on the event: nothing behind it is applied
//! before it (order, SPEC §4 E3), and the bus is told the event is still in
//! progress so it is not handed to someone else. Events that are waiting
//! when the consumer looks are applied in one transaction and acknowledged
//! together; a batch that fails is applied again event by event.
//!
//! While it runs, a consumer asks the bus every few seconds how many events
//! it has not acknowledged yet and exports the count as the gauge
//! `consumer_pending{consumer="<durable>"}`: the lag, from the service itself.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prost::Message;
use rentalbook_proto::events::v1::Envelope;
use sea_orm::{EntityTrait, Set, TryInsertResult};
use tokio_util::sync::CancellationToken;

use crate::bus::{ConsumerSpec, Delivery, EventBus, Subscription};
use crate::db::{Db, WriteTx};
use crate::schema::inbox;
use crate::time::Backoff;

#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Applies one event inside the transaction that records it as processed.
    /// An error rolls both back and the event is tried again; return a
    /// [`Poison`] error only when the event itself can never be applied.
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()>;

    /// The locks (scope, key) that applying `event` takes with
    /// [`WriteTx::lock`]. A batch takes those of all its events first, in one
    /// order, so that two consumers' batches never wait for each other in a
    /// circle; the handler's own calls then find them held.
    fn locks(&self, _event: &Envelope) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Runs once the effect of a newly applied event has committed (to tell
    /// watchers, say). Not run for duplicates.
    async fn after_commit(&self, _event: &Envelope) {}

    /// Whether `event` has no effect here at all, whenever it comes: it is
    /// acknowledged without a transaction, an inbox row or [`apply`].
    /// For a consumer of every subject that acts on a few.
    ///
    /// [`apply`]: EventHandler::apply
    fn ignores(&self, _event: &Envelope) -> bool {
        false
    }
}

/// A handler's verdict that an event is permanently unacceptable (it fails
/// validation, or names something that cannot exist): after `max_deliver`
/// tries it goes to the dead-letter store. Every other error is taken for a
/// passing failure of the consumer's own infrastructure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Poison(pub String);

impl Poison {
    /// The error a handler returns for a poison event.
    pub fn error(reason: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Poison(reason.into()))
    }
}

/// Whether an error says the event itself is at fault.
pub fn is_poison(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<Poison>())
}

/// Events a consumer takes at once when they are waiting: applied in one
/// transaction and acknowledged together.
const MAX_BATCH: usize = 64;

/// The first wait before an event is tried again; it doubles up to 5 s.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// How often a running consumer reports its pending count: one question
/// to the bus each time, cheap next to the events themselves.
pub const PENDING_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Whether the consumer goes on with the next event.
enum Flow {
    Next,
    /// Shutting down: the event was left for a later delivery.
    Stopped,
}

pub struct Consumer {
    db: Db,
    bus: Arc<dyn EventBus>,
    spec: ConsumerSpec,
    handler: Arc<dyn EventHandler>,
    pending_report: Duration,
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
            pending_report: PENDING_REPORT_INTERVAL,
        }
    }

    /// Reports the pending count every `interval` instead of every
    /// [`PENDING_REPORT_INTERVAL`].
    pub fn with_pending_report(mut self, interval: Duration) -> Self {
        self.pending_report = interval.max(Duration::from_millis(10));
        self
    }

    /// Consumes until `shutdown`, reopening the subscription whenever the bus
    /// goes away, and reports the pending count meanwhile.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::select! {
            () = self.consume(&shutdown) => {}
            () = self.report_pending() => {}
        }
    }

    /// Sets `consumer_pending` from the bus every `pending_report`, for as
    /// long as it is polled. A count the bus cannot give (it is away, or the
    /// durable consumer does not exist yet) leaves the gauge as it was.
    async fn report_pending(&self) {
        let gauge = metrics::gauge!("consumer_pending", "consumer" => self.spec.durable.clone());
        let mut ticks = tokio::time::interval(self.pending_report);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let limit = self.pending_report.max(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            match tokio::time::timeout(limit, self.bus.pending(&self.spec.durable)).await {
                Ok(Ok(Some(pending))) => gauge.set(pending as f64),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(consumer = %self.spec.durable, error = format!("{e:#}"), "could not read the pending count");
                }
                Err(_) => {
                    tracing::debug!(consumer = %self.spec.durable, "the bus did not tell the pending count in time");
                }
            }
        }
    }

    async fn consume(&self, shutdown: &CancellationToken) {
        let mut backoff = Backoff::new(FIRST_RETRY);
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
                    Ok(Some(batch)) => {
                        if let Flow::Stopped = self.settle(sub.as_mut(), batch, shutdown).await {
                            return;
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

    /// Applies a batch in one transaction; if that fails, event by event,
    /// each until it is applied or dead-lettered, in order.
    async fn settle(
        &self,
        sub: &mut dyn Subscription,
        batch: Vec<Box<dyn Delivery>>,
        shutdown: &CancellationToken,
    ) -> Flow {
        if batch.len() > 1 {
            match self.apply_batch(&batch).await {
                Ok(()) => {
                    if let Err(e) = sub.ack_batch(&batch).await {
                        tracing::warn!(consumer = %self.spec.durable, error = format!("{e:#}"), "could not acknowledge a batch; its events will come again");
                    }
                    return Flow::Next;
                }
                Err(e) => {
                    tracing::debug!(consumer = %self.spec.durable, events = batch.len(), error = format!("{e:#}"), "a batch was not applied; applying its events one by one");
                }
            }
        }
        for (i, delivery) in batch.iter().enumerate() {
            if let Flow::Stopped = self.settle_one(delivery.as_ref(), shutdown).await {
                // Hand the rest back at once, so another replica (or the
                // next start) takes them without waiting out the ack wait.
                for rest in &batch[i..] {
                    let _ = rest.nak(Duration::ZERO).await;
                }
                return Flow::Stopped;
            }
        }
        Flow::Next
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
        self.count("applied", applied);
        self.count("duplicate", duplicates);
        Ok(())
    }

    /// Applies the events not in the inbox yet, each once, in one
    /// transaction with their inbox rows, then runs `after_commit` for them.
    /// Returns how many were applied and how many were duplicates.
    async fn apply_all(&self, events: &[(Envelope, &dyn Delivery)]) -> anyhow::Result<(u64, u64)> {
        let wanted: Vec<&(Envelope, &dyn Delivery)> = events
            .iter()
            .filter(|(e, _)| !self.handler.ignores(e))
            .collect();
        let ignored = (events.len() - wanted.len()) as u64;
        self.count("ignored", ignored);
        // A batch may hold an event twice (a redelivery behind the first).
        let mut seen = HashSet::new();
        let mut ids: Vec<String> = wanted
            .iter()
            .map(|(e, _)| e.event_id.clone())
            .filter(|id| seen.insert(id.clone()))
            .collect();
        if ids.is_empty() {
            return Ok((0, 0));
        }
        let mut tx = self.db.begin().await?;
        // The inbox rows first, in one statement that skips those there
        // already and returns the rest: the events to apply. Sorted, so two
        // replicas given overlapping batches take the rows in one order.
        ids.sort();
        let now = crate::time::now();
        let inserted =
            inbox::Entity::insert_many(ids.into_iter().map(|event_id| inbox::ActiveModel {
                event_id: Set(event_id),
                consumer: Set(self.spec.durable.clone()),
                processed_at: Set(now),
            }))
            .on_conflict_do_nothing_on([inbox::Column::EventId])
            .exec_with_returning_keys(&*tx)
            .await?;
        let mut inserted: HashSet<String> = match inserted {
            TryInsertResult::Inserted(keys) => keys.into_iter().collect(),
            TryInsertResult::Empty | TryInsertResult::Conflicted => HashSet::new(),
        };
        let fresh: Vec<&(Envelope, &dyn Delivery)> = wanted
            .into_iter()
            .filter(|(e, _)| inserted.remove(&e.event_id))
            .collect();
        let duplicates = events.len() as u64 - ignored - fresh.len() as u64;
        if fresh.is_empty() {
            tx.rollback().await?;
            return Ok((0, duplicates));
        }
        let mut locks: Vec<(&'static str, String)> = fresh
            .iter()
            .flat_map(|(e, _)| self.handler.locks(e))
            .collect();
        locks.sort();
        locks.dedup();
        let locks: Vec<(&str, &str)> = locks.iter().map(|(s, k)| (*s, k.as_str())).collect();
        tx.lock_all(&locks).await?;
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

    fn count(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            metrics::counter!("events_consumed_total", "consumer" => self.spec.durable.clone(), "outcome" => outcome).increment(n);
        }
    }

    /// Stays on one event until it is applied (or found a duplicate) or,
    /// being poison, dead-lettered.
    async fn settle_one(&self, delivery: &dyn Delivery, shutdown: &CancellationToken) -> Flow {
        let Some(envelope) = envelope_of(delivery) else {
            tracing::error!(
                consumer = %self.spec.durable,
                subject = delivery.subject(),
                "not an event envelope; moving it to the dead letters"
            );
            return self
                .dead_letter(delivery, "not a rentalbook event envelope", shutdown)
                .await;
        };
        let mut backoff = Backoff::new(FIRST_RETRY);
        let mut poison_tries = 0;
        let mut stalled = false;
        let flow = loop {
            let error = match self.apply_all(&[(envelope.clone(), delivery)]).await {
                Ok((applied, duplicates)) => {
                    self.count("applied", applied);
                    self.count("duplicate", duplicates);
                    if let Err(e) = delivery.ack().await {
                        // Applied: when it comes again the inbox drops it.
                        tracing::debug!(consumer = %self.spec.durable, error = format!("{e:#}"), "could not acknowledge an applied event");
                    }
                    break Flow::Next;
                }
                Err(e) => e,
            };
            if is_poison(&error) {
                poison_tries += 1;
                if poison_tries >= self.spec.max_deliver {
                    tracing::error!(consumer = %self.spec.durable, event_id = %envelope.event_id, error = format!("{error:#}"), tries = poison_tries, "event refused every time; moving it to the dead letters");
                    break self
                        .dead_letter(delivery, &format!("{error:#}"), shutdown)
                        .await;
                }
                self.count("retry", 1);
                tracing::warn!(consumer = %self.spec.durable, event_id = %envelope.event_id, error = format!("{error:#}"), tries = poison_tries, "event refused; trying it again");
            } else {
                self.count("stalled", 1);
                if !stalled {
                    stalled = true;
                    self.db.set_stalled(&self.spec.durable, true);
                    tracing::warn!(consumer = %self.spec.durable, event_id = %envelope.event_id, error = format!("{error:#}"), "cannot apply events; keeping the event and trying again until the trouble passes");
                }
            }
            if let Flow::Stopped = self.hold(delivery, backoff.next_delay(), shutdown).await {
                break Flow::Stopped;
            }
        };
        if stalled {
            self.db.set_stalled(&self.spec.durable, false);
            tracing::info!(consumer = %self.spec.durable, "applying events again");
        }
        flow
    }

    /// Moves a poison event to the dead letters, trying again while the bus
    /// cannot take it: a poison event is kept, never dropped.
    async fn dead_letter(
        &self,
        delivery: &dyn Delivery,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> Flow {
        let mut backoff = Backoff::new(FIRST_RETRY);
        loop {
            match delivery.dead_letter(reason).await {
                Ok(()) => {
                    self.count("dead_letter", 1);
                    return Flow::Next;
                }
                Err(e) => {
                    tracing::warn!(consumer = %self.spec.durable, error = format!("{e:#}"), "could not store a dead letter; trying again");
                }
            }
            if let Flow::Stopped = self.hold(delivery, backoff.next_delay(), shutdown).await {
                return Flow::Stopped;
            }
        }
    }

    /// Waits `delay` before the next try, telling the bus now and then that
    /// the event is still being worked on, so it is not redelivered.
    async fn hold(
        &self,
        delivery: &dyn Delivery,
        delay: Duration,
        shutdown: &CancellationToken,
    ) -> Flow {
        let until = Instant::now() + delay;
        let beat = (self.spec.ack_wait / 3).max(Duration::from_millis(50));
        loop {
            if let Err(e) = delivery.in_progress().await {
                tracing::debug!(consumer = %self.spec.durable, error = format!("{e:#}"), "could not extend the ack wait");
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Flow::Next;
            }
            tokio::select! {
                _ = tokio::time::sleep(left.min(beat)) => {}
                _ = shutdown.cancelled() => return Flow::Stopped,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use rentalbook_proto::events::v1::{BookRegistered, envelope::Body};
    use sea_orm_migration::{MigrationTrait, SchemaManager};

    use super::*;
    use crate::bus::{NatsBus, NatsSettings, Outgoing};
    use crate::embedded_bus::EmbeddedBus;
    use crate::schema::PlumbingTables;

    #[test]
    fn only_a_poison_verdict_is_poison() {
        assert!(is_poison(&Poison::error("no such rental")));
        assert!(is_poison(
            &Poison::error("no such rental").context("applying BookReturned")
        ));
        assert!(!is_poison(&anyhow::anyhow!("connection refused")));
        let db_error: anyhow::Error = sea_orm::DbErr::Custom("deadlock detected".into()).into();
        assert!(!is_poison(&db_error));
    }

    /// Fails every event, as a consumer whose database is away does, until
    /// it is let through.
    #[derive(Default)]
    struct Gate {
        open: AtomicBool,
    }

    #[async_trait]
    impl EventHandler for Gate {
        async fn apply(&self, _tx: &mut WriteTx, _event: &Envelope) -> anyhow::Result<()> {
            anyhow::ensure!(self.open.load(Ordering::SeqCst), "connection refused");
            Ok(())
        }
    }

    fn registered(id: &str) -> Outgoing {
        let envelope = Envelope {
            event_id: id.into(),
            body: Some(Body::BookRegistered(BookRegistered {
                book_id: id.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        Outgoing {
            event_id: id.into(),
            subject: "book.registered".into(),
            payload: envelope.encode_to_vec().into(),
            traceparent: None,
        }
    }

    /// The value of `consumer_pending` for `durable` on the metrics page.
    fn exported_pending(durable: &str) -> Option<f64> {
        let series = format!("consumer_pending{{consumer=\"{durable}\"}} ");
        crate::telemetry::render_metrics()
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str())?.trim().parse().ok())
    }

    async fn until_exported(durable: &str, want: f64) {
        let started = Instant::now();
        loop {
            let seen = exported_pending(durable);
            if seen == Some(want) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "consumer_pending for {durable} is {seen:?}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Events wait behind one the consumer cannot apply: the gauge shows
    /// them all, then none once they are applied.
    async fn the_pending_count_is_exported(bus: Arc<dyn EventBus>, db: Db) {
        crate::telemetry::init_metrics(None).unwrap();
        PlumbingTables
            .up(&SchemaManager::new(db.conn()))
            .await
            .unwrap();
        let durable = rentalbook_testkit::unique_name("pending");
        bus.publish(&[registered("p1"), registered("p2"), registered("p3")])
            .await
            .unwrap();
        let gate = Arc::new(Gate::default());
        let spec = ConsumerSpec {
            durable: durable.clone(),
            filter: "book.>".into(),
            max_deliver: 3,
            ack_wait: Duration::from_secs(5),
        };
        let stop = CancellationToken::new();
        let consumer = Consumer::new(db, bus, spec, gate.clone())
            .with_pending_report(Duration::from_millis(50));
        let running = tokio::spawn(consumer.run(stop.clone()));

        until_exported(&durable, 3.0).await;
        gate.open.store(true, Ordering::SeqCst);
        until_exported(&durable, 0.0).await;
        stop.cancel();
        running.await.unwrap();
    }

    #[tokio::test]
    async fn the_pending_count_is_exported_on_the_embedded_bus() {
        let dir = tempfile::tempdir().unwrap();
        let url = |f: &str| format!("sqlite://{}", dir.path().join(f).display());
        let bus = EmbeddedBus::open(&url("events.db")).await.unwrap();
        let db = Db::connect(&url("service.db"), 4).await.unwrap();
        the_pending_count_is_exported(bus, db).await;
    }

    #[tokio::test]
    async fn the_pending_count_is_exported_on_nats() {
        let stream = rentalbook_testkit::unique_name("PENDING");
        let bus = NatsBus::connect(NatsSettings {
            url: rentalbook_testkit::nats_url().await,
            subject_prefix: stream.to_lowercase(),
            stream,
            max_age: None,
            replicas: 1,
            client_name: "consumer-pending-test".into(),
        })
        .await
        .unwrap();
        let db = Db::connect(&rentalbook_testkit::fresh_postgres_url().await, 4)
            .await
            .unwrap();
        the_pending_count_is_exported(bus, db).await;
    }
}
