//! Privacy (SPEC §10) on the real services: finished history older than
//! `HISTORY_RETENTION` leaves My Page and names nobody any more in
//! reserve-svc and rental-svc, while current holds and loans stay; a
//! member's HistoryErased does the same to that member's history at once,
//! on every service, and My Page rebuilt from the stream erases it again.

mod support;

use prost::Message;
use rentalbook_plumbing::bus::Outgoing;
use rentalbook_plumbing::ids::ERASED_MEMBER;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::{
    BookReturned, Envelope, NoticeSent, NoticesRead, envelope::Body,
};
use rentalbook_proto::notice::v1::{EraseMyHistoryRequest, NoticeKind};
use rentalbook_proto::rental::v1::{
    GetRentalRequest, ListRentalsRequest, Rental, RentalStatus, ReturnConfirmation,
};
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, GetReservationRequest, ListReservationsRequest, Reservation,
    ReservationStatus,
};
use rentalbook_proto::view::v1::{GetMyPageRequest, JourneyStage, MyPage};
use support::{Mesh, Options, Store, eventually, librarian, member, req};
use tonic::Code;

/// The test's own notices on a page (ids `n-...`), with their read flags.
fn ours(page: &MyPage) -> Vec<(String, bool)> {
    page.notices
        .iter()
        .filter(|n| n.notice_id.starts_with("n-"))
        .map(|n| (n.notice_id.clone(), n.read))
        .collect()
}

/// The member's page, the moment it was made aside.
async fn page(mesh: &Mesh, who: &str) -> MyPage {
    let mut page = mesh
        .views()
        .await
        .get_my_page(req(&member(who), GetMyPageRequest::default()))
        .await
        .expect("reading My Page")
        .into_inner();
    page.generated_at = None;
    page
}

/// The journeys on the page: reservation and stage, newest first.
fn journeys(page: &MyPage) -> Vec<(String, JourneyStage)> {
    page.journeys
        .iter()
        .map(|j| (j.reservation_id.clone(), j.stage()))
        .collect()
}

/// The member's reservations as the desk lists them for a librarian.
async fn reservations_of(mesh: &Mesh, who: &str) -> Vec<(String, ReservationStatus)> {
    mesh.reservations()
        .await
        .list_reservations(req(
            &librarian(),
            ListReservationsRequest {
                member_id: who.into(),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .expect("listing reservations")
        .into_inner()
        .reservations
        .into_iter()
        .map(|r| (r.reservation_id.clone(), r.status()))
        .collect()
}

/// The member's rentals as rental-svc lists them for a librarian.
async fn rentals_of(mesh: &Mesh, who: &str) -> Vec<(String, RentalStatus)> {
    mesh.rentals()
        .await
        .list_rentals(req(
            &librarian(),
            ListRentalsRequest {
                member_id: who.into(),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .expect("listing rentals")
        .into_inner()
        .rentals
        .into_iter()
        .map(|r| (r.rental_id.clone(), r.status()))
        .collect()
}

/// A reservation as `token` reads it.
async fn reservation(mesh: &Mesh, token: &str, id: &str) -> Result<Reservation, tonic::Status> {
    mesh.reservations()
        .await
        .get_reservation(req(
            token,
            GetReservationRequest {
                reservation_id: id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// A rental as `token` reads it.
async fn rental(mesh: &Mesh, token: &str, id: &str) -> Result<Rental, tonic::Status> {
    mesh.rentals()
        .await
        .get_rental(req(
            token,
            GetRentalRequest {
                rental_id: id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// A loan from reservation to return: a new book with one copy, reserved
/// (READY at once), picked up and given back.
async fn a_finished_loan(mesh: &Mesh, who: &str, title: &str) -> (Reservation, Rental) {
    let (held, loan) = a_current_loan(mesh, who, title).await;
    let back = mesh
        .give_back(&member(who), &loan.rental_id)
        .await
        .expect("returning");
    assert_eq!(back.return_confirmation(), ReturnConfirmation::Confirmed);
    (held, back)
}

/// A new book with one copy, reserved and picked up.
async fn a_current_loan(mesh: &Mesh, who: &str, title: &str) -> (Reservation, Rental) {
    let book = mesh.register_book(title, 1).await;
    let held = mesh
        .reserve(&member(who), &book.book_id)
        .await
        .expect("reserving");
    assert_eq!(held.status(), ReservationStatus::Ready);
    let loan = mesh
        .rent(&member(who), &book.book_id)
        .await
        .expect("renting");
    (held, loan)
}

/// A new book with one copy, reserved and given up.
async fn a_cancelled_hold(mesh: &Mesh, who: &str, title: &str) -> Reservation {
    let book = mesh.register_book(title, 1).await;
    let held = mesh
        .reserve(&member(who), &book.book_id)
        .await
        .expect("reserving");
    mesh.reservations()
        .await
        .cancel_reservation(req(
            &member(who),
            CancelReservationRequest {
                reservation_id: held.reservation_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .expect("cancelling");
    held
}

/// Publishes an event as its producer would, on the mesh's bus.
async fn produce(mesh: &Mesh, producer: &str, at: Timestamp, body: Body) {
    let envelope = Envelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(time::to_proto(at)),
        producer: producer.into(),
        body: Some(body),
    };
    mesh.event_bus()
        .await
        .publish(&[Outgoing {
            event_id: envelope.event_id.clone(),
            subject: envelope.subject_suffix().unwrap().into(),
            payload: envelope.encode_to_vec().into(),
            traceparent: None,
        }])
        .await
        .expect("publishing an event");
}

fn notice(id: &str, who: &str, reservation: &Reservation, rental_id: &str) -> Body {
    Body::NoticeSent(NoticeSent {
        notice_id: id.into(),
        member_id: who.into(),
        kind: NoticeKind::DueSoon as i32,
        book_id: reservation.book_id.clone(),
        book_title: "A title".into(),
        barcode: String::new(),
        deadline: None,
        reservation_id: reservation.reservation_id.clone(),
        rental_id: rental_id.into(),
    })
}

/// With a retention of 2 s, finished journeys leave My Page and their
/// reservations and rentals name nobody, for every member; holds and loans
/// still going on stay.
async fn history_past_its_retention_is_forgotten(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        history_retention: "2s",
        ..Default::default()
    })
    .await;
    let (returned, returned_loan) = a_finished_loan(&mesh, "alice", "Emma").await;
    let cancelled = a_cancelled_hold(&mesh, "alice", "Sanditon").await;
    let (out, out_loan) = a_current_loan(&mesh, "alice", "Persuasion").await;
    let (bobs, bobs_loan) = a_finished_loan(&mesh, "bob", "Mansfield Park").await;
    let (bobs_out, _) = a_current_loan(&mesh, "bob", "Lady Susan").await;
    let waiting = mesh
        .reserve(&member("alice"), &bobs_out.book_id)
        .await
        .expect("reserving behind bob");
    assert_eq!(waiting.status(), ReservationStatus::Waiting);

    let alices = [
        (waiting.reservation_id.clone(), JourneyStage::Waiting),
        (out.reservation_id.clone(), JourneyStage::Rented),
    ];
    eventually("alice's finished journeys to leave My Page", || async {
        (journeys(&page(&mesh, "alice").await) == alices).then_some(())
    })
    .await;
    eventually("bob's finished journey to leave My Page", || async {
        let page = page(&mesh, "bob").await;
        (journeys(&page) == [(bobs_out.reservation_id.clone(), JourneyStage::Rented)]).then_some(())
    })
    .await;
    eventually(
        "the desk to forget alice's finished reservations",
        || async {
            let mut want = vec![
                (out.reservation_id.clone(), ReservationStatus::Fulfilled),
                (waiting.reservation_id.clone(), ReservationStatus::Waiting),
            ];
            want.sort();
            (reservations_of(&mesh, "alice").await == want).then_some(())
        },
    )
    .await;
    eventually(
        "rental-svc to forget alice's and bob's returned loans",
        || async {
            let alices = rentals_of(&mesh, "alice").await;
            let bobs = rentals_of(&mesh, "bob").await;
            (alices == [(out_loan.rental_id.clone(), RentalStatus::Active)]
                && !bobs.iter().any(|(id, _)| *id == bobs_loan.rental_id))
            .then_some(())
        },
    )
    .await;

    // The rows stay, naming nobody: a librarian still reads them, the
    // member no longer can.
    let gone = [
        &returned.reservation_id,
        &cancelled.reservation_id,
        &bobs.reservation_id,
    ];
    eventually(
        "the desk to forget bob's finished reservation too",
        || async {
            for id in gone {
                let r = reservation(&mesh, &librarian(), id).await.ok()?;
                (r.member_id == ERASED_MEMBER).then_some(())?;
            }
            Some(())
        },
    )
    .await;
    for id in gone {
        let refused = reservation(&mesh, &member("alice"), id).await.unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{store:?}: {refused:?}");
    }
    let kept = rental(&mesh, &librarian(), &returned_loan.rental_id)
        .await
        .unwrap();
    assert_eq!(
        (
            kept.member_id.as_str(),
            kept.status(),
            kept.book_id.as_str()
        ),
        (
            ERASED_MEMBER,
            RentalStatus::Returned,
            returned.book_id.as_str()
        ),
        "{store:?}"
    );
    let refused = rental(&mesh, &member("alice"), &returned_loan.rental_id)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{store:?}");
    // What goes on stays the member's.
    assert_eq!(
        reservation(&mesh, &member("alice"), &out.reservation_id)
            .await
            .unwrap()
            .member_id,
        "alice"
    );
}

both_backends!(history_past_its_retention_is_forgotten);

/// alice erases her history: her finished journeys and the notices about
/// them leave My Page, her finished reservations and rentals name nobody,
/// her current hold and loan stay (and stay hers once the loan is returned
/// after the erasure's moment), bob's history stays; no late event brings
/// any of it back, and a rebuild of My Page erases it again, up to the
/// erasure's moment and no further.
async fn a_members_erasure_reaches_every_service_and_outlives_a_rebuild(store: Store) {
    let mut mesh = Mesh::start_with(Options {
        store,
        ..Default::default()
    })
    .await;
    let (returned, returned_loan) = a_finished_loan(&mesh, "alice", "Emma").await;
    let cancelled = a_cancelled_hold(&mesh, "alice", "Sanditon").await;
    let (out, out_loan) = a_current_loan(&mesh, "alice", "Persuasion").await;
    let ready_book = mesh.register_book("Northanger Abbey", 1).await;
    let ready = mesh
        .reserve(&member("alice"), &ready_book.book_id)
        .await
        .expect("reserving");
    let (bobs, bobs_loan) = a_finished_loan(&mesh, "bob", "Mansfield Park").await;
    let first = time::now();
    produce(
        &mesh,
        "notice-svc",
        first,
        notice("n-1", "alice", &returned, &returned_loan.rental_id),
    )
    .await;
    let second = first + chrono::Duration::milliseconds(1);
    produce(
        &mesh,
        "notice-svc",
        second,
        notice("n-2", "alice", &out, &out_loan.rental_id),
    )
    .await;
    produce(
        &mesh,
        "notice-svc",
        second,
        Body::NoticesRead(NoticesRead {
            member_id: "alice".into(),
            up_to: Some(time::to_proto(first)),
        }),
    )
    .await;
    mesh.settled("view-svc").await;
    let before = page(&mesh, "alice").await;
    assert_eq!(before.journeys.len(), 4, "{store:?}: {before:?}");
    // (notice-svc tells of the holds too; these two are the test's own.)
    assert_eq!(
        ours(&before),
        [("n-2".to_owned(), false), ("n-1".to_owned(), true)],
        "{store:?}: newest first, read up to the first"
    );
    let bob_before = page(&mesh, "bob").await;
    assert_eq!(
        journeys(&bob_before),
        [(bobs.reservation_id.clone(), JourneyStage::Returned)],
        "{store:?}"
    );
    let bobs_reservations = reservations_of(&mesh, "bob").await;
    let bobs_rentals = rentals_of(&mesh, "bob").await;

    // Alice erases her history (notice-svc publishes HistoryErased).
    mesh.notices()
        .await
        .erase_my_history(req(
            &member("alice"),
            EraseMyHistoryRequest {
                request_id: "erase-1".into(),
            },
        ))
        .await
        .expect("erasing");
    let alices = [
        (ready.reservation_id.clone(), JourneyStage::Ready),
        (out.reservation_id.clone(), JourneyStage::Rented),
    ];
    let after = eventually("alice's finished journeys to leave My Page", || async {
        let page = page(&mesh, "alice").await;
        (journeys(&page) == alices).then_some(page)
    })
    .await;
    assert_eq!(
        ours(&after),
        [("n-2".to_owned(), false)],
        "{store:?}: the notice about the loan out stays"
    );
    let kinds = |p: &MyPage| {
        let mut k: Vec<(String, i32)> = p
            .notices
            .iter()
            .filter(|n| !n.notice_id.starts_with("n-"))
            .map(|n| (n.reservation_id.clone(), n.kind))
            .collect();
        k.sort();
        k
    };
    let mut open_holds = vec![
        (out.reservation_id.clone(), NoticeKind::HoldReady as i32),
        (ready.reservation_id.clone(), NoticeKind::HoldReady as i32),
    ];
    open_holds.sort();
    assert_eq!(
        kinds(&after),
        open_holds,
        "{store:?}: notice-svc's notices about the current hold and loan stay"
    );
    eventually(
        "the desk to forget alice's finished reservations",
        || async {
            let mut want = vec![
                (out.reservation_id.clone(), ReservationStatus::Fulfilled),
                (ready.reservation_id.clone(), ReservationStatus::Ready),
            ];
            want.sort();
            (reservations_of(&mesh, "alice").await == want).then_some(())
        },
    )
    .await;
    eventually("rental-svc to forget alice's returned loan", || async {
        (rentals_of(&mesh, "alice").await == [(out_loan.rental_id.clone(), RentalStatus::Active)])
            .then_some(())
    })
    .await;
    for id in [&returned.reservation_id, &cancelled.reservation_id] {
        let r = reservation(&mesh, &librarian(), id).await.unwrap();
        assert_eq!(r.member_id, ERASED_MEMBER, "{store:?}: reservation {id}");
    }
    let kept = rental(&mesh, &librarian(), &returned_loan.rental_id)
        .await
        .unwrap();
    assert_eq!(kept.member_id, ERASED_MEMBER, "{store:?}");
    assert_eq!(
        reservations_of(&mesh, "bob").await,
        bobs_reservations,
        "{store:?}"
    );
    assert_eq!(rentals_of(&mesh, "bob").await, bobs_rentals, "{store:?}");
    assert_eq!(
        reservation(&mesh, &librarian(), &bobs.reservation_id)
            .await
            .unwrap()
            .member_id,
        "bob"
    );
    assert_eq!(
        rental(&mesh, &librarian(), &bobs_loan.rental_id)
            .await
            .unwrap()
            .member_id,
        "bob"
    );

    // The loan that was out comes back after the erasure's moment: it
    // stays hers everywhere.
    mesh.give_back(&member("alice"), &out_loan.rental_id)
        .await
        .expect("returning");
    mesh.settled("view-svc").await;
    let after = page(&mesh, "alice").await;
    assert_eq!(
        journeys(&after),
        [
            (ready.reservation_id.clone(), JourneyStage::Ready),
            (out.reservation_id.clone(), JourneyStage::Returned),
        ],
        "{store:?}"
    );
    assert_eq!(
        rentals_of(&mesh, "alice").await,
        [(out_loan.rental_id.clone(), RentalStatus::Returned)],
        "{store:?}"
    );

    // rental-svc's return told again, late: nothing comes back.
    produce(
        &mesh,
        "rental-svc",
        time::now(),
        Body::BookReturned(BookReturned {
            rental_id: returned_loan.rental_id.clone(),
            book_id: returned.book_id.clone(),
            member_id: "alice".into(),
            returned_at: returned_loan.returned_at,
            return_confirmation: ReturnConfirmation::Confirmed as i32,
            reservation_id: returned.reservation_id.clone(),
            barcode: returned_loan.barcode.clone(),
        }),
    )
    .await;
    mesh.settled("view-svc").await;
    mesh.quiet(&["reserve-svc-returns"]).await;
    assert_eq!(page(&mesh, "alice").await, after, "{store:?}: a late event");
    assert_eq!(
        reservation(&mesh, &librarian(), &returned.reservation_id)
            .await
            .unwrap()
            .member_id,
        ERASED_MEMBER
    );
    assert_eq!(page(&mesh, "bob").await, bob_before, "{store:?}");

    // My Page rebuilt from the first event: the erasure is applied again.
    mesh.stop_view().await;
    mesh.start_view(true).await;
    mesh.settled("view-svc").await;
    assert_eq!(
        page(&mesh, "alice").await,
        after,
        "{store:?}: after the rebuild"
    );
    assert_eq!(
        page(&mesh, "bob").await,
        bob_before,
        "{store:?}: after the rebuild"
    );
}

both_backends!(a_members_erasure_reaches_every_service_and_outlives_a_rebuild);
