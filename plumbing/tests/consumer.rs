//! The consumer against real buses and a real database: its own trouble
//! never dead-letters an event, a poison event is dead-lettered after its
//! tries, nothing behind a held event is applied before it, and two
//! consumers' batches never deadlock each other. Each test runs on NATS
//! JetStream with PostgreSQL and on the embedded bus with SQLite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prost::Message;
use rentalbook_plumbing::bus::{ConsumerSpec, EventBus, NatsBus, NatsSettings, Outgoing};
use rentalbook_plumbing::consumer::{Consumer, EventHandler, Poison};
use rentalbook_plumbing::db::{Db, WriteTx};
use rentalbook_plumbing::embedded_bus::EmbeddedBus;
use rentalbook_plumbing::schema::PlumbingTables;
use rentalbook_proto::events::v1::{BookRegistered, Envelope, envelope::Body};
use sea_orm_migration::{MigrationTrait, SchemaManager};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug)]
enum Backend {
    /// NATS JetStream and PostgreSQL, as in the mesh.
    Mesh,
    /// The embedded bus and SQLite, as in the all-in-one.
    AllInOne,
}

struct Setup {
    db: Db,
    bus: Arc<dyn EventBus>,
    _dir: tempfile::TempDir,
}

async fn setup(backend: Backend) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (db, bus): (Db, Arc<dyn EventBus>) = match backend {
        Backend::Mesh => {
            let stream = rentalbook_testkit::unique_name("CT");
            let bus = NatsBus::connect(NatsSettings {
                url: rentalbook_testkit::nats_url().await,
                subject_prefix: stream.to_lowercase(),
                stream,
                max_age: None,
                replicas: 1,
                client_name: "consumer-test".into(),
            })
            .await
            .unwrap();
            let db = Db::connect(&rentalbook_testkit::fresh_postgres_url().await, 8)
                .await
                .unwrap();
            (db, bus)
        }
        Backend::AllInOne => {
            let url = |f: &str| format!("sqlite://{}", dir.path().join(f).display());
            let bus = EmbeddedBus::open(&url("events.db")).await.unwrap();
            let db = Db::connect(&url("service.db"), 8).await.unwrap();
            (db, bus)
        }
    };
    PlumbingTables
        .up(&SchemaManager::new(db.conn()))
        .await
        .unwrap();
    Setup { db, bus, _dir: dir }
}

fn event(id: &str, book: &str) -> Outgoing {
    let envelope = Envelope {
        event_id: id.into(),
        body: Some(Body::BookRegistered(BookRegistered {
            book_id: book.into(),
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

fn spec(durable: &str, max_deliver: i64) -> ConsumerSpec {
    ConsumerSpec {
        durable: durable.into(),
        filter: "book.>".into(),
        max_deliver,
        ack_wait: Duration::from_millis(600),
    }
}

/// Records what it applied (committed), in order; fails as the test says.
#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<String>>,
    tries: Mutex<HashMap<String, u32>>,
    /// While set, every apply fails as if the database were away.
    database_away: AtomicBool,
    /// Events the handler refuses as poison.
    poison: Vec<String>,
    /// Held inside the transaction after taking the event's lock.
    linger: Duration,
    /// Events the handler says have no effect here.
    ignored: Vec<String>,
}

fn book_of(event: &Envelope) -> String {
    match &event.body {
        Some(Body::BookRegistered(e)) => e.book_id.clone(),
        _ => String::new(),
    }
}

#[async_trait]
impl EventHandler for Recorder {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        *self
            .tries
            .lock()
            .unwrap()
            .entry(event.event_id.clone())
            .or_default() += 1;
        if self.database_away.load(Ordering::SeqCst) {
            anyhow::bail!("connection refused");
        }
        if self.poison.contains(&event.event_id) {
            return Err(Poison::error("this book cannot exist"));
        }
        tx.lock("book", &book_of(event)).await?;
        tokio::time::sleep(self.linger).await;
        Ok(())
    }

    async fn after_commit(&self, event: &Envelope) {
        self.applied.lock().unwrap().push(event.event_id.clone());
    }

    fn locks(&self, event: &Envelope) -> Vec<(&'static str, String)> {
        vec![("book", book_of(event))]
    }

    fn ignores(&self, event: &Envelope) -> bool {
        self.ignored.contains(&event.event_id)
    }
}

impl Recorder {
    fn applied(&self) -> Vec<String> {
        self.applied.lock().unwrap().clone()
    }

    fn tries(&self, id: &str) -> u32 {
        self.tries.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

fn start(s: &Setup, spec: ConsumerSpec, handler: Arc<Recorder>) -> CancellationToken {
    let stop = CancellationToken::new();
    let consumer = Consumer::new(s.db.clone(), s.bus.clone(), spec, handler);
    tokio::spawn(consumer.run(stop.clone()));
    stop
}

async fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The consumer's database is away for several times what `max_deliver`
/// tries took before: nothing is dead-lettered, the service says it is
/// stalled meanwhile, nothing behind the held event is applied before it,
/// and every event is applied once when the trouble passes.
async fn an_outage_of_its_own_holds_the_events_and_dead_letters_nothing(backend: Backend) {
    let s = setup(backend).await;
    let handler = Arc::new(Recorder::default());
    handler.database_away.store(true, Ordering::SeqCst);
    s.bus
        .publish(&[event("e1", "b1"), event("e2", "b2"), event("e3", "b1")])
        .await
        .unwrap();
    let stop = start(&s, spec("outage", 3), handler.clone());

    // Three tries would have taken 0.3 s; stay away ten times as long, past
    // the ack wait too.
    until("the consumer to try", Duration::from_secs(10), || {
        handler.tries("e1") >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.db.stalled(), vec!["outage".to_owned()], "{backend:?}");
    assert!(handler.applied().is_empty());
    assert_eq!(
        handler.tries("e2"),
        0,
        "nothing behind e1 is tried before it"
    );
    assert_eq!(
        s.bus.pending("outage").await.unwrap(),
        Some(3),
        "{backend:?}"
    );
    assert_eq!(s.bus.pending("nobody").await.unwrap(), None);
    let history = s.bus.history(0, 10).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| e.subject.as_str())
            .collect::<Vec<_>>(),
        ["book.registered"; 3]
    );
    assert_eq!(s.bus.history(history[1].seq, 10).await.unwrap().len(), 1);
    assert!(
        s.bus.dead_letters().await.unwrap().is_empty(),
        "{backend:?}"
    );

    handler.database_away.store(false, Ordering::SeqCst);
    until("every event applied", Duration::from_secs(15), || {
        handler.applied().len() == 3
    })
    .await;
    assert_eq!(handler.applied(), ["e1", "e2", "e3"], "in order, once each");
    let mut pending = None;
    for _ in 0..50 {
        pending = s.bus.pending("outage").await.unwrap();
        if pending == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pending, Some(0), "{backend:?}: every event acknowledged");
    assert!(s.db.stalled().is_empty(), "{backend:?}: serving again");
    assert!(
        s.bus.dead_letters().await.unwrap().is_empty(),
        "{backend:?}"
    );

    // Redelivered copies (the ack waits that passed meanwhile) change nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(handler.applied(), ["e1", "e2", "e3"]);
    stop.cancel();
}

/// Events the handler ignores are acknowledged without being applied or
/// given an inbox row, and the ones between them are applied in order.
async fn ignored_events_are_passed_over(backend: Backend) {
    use rentalbook_plumbing::schema::inbox;
    use sea_orm::{EntityTrait, QueryOrder};
    let s = setup(backend).await;
    let handler = Arc::new(Recorder {
        ignored: vec!["e1".into(), "e3".into(), "e4".into()],
        ..Recorder::default()
    });
    let stop = start(&s, spec("ignoring", 3), handler.clone());
    s.bus
        .publish(&[event("e1", "b1"), event("e2", "b1")])
        .await
        .unwrap();
    s.bus
        .publish(&[event("e3", "b2"), event("e4", "b2")])
        .await
        .unwrap();
    s.bus.publish(&[event("e5", "b1")]).await.unwrap();
    until("the others applied", Duration::from_secs(10), || {
        handler.applied().len() == 2
    })
    .await;
    assert_eq!(handler.applied(), ["e2", "e5"], "{backend:?}");
    for id in ["e1", "e3", "e4"] {
        assert_eq!(handler.tries(id), 0, "{backend:?}: {id} not applied");
    }
    let rows: Vec<String> = inbox::Entity::find()
        .order_by_asc(inbox::Column::EventId)
        .all(s.db.conn())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert_eq!(rows, ["e2", "e5"], "{backend:?}: inbox rows");
    let mut pending = None;
    for _ in 0..100 {
        pending = s.bus.pending("ignoring").await.unwrap();
        if pending == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pending, Some(0), "{backend:?}: every event acknowledged");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_events_are_passed_over_on_nats_and_postgres() {
    ignored_events_are_passed_over(Backend::Mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_events_are_passed_over_on_the_embedded_bus() {
    ignored_events_are_passed_over(Backend::AllInOne).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_its_own_dead_letters_nothing_on_nats_and_postgres() {
    an_outage_of_its_own_holds_the_events_and_dead_letters_nothing(Backend::Mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_its_own_dead_letters_nothing_on_the_embedded_bus() {
    an_outage_of_its_own_holds_the_events_and_dead_letters_nothing(Backend::AllInOne).await;
}

/// A poison event is tried `max_deliver` times, then dead-lettered, and
/// the events behind it are applied after it; a replayed dead letter comes
/// back to the consumer.
async fn a_poison_event_is_dead_lettered_after_its_tries(backend: Backend) {
    let s = setup(backend).await;
    let handler = Arc::new(Recorder {
        poison: vec!["bad".into()],
        ..Default::default()
    });
    s.bus
        .publish(&[event("e1", "b1"), event("bad", "b2"), event("e2", "b1")])
        .await
        .unwrap();
    let stop = start(&s, spec("poison", 3), handler.clone());
    until(
        "the events around the poison",
        Duration::from_secs(15),
        || handler.applied().len() == 2,
    )
    .await;
    assert_eq!(handler.applied(), ["e1", "e2"]);
    // Its own three tries, and one more if it came in a batch with others.
    assert!(
        (3..=4).contains(&handler.tries("bad")),
        "{backend:?}: {} tries",
        handler.tries("bad")
    );
    let letters = s.bus.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{backend:?}");
    assert_eq!(letters[0].consumer, "poison");
    assert_eq!(letters[0].subject, "book.registered");
    assert!(letters[0].reason.contains("cannot exist"), "{letters:?}");
    assert!(s.db.stalled().is_empty(), "poison is not an outage");
    stop.cancel();

    // Mended (the handler accepts it now) and replayed: applied once.
    let mended = Arc::new(Recorder::default());
    let stop = start(&s, spec("poison", 3), mended.clone());
    assert!(s.bus.replay_dead_letter(letters[0].id).await.unwrap());
    until("the replayed event", Duration::from_secs(15), || {
        mended.applied() == ["bad"]
    })
    .await;
    assert!(s.bus.dead_letters().await.unwrap().is_empty());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_on_nats_and_postgres() {
    a_poison_event_is_dead_lettered_after_its_tries(Backend::Mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_on_the_embedded_bus() {
    a_poison_event_is_dead_lettered_after_its_tries(Backend::AllInOne).await;
}

/// Two consumers of one database whose batches touch the same two books in
/// opposite orders: with the locks taken in one order first, neither
/// transaction is aborted as a deadlock, so each event is tried once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_two_consumers_never_deadlock() {
    let s = setup(Backend::Mesh).await;
    let first = Arc::new(Recorder {
        linger: Duration::from_millis(300),
        ..Default::default()
    });
    let second = Arc::new(Recorder {
        linger: Duration::from_millis(300),
        ..Default::default()
    });
    s.bus
        .publish(&[event("a1", "book-a"), event("a2", "book-b")])
        .await
        .unwrap();
    let mut reversed = event("b1", "book-b");
    reversed.subject = "book.copies_added".into();
    let mut reversed_2 = event("b2", "book-a");
    reversed_2.subject = "book.copies_added".into();
    s.bus.publish(&[reversed, reversed_2]).await.unwrap();
    let only = |durable: &str, filter: &str| ConsumerSpec {
        filter: filter.into(),
        ..spec(durable, 3)
    };
    let stop_first = start(&s, only("first", "book.registered"), first.clone());
    let stop_second = start(&s, only("second", "book.copies_added"), second.clone());
    until("both batches", Duration::from_secs(20), || {
        first.applied().len() == 2 && second.applied().len() == 2
    })
    .await;
    for (handler, ids) in [(&first, ["a1", "a2"]), (&second, ["b1", "b2"])] {
        for id in ids {
            assert_eq!(handler.tries(id), 1, "{id} was aborted and tried again");
        }
    }
    stop_first.cancel();
    stop_second.cancel();
}

/// A durable consumer made by an earlier version, with a server-side
/// delivery limit past which NATS would stop redelivering without a word,
/// is brought to the current settings when the consumer starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_nats_consumer_gets_the_current_settings() {
    let stream = rentalbook_testkit::unique_name("CU");
    let prefix = stream.to_lowercase();
    let nats_url = rentalbook_testkit::nats_url().await;
    let bus = NatsBus::connect(NatsSettings {
        url: nats_url.clone(),
        subject_prefix: prefix.clone(),
        stream: stream.clone(),
        max_age: None,
        replicas: 1,
        client_name: "consumer-test".into(),
    })
    .await
    .unwrap();
    bus.publish(&[event("e1", "b1")]).await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    let nats_stream = js.get_stream(&stream).await.unwrap();
    nats_stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("older".into()),
            filter_subject: format!("{prefix}.book.>"),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: 9,
            ..Default::default()
        })
        .await
        .unwrap();

    let _subscription = bus.subscribe(&spec("older", 3)).await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        nats_stream.get_consumer("older").await.unwrap();
    let config = &consumer.info().await.unwrap().config;
    assert_eq!(
        config.max_deliver, -1,
        "the server never gives up on an event"
    );
    assert_eq!(config.ack_wait, Duration::from_millis(600));
}
