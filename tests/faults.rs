//! R7 and R8 when reserve-svc is away: returns still succeed (PENDING) and
//! are completed from the event; a rent whose call failed is settled by the
//! recovery sweep; a Rent's request id is taken with its effect, so the same
//! id with another request is refused before it changes anything.

mod support;

use std::time::{Duration, Instant};

use rentalbook_plumbing::error::retry_after;
use rentalbook_proto::rental::v1::{
    GetRentalRequest, RentRequest, RentalStatus, ReturnConfirmation, ReturnRentalRequest,
};
use rentalbook_proto::reserve::v1::{GetReservationRequest, ReservationStatus};
use support::{Mesh, eventually, member, req};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_while_the_desk_is_down_is_pending_then_confirmed_and_the_next_member_is_ready() {
    let mut mesh = Mesh::start().await;
    let book = mesh.register_book("Fault R8", 1).await;
    let (alice, bob) = (member("alice"), member("bob"));
    mesh.reserve(&alice, &book.book_id).await.unwrap();
    let b = mesh.reserve(&bob, &book.book_id).await.unwrap();
    let mut rentals = mesh.rentals().await;
    let loan = rentals
        .rent(req(
            &alice,
            RentRequest {
                book_id: book.book_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    mesh.stop_reserve().await;
    let started = Instant::now();
    let returned = rentals
        .return_rental(req(
            &alice,
            ReturnRentalRequest {
                rental_id: loan.rental_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .expect("a return succeeds while the desk is down")
        .into_inner();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the return did not wait long"
    );
    assert_eq!(returned.status(), RentalStatus::Returned);
    assert_eq!(returned.return_confirmation(), ReturnConfirmation::Pending);

    mesh.start_reserve().await;
    let desk = mesh.reservations().await;
    eventually(
        "bob's reservation to become READY from the BookReturned event",
        || {
            let mut desk = desk.clone();
            let (bob, id) = (bob.clone(), b.reservation_id.clone());
            async move {
                let r = desk
                    .get_reservation(req(&bob, GetReservationRequest { reservation_id: id }))
                    .await
                    .ok()?
                    .into_inner();
                (r.status() == ReservationStatus::Ready).then_some(())
            }
        },
    )
    .await;
    eventually(
        "the return to be CONFIRMED from the ReturnRecorded event",
        || {
            let mut rentals = rentals.clone();
            let (alice, id) = (alice.clone(), loan.rental_id.clone());
            async move {
                let r = rentals
                    .get_rental(req(&alice, GetRentalRequest { rental_id: id }))
                    .await
                    .ok()?
                    .into_inner();
                (r.return_confirmation() == ReturnConfirmation::Confirmed).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rent_while_the_desk_is_down_fails_fast_then_the_sweep_settles_it() {
    let mut mesh = Mesh::start().await;
    let book = mesh.register_book("Fault R7", 1).await;
    let alice = member("alice");
    let r = mesh.reserve(&alice, &book.book_id).await.unwrap();
    let mut rentals = mesh.rentals().await;
    let rent = || RentRequest {
        book_id: book.book_id.clone(),
        request_id: String::new(),
    };

    mesh.stop_reserve().await;
    let mut last = None;
    for _ in 0..6 {
        let started = Instant::now();
        let err = rentals.rent(req(&alice, rent())).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused without waiting long"
        );
        assert!(err.message().contains("try again"), "{}", err.message());
        assert!(retry_after(&err).is_some(), "carries a RetryInfo");
        last = Some(err);
    }
    assert!(last.is_some());

    mesh.start_reserve().await;
    // No further Rent: the recovery sweep alone settles the PENDING rental.
    let loan = eventually("the sweep to settle the pending rental ACTIVE", || {
        let mut rentals = rentals.clone();
        let alice = alice.clone();
        async move {
            let mine = rentals
                .list_rentals(req(&alice, Default::default()))
                .await
                .ok()?
                .into_inner()
                .rentals;
            match mine.as_slice() {
                [r] if r.status() == RentalStatus::Active => Some(r.clone()),
                _ => None,
            }
        }
    })
    .await;
    let fulfilled = mesh
        .reservations()
        .await
        .get_reservation(req(
            &alice,
            GetReservationRequest {
                reservation_id: r.reservation_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fulfilled.status(), ReservationStatus::Fulfilled);
    assert_eq!(fulfilled.rental_id, loan.rental_id);
    let again = rentals
        .rent(req(&alice, rent()))
        .await
        .expect("a repeated Rent answers with the settled loan")
        .into_inner();
    assert_eq!(again.rental_id, loan.rental_id);
    let all = rentals
        .list_rentals(req(&alice, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        all.rentals.len(),
        1,
        "one loan, no duplicates from the retries"
    );
}

/// Alice with a READY reservation for each of two new books.
async fn two_ready_books(mesh: &Mesh, alice: &str) -> [(String, String); 2] {
    let mut out = Vec::new();
    for title in ["Request id A", "Request id B"] {
        let book = mesh.register_book(title, 1).await;
        let r = mesh.reserve(alice, &book.book_id).await.unwrap();
        assert_eq!(r.status(), ReservationStatus::Ready);
        out.push((book.book_id, r.reservation_id));
    }
    out.try_into().unwrap()
}

fn rent_with_id(book_id: &str, request_id: &str) -> RentRequest {
    RentRequest {
        book_id: book_id.to_owned(),
        request_id: request_id.to_owned(),
    }
}

async fn reservation_status(mesh: &Mesh, who: &str, reservation_id: &str) -> ReservationStatus {
    mesh.reservations()
        .await
        .get_reservation(req(
            who,
            GetReservationRequest {
                reservation_id: reservation_id.to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rent_request_id_reused_for_another_book_is_refused_and_changes_nothing() {
    let mut mesh = Mesh::start().await;
    let alice = member("alice");
    let [(book_a, _), (book_b, res_b)] = two_ready_books(&mesh, &alice).await;
    let mut rentals = mesh.rentals().await;

    // The first Rent gets no answer from the desk and stays PENDING; the id
    // is taken all the same.
    mesh.stop_reserve().await;
    let err = rentals
        .rent(req(&alice, rent_with_id(&book_a, "pick-up-1")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = rentals
        .rent(req(&alice, rent_with_id(&book_b, "pick-up-1")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mine = rentals
        .list_rentals(req(&alice, Default::default()))
        .await
        .unwrap()
        .into_inner()
        .rentals;
    assert_eq!(mine.len(), 1, "the refused request opened no rental");
    assert_eq!(mine[0].book_id, book_a);

    mesh.start_reserve().await;
    let loan = eventually("a retry of the first Rent to answer the loan", || {
        let mut rentals = rentals.clone();
        let (alice, book_a) = (alice.clone(), book_a.clone());
        async move {
            let r = rentals
                .rent(req(&alice, rent_with_id(&book_a, "pick-up-1")))
                .await
                .ok()?
                .into_inner();
            (r.status() == RentalStatus::Active).then_some(r)
        }
    })
    .await;
    assert_eq!(loan.rental_id, mine[0].rental_id, "the same rental");
    let err = rentals
        .rent(req(&alice, rent_with_id(&book_b, "pick-up-1")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        reservation_status(&mesh, &alice, &res_b).await,
        ReservationStatus::Ready,
        "the other book is still held for alice, not lent"
    );
    let mine = rentals
        .list_rentals(req(&alice, Default::default()))
        .await
        .unwrap()
        .into_inner()
        .rentals;
    assert_eq!(mine.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rents_with_one_request_id_for_two_books_make_one_loan() {
    let mesh = Mesh::start().await;
    let alice = member("alice");
    let [(book_a, res_a), (book_b, res_b)] = two_ready_books(&mesh, &alice).await;
    let (mut first, mut second) = (mesh.rentals().await, mesh.rentals().await);
    let (a, b) = tokio::join!(
        first.rent(req(&alice, rent_with_id(&book_a, "pick-up-2"))),
        second.rent(req(&alice, rent_with_id(&book_b, "pick-up-2"))),
    );
    let (won, refused, other_reservation) = match (a, b) {
        (Ok(won), Err(refused)) => (won.into_inner(), refused, res_b),
        (Err(refused), Ok(won)) => (won.into_inner(), refused, res_a),
        other => panic!("one Rent wins and the other is refused, not {other:?}"),
    };
    assert_eq!(won.status(), RentalStatus::Active);
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let mine = first
        .list_rentals(req(&alice, Default::default()))
        .await
        .unwrap()
        .into_inner()
        .rentals;
    assert_eq!(mine.len(), 1, "one loan: {mine:?}");
    assert_eq!(mine[0].rental_id, won.rental_id);
    assert_eq!(
        reservation_status(&mesh, &alice, &other_reservation).await,
        ReservationStatus::Ready,
        "the refused request's book is still held, not lent"
    );
}
