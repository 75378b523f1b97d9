//! My Page (view-svc) driven by the real services: journeys stage by stage,
//! live watchers, rebuild by replay, catch-up after a stop, late and
//! repeated events.

mod support;

use std::time::{Duration, Instant};

use prost::Message;
use rentalbook_proto::events::v1::{Availability, Envelope, ReservationPlaced, envelope::Body};
use rentalbook_proto::rental::v1::{RentRequest, Rental, ReturnConfirmation, ReturnRentalRequest};
use rentalbook_proto::reserve::v1::{CancelReservationRequest, ReservationStatus};
use rentalbook_proto::view::v1::{
    GetMyPageRequest, Journey, JourneyStage, MyPage, StepKind, WatchMyPageRequest,
};
use support::{Mesh, Options, eventually, librarian, member, req};
use tonic::Code;

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
    mesh.rentals()
        .await
        .rent(req(
            &member(who),
            RentRequest {
                book_id: book_id.into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn give_back(mesh: &Mesh, who: &str, rental_id: &str) -> Rental {
    mesh.rentals()
        .await
        .return_rental(req(
            &member(who),
            ReturnRentalRequest {
                rental_id: rental_id.into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
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
        pickup_window: "1s",
        sweep_interval: "100ms",
        loan_period: "2s",
        ..Options::default()
    })
    .await;
    let book = mesh.register_book("Short", 1).await;
    let a = mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    let b = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    page_until(&mesh, "alice", "alice EXPIRED", |p| {
        stage_is(p, &a.reservation_id, JourneyStage::Expired)
    })
    .await;
    let alice = page_of(&mesh, &member("alice"), "").await.unwrap();
    assert_eq!(
        kinds(journey(&alice, &a.reservation_id).unwrap()),
        [StepKind::Reserved, StepKind::Ready, StepKind::Expired]
    );
    page_until(&mesh, "bob", "bob READY", |p| {
        stage_is(p, &b.reservation_id, JourneyStage::Ready)
    })
    .await;

    // bob rents; a watcher sees RENTED, then OVERDUE pushed when the due date passes.
    let mut watch = mesh
        .views()
        .await
        .watch_my_page(req(&member("bob"), WatchMyPageRequest::default()))
        .await
        .unwrap()
        .into_inner();
    rent(&mesh, "bob", &book.book_id).await;
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

    // A late ReservationPlaced (a new event id, as if redelivered by a replay).
    let late = Envelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        }),
        producer: "reserve-svc".into(),
        body: Some(Body::ReservationPlaced(ReservationPlaced {
            reservation_id: r.reservation_id.clone(),
            book_id: book.book_id.clone(),
            member_id: "alice".into(),
            status: ReservationStatus::Waiting as i32,
            queue_position: 1,
            pickup_deadline: None,
            availability: Some(Availability {
                book_seq: 1,
                total: 1,
                ..Default::default()
            }),
        })),
    };
    publish(&mesh, "reservation.placed", &late).await;
    // A journey for a book whose registration was never seen still shows.
    let stranger = Envelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        body: Some(Body::ReservationPlaced(ReservationPlaced {
            reservation_id: uuid::Uuid::now_v7().to_string(),
            book_id: uuid::Uuid::now_v7().to_string(),
            member_id: "alice".into(),
            status: ReservationStatus::Waiting as i32,
            queue_position: 1,
            pickup_deadline: None,
            availability: Some(Availability {
                book_seq: 1,
                total: 1,
                waiting: 1,
                ..Default::default()
            }),
        })),
        ..late.clone()
    };
    publish(&mesh, "reservation.placed", &stranger).await;
    let page = page_until(&mesh, "alice", "the stranger journey", |p| {
        p.journeys.len() == 2
    })
    .await;
    let untitled = page
        .journeys
        .iter()
        .find(|j| j.book_id != book.book_id)
        .unwrap();
    assert_eq!(untitled.book_title, "");
    assert_eq!(untitled.stage(), JourneyStage::Waiting);
    assert_eq!(
        journey(&page, &r.reservation_id),
        journey(&rented, &r.reservation_id),
        "the late event changed nothing"
    );
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
