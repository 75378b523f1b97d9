//! My Page (view-svc) driven by the real services: journeys stage by stage,
//! live watchers, rebuild by replay, catch-up after a stop, late and
//! repeated events.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rentalbook_plumbing::bus::Outgoing;
use rentalbook_plumbing::consumer::EventHandler;
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::time;
use rentalbook_proto::book::v1::{AddCopiesRequest, RegisterBookRequest};
use rentalbook_proto::events::v1::{
    Availability, BookRented, BookReturned, Envelope, LoanRenewed, RentalLost,
    ReservationCancelled, ReservationPlaced, ReservationReady, envelope::Body,
};
use rentalbook_proto::rental::v1::{Rental, ReturnConfirmation};
use rentalbook_proto::reserve::v1::{CancelReservationRequest, ReservationStatus};
use rentalbook_proto::reserve::v1::{ItemRequest, ListItemsRequest};
use rentalbook_proto::view::v1::{
    GetMyPageRequest, Journey, JourneyStage, MyPage, StepKind, WatchMyPageRequest,
};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use support::{Mesh, Options, Store, eventually, librarian, member, req};
use tonic::Code;
use view_svc::projection::Projection;
use view_svc::watch::Watchers;

async fn page_of(mesh: &Mesh, token: &str, member_id: &str) -> Result<MyPage, tonic::Status> {
    mesh.views()
        .await
        .get_my_page(req(
            token,
            GetMyPageRequest {
                member_id: member_id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// Waits until the member's page satisfies `ok` and returns it.
async fn page_until(mesh: &Mesh, who: &str, what: &str, ok: impl Fn(&MyPage) -> bool) -> MyPage {
    let token = member(who);
    eventually(what, || {
        let token = token.clone();
        let ok = &ok;
        async move {
            let page = page_of(mesh, &token, "").await.ok()?;
            ok(&page).then_some(page)
        }
    })
    .await
}

fn journey<'a>(page: &'a MyPage, reservation_id: &str) -> Option<&'a Journey> {
    page.journeys
        .iter()
        .find(|j| j.reservation_id == reservation_id)
}

fn stage_is(page: &MyPage, reservation_id: &str, stage: JourneyStage) -> bool {
    journey(page, reservation_id).is_some_and(|j| j.stage() == stage)
}

async fn rent(mesh: &Mesh, who: &str, book_id: &str) -> Rental {
    mesh.rent(&member(who), book_id).await.unwrap()
}

async fn give_back(mesh: &Mesh, who: &str, rental_id: &str) -> Rental {
    mesh.give_back(&member(who), rental_id).await.unwrap()
}

fn kinds(j: &Journey) -> Vec<StepKind> {
    j.steps.iter().map(|s| s.kind()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journey_reserve_ready_rent_return() {
    let mesh = Mesh::start().await;
    let book = mesh.register_book("Middlemarch", 1).await;
    let r = mesh.reserve(&member("alice"), &book.book_id).await.unwrap();

    let page = page_until(&mesh, "alice", "READY on the page", |p| {
        stage_is(p, &r.reservation_id, JourneyStage::Ready)
    })
    .await;
    let j = journey(&page, &r.reservation_id).unwrap();
    assert_eq!(j.book_title, "Middlemarch");
    assert_eq!(j.pickup_deadline, r.pickup_deadline);
    assert_eq!(kinds(j), [StepKind::Reserved, StepKind::Ready]);
    assert_eq!((page.open_reservations, page.active_rentals), (1, 0));

    let loan = rent(&mesh, "alice", &book.book_id).await;
    let page = page_until(&mesh, "alice", "RENTED with its due date", |p| {
        journey(p, &r.reservation_id)
            .is_some_and(|j| j.stage() == JourneyStage::Rented && j.due_at.is_some())
    })
    .await;
    let j = journey(&page, &r.reservation_id).unwrap();
    assert_eq!(j.due_at, loan.due_at);
    assert_eq!(j.rental_id, loan.rental_id);
    assert_eq!(j.pickup_deadline, None, "no pickup deadline once picked up");
    assert_eq!((page.open_reservations, page.active_rentals), (0, 1));

    give_back(&mesh, "alice", &loan.rental_id).await;
    let page = page_until(&mesh, "alice", "RETURNED and confirmed", |p| {
        journey(p, &r.reservation_id).is_some_and(|j| {
            j.stage() == JourneyStage::Returned
                && j.return_confirmation() == ReturnConfirmation::Confirmed
        })
    })
    .await;
    let j = journey(&page, &r.reservation_id).unwrap();
    assert!(j.returned_at.is_some());
    assert_eq!(
        kinds(j),
        [
            StepKind::Reserved,
            StepKind::Ready,
            StepKind::Rented,
            StepKind::Returned,
            StepKind::ReturnConfirmed
        ]
    );
    let times: Vec<_> = j.steps.iter().map(|s| s.at.unwrap()).collect();
    assert!(
        times
            .windows(2)
            .all(|w| (w[0].seconds, w[0].nanos) <= (w[1].seconds, w[1].nanos)),
        "steps in time order"
    );
    assert_eq!((page.open_reservations, page.active_rentals), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_positions_follow_promotions_and_cancellations() {
    let mesh = Mesh::start().await;
    let book = mesh.register_book("Queue", 1).await;
    let a = mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    let b = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    let c = mesh.reserve(&member("carol"), &book.book_id).await.unwrap();
    let d = mesh.reserve(&member("dave"), &book.book_id).await.unwrap();
    let position = |p: &MyPage, id: &str| journey(p, id).map(|j| (j.stage(), j.queue_position));
    page_until(&mesh, "dave", "dave WAITING 3", |p| {
        position(p, &d.reservation_id) == Some((JourneyStage::Waiting, 3))
    })
    .await;

    // carol leaves the queue: dave moves up.
    mesh.reservations()
        .await
        .cancel_reservation(req(
            &member("carol"),
            CancelReservationRequest {
                reservation_id: c.reservation_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    page_until(&mesh, "carol", "carol CANCELLED", |p| {
        stage_is(p, &c.reservation_id, JourneyStage::Cancelled)
    })
    .await;
    page_until(&mesh, "dave", "dave WAITING 2", |p| {
        position(p, &d.reservation_id) == Some((JourneyStage::Waiting, 2))
    })
    .await;

    // alice gives up her hold: bob is promoted, dave is next.
    mesh.reservations()
        .await
        .cancel_reservation(req(
            &member("alice"),
            CancelReservationRequest {
                reservation_id: a.reservation_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let bob = page_until(&mesh, "bob", "bob READY", |p| {
        stage_is(p, &b.reservation_id, JourneyStage::Ready)
    })
    .await;
    assert!(
        journey(&bob, &b.reservation_id)
            .unwrap()
            .pickup_deadline
            .is_some()
    );
    page_until(&mesh, "dave", "dave WAITING 1", |p| {
        position(p, &d.reservation_id) == Some((JourneyStage::Waiting, 1))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_overdue_with_short_periods() {
    let mesh = Mesh::start_with(Options {
        pickup_window: "2s",
        sweep_interval: "100ms",
        loan_period: "2s",
        ..Options::default()
    })
    .await;
    let book = mesh.register_book("Short", 1).await;
    let a = mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    let b = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    // bob watches from the start; the watch always sends the latest page.
    let mut watch = mesh
        .views()
        .await
        .watch_my_page(req(&member("bob"), WatchMyPageRequest::default()))
        .await
        .unwrap()
        .into_inner();
    page_until(&mesh, "alice", "alice EXPIRED", |p| {
        stage_is(p, &a.reservation_id, JourneyStage::Expired)
    })
    .await;
    let alice = page_of(&mesh, &member("alice"), "").await.unwrap();
    assert_eq!(
        kinds(journey(&alice, &a.reservation_id).unwrap()),
        [StepKind::Reserved, StepKind::Ready, StepKind::Expired]
    );

    // bob rents as soon as the desk holds the book for him: his window is as
    // short as alice's, so waiting for his page to say READY first would race it.
    eventually("bob's rent once his hold is ready", || {
        let mesh = &mesh;
        let book_id = &book.book_id;
        async move {
            match mesh.rent(&member("bob"), book_id).await {
                Ok(_) => Some(()),
                Err(refused) if refused.code() == Code::FailedPrecondition => None,
                Err(other) => panic!("rent: {other:?}"),
            }
        }
    })
    .await;
    let bob = page_until(&mesh, "bob", "bob RENTED", |p| {
        stage_is(p, &b.reservation_id, JourneyStage::Rented)
            || stage_is(p, &b.reservation_id, JourneyStage::Overdue)
    })
    .await;
    assert_eq!(
        kinds(journey(&bob, &b.reservation_id).unwrap())[..2],
        [StepKind::Reserved, StepKind::Ready],
        "bob's hold was READY before he rented"
    );

    // The watcher sees OVERDUE pushed when the due date passes.
    let started = Instant::now();
    loop {
        let page = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a page within 10 s")
            .unwrap()
            .expect("the stream stays open");
        if stage_is(&page, &b.reservation_id, JourneyStage::Overdue) {
            assert_eq!(page.active_rentals, 1, "an overdue loan is still active");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_get_every_change_live() {
    let mesh = Mesh::start().await;
    let book = mesh.register_book("Watched", 1).await;
    mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    let b = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    page_until(&mesh, "bob", "bob WAITING", |p| {
        stage_is(p, &b.reservation_id, JourneyStage::Waiting)
    })
    .await;

    // Several watchers at once, one of which never reads.
    let mut views = mesh.views().await;
    let mut watch = views
        .watch_my_page(req(&member("bob"), WatchMyPageRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let _idle = views
        .watch_my_page(req(&member("bob"), WatchMyPageRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut librarian_watch = views
        .watch_my_page(req(
            &librarian(),
            WatchMyPageRequest {
                member_id: "bob".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut watch).await;
    assert!(
        stage_is(&first, &b.reservation_id, JourneyStage::Waiting),
        "starts with a snapshot"
    );
    assert_eq!(
        journey(&first, &b.reservation_id).unwrap().queue_position,
        1
    );
    assert!(stage_is(
        &next(&mut librarian_watch).await,
        &b.reservation_id,
        JourneyStage::Waiting
    ));

    let loan = rent(&mesh, "alice", &book.book_id).await;
    give_back(&mesh, "alice", &loan.rental_id).await;
    let promoted_at = Instant::now();
    let mut page = next(&mut watch).await;
    while !stage_is(&page, &b.reservation_id, JourneyStage::Ready) {
        page = next(&mut watch).await;
    }
    println!(
        "bob's page turned READY {:?} after the return answered",
        promoted_at.elapsed()
    );
    rent(&mesh, "bob", &book.book_id).await;
    while !stage_is(&page, &b.reservation_id, JourneyStage::Rented) {
        page = next(&mut watch).await;
    }
    let mut seen = next(&mut librarian_watch).await;
    while !stage_is(&seen, &b.reservation_id, JourneyStage::Rented) {
        seen = next(&mut librarian_watch).await;
    }
}

#[tokio::test]
async fn watchers_on_every_replica_get_every_change() {
    let mesh = Mesh::start().await;
    let (second, stop_second) = mesh.start_second_view_instance().await;
    let book = mesh.register_book("Watched twice", 1).await;
    mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    let b = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();

    // Bob watches on both replicas; they share one durable consumer, so each
    // event is applied by one of them and the other must hear of it.
    let mut watches = Vec::new();
    for addr in [mesh.view_addr(), second] {
        let mut views =
            rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient::new(
                support::channel(addr).await,
            );
        let mut watch = views
            .watch_my_page(req(&member("bob"), WatchMyPageRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let mut page = next(&mut watch).await;
        while journey(&page, &b.reservation_id).is_none() {
            page = next(&mut watch).await;
        }
        watches.push((addr, watch, page));
    }

    let loan = rent(&mesh, "alice", &book.book_id).await;
    give_back(&mesh, "alice", &loan.rental_id).await;
    for (addr, watch, page) in &mut watches {
        while !stage_is(page, &b.reservation_id, JourneyStage::Ready) {
            *page = next(watch).await;
        }
        println!("bob's page turned READY on the replica at {addr}");
    }
    rent(&mesh, "bob", &book.book_id).await;
    for (addr, watch, page) in &mut watches {
        while !stage_is(page, &b.reservation_id, JourneyStage::Rented) {
            *page = next(watch).await;
        }
        println!("bob's page turned RENTED on the replica at {addr}");
    }
    stop_second.cancel();
}

/// The next page of a watch stream, within 10 s.
async fn next(w: &mut tonic::Streaming<MyPage>) -> MyPage {
    tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("a page in time")
        .unwrap()
        .expect("the stream stays open")
}

fn without_clock(mut p: MyPage) -> MyPage {
    p.generated_at = None;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_by_replay_equals_the_live_page_and_a_stopped_view_catches_up() {
    let mut mesh = Mesh::start().await;
    let one = mesh.register_book("One", 1).await;
    let two = mesh.register_book("Two", 2).await;
    let members = ["alice", "bob", "carol"];
    for m in members {
        mesh.reserve(&member(m), &one.book_id).await.unwrap();
        mesh.reserve(&member(m), &two.book_id).await.unwrap();
    }
    let loan = rent(&mesh, "alice", &one.book_id).await;
    let bobs = rent(&mesh, "bob", &two.book_id).await;

    // view-svc is down while lending goes on.
    mesh.stop_view().await;
    give_back(&mesh, "alice", &loan.rental_id).await;
    let c = mesh
        .reservations()
        .await
        .list_reservations(req(&member("carol"), Default::default()))
        .await
        .unwrap()
        .into_inner();
    for r in c
        .reservations
        .iter()
        .filter(|r| r.status() == ReservationStatus::Waiting)
    {
        mesh.reservations()
            .await
            .cancel_reservation(req(
                &member("carol"),
                CancelReservationRequest {
                    reservation_id: r.reservation_id.clone(),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap();
    }
    mesh.start_view(false).await;
    let alice = page_until(
        &mesh,
        "alice",
        "alice's return to show after the restart",
        |p| {
            p.journeys
                .iter()
                .any(|j| j.rental_id == loan.rental_id && j.stage() == JourneyStage::Returned)
        },
    )
    .await;
    assert!(alice.journeys.iter().all(|j| !j.book_title.is_empty()));
    page_until(&mesh, "carol", "carol's cancellations to show", |p| {
        p.journeys
            .iter()
            .filter(|j| j.stage() == JourneyStage::Cancelled)
            .count()
            == c.reservations
                .iter()
                .filter(|r| r.status() == ReservationStatus::Waiting)
                .count()
    })
    .await;
    // Let every pending confirmation settle before comparing.
    page_until(&mesh, "alice", "the return confirmed", |p| {
        p.journeys.iter().any(|j| {
            j.rental_id == loan.rental_id
                && j.return_confirmation() == ReturnConfirmation::Confirmed
        })
    })
    .await;
    page_until(&mesh, "bob", "bob's loan with its due date", |p| {
        p.journeys
            .iter()
            .any(|j| j.rental_id == bobs.rental_id && j.due_at.is_some())
    })
    .await;
    mesh.settled("view-svc").await;
    let mut live = Vec::new();
    for m in members {
        live.push(without_clock(
            page_of(&mesh, &librarian(), m).await.unwrap(),
        ));
    }

    // A replica fed from the first event builds the same pages.
    let (replica, stop_replica) = mesh.start_replica_view().await;
    let replica_client =
        rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient::new(
            support::channel(replica).await,
        );
    for (m, expected) in members.iter().zip(&live) {
        let got = eventually("the replica to catch up", || {
            let mut client = replica_client.clone();
            let expected = expected.clone();
            async move {
                let p = client
                    .get_my_page(req(
                        &librarian(),
                        GetMyPageRequest {
                            member_id: m.to_string(),
                        },
                    ))
                    .await
                    .ok()?
                    .into_inner();
                (without_clock(p.clone()) == expected).then_some(p)
            }
        })
        .await;
        assert_eq!(without_clock(got), *expected, "field by field for {m}");
    }
    stop_replica.cancel();

    // And --rebuild on the live instance drops and replays to the same pages.
    mesh.stop_view().await;
    mesh.start_view(true).await;
    for (m, expected) in members.iter().zip(&live) {
        eventually("the rebuilt page to equal the live one", || {
            let mesh = &mesh;
            let expected = expected.clone();
            async move {
                let p = page_of(mesh, &librarian(), m).await.ok()?;
                (without_clock(p) == expected).then_some(())
            }
        })
        .await;
    }
}

async fn publish(mesh: &Mesh, subject: &str, envelope: &Envelope) {
    let client = async_nats::connect(&mesh.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish(
        format!("{}.{subject}", mesh.prefix),
        envelope.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// A reservation-svc event as a replay or a redelivery brings it.
fn desk_event(occurred_at: Option<prost_types::Timestamp>, body: Body) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        occurred_at,
        producer: "reserve-svc".into(),
        body: Some(body),
    }
}

/// A member's WAITING placement for a book.
fn waiting(reservation_id: &str, book_id: &str, member_id: &str, book_seq: i64) -> Body {
    Body::ReservationPlaced(ReservationPlaced {
        reservation_id: reservation_id.into(),
        book_id: book_id.into(),
        member_id: member_id.into(),
        status: ReservationStatus::Waiting as i32,
        queue_position: 1,
        pickup_deadline: None,
        rental_id: String::new(),
        barcode: String::new(),
        availability: Some(Availability {
            book_seq,
            total: 1,
            waiting: 1,
            ..Default::default()
        }),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_repeated_events_never_move_a_journey_back_and_unknown_titles_still_show() {
    let mesh = Mesh::start().await;
    let book = mesh.register_book("Late", 1).await;
    let r = mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    rent(&mesh, "alice", &book.book_id).await;
    let rented = page_until(&mesh, "alice", "RENTED", |p| {
        journey(p, &r.reservation_id)
            .is_some_and(|j| j.stage() == JourneyStage::Rented && j.due_at.is_some())
    })
    .await;

    // Old events after newer ones: the placement and the hold of a journey
    // that is rented already, with new event ids and old times.
    let long_ago = Some(prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    });
    let late_placed = desk_event(
        long_ago,
        waiting(&r.reservation_id, &book.book_id, "alice", 1),
    );
    let late_ready = desk_event(
        long_ago,
        Body::ReservationReady(ReservationReady {
            reservation_id: r.reservation_id.clone(),
            book_id: book.book_id.clone(),
            member_id: "alice".into(),
            pickup_deadline: Some(time::to_proto(time::now() + chrono::Duration::days(3))),
            barcode: String::new(),
            availability: Some(Availability {
                book_seq: 1,
                total: 1,
                held: 1,
                ..Default::default()
            }),
        }),
    );
    publish(&mesh, "reservation.placed", &late_placed).await;
    publish(&mesh, "reservation.ready", &late_ready).await;
    // The same event id twice: the late placement again, byte for byte.
    publish(&mesh, "reservation.placed", &late_placed).await;

    // A journey for a book whose registration was never seen still shows.
    let stranger_id = uuid::Uuid::now_v7().to_string();
    let stranger_book = uuid::Uuid::now_v7().to_string();
    let stranger = desk_event(None, waiting(&stranger_id, &stranger_book, "alice", 1));
    publish(&mesh, "reservation.placed", &stranger).await;
    // Its event id again, byte for byte and then carrying a cancellation: an
    // event id is applied once, whatever comes with it the second time.
    publish(&mesh, "reservation.placed", &stranger).await;
    let reused_id = Envelope {
        body: Some(Body::ReservationCancelled(ReservationCancelled {
            reservation_id: stranger_id.clone(),
            book_id: stranger_book.clone(),
            member_id: "alice".into(),
            previous_status: ReservationStatus::Waiting as i32,
            cancelled_by: "alice".into(),
            availability: Some(Availability {
                book_seq: 2,
                total: 1,
                ..Default::default()
            }),
        })),
        ..stranger.clone()
    };
    publish(&mesh, "reservation.cancelled", &reused_id).await;

    // One instance applies the stream in order, so once this last journey
    // shows, everything published before it has been applied.
    let last_id = uuid::Uuid::now_v7().to_string();
    let last = desk_event(
        None,
        waiting(&last_id, &uuid::Uuid::now_v7().to_string(), "alice", 1),
    );
    publish(&mesh, "reservation.placed", &last).await;
    let page = page_until(&mesh, "alice", "the last journey", |p| {
        journey(p, &last_id).is_some()
    })
    .await;

    assert_eq!(page.journeys.len(), 3, "{page:#?}");
    assert_eq!(
        journey(&page, &r.reservation_id),
        journey(&rented, &r.reservation_id),
        "the late and repeated events changed nothing"
    );
    let untitled = journey(&page, &stranger_id).unwrap();
    assert_eq!(untitled.book_title, "");
    assert_eq!(untitled.stage(), JourneyStage::Waiting);
    assert_eq!(untitled.queue_position, 1);
    assert_eq!(
        kinds(untitled),
        [StepKind::Reserved],
        "placed once, never cancelled"
    );
    assert_eq!((page.open_reservations, page.active_rentals), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_my_page() {
    let mesh = Mesh::start().await;
    let empty = page_of(&mesh, &librarian(), "nobody-here").await.unwrap();
    assert!(empty.journeys.is_empty());
    assert_eq!(empty.member_id, "nobody-here");
    assert!(
        page_of(&mesh, &member("newbie"), "")
            .await
            .unwrap()
            .journeys
            .is_empty()
    );
    assert_eq!(
        page_of(&mesh, &librarian(), "bad id!")
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        page_of(&mesh, &member("alice"), "bob")
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let anonymous = mesh
        .views()
        .await
        .get_my_page(tonic::Request::new(GetMyPageRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let watch = mesh
        .views()
        .await
        .watch_my_page(req(
            &member("alice"),
            WatchMyPageRequest {
                member_id: "bob".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(watch.code(), Code::PermissionDenied);
}

/// How many connections to the database wait for a lock.
async fn lock_waiters(db: &impl ConnectionTrait) -> i64 {
    db.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    ))
    .await
    .unwrap()
    .expect("a count")
    .try_get::<i64>("", "n")
    .unwrap()
}

async fn someone_waits_for_a_lock(db: &impl ConnectionTrait) {
    eventually("a transaction to wait for a lock", || async {
        (lock_waiters(db).await > 0).then_some(())
    })
    .await;
}

/// One loan's ids and the events view-svc gets for it.
struct Loan {
    reservation: String,
    member: String,
    book: String,
    rental: String,
    due_at: Option<prost_types::Timestamp>,
}

impl Loan {
    fn new(member: &str) -> Self {
        let due = time::now() + chrono::Duration::days(14);
        Self {
            reservation: uuid::Uuid::now_v7().to_string(),
            member: member.into(),
            book: uuid::Uuid::now_v7().to_string(),
            rental: uuid::Uuid::now_v7().to_string(),
            due_at: Some(time::to_proto(due)),
        }
    }

    /// A moment `seconds_ago`, as an event carries it.
    fn ago(seconds_ago: i64) -> prost_types::Timestamp {
        time::to_proto(time::now() - chrono::Duration::seconds(seconds_ago))
    }

    fn event(occurred_at: prost_types::Timestamp, body: Body) -> Envelope {
        Envelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            occurred_at: Some(occurred_at),
            producer: "test".into(),
            body: Some(body),
        }
    }

    fn placed_ready(&self) -> Envelope {
        Self::event(
            Self::ago(30),
            Body::ReservationPlaced(ReservationPlaced {
                reservation_id: self.reservation.clone(),
                book_id: self.book.clone(),
                member_id: self.member.clone(),
                status: ReservationStatus::Ready as i32,
                queue_position: 0,
                pickup_deadline: Some(time::to_proto(time::now() + chrono::Duration::days(3))),
                rental_id: String::new(),
                barcode: String::new(),
                availability: Some(Availability {
                    book_seq: 2,
                    total: 1,
                    held: 1,
                    ..Default::default()
                }),
            }),
        )
    }

    fn rented(&self) -> Envelope {
        let at = Self::ago(20);
        Self::event(
            at,
            Body::BookRented(BookRented {
                rental_id: self.rental.clone(),
                reservation_id: self.reservation.clone(),
                book_id: self.book.clone(),
                member_id: self.member.clone(),
                rented_at: Some(at),
                due_at: self.due_at,
                barcode: String::new(),
            }),
        )
    }

    fn returned(&self) -> Envelope {
        let at = Self::ago(10);
        Self::event(
            at,
            Body::BookReturned(BookReturned {
                rental_id: self.rental.clone(),
                book_id: self.book.clone(),
                member_id: self.member.clone(),
                returned_at: Some(at),
                return_confirmation: ReturnConfirmation::Confirmed as i32,
                reservation_id: self.reservation.clone(),
                barcode: String::new(),
            }),
        )
    }
}

/// One event in a transaction of its own, as a consumer applies it.
async fn apply(db: &Db, projection: &Projection, event: &Envelope) {
    let mut tx = db.begin().await.unwrap();
    projection.apply(&mut tx, event).await.unwrap();
    tx.commit().await.unwrap();
}

/// Replicas share the durable consumer, so two events of one journey can be
/// applied at the same moment; here one replica has applied an event and not
/// committed yet when another applies the other event of the pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_applying_one_journey_at_once_never_move_it_back() {
    let db = Db::connect(&rentalbook_testkit::fresh_postgres_url().await, 4)
        .await
        .unwrap();
    view_svc::store::migrate(db.conn()).await.unwrap();
    let projection = Arc::new(Projection {
        watchers: Arc::new(Watchers::new(db.clone())),
    });
    for return_first in [true, false] {
        let loan = Loan::new("alice");
        apply(&db, &projection, &loan.placed_ready()).await;
        let (first, second) = if return_first {
            (loan.returned(), loan.rented())
        } else {
            (loan.rented(), loan.returned())
        };
        let mut one = db.begin().await.unwrap();
        projection.apply(&mut one, &first).await.unwrap();
        let two = {
            let (db, projection) = (db.clone(), projection.clone());
            tokio::spawn(async move { apply(&db, &projection, &second).await })
        };
        someone_waits_for_a_lock(db.conn()).await;
        one.commit().await.unwrap();
        two.await.unwrap();

        let (page, _) = view_svc::pages::build(
            db.conn(),
            "alice",
            time::now(),
            &view_svc::domain::Library::default(),
        )
        .await
        .unwrap();
        let j = journey(&page, &loan.reservation).unwrap();
        let order = if return_first {
            "the return first"
        } else {
            "the loan first"
        };
        assert_eq!(j.stage(), JourneyStage::Returned, "{order}");
        assert_eq!(
            j.return_confirmation(),
            ReturnConfirmation::Confirmed,
            "{order}"
        );
        assert_eq!(j.due_at, loan.due_at, "{order}");
        assert_eq!(j.rental_id, loan.rental, "{order}");
        assert_eq!(
            kinds(j),
            [
                StepKind::Reserved,
                StepKind::Ready,
                StepKind::Rented,
                StepKind::Returned,
                StepKind::ReturnConfirmed
            ],
            "{order}"
        );
    }
}

type PageClient = rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient<
    tonic::transport::Channel,
>;

async fn views_at(addr: std::net::SocketAddr) -> PageClient {
    PageClient::new(support::channel(addr).await)
}

/// Every member's page, as a librarian sees it, without the clock.
async fn pages_of(views: &PageClient, members: &[&str]) -> Vec<MyPage> {
    let mut pages = Vec::new();
    for m in members {
        let page = views
            .clone()
            .get_my_page(req(
                &librarian(),
                GetMyPageRequest {
                    member_id: m.to_string(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        pages.push(without_clock(page));
    }
    pages
}

/// Asserts that the members' pages become `expected` within 5 s.
async fn assert_pages_become(
    views: &PageClient,
    members: &[&str],
    expected: &[MyPage],
    what: &str,
) {
    let started = Instant::now();
    loop {
        let pages = pages_of(views, members).await;
        if pages == expected {
            return;
        }
        if started.elapsed() > Duration::from_secs(5) {
            for (got, want) in pages.iter().zip(expected) {
                assert_eq!(got, want, "{what}: the page of {}", want.member_id);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two instances of view-svc on one database and one durable consumer, each
/// applying whichever events it is given while loans go round, end with the
/// pages that one instance alone builds from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_consumer_build_the_pages_one_instance_builds() {
    let mesh = Mesh::start().await;
    let (_second, stop_second) = mesh.start_second_view_instance().await;
    let members = ["alice", "bob", "carol"];
    let mut books = Vec::new();
    for n in 0..4 {
        books.push(mesh.register_book(&format!("Chain {n}"), 1).await);
    }
    for m in members {
        for book in &books {
            mesh.reserve(&member(m), &book.book_id).await.unwrap();
        }
    }
    // Each book goes round its queue, the books at once: a return promotes
    // the next member, who borrows and returns it at once.
    futures::future::join_all(books.iter().map(|book| {
        let mesh = &mesh;
        async move {
            for m in members {
                let loan = rent(mesh, m, &book.book_id).await;
                give_back(mesh, m, &loan.rental_id).await;
            }
        }
    }))
    .await;
    mesh.settled("view-svc").await;
    let shared = pages_of(&views_at(mesh.view_addr()).await, &members).await;
    for page in &shared {
        assert_eq!(page.journeys.len(), books.len(), "{page:#?}");
        for j in &page.journeys {
            assert_eq!(
                (j.stage(), j.return_confirmation()),
                (JourneyStage::Returned, ReturnConfirmation::Confirmed),
                "journey {} of {}",
                j.reservation_id,
                page.member_id
            );
        }
    }

    let (alone, stop_alone) = mesh.start_replica_view().await;
    let alone = views_at(alone).await;
    let journeys = members.len() * books.len();
    eventually("the single instance to catch up", || {
        let alone = &alone;
        async move {
            let pages = pages_of(alone, &members).await;
            let all = pages.iter().map(|p| p.journeys.len()).sum::<usize>();
            (all == journeys).then_some(())
        }
    })
    .await;
    assert_pages_become(&alone, &members, &shared, "one instance against two").await;
    stop_alone.cancel();
    stop_second.cancel();
}

/// `--rebuild` on one replica while another replica keeps consuming: the
/// rebuilt read model is the one replaying the stream gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_another_replica_consumes_gives_the_live_pages() {
    let mut mesh = Mesh::start().await;
    let (second, stop_second) = mesh.start_second_view_instance().await;
    let one = mesh.register_book("Rebuilt one", 1).await;
    let two = mesh.register_book("Rebuilt two", 1).await;
    let members = ["alice", "bob"];
    for m in members {
        mesh.reserve(&member(m), &one.book_id).await.unwrap();
        mesh.reserve(&member(m), &two.book_id).await.unwrap();
    }
    let loan = rent(&mesh, "alice", &one.book_id).await;
    give_back(&mesh, "alice", &loan.rental_id).await;
    rent(&mesh, "alice", &two.book_id).await;
    mesh.settled("view-svc").await;
    let live = pages_of(&views_at(mesh.view_addr()).await, &members).await;
    assert_eq!(
        live.iter().map(|p| p.journeys.len()).sum::<usize>(),
        4,
        "{live:#?}"
    );

    // A reader holding the titles stands in for a slow rebuild: emptying the
    // read model waits for it, which gives the other replica's consumer all
    // the time it needs to act in the middle of the rebuild.
    let view_db = sea_orm::Database::connect(mesh.view_db_url())
        .await
        .unwrap();
    let reader = view_db.begin().await.unwrap();
    reader
        .execute_unprepared("SELECT book_id FROM book_titles FOR UPDATE")
        .await
        .unwrap();
    mesh.stop_view().await;
    mesh.start_view(true).await;
    someone_waits_for_a_lock(&view_db).await;
    // Lending goes on meanwhile; no replica applies it while the rebuild
    // runs, and the pages stay as they were until the rebuild commits.
    let carol = mesh.reserve(&member("carol"), &one.book_id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = views_at(second).await;
    assert_eq!(
        pages_of(&during, &members).await,
        live,
        "pages during the rebuild"
    );
    assert!(
        pages_of(&during, &["carol"]).await[0].journeys.is_empty(),
        "applied during the rebuild"
    );
    reader.commit().await.unwrap();

    mesh.settled("view-svc").await;
    for addr in [mesh.view_addr(), second] {
        assert_pages_become(
            &views_at(addr).await,
            &members,
            &live,
            "rebuilt against live",
        )
        .await;
    }
    page_until(
        &mesh,
        "carol",
        "carol's reservation after the rebuild",
        |p| {
            p.journeys.len() == 1
                && journey(p, &carol.reservation_id).is_some_and(|j| j.queue_position == 1)
        },
    )
    .await;
    stop_second.cancel();
}

// ---- The circulation desk on My Page ------------------------------------------------

/// Publishes an event as its producer would, on the mesh's bus.
async fn produce(mesh: &Mesh, producer: &str, body: Body) {
    let envelope = Envelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(time::to_proto(time::now())),
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

/// A librarian's call on a copy: withdraw it or mark it lost.
async fn take_out(mesh: &Mesh, barcode: &str, lost: bool) {
    let mut desk = mesh.reservations().await;
    let request = req(
        &librarian(),
        ItemRequest {
            barcode: barcode.into(),
            request_id: String::new(),
        },
    );
    let done = if lost {
        desk.mark_item_lost(request).await
    } else {
        desk.withdraw_item(request).await
    };
    done.unwrap_or_else(|s| panic!("taking {barcode} out of service: {s:?}"));
}

// A journey with every move of the desk, on real services where they make
// it (the copy held, replaced, lost with the hold sent back to the queue,
// a new copy) and by publishing what the desk's next events say
// (a renewal, the copy lost on loan, a walk-in loan): the page follows each
// step, and a replica fed from the first event and a rebuild both build
// the very same pages.
both_backends!(a_journey_through_the_desk_shows_every_move_and_replays_to_the_live_page);
async fn a_journey_through_the_desk_shows_every_move_and_replays_to_the_live_page(store: Store) {
    let mut mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = mesh
        .books()
        .await
        .register_book(req(
            &librarian(),
            RegisterBookRequest {
                title: "Desk journeys".into(),
                author: "Test Author".into(),
                barcodes: vec!["D-1".into(), "D-2".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    eventually("the desk to know the copies", || {
        let mesh = &mesh;
        let book_id = book.book_id.clone();
        async move {
            let items = mesh
                .reservations()
                .await
                .list_items(req(&librarian(), ListItemsRequest { book_id }))
                .await
                .ok()?
                .into_inner()
                .items;
            (items.len() == 2).then_some(())
        }
    })
    .await;
    let a = mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    let held = |p: &MyPage, stage: JourneyStage, barcode: &str| {
        journey(p, &a.reservation_id).is_some_and(|j| j.stage() == stage && j.barcode == barcode)
    };
    let page = page_until(&mesh, "alice", "READY: pick up copy D-1", |p| {
        held(p, JourneyStage::Ready, "D-1")
    })
    .await;
    assert!(
        journey(&page, &a.reservation_id)
            .unwrap()
            .pickup_deadline
            .is_some()
    );

    // Withdrawn: the other copy is held instead.
    take_out(&mesh, "D-1", false).await;
    page_until(&mesh, "alice", "READY: pick up copy D-2", |p| {
        held(p, JourneyStage::Ready, "D-2")
    })
    .await;

    // Bob waits; alice's copy is lost with none left: she is back at the
    // head of the queue, ahead of bob.
    let b = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    take_out(&mesh, "D-2", true).await;
    let page = page_until(&mesh, "alice", "WAITING again, first in line", |p| {
        held(p, JourneyStage::Waiting, "")
    })
    .await;
    let j = journey(&page, &a.reservation_id).unwrap();
    assert_eq!(j.queue_position, 1);
    assert_eq!(j.pickup_deadline, None);
    assert_eq!(
        kinds(j),
        [StepKind::Reserved, StepKind::Ready, StepKind::Requeued]
    );
    page_until(&mesh, "bob", "bob second in line", |p| {
        journey(p, &b.reservation_id).is_some_and(|j| j.queue_position == 2)
    })
    .await;

    // A new copy goes to alice; she picks it up.
    mesh.books()
        .await
        .add_copies(req(
            &librarian(),
            AddCopiesRequest {
                book_id: book.book_id.clone(),
                barcodes: vec!["D-3".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    page_until(&mesh, "alice", "READY: pick up copy D-3", |p| {
        held(p, JourneyStage::Ready, "D-3")
    })
    .await;
    let loan = rent(&mesh, "alice", &book.book_id).await;
    let page = page_until(&mesh, "alice", "RENTED copy D-3", |p| {
        journey(p, &a.reservation_id).is_some_and(|j| {
            j.stage() == JourneyStage::Rented && j.barcode == "D-3" && j.due_at.is_some()
        })
    })
    .await;
    let j = journey(&page, &a.reservation_id).unwrap();
    assert_eq!((j.renewals, j.renewals_left), (0, 2));
    assert_eq!(
        kinds(j),
        [
            StepKind::Reserved,
            StepKind::Requeued,
            StepKind::Ready,
            StepKind::Rented
        ],
        "READY at its latest time, after the requeue"
    );

    // Renewed (R12): due later, one renewal left.
    let due = time::from_proto(loan.due_at.as_ref().unwrap()).unwrap();
    let renewed_due = time::to_proto(due + chrono::Duration::days(14));
    produce(
        &mesh,
        "rental-svc",
        Body::LoanRenewed(LoanRenewed {
            rental_id: loan.rental_id.clone(),
            book_id: book.book_id.clone(),
            member_id: "alice".into(),
            reservation_id: a.reservation_id.clone(),
            due_at: Some(renewed_due),
            renewals: 1,
            renewed_by: "alice".into(),
        }),
    )
    .await;
    let page = page_until(&mesh, "alice", "renewed once", |p| {
        journey(p, &a.reservation_id).is_some_and(|j| j.renewals == 1)
    })
    .await;
    let j = journey(&page, &a.reservation_id).unwrap();
    assert_eq!(j.due_at, Some(renewed_due));
    assert_eq!(j.renewals_left, 1);
    assert_eq!(j.stage(), JourneyStage::Rented);
    assert_eq!(kinds(j).last(), Some(&StepKind::Renewed));

    // R13: the copy lost on loan closes it; it is no active loan any more.
    produce(
        &mesh,
        "rental-svc",
        Body::RentalLost(RentalLost {
            rental_id: loan.rental_id.clone(),
            book_id: book.book_id.clone(),
            member_id: "alice".into(),
            reservation_id: a.reservation_id.clone(),
            barcode: "D-3".into(),
            lost_at: Some(time::to_proto(time::now())),
        }),
    )
    .await;
    let page = page_until(&mesh, "alice", "LOST", |p| {
        journey(p, &a.reservation_id).is_some_and(|j| j.stage() == JourneyStage::Lost)
    })
    .await;
    let j = journey(&page, &a.reservation_id).unwrap();
    assert_eq!(
        (j.barcode.as_str(), j.renewals, j.renewals_left),
        ("D-3", 1, 0)
    );
    assert_eq!(kinds(j).last(), Some(&StepKind::Lost));
    assert_eq!((page.open_reservations, page.active_rentals), (0, 0));

    // A walk-in loan at the desk (R10): placed FULFILLED, then lent; no
    // READY step.
    let walk_in = uuid::Uuid::now_v7().to_string();
    let walk_in_rental = uuid::Uuid::now_v7().to_string();
    produce(
        &mesh,
        "reserve-svc",
        Body::ReservationPlaced(ReservationPlaced {
            reservation_id: walk_in.clone(),
            book_id: book.book_id.clone(),
            member_id: "carol".into(),
            status: ReservationStatus::Fulfilled as i32,
            queue_position: 0,
            pickup_deadline: None,
            availability: Some(Availability {
                book_seq: 1_000,
                total: 1,
                on_loan: 1,
                ..Default::default()
            }),
            rental_id: walk_in_rental.clone(),
            barcode: "D-9".into(),
        }),
    )
    .await;
    produce(
        &mesh,
        "rental-svc",
        Body::BookRented(BookRented {
            rental_id: walk_in_rental.clone(),
            reservation_id: walk_in.clone(),
            book_id: book.book_id.clone(),
            member_id: "carol".into(),
            rented_at: Some(time::to_proto(time::now())),
            due_at: Some(time::to_proto(time::now() + chrono::Duration::days(14))),
            barcode: "D-9".into(),
        }),
    )
    .await;
    let page = page_until(&mesh, "carol", "carol's walk-in loan", |p| {
        journey(p, &walk_in).is_some_and(|j| j.due_at.is_some())
    })
    .await;
    let j = journey(&page, &walk_in).unwrap();
    assert_eq!(j.stage(), JourneyStage::Rented);
    assert_eq!(
        (j.barcode.as_str(), j.rental_id.as_str()),
        ("D-9", walk_in_rental.as_str())
    );
    assert_eq!(kinds(j), [StepKind::Reserved, StepKind::Rented]);
    assert_eq!(j.renewals_left, 2);

    // Replayed from the first event, into a fresh read model and by
    // --rebuild, the pages are the live ones, field by field.
    let members = ["alice", "bob", "carol"];
    mesh.settled("view-svc").await;
    let live = pages_of(&views_at(mesh.view_addr()).await, &members).await;
    let (replica, stop_replica) = mesh.start_replica_view().await;
    let replica = views_at(replica).await;
    let journeys = |pages: &[MyPage]| pages.iter().map(|p| p.journeys.len()).sum::<usize>();
    eventually("the replica to catch up", || {
        let replica = &replica;
        let want = journeys(&live);
        async move { (journeys(&pages_of(replica, &members).await) == want).then_some(()) }
    })
    .await;
    assert_pages_become(
        &replica,
        &members,
        &live,
        "a replica fed from the first event",
    )
    .await;
    stop_replica.cancel();
    mesh.stop_view().await;
    mesh.start_view(true).await;
    assert_pages_become(
        &views_at(mesh.view_addr()).await,
        &members,
        &live,
        "rebuilt against live",
    )
    .await;
}
