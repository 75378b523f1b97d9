//! A redelivered event changes nothing (SPEC §4 E2): every event of a
//! workload published again (same envelope, new JetStream message id), a
//! second BookReturned for a rental already returned, and a poison message
//! that is not an event at all.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use futures::TryStreamExt;
use prost::Message;
use rentalbook_proto::book::v1::{Book, BookStatus, GetBookRequest};
use rentalbook_proto::events::v1::{BookReturned, Envelope, envelope::Body};
use rentalbook_proto::rental::v1::{
    GetRentalRequest, ListRentalsRequest, ListRentalsResponse, RentRequest, Rental, RentalStatus,
    ReturnConfirmation, ReturnRentalRequest,
};
use rentalbook_proto::reserve::v1::{
    GetReservationRequest, ListReservationsRequest, ListReservationsResponse, Reservation,
    ReservationStatus,
};
use support::{Mesh, eventually, librarian, member, req};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The durable consumers of the write side; view-svc's joins them when present.
const WRITE_SIDE_CONSUMERS: [&str; 4] = [
    "book-svc",
    "reserve-svc-books",
    "reserve-svc-returns",
    "rental-svc",
];

const MEMBERS: [&str; 3] = ["alice", "bob", "carol"];

async fn jetstream(mesh: &Mesh) -> jetstream::Context {
    let client = async_nats::connect(&mesh.nats_url)
        .await
        .expect("connecting to NATS");
    jetstream::new(client)
}

/// Names of every durable consumer of the test's stream, once the write
/// side's four exist.
async fn consumer_names(mesh: &Mesh, js: &jetstream::Context) -> Vec<String> {
    eventually("every service's durable consumer", || async {
        let stream = js.get_stream(&mesh.stream).await.ok()?;
        let names: Vec<String> = stream.consumer_names().try_collect().await.ok()?;
        WRITE_SIDE_CONSUMERS
            .iter()
            .all(|c| names.iter().any(|n| n == c))
            .then_some(names)
    })
    .await
}

async fn consumer_info(mesh: &Mesh, js: &jetstream::Context, name: &str) -> Option<consumer::Info> {
    let stream = js.get_stream(&mesh.stream).await.ok()?;
    stream.consumer_info(name).await.ok()
}

/// Waits until every durable consumer has nothing pending and nothing
/// unacknowledged and the stream has stopped growing (no relay has anything
/// left to publish); returns the stream's last sequence.
async fn quiet(mesh: &Mesh, js: &jetstream::Context, consumers: &[String]) -> u64 {
    let started = Instant::now();
    let mut last_seen = None;
    let mut calm = 0;
    loop {
        let mut stream = js.get_stream(&mesh.stream).await.expect("the stream");
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let mut drained = true;
        for name in consumers {
            drained &= match stream.consumer_info(name).await {
                Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
                Err(_) => false,
            };
        }
        if drained && last_seen == Some(last) {
            calm += 1;
            if calm >= 3 {
                return last;
            }
        } else {
            calm = 0;
        }
        last_seen = Some(last);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "timed out waiting for every consumer to apply every event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many messages the dead-letter stream holds, by subject.
async fn dead_letters(mesh: &Mesh, js: &jetstream::Context) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let Ok(mut dlq) = js.get_stream(format!("{}_DLQ", mesh.stream)).await else {
        return out;
    };
    let state = &dlq.info().await.expect("dead-letter stream info").state;
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let msg = dlq.get_raw_message(seq).await.expect("a dead letter");
        out.entry(msg.subject.to_string())
            .or_default()
            .push(msg.payload.to_vec());
    }
    out
}

/// The ids a workload made.
struct Lent {
    book_id: String,
    reservations: [String; 3],
    rental_id: String,
}

/// A one-copy book: alice READY, bob and carol WAITING; alice rents and
/// returns, so bob is READY and carol first in line. Returns once book-svc's
/// projection shows that final state.
async fn lend_and_return(mesh: &Mesh) -> Lent {
    let book = mesh.register_book("Redelivered", 1).await;
    let (alice, bob, carol) = (member("alice"), member("bob"), member("carol"));
    let a = mesh.reserve(&alice, &book.book_id).await.unwrap();
    let b = mesh.reserve(&bob, &book.book_id).await.unwrap();
    let c = mesh.reserve(&carol, &book.book_id).await.unwrap();
    assert_eq!(a.status(), ReservationStatus::Ready);
    assert_eq!(b.status(), ReservationStatus::Waiting);
    assert_eq!(c.queue_position, 2);
    let mut loans = mesh.rentals().await;
    let loan = loans
        .rent(req(
            &alice,
            RentRequest {
                book_id: book.book_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .expect("alice rents")
        .into_inner();
    let back = loans
        .return_rental(req(
            &alice,
            ReturnRentalRequest {
                rental_id: loan.rental_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .expect("alice returns")
        .into_inner();
    assert_eq!(back.status(), RentalStatus::Returned);
    assert_eq!(back.return_confirmation(), ReturnConfirmation::Confirmed);

    let books = mesh.books().await;
    let final_state = eventually("book-svc to show bob's hold and carol waiting", || {
        let mut books = books.clone();
        let book_id = book.book_id.clone();
        async move {
            let b = books
                .get_book(req(&librarian(), GetBookRequest { book_id }))
                .await
                .ok()?
                .into_inner();
            (b.held_copies == 1 && b.on_loan_copies == 0 && b.waiting == 1).then_some(b)
        }
    })
    .await;
    assert_eq!(final_state.status(), BookStatus::Reserved);
    assert_eq!(final_state.free_copies, 0);
    Lent {
        book_id: book.book_id,
        reservations: [a.reservation_id, b.reservation_id, c.reservation_id],
        rental_id: loan.rental_id,
    }
}

/// Everything a member or librarian can read about the workload.
#[derive(Debug, PartialEq)]
struct State {
    book: Book,
    reservations: Vec<Reservation>,
    rental: Rental,
    listed_reservations: Vec<ListReservationsResponse>,
    listed_rentals: Vec<ListRentalsResponse>,
}

async fn state(mesh: &Mesh, lent: &Lent) -> State {
    let lib = librarian();
    let book = mesh
        .books()
        .await
        .get_book(req(
            &lib,
            GetBookRequest {
                book_id: lent.book_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut desk = mesh.reservations().await;
    let mut reservations = Vec::new();
    for id in &lent.reservations {
        reservations.push(
            desk.get_reservation(req(
                &lib,
                GetReservationRequest {
                    reservation_id: id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner(),
        );
    }
    let mut loans = mesh.rentals().await;
    let rental = loans
        .get_rental(req(
            &lib,
            GetRentalRequest {
                rental_id: lent.rental_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut listed_reservations = Vec::new();
    let mut listed_rentals = Vec::new();
    for m in MEMBERS {
        listed_reservations.push(
            desk.list_reservations(req(&member(m), ListReservationsRequest::default()))
                .await
                .unwrap()
                .into_inner(),
        );
        listed_rentals.push(
            loans
                .list_rentals(req(&member(m), ListRentalsRequest::default()))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    State {
        book,
        reservations,
        rental,
        listed_reservations,
        listed_rentals,
    }
}

/// The workload's end state as the rules say it must be.
fn assert_lending_state(s: &State) {
    let [a, b, c] = &s.reservations[..] else {
        panic!("three reservations")
    };
    assert_eq!(a.status(), ReservationStatus::Fulfilled);
    assert_eq!(
        (b.status(), b.queue_position),
        (ReservationStatus::Ready, 0)
    );
    assert_eq!(
        (c.status(), c.queue_position),
        (ReservationStatus::Waiting, 1)
    );
    assert_eq!(
        (
            s.book.total_copies,
            s.book.free_copies,
            s.book.held_copies,
            s.book.on_loan_copies,
            s.book.waiting
        ),
        (1, 0, 1, 0, 1)
    );
    assert_eq!(s.rental.status(), RentalStatus::Returned);
    assert_eq!(
        s.rental.return_confirmation(),
        ReturnConfirmation::Confirmed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivering_every_event_of_the_stream_changes_nothing() {
    let mesh = Mesh::start().await;
    let js = jetstream(&mesh).await;
    let lent = lend_and_return(&mesh).await;
    let consumers = consumer_names(&mesh, &js).await;
    let last = quiet(&mesh, &js, &consumers).await;
    let before = state(&mesh, &lent).await;
    assert_lending_state(&before);
    let mut delivered_before = BTreeMap::new();
    for name in &consumers {
        let info = consumer_info(&mesh, &js, name)
            .await
            .expect("consumer info");
        delivered_before.insert(name.clone(), info.delivered.consumer_sequence);
    }

    // Every message again, same subject and envelope, new message id.
    let stream = js.get_stream(&mesh.stream).await.unwrap();
    let mut republished = 0u64;
    for seq in 1..=last {
        let msg = stream
            .get_raw_message(seq)
            .await
            .unwrap_or_else(|e| panic!("reading message {seq}: {e}"));
        let envelope = Envelope::decode(msg.payload.clone())
            .unwrap_or_else(|e| panic!("message {seq} is not an envelope: {e}"));
        assert!(!envelope.event_id.is_empty());
        let mut headers = HeaderMap::new();
        if let Some(tp) = msg.headers.get("traceparent") {
            headers.insert("traceparent", tp.as_str());
        }
        headers.insert(
            "Nats-Msg-Id",
            format!("redelivery-{}", uuid::Uuid::now_v7()).as_str(),
        );
        let ack = js
            .publish_with_headers(msg.subject.clone(), headers, msg.payload.clone())
            .await
            .expect("publishing again")
            .await
            .expect("JetStream stores the copy");
        assert!(
            !ack.duplicate,
            "message {seq} was taken for a duplicate: the new id must pass"
        );
        republished += 1;
    }
    assert_eq!(republished, last);

    let after_last = quiet(&mesh, &js, &consumers).await;
    assert_eq!(
        after_last,
        2 * last,
        "the redelivered events caused no new events"
    );
    for name in &consumers {
        let info = consumer_info(&mesh, &js, name)
            .await
            .expect("consumer info");
        let before = delivered_before[name];
        if before > 0 {
            assert!(
                info.delivered.consumer_sequence > before,
                "{name} got the copies ({before} -> {})",
                info.delivered.consumer_sequence
            );
        }
    }
    let after = state(&mesh, &lent).await;
    assert_eq!(after.book, before.book, "GetBook");
    for (i, (a, b)) in after
        .reservations
        .iter()
        .zip(&before.reservations)
        .enumerate()
    {
        assert_eq!(a, b, "GetReservation of {}'s reservation", MEMBERS[i]);
    }
    assert_eq!(after.rental, before.rental, "GetRental");
    assert_eq!(
        after.listed_reservations, before.listed_reservations,
        "ListReservations"
    );
    assert_eq!(after.listed_rentals, before.listed_rentals, "ListRentals");
    assert_eq!(after, before);
    assert!(
        dead_letters(&mesh, &js).await.is_empty(),
        "no redelivered event was dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_book_returned_for_the_same_rental_changes_nothing() {
    let mesh = Mesh::start().await;
    let js = jetstream(&mesh).await;
    let lent = lend_and_return(&mesh).await;
    let consumers = consumer_names(&mesh, &js).await;
    let last = quiet(&mesh, &js, &consumers).await;
    let before = state(&mesh, &lent).await;
    assert_lending_state(&before);

    // A new BookReturned (a new event id, so the inbox does not know it)
    // for the rental that was returned and recorded already, once as the
    // fallback path sends it and once as confirmed.
    let subject = format!("{}.rental.returned", mesh.prefix);
    for confirmation in [ReturnConfirmation::Pending, ReturnConfirmation::Confirmed] {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let envelope = Envelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: 0,
            }),
            producer: "rental-svc".into(),
            body: Some(Body::BookReturned(BookReturned {
                rental_id: lent.rental_id.clone(),
                book_id: lent.book_id.clone(),
                member_id: "alice".into(),
                returned_at: before.rental.returned_at,
                return_confirmation: confirmation as i32,
                reservation_id: lent.reservations[0].clone(),
            })),
        };
        let ack = js
            .publish(subject.clone(), envelope.encode_to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(!ack.duplicate);
    }

    let after_last = quiet(&mesh, &js, &consumers).await;
    assert_eq!(
        after_last,
        last + 2,
        "no ReturnRecorded or ReservationReady came of the second return"
    );
    let after = state(&mesh, &lent).await;
    assert_lending_state(&after);
    assert_eq!(
        after.reservations[2], before.reservations[2],
        "carol is still waiting, first in line"
    );
    assert_eq!(after.reservations[1], before.reservations[1], "bob's hold");
    assert_eq!(after.book, before.book, "the book's copies");
    assert_eq!(after, before);
    assert!(dead_letters(&mesh, &js).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_the_services_go_on() {
    let mesh = Mesh::start().await;
    let js = jetstream(&mesh).await;
    let warm_up = mesh.register_book("Before the poison", 1).await;
    mesh.reserve(&member("zoe"), &warm_up.book_id)
        .await
        .unwrap();
    let consumers = consumer_names(&mesh, &js).await;
    let last = quiet(&mesh, &js, &consumers).await;
    assert!(dead_letters(&mesh, &js).await.is_empty());

    // Not an envelope: not even valid protobuf.
    let poison: &[u8] = b"\xff\xfe\xfd this is not a rentalbook event";
    assert!(Envelope::decode(poison).is_err());
    let subject = format!("{}.book.registered", mesh.prefix);
    js.publish(subject.clone(), poison.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let after_poison = quiet(&mesh, &js, &consumers).await;
    assert_eq!(after_poison, last + 1, "the poison caused no events");

    // Each consumer that reads book.registered moved it to the dead-letter
    // stream once, on its own subject; no other consumer did.
    let mut readers = Vec::new();
    for name in &consumers {
        let info = consumer_info(&mesh, &js, name).await.unwrap();
        let filter = info.config.filter_subject.clone();
        if filter.is_empty()
            || filter == subject
            || filter == format!("{}.book.>", mesh.prefix)
            || filter == format!("{}.>", mesh.prefix)
        {
            readers.push(format!("{}_dlq.{name}", mesh.prefix));
        }
    }
    readers.sort();
    assert!(readers.contains(&format!("{}_dlq.reserve-svc-books", mesh.prefix)));
    let letters = dead_letters(&mesh, &js).await;
    assert_eq!(
        letters.keys().cloned().collect::<Vec<_>>(),
        readers,
        "one dead letter per consumer of book.registered"
    );
    for (dlq_subject, payloads) in &letters {
        assert_eq!(payloads, &vec![poison.to_vec()], "{dlq_subject}");
    }
    let reserve_dlq = js
        .get_stream(format!("{}_DLQ", mesh.stream))
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&format!("{}_dlq.reserve-svc-books", mesh.prefix))
        .await
        .unwrap();
    assert_eq!(
        reserve_dlq
            .headers
            .get("Rentalbook-Original-Subject")
            .map(|v| v.as_str().to_owned()),
        Some(subject.clone())
    );
    assert!(
        reserve_dlq
            .headers
            .get("Rentalbook-Dead-Letter-Reason")
            .is_some()
    );

    // Every service is still SERVING ...
    for addr in [mesh.book_addr(), mesh.reserve_addr(), mesh.rental_addr()] {
        let status = HealthClient::new(support::channel(addr).await)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{addr}");
    }

    // ... and a normal workload still flows through every consumer.
    let lent = lend_and_return(&mesh).await;
    quiet(&mesh, &js, &consumers).await;
    assert_lending_state(&state(&mesh, &lent).await);
    assert_eq!(
        dead_letters(&mesh, &js).await,
        letters,
        "nothing else was dead-lettered"
    );
}
