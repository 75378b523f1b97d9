//! The circulation desk (SPEC §10, R10–R13) against the real services, on
//! both backends: check-out of a scanned copy, check-in whoever borrowed
//! it, renewals, a copy lost on loan; races at the counter; the desk away.

mod support;

use std::time::{Duration, Instant};

use rentalbook_proto::book::v1::{Book, RegisterBookRequest};
use rentalbook_proto::rental::v1::{
    CheckInAction, CheckInRequest, CheckInResponse, CheckOutRequest, GetRentalRequest,
    RenewRentalRequest, Rental, RentalStatus,
};
use rentalbook_proto::reserve::v1::{ItemRequest, ListItemsRequest, ReservationStatus};
use rentalbook_proto::view::v1::{JourneyStage, StepKind};
use support::{Mesh, Options, Store, eventually, librarian, member, reason, req};
use tonic::Code;

async fn register(mesh: &Mesh, title: &str, barcodes: &[&str]) -> Book {
    let book = mesh
        .books()
        .await
        .register_book(req(
            &librarian(),
            RegisterBookRequest {
                title: title.into(),
                author: "Test Author".into(),
                barcodes: barcodes.iter().map(|b| b.to_string()).collect(),
                ..Default::default()
            },
        ))
        .await
        .expect("registering")
        .into_inner();
    // The desk learns the book and its items from the catalogue's event.
    eventually("the desk to know the items", || {
        let id = book.book_id.clone();
        async move {
            mesh.reservations()
                .await
                .list_items(req(&librarian(), ListItemsRequest { book_id: id }))
                .await
                .ok()
                .filter(|r| r.get_ref().items.len() == barcodes.len())
        }
    })
    .await;
    book
}

async fn check_out(mesh: &Mesh, who: &str, barcode: &str) -> Result<Rental, tonic::Status> {
    mesh.rentals()
        .await
        .check_out(req(
            &librarian(),
            CheckOutRequest {
                member_id: who.into(),
                barcode: barcode.into(),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn check_in(mesh: &Mesh, barcode: &str) -> Result<CheckInResponse, tonic::Status> {
    mesh.rentals()
        .await
        .check_in(req(
            &librarian(),
            CheckInRequest {
                barcode: barcode.into(),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn renew(
    mesh: &Mesh,
    token: &str,
    rental_id: &str,
    request_id: &str,
) -> Result<Rental, tonic::Status> {
    mesh.rentals()
        .await
        .renew_rental(req(
            token,
            RenewRentalRequest {
                rental_id: rental_id.into(),
                request_id: request_id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn rental(mesh: &Mesh, rental_id: &str) -> Rental {
    mesh.rentals()
        .await
        .get_rental(req(
            &librarian(),
            GetRentalRequest {
                rental_id: rental_id.into(),
            },
        ))
        .await
        .expect("reading a rental")
        .into_inner()
}

fn refused(s: &tonic::Status) -> (Code, String) {
    (s.code(), reason(s))
}

both_backends!(r10_every_check_out_case);
async fn r10_every_check_out_case(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = register(&mesh, "Desk", &["D-1", "D-2", "D-3"]).await;

    // Alice's hold holds D-1; she picks up the copy held for her.
    let a = mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    assert_eq!(a.barcode, "D-1");
    let loan = check_out(&mesh, "alice", "D-1").await.unwrap();
    assert_eq!(
        (
            loan.status(),
            loan.barcode.as_str(),
            loan.reservation_id.as_str()
        ),
        (RentalStatus::Active, "D-1", a.reservation_id.as_str())
    );

    // Bob's hold holds D-2, but he brings D-3 from the open shelf: the
    // loan is of D-3 and D-2 goes back to circulation.
    let b = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    assert_eq!(b.barcode, "D-2");
    let loan_b = check_out(&mesh, "bob", "D-3").await.unwrap();
    assert_eq!(loan_b.barcode, "D-3");
    assert_eq!(
        mesh.reservation(&member("bob"), &b.reservation_id)
            .await
            .status(),
        ReservationStatus::Fulfilled
    );

    // Carol walks in with D-2 (free, nobody waits): a walk-in loan.
    let walk_in = check_out(&mesh, "carol", "D-2").await.unwrap();
    assert_eq!(walk_in.status(), RentalStatus::Active);
    assert!(!walk_in.reservation_id.is_empty());
    let placed = mesh
        .reservation(&member("carol"), &walk_in.reservation_id)
        .await;
    assert_eq!(
        (placed.status(), placed.barcode.as_str()),
        (ReservationStatus::Fulfilled, "D-2")
    );
    // On her page the walk-in is reserved and rented at once: no READY step
    // (so no hold-ready notice).
    let journey = eventually("carol's walk-in on her page", || {
        let mesh = &mesh;
        let id = walk_in.reservation_id.clone();
        async move {
            let page = mesh
                .views()
                .await
                .get_my_page(req(&member("carol"), Default::default()))
                .await
                .ok()?
                .into_inner();
            page.journeys.into_iter().find(|j| {
                // The placement (reserve-svc) and the loan (rental-svc)
                // arrive in either order: both steps once both have.
                let has = |k: StepKind| j.steps.iter().any(|s| s.kind() == k);
                j.reservation_id == id
                    && j.stage() == JourneyStage::Rented
                    && has(StepKind::Reserved)
                    && has(StepKind::Rented)
            })
        }
    })
    .await;
    let steps: Vec<StepKind> = journey.steps.iter().map(|s| s.kind()).collect();
    assert_eq!(steps, [StepKind::Reserved, StepKind::Rented], "{journey:?}");
    assert_eq!(journey.barcode, "D-2");

    // Nothing free now: a copy on loan is refused, so is an unknown one.
    let on_loan = check_out(&mesh, "dora", "D-1").await.unwrap_err();
    assert_eq!(
        refused(&on_loan),
        (Code::FailedPrecondition, "ITEM_ON_LOAN".into())
    );
    let unknown = check_out(&mesh, "dora", "NOPE").await.unwrap_err();
    assert_eq!(refused(&unknown), (Code::NotFound, "ITEM_NOT_FOUND".into()));
    let second = check_out(&mesh, "alice", "D-2").await.unwrap_err();
    assert_eq!(second.code(), Code::FailedPrecondition, "{second:?}");

    // A copy held for another member while another copy is free: the hold
    // moves to the free copy and the scanned one is lent.
    let two = register(&mesh, "Two", &["T-1", "T-2"]).await;
    let e = mesh.reserve(&member("erin"), &two.book_id).await.unwrap();
    assert_eq!(e.barcode, "T-1");
    let lent = check_out(&mesh, "fred", "T-1").await.unwrap();
    assert_eq!(lent.barcode, "T-1");
    let e = mesh.reservation(&member("erin"), &e.reservation_id).await;
    assert_eq!(
        (e.status(), e.barcode.as_str()),
        (ReservationStatus::Ready, "T-2")
    );
    // Held for another with no other copy free: refused.
    let held = check_out(&mesh, "gina", "T-2").await.unwrap_err();
    assert_eq!(
        refused(&held),
        (Code::FailedPrecondition, "ITEM_HELD_FOR_ANOTHER".into())
    );
    // Members may not use the desk.
    let denied = mesh
        .rentals()
        .await
        .check_out(req(
            &member("gina"),
            CheckOutRequest {
                member_id: "gina".into(),
                barcode: "T-2".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refused(&denied),
        (Code::PermissionDenied, "LIBRARIANS_ONLY".into())
    );
}

both_backends!(r11_check_in_says_where_the_copy_goes);
async fn r11_check_in_says_where_the_copy_goes(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = register(&mesh, "Back", &["B-1"]).await;
    let loan = check_out(&mesh, "alice", "B-1").await.unwrap();
    let b = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    assert_eq!(b.status(), ReservationStatus::Waiting);

    // Back at the desk: on the hold shelf for bob.
    let back = check_in(&mesh, "B-1").await.unwrap();
    assert_eq!(back.action(), CheckInAction::HoldShelf);
    assert_eq!(back.held_for_member_id, "bob");
    assert_eq!(
        back.rental.as_ref().unwrap().status(),
        RentalStatus::Returned
    );
    assert_eq!(
        rental(&mesh, &loan.rental_id).await.status(),
        RentalStatus::Returned
    );
    let b = mesh.reservation(&member("bob"), &b.reservation_id).await;
    assert_eq!(
        (b.status(), b.barcode.as_str()),
        (ReservationStatus::Ready, "B-1")
    );

    // Not on loan: says so and changes nothing.
    let again = check_in(&mesh, "B-1").await.unwrap();
    assert_eq!(again.action(), CheckInAction::NotOnLoan);
    assert_eq!(
        mesh.reservation(&member("bob"), &b.reservation_id)
            .await
            .status(),
        ReservationStatus::Ready
    );

    // Bob borrows it and brings it back: nobody waits, so reshelve.
    check_out(&mesh, "bob", "B-1").await.unwrap();
    assert_eq!(
        check_in(&mesh, "B-1").await.unwrap().action(),
        CheckInAction::Reshelve
    );

    // R13: lost on loan closes the rental; checking the copy in finds it.
    let lost_loan = check_out(&mesh, "carol", "B-1").await.unwrap();
    mesh.reservations()
        .await
        .mark_item_lost(req(
            &librarian(),
            ItemRequest {
                barcode: "B-1".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    eventually("the rental to close as lost", || {
        let id = lost_loan.rental_id.clone();
        let mesh = &mesh;
        async move { Some(rental(mesh, &id).await).filter(|r| r.status() == RentalStatus::Lost) }
    })
    .await;
    let dora = mesh.reserve(&member("dora"), &book.book_id).await.unwrap();
    assert_eq!(
        dora.status(),
        ReservationStatus::Waiting,
        "a lost copy is no copy"
    );
    let found = check_in(&mesh, "B-1").await.unwrap();
    assert!(found.found);
    assert_eq!(found.action(), CheckInAction::HoldShelf);
    assert_eq!(found.held_for_member_id, "dora");
    assert_eq!(
        rental(&mesh, &lost_loan.rental_id).await.status(),
        RentalStatus::Lost
    );
}

both_backends!(r12_renewals_while_nobody_waits_up_to_the_limit_idempotently);
async fn r12_renewals_while_nobody_waits_up_to_the_limit_idempotently(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        max_renewals: 2,
        loan_period: "14d",
        ..Options::default()
    })
    .await;
    register(&mesh, "Renew", &["R-1"]).await;
    let alice = member("alice");
    let loan = check_out(&mesh, "alice", "R-1").await.unwrap();
    assert_eq!((loan.renewals, loan.renewals_left), (0, 2));

    let first = renew(&mesh, &alice, &loan.rental_id, "renew-1")
        .await
        .unwrap();
    assert_eq!((first.renewals, first.renewals_left), (1, 1));
    assert!(first.due_at.unwrap().seconds >= loan.due_at.unwrap().seconds);
    // The same request id again: the same answer, counted once.
    let repeat = renew(&mesh, &alice, &loan.rental_id, "renew-1")
        .await
        .unwrap();
    assert_eq!(repeat, first);
    // Another member may not; a librarian may.
    let bob = renew(&mesh, &member("bob"), &loan.rental_id, "")
        .await
        .unwrap_err();
    assert_eq!(bob.code(), Code::NotFound);
    let by_desk = renew(&mesh, &librarian(), &loan.rental_id, "")
        .await
        .unwrap();
    assert_eq!((by_desk.renewals, by_desk.renewals_left), (2, 0));
    let used_up = renew(&mesh, &alice, &loan.rental_id, "").await.unwrap_err();
    assert_eq!(
        refused(&used_up),
        (Code::FailedPrecondition, "RENEWALS_USED_UP".into())
    );

    // Someone waits with no free copy: refused.
    let other = register(&mesh, "Wanted", &["W-1"]).await;
    let wanted = check_out(&mesh, "alice", "W-1").await.unwrap();
    mesh.reserve(&member("carol"), &other.book_id)
        .await
        .unwrap();
    let waited = renew(&mesh, &alice, &wanted.rental_id, "")
        .await
        .unwrap_err();
    assert_eq!(
        refused(&waited),
        (Code::FailedPrecondition, "RENEWAL_WAITED_FOR".into())
    );
    assert_eq!(rental(&mesh, &wanted.rental_id).await.renewals, 0);
}

both_backends!(two_librarians_scanning_one_copy_make_one_loan);
async fn two_librarians_scanning_one_copy_make_one_loan(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        reserve_call_timeout: "5s",
        ..Options::default()
    })
    .await;
    let book = register(&mesh, "Race", &["X-1"]).await;
    let members = ["m1", "m2", "m3", "m4", "m5", "m6"];
    let answers =
        futures::future::join_all(members.iter().map(|m| check_out(&mesh, m, "X-1"))).await;
    // Each answer is a loan or a refusal; one that found the desk busy left
    // its rental to the recovery sweep, which settles it either way.
    for a in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert!(
            matches!(a.code(), Code::FailedPrecondition | Code::Unavailable),
            "{a:?}"
        );
    }
    let lent: Vec<Rental> = eventually("every check-out to be settled", || {
        let mesh = &mesh;
        async move {
            let mut loans = Vec::new();
            for m in members {
                let listed = mesh
                    .rentals()
                    .await
                    .list_rentals(req(
                        &librarian(),
                        rentalbook_proto::rental::v1::ListRentalsRequest {
                            member_id: m.into(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .ok()?
                    .into_inner()
                    .rentals;
                if listed.iter().any(|r| r.status() == RentalStatus::Pending) {
                    return None;
                }
                loans.extend(
                    listed
                        .into_iter()
                        .filter(|r| r.status() == RentalStatus::Active),
                );
            }
            Some(loans)
        }
    })
    .await;
    assert_eq!(lent.len(), 1, "one loan of the one copy: {lent:?}");
    for a in answers.iter().filter_map(|a| a.as_ref().ok()) {
        assert_eq!(a.rental_id, lent[0].rental_id);
    }
    let items = mesh
        .reservations()
        .await
        .list_items(req(
            &librarian(),
            ListItemsRequest {
                book_id: book.book_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items[0].member_id, lent[0].member_id);

    // Check-in racing a renewal: one consistent outcome either way.
    let loan = lent[0].clone();
    let desk = librarian();
    let (back, renewed) = tokio::join!(
        check_in(&mesh, "X-1"),
        renew(&mesh, &desk, &loan.rental_id, "")
    );
    let back = back.unwrap();
    assert_eq!(back.action(), CheckInAction::Reshelve);
    let now = rental(&mesh, &loan.rental_id).await;
    assert_eq!(now.status(), RentalStatus::Returned);
    // The renewal counts exactly when it was granted.
    match renewed {
        Ok(r) => assert_eq!((r.renewals, now.renewals), (1, 1)),
        Err(s) => {
            assert_eq!(
                refused(&s),
                (Code::FailedPrecondition, "RENTAL_NOT_ACTIVE".into())
            );
            assert_eq!(now.renewals, 0);
        }
    }
}

both_backends!(with_the_desk_away_check_in_sets_aside_and_renewal_is_refused_fast);
async fn with_the_desk_away_check_in_sets_aside_and_renewal_is_refused_fast(store: Store) {
    let mut mesh = Mesh::start_with(Options {
        store,
        reserve_call_timeout: "500ms",
        ..Options::default()
    })
    .await;
    let book = register(&mesh, "Away", &["A-1", "A-2"]).await;
    let one = check_out(&mesh, "alice", "A-1").await.unwrap();
    let two = check_out(&mesh, "bob", "A-2").await.unwrap();
    mesh.stop_reserve().await;

    let started = Instant::now();
    let refused_renewal = renew(&mesh, &member("bob"), &two.rental_id, "")
        .await
        .unwrap_err();
    assert_eq!(
        refused_renewal.code(),
        Code::Unavailable,
        "{refused_renewal:?}"
    );
    assert!(
        rentalbook_plumbing::error::retry_after(&refused_renewal).is_some(),
        "with a retry hint"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        rental(&mesh, &two.rental_id).await.renewals,
        0,
        "never granted blindly"
    );

    let aside = check_in(&mesh, "A-1").await.unwrap();
    assert_eq!(aside.action(), CheckInAction::SetAside);
    assert_eq!(
        aside.rental.as_ref().unwrap().status(),
        RentalStatus::Returned
    );

    // The desk comes back and takes the copy: the return is confirmed and
    // the copy is free for the next member.
    mesh.start_reserve().await;
    eventually("the return to be confirmed", || {
        let id = one.rental_id.clone();
        let mesh = &mesh;
        async move {
            Some(rental(mesh, &id).await).filter(|r| {
                r.return_confirmation()
                    == rentalbook_proto::rental::v1::ReturnConfirmation::Confirmed
            })
        }
    })
    .await;
    let next = mesh.reserve(&member("carol"), &book.book_id).await.unwrap();
    assert_eq!(
        (next.status(), next.barcode.as_str()),
        (ReservationStatus::Ready, "A-1")
    );
}

both_backends!(a_scan_is_never_answered_with_another_copys_pending_loan);
async fn a_scan_is_never_answered_with_another_copys_pending_loan(store: Store) {
    let mut mesh = Mesh::start_with(Options {
        store,
        reserve_call_timeout: "500ms",
        // The desk's failure leaves the loan pending (the breaker stays
        // closed), and it is settled by asking again, not by the sweep.
        breaker_failures: 1000,
        recovery_interval: "1h",
        ..Options::default()
    })
    .await;
    let book = register(&mesh, "Pending", &["P-1", "P-2"]).await;
    let hold = mesh.reserve(&member("carol"), &book.book_id).await.unwrap();
    assert_eq!(hold.barcode, "P-1");
    // carol picks up while the desk is away: her loan stays pending.
    mesh.stop_reserve().await;
    let unanswered = mesh
        .rent(&member("carol"), &book.book_id)
        .await
        .unwrap_err();
    assert_eq!(unanswered.code(), Code::Unavailable, "{unanswered:?}");
    mesh.start_reserve().await;
    // The desk answers again (an unknown barcode is its refusal).
    eventually("the desk to answer again", || async {
        check_out(&mesh, "carol", "NO-SUCH")
            .await
            .err()
            .filter(|s| s.code() == Code::NotFound)
    })
    .await;

    // The other copy scanned for carol meanwhile is not answered with the
    // pending loan, which would lend P-1 while the librarian holds P-2.
    let second = check_out(&mesh, "carol", "P-2").await;
    assert!(
        matches!(&second, Err(s) if s.code() == Code::Unavailable),
        "{second:?}"
    );
    // Asked again, the pending loan is settled with the copy held for her;
    // then the other copy is refused as a second copy of the book.
    let settled = mesh.rent(&member("carol"), &book.book_id).await.unwrap();
    assert_eq!(
        (settled.status(), settled.barcode.as_str()),
        (RentalStatus::Active, "P-1")
    );
    let twice = check_out(&mesh, "carol", "P-2").await.unwrap_err();
    assert_eq!(
        refused(&twice),
        (Code::FailedPrecondition, "ALREADY_ON_LOAN".into())
    );
}
