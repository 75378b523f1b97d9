//! A service's own database and NATS going away (SPEC §5): health follows the
//! database only; a NATS outage is buffered by the outbox. A database that is
//! not migrated yet or hangs is answered UNAVAILABLE without waiting for it,
//! and the request ids kept in it are forgotten after their retention.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rentalbook_plumbing::bus::{NatsBus, NatsSettings};
use rentalbook_proto::book::v1::book_service_client::BookServiceClient;
use rentalbook_proto::book::v1::{GetBookRequest, RegisterBookRequest};
use rentalbook_testkit::{PrivateNats, PrivatePostgres};
use support::{eventually, librarian, req};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn start_book_svc(
    db_url: &str,
    nats_url: &str,
    stream: &str,
) -> (std::net::SocketAddr, CancellationToken) {
    start_book_svc_with(db_url, nats_url, stream, &[]).await
}

async fn start_book_svc_with(
    db_url: &str,
    nats_url: &str,
    stream: &str,
    extra: &[&str],
) -> (std::net::SocketAddr, CancellationToken) {
    let prefix = stream.to_lowercase();
    let args = [
        "book-svc",
        "--database-url",
        db_url,
        "--metrics-addr",
        "off",
        "--nats-stream",
        stream,
        "--nats-subject-prefix",
        &prefix,
        "--jwt-secret",
        support::SECRET,
    ];
    let config =
        <book_svc::Config as clap::Parser>::try_parse_from(args.iter().chain(extra)).unwrap();
    let bus = NatsBus::connect(NatsSettings {
        url: nats_url.to_owned(),
        stream: stream.to_owned(),
        subject_prefix: prefix,
        max_age: None,
        replicas: 1,
        client_name: "book-svc".into(),
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = book_svc::App::build_with(config, listener, bus as Arc<_>)
        .await
        .unwrap();
    let addr = app.local_addr();
    let stop = CancellationToken::new();
    tokio::spawn(app.run(stop.clone()));
    (addr, stop)
}

/// Readiness, as the readiness probe asks it: the service's own name.
async fn health(addr: std::net::SocketAddr) -> Option<i32> {
    health_of(addr, "rentalbook.book.v1.BookService").await
}

/// What the liveness and startup probes ask.
async fn liveness(addr: std::net::SocketAddr) -> Option<i32> {
    health_of(addr, rentalbook_plumbing::serve::LIVENESS).await
}

async fn health_of(addr: std::net::SocketAddr, service: &str) -> Option<i32> {
    let mut client = HealthClient::new(support::channel(addr).await);
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_and_requests_answer_unavailable_meanwhile() {
    let mut pg = PrivatePostgres::start_new().await.unwrap();
    let nats = rentalbook_testkit::nats_url().await;
    let stream = rentalbook_testkit::unique_name("OUT");
    let (addr, stop) = start_book_svc(&pg.url(), &nats, &stream).await;
    eventually("SERVING", || async {
        (health(addr).await? == ServingStatus::Serving as i32).then_some(())
    })
    .await;

    pg.stop().await;
    eventually("NOT_SERVING while the database is down", || async {
        (health(addr).await? == ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    assert_eq!(
        liveness(addr).await,
        Some(ServingStatus::Serving as i32),
        "a database outage does not fail liveness (no restart brings a database back)"
    );
    let mut books = rentalbook_proto::book::v1::book_service_client::BookServiceClient::new(
        support::channel(addr).await,
    );
    let err = books
        .get_book(req(
            &librarian(),
            GetBookRequest {
                book_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "a database outage is not an INTERNAL error: {err:?}"
    );

    pg.start().await.unwrap();
    eventually("SERVING again", || async {
        (health(addr).await? == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    let err = books
        .get_book(req(
            &librarian(),
            GetBookRequest {
                book_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_keeps_the_service_serving_and_the_outbox_delivers_afterwards() {
    let mut nats = PrivateNats::start_new().await.unwrap();
    let db = rentalbook_testkit::fresh_postgres_url().await;
    let stream = rentalbook_testkit::unique_name("OUT");
    let (addr, stop) = start_book_svc(&db, &nats.url(), &stream).await;
    eventually("SERVING", || async {
        (health(addr).await? == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    let mut books = rentalbook_proto::book::v1::book_service_client::BookServiceClient::new(
        support::channel(addr).await,
    );
    let register = |title: &str| {
        req(
            &librarian(),
            RegisterBookRequest {
                title: title.into(),
                author: "A".into(),
                total_copies: 1,
                ..Default::default()
            },
        )
    };
    books.register_book(register("Before")).await.unwrap();

    nats.stop().await;
    for i in 0..5 {
        books
            .register_book(register(&format!("During {i}")))
            .await
            .expect("registering works while NATS is away");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        health(addr).await,
        Some(ServingStatus::Serving as i32),
        "a NATS outage leaves it SERVING"
    );

    nats.start().await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    eventually("all six events in the stream", || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            let mut s = js.get_stream(&stream).await.ok()?;
            (s.info().await.ok()?.state.messages == 6).then_some(())
        }
    })
    .await;
    stop.cancel();
}

async fn books_client(addr: std::net::SocketAddr) -> BookServiceClient<Channel> {
    BookServiceClient::new(support::channel(addr).await)
}

fn register(title: &str, request_id: &str) -> tonic::Request<RegisterBookRequest> {
    req(
        &librarian(),
        RegisterBookRequest {
            title: title.into(),
            author: "A".into(),
            total_copies: 1,
            request_id: request_id.into(),
            ..Default::default()
        },
    )
}

fn get_unknown_book() -> tonic::Request<GetBookRequest> {
    req(
        &librarian(),
        GetBookRequest {
            book_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_its_migrations_ran_a_service_answers_starting_and_never_touches_the_tables() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db_url = rentalbook_testkit::fresh_postgres_url().await;
    // The migrator first creates its own table; one being created by an
    // open transaction holds it back until that transaction ends.
    let blocker = sea_orm::Database::connect(db_url.as_str()).await.unwrap();
    let held = blocker.begin().await.unwrap();
    held.execute_unprepared(
        "CREATE TABLE seaql_migrations (version varchar PRIMARY KEY, applied_at bigint NOT NULL)",
    )
    .await
    .unwrap();

    let nats = rentalbook_testkit::nats_url().await;
    let stream = rentalbook_testkit::unique_name("OUT");
    let (addr, stop) = start_book_svc(&db_url, &nats, &stream).await;
    eventually("the health service to answer", || async {
        (health(addr).await? == ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    let mut books = books_client(addr).await;
    let read = books.get_book(get_unknown_book()).await.unwrap_err();
    let write = books
        .register_book(register("Early", ""))
        .await
        .unwrap_err();
    for err in [read, write] {
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("starting"), "{err:?}");
        assert!(!err.message().contains("relation"), "{err:?}");
        assert!(
            rentalbook_plumbing::error::retry_after(&err).is_some(),
            "a retry hint: {err:?}"
        );
    }
    assert_eq!(
        health(addr).await,
        Some(ServingStatus::NotServing as i32),
        "NOT_SERVING until migrated"
    );
    assert_eq!(
        liveness(addr).await,
        Some(ServingStatus::Serving as i32),
        "alive while it waits for its migrations"
    );

    held.rollback().await.unwrap();
    eventually("SERVING once migrated", || async {
        (health(addr).await? == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    let err = books.get_book(get_unknown_book()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    books.register_book(register("Later", "")).await.unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_fails_calls_within_their_deadline_and_at_once_when_known_away() {
    let mut pg = PrivatePostgres::start_new().await.unwrap();
    let nats = rentalbook_testkit::nats_url().await;
    let stream = rentalbook_testkit::unique_name("OUT");
    let (addr, stop) = start_book_svc(&pg.url(), &nats, &stream).await;
    eventually("SERVING", || async {
        (health(addr).await? == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    let mut books = books_client(addr).await;
    books.register_book(register("Before", "")).await.unwrap();

    pg.pause();
    // Before the health check has noticed: the call's own deadline bounds it.
    let mut call = register("Hung", "");
    call.set_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let err = books.register_book(call).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        rentalbook_plumbing::error::retry_after(&err).is_some(),
        "a retry hint: {err:?}"
    );
    assert!(took < Duration::from_secs(2), "answered in {took:?}");

    eventually("NOT_SERVING while the database hangs", || async {
        (health(addr).await? == ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    // Known away: refused at once, whatever deadline the caller gave.
    let mut refusals = Vec::new();
    for _ in 0..3 {
        let mut write = register("Away", "");
        write.set_timeout(Duration::from_secs(10));
        let mut read = get_unknown_book();
        read.set_timeout(Duration::from_secs(10));
        let started = std::time::Instant::now();
        let err = books.register_book(write).await.unwrap_err();
        refusals.push((err, started.elapsed()));
        let started = std::time::Instant::now();
        let err = books.get_book(read).await.unwrap_err();
        refusals.push((err, started.elapsed()));
    }
    for (err, took) in &refusals {
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            rentalbook_plumbing::error::retry_after(err).is_some(),
            "a retry hint: {err:?}"
        );
        assert!(
            *took < Duration::from_millis(500),
            "refused at once, not after {took:?}"
        );
    }
    println!(
        "hung database: a 1 s call answered in {took:?}; known away, refused in {:?}",
        refusals.iter().map(|(_, t)| *t).collect::<Vec<_>>()
    );

    pg.resume();
    eventually("SERVING again", || async {
        (health(addr).await? == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    books.register_book(register("After", "")).await.unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_forgotten_after_their_retention_and_fresh_ones_kept() {
    use sea_orm::ConnectionTrait;
    let db_url = rentalbook_testkit::fresh_postgres_url().await;
    let nats = rentalbook_testkit::nats_url().await;
    let stream = rentalbook_testkit::unique_name("OUT");
    let (addr, stop) =
        start_book_svc_with(&db_url, &nats, &stream, &["--request-id-retention", "10s"]).await;
    eventually("SERVING", || async {
        (health(addr).await? == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    let mut books = books_client(addr).await;
    books
        .register_book(register("Old", "old-id"))
        .await
        .unwrap();
    books
        .register_book(register("Fresh", "fresh-id"))
        .await
        .unwrap();
    let db = sea_orm::Database::connect(db_url.as_str()).await.unwrap();
    db.execute_unprepared(
        "UPDATE idempotency_keys SET created_at = created_at - interval '1 hour' \
         WHERE request_id = 'old-id'",
    )
    .await
    .unwrap();
    let remembered = |id: &'static str| {
        let db = db.clone();
        async move {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    format!("SELECT 1 AS one FROM idempotency_keys WHERE request_id = '{id}'"),
                ))
                .await
                .unwrap();
            row.is_some()
        }
    };
    eventually("the old request id to be purged", || async {
        (!remembered("old-id").await).then_some(())
    })
    .await;
    assert!(remembered("fresh-id").await, "a fresh request id is kept");
    // Forgotten: the old id names a new request now. Kept: the fresh one
    // still refuses a different request.
    books
        .register_book(register("Another", "old-id"))
        .await
        .expect("a forgotten id is free again");
    let err = books
        .register_book(register("Another", "fresh-id"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    stop.cancel();
}
