//! A redelivered event changes nothing (SPEC §4 E2): every event of a
//! workload published again (same envelope, new publish id), a second
//! BookReturned for a rental already returned, and a poison message that is
//! not an event at all. Each runs on NATS JetStream with PostgreSQL and on
//! the embedded bus with SQLite.

mod support;

use prost::Message;
use rentalbook_plumbing::bus::{DeadLetter, EventBus, Outgoing};
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
use rentalbook_proto::view::v1::{GetMyPageRequest, MyPage};
use support::{Mesh, Options, Store, eventually, librarian, member, req};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Every durable consumer of the mesh.
const CONSUMERS: [&str; 10] = [
    "book-svc",
    "reserve-svc-books",
    "reserve-svc-returns",
    "reserve-svc-erasures",
    "rental-svc",
    "rental-svc-losses",
    "rental-svc-books",
    "rental-svc-erasures",
    "view-svc",
    "notice-svc",
];

const MEMBERS: [&str; 3] = ["alice", "bob", "carol"];

async fn start(store: Store) -> Mesh {
    Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await
}

async fn dead_letters(bus: &dyn EventBus) -> Vec<DeadLetter> {
    bus.dead_letters().await.expect("reading the dead letters")
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
    /// Each member's My Page, without the moment it was read.
    pages: Vec<MyPage>,
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
    let mut pages = Vec::new();
    let mut views = mesh.views().await;
    for m in MEMBERS {
        let mut page = views
            .get_my_page(req(
                &lib,
                GetMyPageRequest {
                    member_id: m.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        page.generated_at = None;
        pages.push(page);
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
        pages,
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

both_backends!(redelivering_every_event_of_the_stream_changes_nothing);
async fn redelivering_every_event_of_the_stream_changes_nothing(store: Store) {
    let mesh = start(store).await;
    let bus = mesh.event_bus().await;
    let lent = lend_and_return(&mesh).await;
    let last = mesh.quiet(&CONSUMERS).await;
    let before = state(&mesh, &lent).await;
    assert_lending_state(&before);

    // Every event again, same subject and envelope, a new publish id.
    let stored = bus.history(0, usize::MAX).await.unwrap();
    assert_eq!(stored.len() as u64, last);
    for event in &stored {
        let envelope = Envelope::decode(event.payload.clone())
            .unwrap_or_else(|e| panic!("event {} is not an envelope: {e}", event.seq));
        assert!(!envelope.event_id.is_empty());
        bus.publish(&[Outgoing {
            event_id: format!("redelivery-{}", uuid::Uuid::now_v7()),
            subject: event.subject.clone(),
            payload: event.payload.clone(),
            traceparent: None,
        }])
        .await
        .expect("publishing again");
    }

    let after_last = mesh.quiet(&CONSUMERS).await;
    assert_eq!(
        after_last,
        2 * last,
        "{store:?}: every copy was stored and caused no new events"
    );
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
    assert_eq!(after.pages, before.pages, "My Page");
    assert_eq!(after, before);
    assert!(
        dead_letters(bus.as_ref()).await.is_empty(),
        "no redelivered event was dead-lettered"
    );
}

both_backends!(a_second_book_returned_for_the_same_rental_changes_nothing);
async fn a_second_book_returned_for_the_same_rental_changes_nothing(store: Store) {
    let mesh = start(store).await;
    let bus = mesh.event_bus().await;
    let lent = lend_and_return(&mesh).await;
    let last = mesh.quiet(&CONSUMERS).await;
    let before = state(&mesh, &lent).await;
    assert_lending_state(&before);

    // A new BookReturned (a new event id, so the inbox does not know it)
    // for the rental that was returned and recorded already, once as the
    // fallback path sends it and once as confirmed.
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
                barcode: String::new(),
            })),
        };
        bus.publish(&[Outgoing {
            event_id: envelope.event_id.clone(),
            subject: "rental.returned".into(),
            payload: envelope.encode_to_vec().into(),
            traceparent: None,
        }])
        .await
        .unwrap();
    }

    let after_last = mesh.quiet(&CONSUMERS).await;
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
    assert!(dead_letters(bus.as_ref()).await.is_empty());
}

both_backends!(a_poison_message_is_dead_lettered_and_the_services_go_on);
async fn a_poison_message_is_dead_lettered_and_the_services_go_on(store: Store) {
    let mesh = start(store).await;
    let bus = mesh.event_bus().await;
    let warm_up = mesh.register_book("Before the poison", 1).await;
    mesh.reserve(&member("zoe"), &warm_up.book_id)
        .await
        .unwrap();
    let last = mesh.quiet(&CONSUMERS).await;
    assert!(dead_letters(bus.as_ref()).await.is_empty());

    // Not an envelope: not even valid protobuf.
    let poison: &[u8] = b"\xff\xfe\xfd this is not a rentalbook event";
    assert!(Envelope::decode(poison).is_err());
    bus.publish(&[Outgoing {
        event_id: "poison-1".into(),
        subject: "book.registered".into(),
        payload: poison.to_vec().into(),
        traceparent: None,
    }])
    .await
    .unwrap();
    let after_poison = mesh.quiet(&CONSUMERS).await;
    assert_eq!(after_poison, last + 1, "the poison caused no events");

    // Each consumer that reads book.registered moved it to the dead letters
    // once (at once: it can never be decoded); no other consumer did.
    let letters = dead_letters(bus.as_ref()).await;
    let mut readers: Vec<&str> = letters.iter().map(|l| l.consumer.as_str()).collect();
    readers.sort();
    assert_eq!(
        readers,
        ["notice-svc", "reserve-svc-books", "view-svc"],
        "{store:?}: one dead letter per consumer of book.registered"
    );
    for letter in &letters {
        assert_eq!(letter.payload.as_ref(), poison, "{}", letter.consumer);
        assert_eq!(letter.subject, "book.registered");
        assert!(!letter.reason.is_empty());
        assert!(letter.stored_at.is_some());
    }

    // Every service is still SERVING ...
    for addr in [
        mesh.book_addr(),
        mesh.reserve_addr(),
        mesh.rental_addr(),
        mesh.view_addr(),
    ] {
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
    mesh.quiet(&CONSUMERS).await;
    assert_lending_state(&state(&mesh, &lent).await);
    let ids = |letters: &[DeadLetter]| letters.iter().map(|l| l.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&dead_letters(bus.as_ref()).await),
        ids(&letters),
        "nothing else was dead-lettered"
    );

    // Replayed, the event comes back to every consumer of its subject
    // (those that applied an event drop its copy by their inbox); still
    // poison, it is dead-lettered again by each: kept, never lost.
    let desk_letter = letters
        .iter()
        .find(|l| l.consumer == "reserve-svc-books")
        .unwrap();
    // By `rentalbook dead-letters replay`, a process of its own beside the
    // running services, as an operator replays them.
    let replay = || {
        mesh.dead_letters_command()
            .args(["replay", &desk_letter.id.to_string()])
            .output()
            .expect("running rentalbook dead-letters")
    };
    let replayed = replay();
    assert!(replayed.status.success(), "{replayed:?}");
    assert_eq!(
        String::from_utf8_lossy(&replayed.stdout).trim(),
        format!("replayed {}", desk_letter.id)
    );
    let again = replay();
    assert!(!again.status.success(), "replayed once only: {again:?}");
    mesh.quiet(&CONSUMERS).await;
    let again = dead_letters(bus.as_ref()).await;
    let mut consumers: Vec<&str> = again.iter().map(|l| l.consumer.as_str()).collect();
    consumers.sort();
    assert_eq!(
        consumers,
        [
            "notice-svc",
            "notice-svc",
            "reserve-svc-books",
            "view-svc",
            "view-svc"
        ],
        "{again:?}"
    );
    assert!(!ids(&again).contains(&desk_letter.id));
}
