//! R5 and the Rent saga under concurrent requests, on PostgreSQL and SQLite.

mod support;

use std::collections::HashSet;

use rentalbook_proto::rental::v1::{RentRequest, RentalStatus};
use rentalbook_proto::reserve::v1::{GetReservationRequest, ReservationStatus};
use support::{Mesh, Options, Store, member, req};

async fn fifty_members_race_for_the_last_copy(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        max_open_reservations: 5,
        ..Options::default()
    })
    .await;
    let book = mesh.register_book("Race", 1).await;
    // Make sure the desk knows the book before the race starts.
    mesh.reserve(&member("warmup"), &book.book_id)
        .await
        .unwrap();
    let warm = mesh
        .reservations()
        .await
        .list_reservations(req(&member("warmup"), Default::default()))
        .await
        .unwrap()
        .into_inner();
    let warm_id = warm.reservations[0].reservation_id.clone();
    mesh.reservations()
        .await
        .cancel_reservation(req(
            &member("warmup"),
            rentalbook_proto::reserve::v1::CancelReservationRequest {
                reservation_id: warm_id,
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();

    let desk = mesh.reservations().await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let mut client = desk.clone();
            let book_id = book.book_id.clone();
            tokio::spawn(async move {
                client
                    .reserve(req(
                        &member(&format!("racer-{i}")),
                        rentalbook_proto::reserve::v1::ReserveRequest {
                            book_id,
                            request_id: String::new(),
                        },
                    ))
                    .await
                    .map(|r| r.into_inner())
            })
        })
        .collect();
    let mut placed = Vec::new();
    for t in tasks {
        placed.push(t.await.unwrap().expect("every racer gets a reservation"));
    }
    let ready: Vec<_> = placed
        .iter()
        .filter(|r| r.status() == ReservationStatus::Ready)
        .collect();
    assert_eq!(ready.len(), 1, "exactly one READY");
    let mut positions: Vec<i32> = placed
        .iter()
        .filter(|r| r.status() == ReservationStatus::Waiting)
        .map(|r| r.queue_position)
        .collect();
    positions.sort();
    assert_eq!(
        positions,
        (1..=49).collect::<Vec<_>>(),
        "positions 1..49 without gaps or duplicates"
    );

    // And read back now, the live positions are the same set.
    let mut client = mesh.reservations().await;
    let mut live = Vec::new();
    for r in &placed {
        let now = client
            .get_reservation(req(
                &r.member_id.as_str().pipe_member(),
                GetReservationRequest {
                    reservation_id: r.reservation_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        if now.status() == ReservationStatus::Waiting {
            live.push(now.queue_position);
        }
    }
    live.sort();
    assert_eq!(live, (1..=49).collect::<Vec<_>>());
}

trait PipeMember {
    fn pipe_member(&self) -> String;
}

impl PipeMember for &str {
    fn pipe_member(&self) -> String {
        member(self)
    }
}

both_backends!(fifty_members_race_for_the_last_copy);

both_backends!(twenty_concurrent_rents_of_one_ready_reservation_make_one_loan);
async fn twenty_concurrent_rents_of_one_ready_reservation_make_one_loan(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = mesh.register_book("Twenty", 3).await;
    let alice = member("alice");
    mesh.reserve(&alice, &book.book_id).await.unwrap();

    let rentals = mesh.rentals().await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let mut client = rentals.clone();
            let (alice, book_id) = (alice.clone(), book.book_id.clone());
            tokio::spawn(async move {
                client
                    .rent(req(
                        &alice,
                        RentRequest {
                            book_id,
                            request_id: String::new(),
                        },
                    ))
                    .await
                    .map(|r| r.into_inner())
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        let rental = t.await.unwrap().expect("every attempt answers the loan");
        assert_eq!(rental.status(), RentalStatus::Active);
        ids.insert(rental.rental_id);
    }
    assert_eq!(ids.len(), 1, "exactly one ACTIVE rental");
    let all = mesh
        .rentals()
        .await
        .list_rentals(req(&alice, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.rentals.len(), 1);
}
