//! The lending rules R1–R8 (SPEC §3) against the real services, NATS
//! JetStream and PostgreSQL.

mod support;

use std::time::Duration;

use rentalbook_proto::book::v1::{AddCopiesRequest, BookStatus, GetBookRequest};
use rentalbook_proto::rental::v1::{GetRentalRequest, RentalStatus, ReturnConfirmation};
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, ListReservationsRequest, ReservationStatus,
};
use support::{Mesh, Options, Store, eventually, librarian, member, metadata, reason, req};
use tonic::Code;

both_backends!(r1_ready_at_once_then_waiting_in_order_and_unknown_books);
async fn r1_ready_at_once_then_waiting_in_order_and_unknown_books(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = mesh.register_book("R1", 1).await;

    let a = mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    assert_eq!(a.status(), ReservationStatus::Ready);
    assert_eq!(a.queue_position, 0);
    let deadline = a.pickup_deadline.unwrap();
    let created = a.created_at.unwrap();
    assert_eq!(deadline.seconds - created.seconds, 72 * 3600);

    let b = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    assert_eq!(b.status(), ReservationStatus::Waiting);
    assert_eq!(b.queue_position, 1);
    let c = mesh.reserve(&member("carol"), &book.book_id).await.unwrap();
    assert_eq!(c.queue_position, 2);

    let unknown = mesh
        .reservations()
        .await
        .reserve(req(
            &member("alice"),
            rentalbook_proto::reserve::v1::ReserveRequest {
                book_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(reason(&unknown), "BOOK_NOT_FOUND");
    assert!(
        unknown.message().contains("not known"),
        "{}",
        unknown.message()
    );

    // The catalogue's projection follows: one copy held, two waiting.
    let books = mesh.books().await;
    let status = eventually("book-svc to see the holds", || {
        let mut books = books.clone();
        let id = book.book_id.clone();
        async move {
            let b = books
                .get_book(req(&member("x"), GetBookRequest { book_id: id }))
                .await
                .ok()?
                .into_inner();
            (b.waiting == 2).then_some(b)
        }
    })
    .await;
    assert_eq!(status.status(), BookStatus::Reserved);
    assert_eq!((status.free_copies, status.held_copies), (0, 1));
}

both_backends!(r2_one_open_reservation_per_book_no_reserving_what_you_hold_and_a_limit);
async fn r2_one_open_reservation_per_book_no_reserving_what_you_hold_and_a_limit(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        max_open_reservations: 2,
        ..Options::default()
    })
    .await;
    let one = mesh.register_book("R2 one", 1).await;
    let two = mesh.register_book("R2 two", 1).await;
    let three = mesh.register_book("R2 three", 1).await;
    let alice = member("alice");

    mesh.reserve(&alice, &one.book_id).await.unwrap();
    let again = mesh.reserve(&alice, &one.book_id).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    assert_eq!(reason(&again), "ALREADY_RESERVED");
    assert_eq!(metadata(&again, "bookId"), one.book_id);

    mesh.reserve(&alice, &two.book_id).await.unwrap();
    let limit = mesh.reserve(&alice, &three.book_id).await.unwrap_err();
    assert_eq!(limit.code(), Code::FailedPrecondition);
    assert_eq!(reason(&limit), "TOO_MANY_RESERVATIONS");
    assert_eq!(metadata(&limit, "limit"), "2");
    assert!(
        limit.message().contains('2'),
        "names the limit: {}",
        limit.message()
    );

    // Rent book one; reserving it again while it is on loan is refused.
    mesh.rent(&alice, &one.book_id).await.unwrap();
    let on_loan = mesh.reserve(&alice, &one.book_id).await.unwrap_err();
    assert_eq!(on_loan.code(), Code::FailedPrecondition);
    assert_eq!(reason(&on_loan), "ALREADY_ON_LOAN");
    assert!(on_loan.message().contains("loan"), "{}", on_loan.message());
}

both_backends!(r3_a_freed_copy_goes_to_the_head_of_the_queue);
async fn r3_a_freed_copy_goes_to_the_head_of_the_queue(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = mesh.register_book("R3", 1).await;
    let (alice, bob, carol) = (member("alice"), member("bob"), member("carol"));
    let a = mesh.reserve(&alice, &book.book_id).await.unwrap();
    let b = mesh.reserve(&bob, &book.book_id).await.unwrap();
    let c = mesh.reserve(&carol, &book.book_id).await.unwrap();
    assert_eq!((b.queue_position, c.queue_position), (1, 2));

    // Cancelling a READY one hands the copy to bob; carol moves up.
    let cancelled = mesh
        .reservations()
        .await
        .cancel_reservation(req(
            &alice,
            CancelReservationRequest {
                reservation_id: a.reservation_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status(), ReservationStatus::Cancelled);
    let b = mesh.reservation(&bob, &b.reservation_id).await;
    assert_eq!(b.status(), ReservationStatus::Ready);
    assert!(b.pickup_deadline.is_some());
    assert_eq!(
        mesh.reservation(&carol, &c.reservation_id)
            .await
            .queue_position,
        1
    );

    // A return hands the copy to carol.
    let loan = mesh.rent(&bob, &book.book_id).await.unwrap();
    assert_eq!(
        mesh.reservation(&bob, &b.reservation_id).await.status(),
        ReservationStatus::Fulfilled
    );
    assert_eq!(
        mesh.reservation(&carol, &c.reservation_id).await.status(),
        ReservationStatus::Waiting
    );
    mesh.give_back(&bob, &loan.rental_id).await.unwrap();
    assert_eq!(
        mesh.reservation(&carol, &c.reservation_id).await.status(),
        ReservationStatus::Ready
    );

    // Added copies go to the waiting too.
    let dave = member("dave");
    let d = mesh.reserve(&dave, &book.book_id).await.unwrap();
    assert_eq!(d.status(), ReservationStatus::Waiting);
    mesh.books()
        .await
        .add_copies(req(
            &librarian(),
            AddCopiesRequest {
                book_id: book.book_id.clone(),
                copies: 1,
                request_id: String::new(),
                barcodes: Vec::new(),
            },
        ))
        .await
        .unwrap();
    eventually("dave's reservation to become READY", || {
        let mesh = &mesh;
        let (dave, id) = (dave.clone(), d.reservation_id.clone());
        async move {
            (mesh.reservation(&dave, &id).await.status() == ReservationStatus::Ready).then_some(())
        }
    })
    .await;
}

both_backends!(r4_an_uncollected_hold_expires_and_the_next_member_gets_the_copy);
async fn r4_an_uncollected_hold_expires_and_the_next_member_gets_the_copy(store: Store) {
    // bob's hold, promoted when alice's expires, must be seen READY within
    // the same window: 2 s leaves a loaded machine room for it.
    let mesh = Mesh::start_with(Options {
        store,
        pickup_window: "2s",
        sweep_interval: "100ms",
        ..Options::default()
    })
    .await;
    let book = mesh.register_book("R4", 1).await;
    let (alice, bob) = (member("alice"), member("bob"));
    let a = mesh.reserve(&alice, &book.book_id).await.unwrap();
    let b = mesh.reserve(&bob, &book.book_id).await.unwrap();
    assert_eq!(a.status(), ReservationStatus::Ready);

    let b = eventually("bob to be promoted after alice's hold expires", || {
        let mesh = &mesh;
        let (bob, id) = (bob.clone(), b.reservation_id.clone());
        async move {
            let r = mesh.reservation(&bob, &id).await;
            (r.status() == ReservationStatus::Ready).then_some(r)
        }
    })
    .await;
    assert_eq!(
        mesh.reservation(&alice, &a.reservation_id).await.status(),
        ReservationStatus::Expired
    );
    assert!(b.pickup_deadline.is_some());
    // An expired hold cannot be picked up.
    let late = mesh.rent(&alice, &book.book_id).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(reason(&late), "NO_READY_RESERVATION");
}

both_backends!(r6_rent_needs_a_ready_reservation_and_respects_the_loan_limit);
async fn r6_rent_needs_a_ready_reservation_and_respects_the_loan_limit(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        max_active_rentals: 1,
        loan_period: "14d",
        ..Options::default()
    })
    .await;
    let book = mesh.register_book("R6", 2).await;
    let other = mesh.register_book("R6 other", 1).await;
    let (alice, bob) = (member("alice"), member("bob"));
    // carol's hold makes sure the desk knows the book before alice tries.
    mesh.reserve(&member("carol"), &book.book_id).await.unwrap();

    let refused = mesh.rent(&alice, &book.book_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "NO_READY_RESERVATION");
    assert!(
        refused.message().contains("no reservation ready for you"),
        "{}",
        refused.message()
    );

    // bob waits behind nobody (two copies) but alice's reservation is hers only.
    let r = mesh.reserve(&alice, &book.book_id).await.unwrap();
    assert_eq!(
        mesh.rent(&bob, &book.book_id).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    let loan = mesh.rent(&alice, &book.book_id).await.unwrap();
    assert_eq!(loan.status(), RentalStatus::Active);
    assert_eq!(loan.reservation_id, r.reservation_id);
    let due = loan.due_at.unwrap().seconds - loan.rented_at.unwrap().seconds;
    assert_eq!(due, 14 * 86_400);
    let r = mesh.reservation(&alice, &r.reservation_id).await;
    assert_eq!(r.status(), ReservationStatus::Fulfilled);
    assert_eq!(r.rental_id, loan.rental_id);

    // Renting the same book again answers the same loan.
    assert_eq!(
        mesh.rent(&alice, &book.book_id).await.unwrap().rental_id,
        loan.rental_id
    );

    // The loan limit (1) refuses a second book.
    mesh.reserve(&alice, &other.book_id).await.unwrap();
    let limit = mesh.rent(&alice, &other.book_id).await.unwrap_err();
    assert_eq!(limit.code(), Code::FailedPrecondition);
    assert_eq!(reason(&limit), "TOO_MANY_RENTALS");
    assert_eq!(metadata(&limit, "limit"), "1");
    assert!(limit.message().contains('1'), "{}", limit.message());
}

both_backends!(r8_return_at_once_idempotently_and_only_by_the_member_or_a_librarian);
async fn r8_return_at_once_idempotently_and_only_by_the_member_or_a_librarian(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = mesh.register_book("R8", 1).await;
    let (alice, bob) = (member("alice"), member("bob"));
    mesh.reserve(&alice, &book.book_id).await.unwrap();
    let b = mesh.reserve(&bob, &book.book_id).await.unwrap();
    let loan = mesh.rent(&alice, &book.book_id).await.unwrap();

    // Another member's rental is, to bob, no rental at all (SPEC §6).
    let denied = mesh.give_back(&bob, &loan.rental_id).await.unwrap_err();
    assert_eq!(denied.code(), Code::NotFound);
    assert_eq!(reason(&denied), "RENTAL_NOT_FOUND");
    let peek = mesh
        .rentals()
        .await
        .get_rental(req(
            &bob,
            GetRentalRequest {
                rental_id: loan.rental_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(peek.code(), Code::NotFound);

    let returned = mesh.give_back(&alice, &loan.rental_id).await.unwrap();
    assert_eq!(returned.status(), RentalStatus::Returned);
    assert_eq!(
        returned.return_confirmation(),
        ReturnConfirmation::Confirmed
    );
    assert_eq!(
        mesh.reservation(&bob, &b.reservation_id).await.status(),
        ReservationStatus::Ready
    );

    let twice = mesh.give_back(&alice, &loan.rental_id).await.unwrap();
    assert_eq!(twice, returned);

    // A librarian may return on a member's behalf.
    let bob_loan = mesh.rent(&bob, &book.book_id).await.unwrap();
    let by_librarian = mesh
        .give_back(&librarian(), &bob_loan.rental_id)
        .await
        .unwrap();
    assert_eq!(by_librarian.status(), RentalStatus::Returned);

    // The catalogue ends with the copy free again.
    let books = mesh.books().await;
    eventually("the copy to be AVAILABLE in book-svc", || {
        let mut books = books.clone();
        let id = book.book_id.clone();
        async move {
            let b = books
                .get_book(req(&member("x"), GetBookRequest { book_id: id }))
                .await
                .ok()?
                .into_inner();
            (b.status() == BookStatus::Available && b.free_copies == 1).then_some(())
        }
    })
    .await;
}

both_backends!(listing_is_per_member_and_paged);
async fn listing_is_per_member_and_paged(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let alice = member("alice");
    for i in 0..3 {
        let book = mesh.register_book(&format!("List {i}"), 1).await;
        mesh.reserve(&alice, &book.book_id).await.unwrap();
    }
    let mut client = mesh.reservations().await;
    let first = client
        .list_reservations(req(
            &alice,
            ListReservationsRequest {
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.reservations.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let rest = client
        .list_reservations(req(
            &alice,
            ListReservationsRequest {
                page_size: 2,
                page_token: first.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.reservations.len(), 1);
    assert!(rest.next_page_token.is_empty());

    let other = client
        .list_reservations(req(
            &member("bob"),
            ListReservationsRequest {
                member_id: "alice".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    let as_librarian = client
        .list_reservations(req(
            &librarian(),
            ListReservationsRequest {
                member_id: "alice".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(as_librarian.reservations.len(), 3);
    tokio::time::sleep(Duration::from_millis(1)).await;
}
