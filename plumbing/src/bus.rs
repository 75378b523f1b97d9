//! The event bus behind a trait (SPEC §4): publish with acknowledgement and
//! de-duplication by event id, durable consumers with explicit ack, bounded
//! redelivery and a dead-letter path. [`NatsBus`] implements it on NATS
//! JetStream; an embedded implementation can stand in for one process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer, context::PublishAckFuture, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::OnceCell;

/// An event on its way out.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub event_id: String,
    /// Below the stream's prefix, such as `reservation.placed`.
    pub subject: String,
    pub payload: Bytes,
    /// W3C trace context, sent as the `traceparent` header.
    pub traceparent: Option<String>,
}

/// What a durable consumer wants.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// Durable name; a restarted consumer resumes where it stopped.
    pub durable: String,
    /// Subject filter below the prefix, such as `book.>`; empty for everything.
    pub filter: String,
    /// Tries of a poison event before it goes to the dead-letter stream.
    /// Only the consumer counts them: the bus itself redelivers without
    /// limit, so an event is never dropped because its consumer was in
    /// trouble.
    pub max_deliver: i64,
    /// Time to acknowledge (or report progress) before the event is
    /// delivered again.
    pub ack_wait: Duration,
}

/// An event as the bus keeps it.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Its place in the stream, from 1.
    pub seq: u64,
    /// Below the stream's prefix, such as `reservation.placed`.
    pub subject: String,
    pub payload: Bytes,
}

/// An event a consumer could not apply, kept aside with the reason.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Names it for [`EventBus::replay_dead_letter`].
    pub id: u64,
    /// The durable consumer that gave up on it.
    pub consumer: String,
    /// The subject it was published on, below the stream's prefix.
    pub subject: String,
    pub reason: String,
    pub payload: Bytes,
    pub stored_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes in order; returns once the bus has stored every event.
    /// Publishing an event id again is harmless.
    async fn publish(&self, events: &[Outgoing]) -> anyhow::Result<()>;

    /// Opens a durable consumer, creating it on first use. It starts from the
    /// first event in the stream.
    async fn subscribe(&self, spec: &ConsumerSpec) -> anyhow::Result<Box<dyn Subscription>>;

    /// Forgets a durable consumer's position, so the next subscription starts
    /// again from the first event (a read model's rebuild).
    async fn reset(&self, durable: &str) -> anyhow::Result<()>;

    /// How many events the durable consumer has not acknowledged yet
    /// (waiting or in flight); `None` when there is no such consumer.
    async fn pending(&self, durable: &str) -> anyhow::Result<Option<u64>>;

    /// Up to `max` stored events after sequence `after`, in order: the
    /// stream as a replay reads it, for operator tools and tests.
    async fn history(&self, after: u64, max: usize) -> anyhow::Result<Vec<Stored>>;

    /// The dead letters kept so far, oldest first.
    async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>>;

    /// Publishes a dead letter's event again on its subject (every consumer
    /// of it sees it; those that applied it already drop it by their inbox)
    /// and removes it from the dead letters. False when there is no such
    /// dead letter.
    async fn replay_dead_letter(&self, id: u64) -> anyhow::Result<bool>;

    /// Whether [`EventBus::notify`] reaches other processes: false where one
    /// process is all there is (the embedded bus).
    fn fans_out(&self) -> bool {
        false
    }

    /// Tells every process listening on `topic` ([`EventBus::notices`]) a
    /// short payload: best effort, not stored, never redelivered. For
    /// wake-ups across replicas, never for facts.
    async fn notify(&self, topic: &str, payload: Bytes) -> anyhow::Result<()> {
        let _ = (topic, payload);
        Ok(())
    }

    /// The notices of `topic` from now on; `None` when the bus does not fan
    /// out.
    async fn notices(&self, topic: &str) -> anyhow::Result<Option<BoxStream<'static, Bytes>>> {
        let _ = topic;
        Ok(None)
    }
}

#[async_trait]
pub trait Subscription: Send {
    /// The next event; `None` when the subscription ended and should be opened again.
    async fn next(&mut self) -> anyhow::Result<Option<Box<dyn Delivery>>>;

    /// The next event and, without waiting for more, up to `max` in all that
    /// are ready behind it, in order; `None` when the subscription ended.
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Option<Vec<Box<dyn Delivery>>>> {
        let _ = max;
        Ok(self.next().await?.map(|d| vec![d]))
    }

    /// Acknowledges every event of a batch from [`Subscription::next_batch`]
    /// whose effects committed together.
    async fn ack_batch(&mut self, batch: &[Box<dyn Delivery>]) -> anyhow::Result<()> {
        futures::future::try_join_all(batch.iter().map(|d| d.ack())).await?;
        Ok(())
    }
}

#[async_trait]
pub trait Delivery: Send + Sync {
    fn payload(&self) -> &[u8];
    /// Full subject.
    fn subject(&self) -> &str;
    /// How many times this event has been delivered, this time included.
    fn delivered(&self) -> i64;
    /// The `traceparent` the event was published with.
    fn traceparent(&self) -> Option<String>;
    async fn ack(&self) -> anyhow::Result<()>;
    /// Asks for redelivery after `delay`.
    async fn nak(&self, delay: Duration) -> anyhow::Result<()>;
    /// Says the event is still being worked on, so the ack wait starts
    /// again and it is not handed to another consumer meanwhile.
    async fn in_progress(&self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Moves the event to the dead-letter stream with the reason, then
    /// acknowledges it: kept, never silently dropped, never redelivered.
    async fn dead_letter(&self, reason: &str) -> anyhow::Result<()>;
}

/// Where the bus lives and what it is called.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    pub url: String,
    pub stream: String,
    pub subject_prefix: String,
    /// None keeps every event (read models rebuild by replay).
    pub max_age: Option<Duration>,
    /// Copies of the streams across a NATS cluster (1 on a single server).
    pub replicas: usize,
    /// Shown in the server's connection list.
    pub client_name: String,
}

/// NATS JetStream: one stream `<stream>` on `<prefix>.>`, and a dead-letter
/// stream `<stream>_DLQ` on `<prefix>_dlq.>`, outside the replayed subjects.
pub struct NatsBus {
    js: jetstream::Context,
    settings: NatsSettings,
    streams_ready: OnceCell<()>,
}

impl NatsBus {
    /// Connects in the background: a service starts and serves while NATS is
    /// away, and its outbox holds the events until NATS is back.
    pub async fn connect(settings: NatsSettings) -> anyhow::Result<Arc<Self>> {
        let client = async_nats::ConnectOptions::new()
            .name(&settings.client_name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .connect(settings.url.as_str())
            .await
            .with_context(|| format!("connecting to NATS at {}", settings.url))?;
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(5));
        Ok(Arc::new(Self {
            js,
            settings,
            streams_ready: OnceCell::new(),
        }))
    }

    fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.settings.stream)
    }

    /// A message of the dead-letter stream, as a dead letter.
    fn dead_letter_of(
        &self,
        seq: u64,
        message: jetstream::message::StreamMessage,
    ) -> Option<DeadLetter> {
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let dlq_prefix = format!("{}_dlq.", self.settings.subject_prefix);
        let prefix = format!("{}.", self.settings.subject_prefix);
        let original = header("Rentalbook-Original-Subject");
        Some(DeadLetter {
            id: seq,
            consumer: message
                .subject
                .as_str()
                .strip_prefix(&dlq_prefix)
                .unwrap_or(message.subject.as_str())
                .to_owned(),
            subject: original
                .strip_prefix(&prefix)
                .unwrap_or(&original)
                .to_owned(),
            reason: header("Rentalbook-Dead-Letter-Reason"),
            payload: message.payload,
            stored_at: chrono::DateTime::parse_from_rfc3339(&header("Rentalbook-Dead-Lettered-At"))
                .ok()
                .map(|t| t.to_utc()),
        })
    }

    /// Core NATS, outside the streams' subjects: notices are not kept.
    fn notice_subject(&self, topic: &str) -> String {
        format!("{}_notice.{topic}", self.settings.subject_prefix)
    }

    async fn ensure_streams(&self) -> anyhow::Result<()> {
        self.streams_ready
            .get_or_try_init(|| async {
                let s = &self.settings;
                self.js
                    .get_or_create_stream(stream::Config {
                        name: s.stream.clone(),
                        subjects: vec![format!("{}.>", s.subject_prefix)],
                        duplicate_window: Duration::from_secs(120),
                        max_age: s.max_age.unwrap_or_default(),
                        num_replicas: s.replicas,
                        storage: stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("creating the JetStream stream {}", s.stream))?;
                self.js
                    .get_or_create_stream(stream::Config {
                        name: self.dlq_stream(),
                        subjects: vec![format!("{}_dlq.>", s.subject_prefix)],
                        num_replicas: s.replicas,
                        storage: stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("creating the stream {}", self.dlq_stream()))?;
                anyhow::Ok(())
            })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, events: &[Outgoing]) -> anyhow::Result<()> {
        self.ensure_streams().await?;
        // Send them all, then wait for the acks: one round trip per batch.
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(events.len());
        for event in events {
            let subject = format!("{}.{}", self.settings.subject_prefix, event.subject);
            let mut headers = async_nats::HeaderMap::new();
            if let Some(tp) = &event.traceparent {
                headers.insert("traceparent", tp.as_str());
            }
            // `headers` replaces the map, so the message id goes in after it.
            let msg = jetstream::message::PublishMessage::build()
                .headers(headers)
                .payload(event.payload.clone())
                .message_id(&event.event_id);
            acks.push(
                self.js
                    .send_publish(subject, msg)
                    .await
                    .context("publishing an event")?,
            );
        }
        for ack in acks {
            ack.await
                .context("waiting for JetStream to store an event")?;
        }
        Ok(())
    }

    async fn subscribe(&self, spec: &ConsumerSpec) -> anyhow::Result<Box<dyn Subscription>> {
        self.ensure_streams().await?;
        let filter_subject = if spec.filter.is_empty() {
            String::new()
        } else {
            format!("{}.{}", self.settings.subject_prefix, spec.filter)
        };
        let stream = self.js.get_stream(&self.settings.stream).await?;
        // Created, or brought to these settings when it exists already, so
        // a consumer made by an older version changes with the code.
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subject,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                // Unlimited: past a limit the server stops redelivering an
                // event without a word. The consumer counts poison tries
                // itself and dead-letters; nothing else may drop an event.
                max_deliver: -1,
                deliver_policy: consumer::DeliverPolicy::All,
                max_ack_pending: 1024,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the consumer {}", spec.durable))?;
        let messages = consumer.messages().await?;
        Ok(Box::new(NatsSubscription {
            messages,
            js: self.js.clone(),
            dlq_subject: format!("{}_dlq.{}", self.settings.subject_prefix, spec.durable),
            held_back: None,
        }))
    }

    fn fans_out(&self) -> bool {
        true
    }

    async fn notify(&self, topic: &str, payload: Bytes) -> anyhow::Result<()> {
        self.js
            .client()
            .publish(self.notice_subject(topic), payload)
            .await
            .context("publishing a notice")
    }

    async fn notices(&self, topic: &str) -> anyhow::Result<Option<BoxStream<'static, Bytes>>> {
        let subscriber = self
            .js
            .client()
            .subscribe(self.notice_subject(topic))
            .await
            .context("listening for notices")?;
        Ok(Some(subscriber.map(|m| m.payload).boxed()))
    }

    async fn pending(&self, durable: &str) -> anyhow::Result<Option<u64>> {
        self.ensure_streams().await?;
        let stream = self.js.get_stream(&self.settings.stream).await?;
        Ok(stream
            .consumer_info(durable)
            .await
            .ok()
            .map(|info| info.num_pending + info.num_ack_pending as u64))
    }

    async fn history(&self, after: u64, max: usize) -> anyhow::Result<Vec<Stored>> {
        self.ensure_streams().await?;
        let mut stream = self.js.get_stream(&self.settings.stream).await?;
        let state = stream.info().await?.state.clone();
        let prefix = format!("{}.", self.settings.subject_prefix);
        let mut events = Vec::new();
        let mut seq = (after + 1).max(state.first_sequence);
        while seq <= state.last_sequence && events.len() < max {
            match stream.get_raw_message(seq).await {
                Ok(message) => events.push(Stored {
                    seq,
                    subject: message
                        .subject
                        .as_str()
                        .strip_prefix(&prefix)
                        .unwrap_or(message.subject.as_str())
                        .to_owned(),
                    payload: message.payload,
                }),
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(e).context("reading the stream"),
            }
            seq += 1;
        }
        Ok(events)
    }

    async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        self.ensure_streams().await?;
        let mut stream = self.js.get_stream(self.dlq_stream()).await?;
        let state = stream.info().await?.state.clone();
        let mut letters = Vec::new();
        if state.messages == 0 {
            return Ok(letters);
        }
        for seq in state.first_sequence..=state.last_sequence {
            match stream.get_raw_message(seq).await {
                Ok(raw) => {
                    if let Some(letter) = self.dead_letter_of(seq, raw) {
                        letters.push(letter);
                    }
                }
                // A replayed one leaves a gap.
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(e).context("reading a dead letter"),
            }
        }
        Ok(letters)
    }

    async fn replay_dead_letter(&self, id: u64) -> anyhow::Result<bool> {
        self.ensure_streams().await?;
        let stream = self.js.get_stream(self.dlq_stream()).await?;
        let raw = match stream.get_raw_message(id).await {
            Ok(raw) => raw,
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                return Ok(false);
            }
            Err(e) => return Err(e).context("reading the dead letter"),
        };
        let Some(letter) = self.dead_letter_of(id, raw) else {
            return Ok(false);
        };
        let subject = format!("{}.{}", self.settings.subject_prefix, letter.subject);
        // Its own message id: the original's may still be inside the
        // stream's de-duplication window.
        let msg = jetstream::message::PublishMessage::build()
            .payload(letter.payload)
            .message_id(format!("replay-{}-{id}", self.dlq_stream()));
        self.js
            .send_publish(subject, msg)
            .await?
            .await
            .context("publishing the event again")?;
        stream
            .delete_message(id)
            .await
            .context("removing the replayed dead letter")?;
        Ok(true)
    }

    async fn reset(&self, durable: &str) -> anyhow::Result<()> {
        self.ensure_streams().await?;
        let stream = self.js.get_stream(&self.settings.stream).await?;
        if stream.consumer_info(durable).await.is_ok() {
            stream
                .delete_consumer(durable)
                .await
                .with_context(|| format!("deleting the consumer {durable}"))?;
        }
        Ok(())
    }
}

struct NatsSubscription {
    messages: consumer::pull::Stream,
    js: jetstream::Context,
    dlq_subject: String,
    /// What the stream said after the last batch was taken, told next time.
    held_back: Option<Option<Result<jetstream::Message, anyhow::Error>>>,
}

impl NatsSubscription {
    fn delivery(&self, message: jetstream::Message) -> Box<dyn Delivery> {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        Box::new(NatsDelivery {
            message,
            delivered,
            js: self.js.clone(),
            dlq_subject: self.dlq_subject.clone(),
        })
    }

    async fn receive(&mut self) -> Option<Result<jetstream::Message, anyhow::Error>> {
        if let Some(held) = self.held_back.take() {
            return held;
        }
        self.messages
            .next()
            .await
            .map(|r| r.map_err(|e| anyhow::Error::new(e).context("receiving events")))
    }
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> anyhow::Result<Option<Box<dyn Delivery>>> {
        match self.receive().await {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(message)) => Ok(Some(self.delivery(message))),
        }
    }

    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Option<Vec<Box<dyn Delivery>>>> {
        let Some(first) = self.next().await? else {
            return Ok(None);
        };
        let mut batch = vec![first];
        // The messages the client has pulled already; polling the stream's
        // `next` once and dropping it loses nothing.
        while batch.len() < max {
            match self.messages.next().now_or_never() {
                None => break,
                Some(Some(Ok(message))) => batch.push(self.delivery(message)),
                Some(other) => {
                    self.held_back =
                        Some(other.map(|r| {
                            r.map_err(|e| anyhow::Error::new(e).context("receiving events"))
                        }));
                    break;
                }
            }
        }
        Ok(Some(batch))
    }
}

struct NatsDelivery {
    message: jetstream::Message,
    delivered: i64,
    js: jetstream::Context,
    dlq_subject: String,
}

#[async_trait]
impl Delivery for NatsDelivery {
    fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    fn delivered(&self) -> i64 {
        self.delivered
    }

    fn traceparent(&self) -> Option<String> {
        self.message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned())
    }

    async fn ack(&self) -> anyhow::Result<()> {
        self.message.ack().await.map_err(anyhow::Error::from_boxed)
    }

    async fn nak(&self, delay: Duration) -> anyhow::Result<()> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(anyhow::Error::from_boxed)
    }

    async fn in_progress(&self) -> anyhow::Result<()> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(anyhow::Error::from_boxed)
    }

    async fn dead_letter(&self, reason: &str) -> anyhow::Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Rentalbook-Original-Subject", self.subject());
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect();
        headers.insert("Rentalbook-Dead-Letter-Reason", reason.as_str());
        headers.insert(
            "Rentalbook-Dead-Lettered-At",
            crate::time::now().to_rfc3339().as_str(),
        );
        // One dead letter per stream message and consumer, however often
        // this is tried.
        let seq = self.message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let msg = jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(self.message.payload.clone())
            .message_id(format!("{}#{seq}", self.dlq_subject));
        self.js
            .send_publish(self.dlq_subject.clone(), msg)
            .await?
            .await
            .context("storing a dead letter")?;
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(anyhow::Error::from_boxed)
    }
}
