//! The outbox relays of two replicas on one PostgreSQL database: a replica
//! whose relay finds the other's at work when its own commit wakes it
//! publishes as soon as the other is done, not at its next poll.

use std::time::{Duration, Instant};

use rentalbook_plumbing::bus::{ConsumerSpec, EventBus, NatsBus, NatsSettings};
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::outbox::{Relay, stage};
use rentalbook_plumbing::schema::PlumbingTables;
use rentalbook_proto::events::v1::BookRegistered;
use rentalbook_proto::events::v1::envelope::Body;
use sea_orm_migration::{MigrationTrait, SchemaManager};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_publishes_as_soon_as_the_other_replicas_relay_is_done() {
    let stream = rentalbook_testkit::unique_name("OB");
    let bus = NatsBus::connect(NatsSettings {
        url: rentalbook_testkit::nats_url().await,
        subject_prefix: stream.to_lowercase(),
        stream,
        max_age: None,
        replicas: 1,
        client_name: "outbox-test".into(),
    })
    .await
    .unwrap();
    let url = rentalbook_testkit::fresh_postgres_url().await;
    let (a, b) = (
        Db::connect(&url, 4).await.unwrap(),
        Db::connect(&url, 4).await.unwrap(),
    );
    PlumbingTables
        .up(&SchemaManager::new(a.conn()))
        .await
        .unwrap();
    let mut published = bus
        .subscribe(&ConsumerSpec {
            durable: "watcher".into(),
            filter: String::new(),
            max_deliver: 3,
            ack_wait: Duration::from_secs(5),
        })
        .await
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(Relay::new(a.clone(), bus.clone(), "replica-a").run(stop.clone()));
    // Let the relay settle into waiting for a commit.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Replica b's relay is at work (it holds the relay lock) when replica
    // a commits an event.
    let busy = b.begin().await.unwrap();
    busy.lock("outbox", "relay").await.unwrap();
    let mut tx = a.begin().await.unwrap();
    let body = Body::BookRegistered(BookRegistered {
        book_id: "b1".into(),
        ..Default::default()
    });
    stage(&mut tx, "replica-a", rentalbook_plumbing::time::now(), body)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    busy.rollback().await.unwrap();
    let done = Instant::now();

    let event = tokio::time::timeout(Duration::from_secs(5), published.next())
        .await
        .expect("the event is published")
        .unwrap()
        .unwrap();
    event.ack().await.unwrap();
    // The relay polls every second on its own: well under that means it was
    // waiting for the lock, not for its next poll.
    let waited = done.elapsed();
    assert!(
        waited < Duration::from_millis(500),
        "published {waited:?} after the other relay was done"
    );
    stop.cancel();
}
