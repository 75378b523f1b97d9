//! R7 and R8 when reserve-svc is away: returns still succeed (PENDING) and
//! are completed from the event; a rent whose call failed is settled by the
//! recovery sweep.

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
    let loan = eventually("the pending rental to be settled ACTIVE", || {
        let mut rentals = rentals.clone();
        let (alice, rent) = (alice.clone(), rent());
        async move {
            let r = rentals.rent(req(&alice, rent)).await.ok()?.into_inner();
            (r.status() == RentalStatus::Active).then_some(r)
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
