//! A service's own database and NATS going away (SPEC §5): health follows the
//! database only; a NATS outage is buffered by the outbox.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rentalbook_plumbing::bus::{NatsBus, NatsSettings};
use rentalbook_proto::book::v1::{GetBookRequest, RegisterBookRequest};
use rentalbook_testkit::{PrivateNats, PrivatePostgres};
use support::{eventually, librarian, req};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn start_book_svc(
    db_url: &str,
    nats_url: &str,
    stream: &str,
) -> (std::net::SocketAddr, CancellationToken) {
    let prefix = stream.to_lowercase();
    let config = <book_svc::Config as clap::Parser>::try_parse_from([
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
    ])
    .unwrap();
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

async fn health(addr: std::net::SocketAddr) -> Option<i32> {
    let mut client = HealthClient::new(support::channel(addr).await);
    client
        .check(HealthCheckRequest {
            service: "rentalbook.book.v1.BookService".into(),
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
