//! The circulation desk's lists in view-svc (SPEC §10: librarians only,
//! from events, paged, live) against the real services, on both backends:
//! the hold shelf with the copies to pull, overdue loans and loans due on a
//! library day, a book's queue, members by id prefix and a member's
//! history. Events the desk does not produce yet (renewals, a loan closed
//! as lost) are published as rental-svc will.

mod support;

use std::time::Duration;

use prost::Message;
use rentalbook_plumbing::bus::Outgoing;
use rentalbook_plumbing::time;
use rentalbook_proto::book::v1::{Book, RegisterBookRequest};
use rentalbook_proto::events::v1::{Envelope, LoanRenewed, RentalLost, envelope::Body};
use rentalbook_proto::rental::v1::Rental;
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, ItemRequest, ListItemsRequest, Reservation, ReservationStatus,
};
use rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient;
use rentalbook_proto::view::v1::staff_service_client::StaffServiceClient;
use rentalbook_proto::view::v1::{
    BookQueue, GetBookQueueRequest, HoldShelf, JourneyStage, ListDueRequest, ListHistoryRequest,
    ListHoldShelfRequest, ListMembersRequest, ListMembersResponse, ListOverdueRequest, Loans,
};
use support::{Mesh, Options, Store, eventually, librarian, member, reason, req};
use tonic::Code;
use tonic::transport::Channel;

type Staff = StaffServiceClient<Channel>;

async fn staff_at(addr: std::net::SocketAddr) -> Staff {
    StaffServiceClient::new(support::channel(addr).await)
}

async fn start(store: Store) -> Mesh {
    Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await
}

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
        .unwrap_or_else(|s| panic!("registering {title}: {s:?}"))
        .into_inner();
    eventually("the desk to know the copies", || {
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
            (items.len() == barcodes.len()).then_some(())
        }
    })
    .await;
    book
}

async fn reserve(mesh: &Mesh, who: &str, book: &Book) -> Reservation {
    mesh.reserve(&member(who), &book.book_id).await.unwrap()
}

async fn cancel(mesh: &Mesh, who: &str, r: &Reservation) {
    mesh.reservations()
        .await
        .cancel_reservation(req(
            &member(who),
            CancelReservationRequest {
                reservation_id: r.reservation_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

async fn rent(mesh: &Mesh, who: &str, book: &Book) -> Rental {
    mesh.rent(&member(who), &book.book_id).await.unwrap()
}

fn shelf_request(page_size: i32) -> ListHoldShelfRequest {
    ListHoldShelfRequest {
        page_size,
        ..Default::default()
    }
}

async fn shelf(staff: &mut Staff, request: ListHoldShelfRequest) -> HoldShelf {
    staff
        .list_hold_shelf(req(&librarian(), request))
        .await
        .unwrap()
        .into_inner()
}

/// The hold shelf as (member, barcode, to pull), in its order.
fn holds(s: &HoldShelf) -> Vec<(&str, &str, bool)> {
    s.holds
        .iter()
        .map(|h| (h.member_id.as_str(), h.barcode.as_str(), h.to_pull))
        .collect()
}

/// The next message of a watch stream, within 10 s.
async fn next<T>(w: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("a message in time")
        .unwrap()
        .expect("the stream stays open")
}

/// Publishes an event as its producer would, on the mesh's bus.
async fn produce(mesh: &Mesh, body: Body) {
    let envelope = Envelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(time::to_proto(time::now())),
        producer: "rental-svc".into(),
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

fn is_refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, why: &str) {
    let status = result.expect_err("a refusal");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (code, why),
        "{status:?}"
    );
}

both_backends!(the_hold_shelf_lists_ready_holds_with_the_copies_to_pull_live);
async fn the_hold_shelf_lists_ready_holds_with_the_copies_to_pull_live(store: Store) {
    let mesh = start(store).await;
    let mut staff = staff_at(mesh.view_addr()).await;
    let book = register(&mesh, "Shelved", &["S-1", "S-2", "S-3"]).await;
    let mut watch = staff
        .watch_hold_shelf(req(&librarian(), shelf_request(10)))
        .await
        .unwrap()
        .into_inner();
    assert!(next(&mut watch).await.holds.is_empty(), "starts empty");

    // Free copies held for alice and bob: both still on the open shelves.
    let a = reserve(&mesh, "alice", &book).await;
    let b = reserve(&mesh, "bob", &book).await;
    assert_eq!((a.barcode.as_str(), b.barcode.as_str()), ("S-1", "S-2"));
    let mut seen = next(&mut watch).await;
    while seen.total < 2 {
        seen = next(&mut watch).await;
    }
    assert_eq!(
        holds(&seen),
        [("alice", "S-1", true), ("bob", "S-2", true)],
        "soonest deadline first"
    );
    assert_eq!(seen.to_pull, 2);
    assert_eq!(seen.holds[0].book_title, "Shelved");
    assert_eq!(seen.holds[0].pickup_deadline, a.pickup_deadline);
    let trapped_bob = seen.holds[1].trapped_at.expect("when it was held");

    // Bob's copy is withdrawn: S-3 is held for him instead, to pull too.
    mesh.reservations()
        .await
        .withdraw_item(req(
            &librarian(),
            ItemRequest {
                barcode: "S-2".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    // Carol and dave wait. Alice borrows and returns her copy over the desk:
    // it goes to carol straight from the librarian's hands.
    let c = reserve(&mesh, "carol", &book).await;
    let d = reserve(&mesh, "dave", &book).await;
    assert_eq!(d.status(), ReservationStatus::Waiting);
    let loan = rent(&mesh, "alice", &book).await;
    mesh.give_back(&member("alice"), &loan.rental_id)
        .await
        .unwrap();
    let want = [("bob", "S-3", true), ("carol", "S-1", false)];
    while holds(&seen) != want {
        seen = next(&mut watch).await;
    }
    assert_eq!((seen.total, seen.to_pull), (2, 1));
    assert_eq!(
        seen.holds[1].reservation_id, c.reservation_id,
        "carol's hold, pushed live"
    );

    // Carol gives hers up: the copy on the hold shelf goes to dave, no
    // pulling.
    cancel(&mesh, "carol", &c).await;
    let want = [("bob", "S-3", true), ("dave", "S-1", false)];
    while holds(&seen) != want {
        seen = next(&mut watch).await;
    }

    // The list to pull, the holds made since a moment, and pages.
    let to_pull = shelf(
        &mut staff,
        ListHoldShelfRequest {
            to_pull_only: true,
            ..shelf_request(10)
        },
    )
    .await;
    assert_eq!(holds(&to_pull), [("bob", "S-3", true)]);
    assert_eq!((to_pull.total, to_pull.to_pull), (1, 1));
    let since = shelf(
        &mut staff,
        ListHoldShelfRequest {
            trapped_since: Some(time::to_proto(
                time::from_proto(&trapped_bob).unwrap() + chrono::Duration::milliseconds(1),
            )),
            ..shelf_request(10)
        },
    )
    .await;
    assert_eq!(
        holds(&since),
        want,
        "bob's copy was replaced after the moment"
    );
    let none_since = shelf(
        &mut staff,
        ListHoldShelfRequest {
            trapped_since: Some(time::to_proto(time::now() + chrono::Duration::seconds(1))),
            ..shelf_request(10)
        },
    )
    .await;
    assert_eq!((none_since.total, none_since.holds.len()), (0, 0));
    let first = shelf(&mut staff, shelf_request(1)).await;
    assert_eq!(holds(&first), [want[0]]);
    assert_eq!(first.total, 2);
    assert!(!first.next_page_token.is_empty());
    let second = shelf(
        &mut staff,
        ListHoldShelfRequest {
            page_token: first.next_page_token.clone(),
            ..shelf_request(1)
        },
    )
    .await;
    assert_eq!(holds(&second), [want[1]]);
    assert!(second.next_page_token.is_empty(), "the last page");

    // Librarians only; a page token must be one it gave out.
    is_refused(
        staff
            .list_hold_shelf(req(&member("alice"), shelf_request(10)))
            .await,
        Code::PermissionDenied,
        "LIBRARIANS_ONLY",
    );
    is_refused(
        staff
            .watch_hold_shelf(req(&member("alice"), shelf_request(10)))
            .await,
        Code::PermissionDenied,
        "LIBRARIANS_ONLY",
    );
    is_refused(
        staff
            .list_hold_shelf(req(
                &librarian(),
                ListHoldShelfRequest {
                    page_token: "not-a-token".into(),
                    ..shelf_request(10)
                },
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
    is_refused(
        staff
            .list_hold_shelf(req(&librarian(), shelf_request(101)))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
}

async fn overdue(staff: &mut Staff) -> Loans {
    staff
        .list_overdue(req(&librarian(), ListOverdueRequest::default()))
        .await
        .unwrap()
        .into_inner()
}

async fn due_on(staff: &mut Staff, day: &str) -> Result<Loans, tonic::Status> {
    staff
        .list_due(req(
            &librarian(),
            ListDueRequest {
                day: day.into(),
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner())
}

fn rentals(l: &Loans) -> Vec<&str> {
    l.loans.iter().map(|l| l.rental_id.as_str()).collect()
}

both_backends!(overdue_loans_and_loans_due_on_a_library_day);
async fn overdue_loans_and_loans_due_on_a_library_day(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        loan_period: "3s",
        ..Options::default()
    })
    .await;
    let mut staff = staff_at(mesh.view_addr()).await;
    let one = register(&mesh, "Due soon", &["O-1"]).await;
    let two = register(&mesh, "Due too", &["O-2"]).await;
    let mut watch = staff
        .watch_overdue(req(&librarian(), ListOverdueRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(next(&mut watch).await.loans.is_empty(), "nothing overdue");

    let a = reserve(&mesh, "alice", &one).await;
    let b = reserve(&mesh, "bob", &two).await;
    let alice = rent(&mesh, "alice", &one).await;
    let bob = rent(&mesh, "bob", &two).await;

    // The moment the loans fall due the list is pushed, by the clock alone.
    let mut seen = next(&mut watch).await;
    while seen.total < 2 {
        seen = next(&mut watch).await;
    }
    assert_eq!(rentals(&seen), [&alice.rental_id, &bob.rental_id]);
    let first = &seen.loans[0];
    assert!(first.overdue);
    assert_eq!(
        (first.member_id.as_str(), first.barcode.as_str()),
        ("alice", "O-1")
    );
    assert_eq!(first.book_title, "Due soon");
    assert_eq!(first.due_at, alice.due_at);
    assert_eq!(first.reservation_id, a.reservation_id);

    // Alice renews (due in a fortnight); bob's copy is lost on loan: neither
    // is overdue any more.
    // At 20:00 UTC a fortnight ahead: the next day already in Seoul.
    let fortnight = (time::now() + chrono::Duration::days(14)).date_naive();
    let later = time::to_proto(fortnight.and_hms_opt(20, 0, 0).unwrap().and_utc());
    produce(
        &mesh,
        Body::LoanRenewed(LoanRenewed {
            rental_id: alice.rental_id.clone(),
            book_id: one.book_id.clone(),
            member_id: "alice".into(),
            reservation_id: a.reservation_id.clone(),
            due_at: Some(later),
            renewals: 1,
            renewed_by: "librarian-1".into(),
        }),
    )
    .await;
    while seen.total != 1 {
        seen = next(&mut watch).await;
    }
    assert_eq!(rentals(&seen), [&bob.rental_id]);
    produce(
        &mesh,
        Body::RentalLost(RentalLost {
            rental_id: bob.rental_id.clone(),
            book_id: two.book_id.clone(),
            member_id: "bob".into(),
            reservation_id: b.reservation_id.clone(),
            barcode: "O-2".into(),
            lost_at: Some(time::to_proto(time::now())),
        }),
    )
    .await;
    while seen.total != 0 {
        seen = next(&mut watch).await;
    }
    assert!(overdue(&mut staff).await.loans.is_empty());

    // Due on the day of alice's new due date (UTC by default), and only
    // that day.
    let due = time::from_proto(&later).unwrap();
    let day = due.date_naive();
    let listed = due_on(&mut staff, &day.format("%Y-%m-%d").to_string())
        .await
        .unwrap();
    assert_eq!(rentals(&listed), [&alice.rental_id]);
    assert_eq!((listed.time_zone.as_str(), listed.total), ("UTC", 1));
    let entry = &listed.loans[0];
    assert_eq!((entry.renewals, entry.overdue), (1, false));
    let next_day = day.succ_opt().unwrap().format("%Y-%m-%d").to_string();
    assert!(
        due_on(&mut staff, &next_day)
            .await
            .unwrap()
            .loans
            .is_empty()
    );
    let today = due_on(&mut staff, "").await.unwrap();
    assert_eq!(
        today.day,
        time::now().date_naive().format("%Y-%m-%d").to_string()
    );

    // In Seoul the day is the one there.
    let (seoul, stop_seoul) = mesh
        .start_view_instance_with(&["--library-timezone", "Asia/Seoul"])
        .await;
    let mut seoul_staff = staff_at(seoul).await;
    // Seoul is nine hours ahead of UTC all year.
    let seoul_day = (due + chrono::Duration::hours(9))
        .date_naive()
        .format("%Y-%m-%d")
        .to_string();
    assert_ne!(seoul_day, day.format("%Y-%m-%d").to_string());
    let utc_day = due_on(&mut seoul_staff, &day.format("%Y-%m-%d").to_string())
        .await
        .unwrap();
    assert!(utc_day.loans.is_empty(), "in Seoul it is due the day after");
    let listed = due_on(&mut seoul_staff, &seoul_day).await.unwrap();
    assert_eq!(rentals(&listed), [&alice.rental_id]);
    assert_eq!(
        (listed.day.as_str(), listed.time_zone.as_str()),
        (seoul_day.as_str(), "Asia/Seoul")
    );
    stop_seoul.cancel();

    for bad in ["2025-13-01", "tomorrow", "2025-1-1x"] {
        is_refused(
            due_on(&mut staff, bad).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
        );
    }
    is_refused(
        staff
            .list_overdue(req(&member("alice"), ListOverdueRequest::default()))
            .await,
        Code::PermissionDenied,
        "LIBRARIANS_ONLY",
    );
}

async fn queue(staff: &mut Staff, book_id: &str, page_size: i32, token: &str) -> BookQueue {
    staff
        .get_book_queue(req(
            &librarian(),
            GetBookQueueRequest {
                book_id: book_id.into(),
                page_size,
                page_token: token.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn find(staff: &mut Staff, prefix: &str, page_size: i32, token: &str) -> ListMembersResponse {
    staff
        .list_members(req(
            &librarian(),
            ListMembersRequest {
                prefix: prefix.into(),
                page_size,
                page_token: token.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

both_backends!(a_books_queue_members_by_prefix_and_a_members_history);
async fn a_books_queue_members_by_prefix_and_a_members_history(store: Store) {
    let mesh = start(store).await;
    let mut staff = staff_at(mesh.view_addr()).await;
    let book = register(&mesh, "Queued", &["Q-1"]).await;
    let other = register(&mesh, "Read before", &["Q-2"]).await;

    // Alice read the other book twice; bob and "al_x" wait for this one
    // behind her.
    for _ in 0..2 {
        reserve(&mesh, "alice", &other).await;
        let loan = rent(&mesh, "alice", &other).await;
        mesh.give_back(&member("alice"), &loan.rental_id)
            .await
            .unwrap();
    }
    let a = reserve(&mesh, "alice", &book).await;
    let b = reserve(&mesh, "bob", &book).await;
    let x = reserve(&mesh, "al_x", &book).await;
    let q = eventually("the queue", || {
        let mut staff = staff.clone();
        let book_id = book.book_id.clone();
        async move {
            let q = queue(&mut staff, &book_id, 0, "").await;
            (q.total_waiting == 2).then_some(q)
        }
    })
    .await;
    assert_eq!(q.book_title, "Queued");
    let waiting: Vec<(i32, &str)> = q
        .waiting
        .iter()
        .map(|w| (w.position, w.member_id.as_str()))
        .collect();
    assert_eq!(waiting, [(1, "bob"), (2, "al_x")]);
    assert!(q.waiting[0].reserved_at.is_some());
    assert_eq!(q.ready.len(), 1);
    assert_eq!(
        (
            q.ready[0].reservation_id.as_str(),
            q.ready[0].barcode.as_str()
        ),
        (a.reservation_id.as_str(), "Q-1")
    );
    let page = queue(&mut staff, &book.book_id, 1, "").await;
    assert_eq!(page.waiting[0].reservation_id, b.reservation_id);
    let page = queue(&mut staff, &book.book_id, 1, &page.next_page_token).await;
    assert_eq!(
        (
            page.waiting[0].position,
            page.waiting[0].reservation_id.as_str()
        ),
        (2, x.reservation_id.as_str())
    );
    assert!(page.next_page_token.is_empty() && page.ready.is_empty());

    // Members by the exact start of their id: `_` is no wildcard and case
    // counts.
    let found = find(&mut staff, "al", 10, "").await;
    let ids: Vec<&str> = found.members.iter().map(|m| m.member_id.as_str()).collect();
    assert_eq!(ids, ["al_x", "alice"]);
    let alice = &found.members[1];
    assert_eq!(
        (alice.open_reservations, alice.ready, alice.active_rentals),
        (1, 1, 0)
    );
    let ids = |f: &ListMembersResponse| -> Vec<String> {
        f.members.iter().map(|m| m.member_id.clone()).collect()
    };
    assert_eq!(ids(&find(&mut staff, "al_", 10, "").await), ["al_x"]);
    assert!(find(&mut staff, "AL", 10, "").await.members.is_empty());
    let first = find(&mut staff, "", 2, "").await;
    assert_eq!(ids(&first), ["al_x", "alice"]);
    assert_eq!(
        ids(&find(&mut staff, "", 2, &first.next_page_token).await),
        ["bob"]
    );

    // History: finished journeys, newest first, paged; the member's own or,
    // for a librarian, anyone's.
    let mut pages = MyPageServiceClient::new(support::channel(mesh.view_addr()).await);
    eventually("alice's two loans returned on her page", || {
        let mut pages = pages.clone();
        async move {
            let page = pages
                .get_my_page(req(&member("alice"), Default::default()))
                .await
                .ok()?
                .into_inner();
            let returned = page
                .journeys
                .iter()
                .filter(|j| j.stage() == JourneyStage::Returned)
                .count();
            (returned == 2).then_some(())
        }
    })
    .await;
    let history = |token: &str, who: &str, member_id: &str| {
        req(
            &if who == "librarian" {
                librarian()
            } else {
                member(who)
            },
            ListHistoryRequest {
                member_id: member_id.into(),
                page_size: 1,
                page_token: token.into(),
            },
        )
    };
    let first = pages
        .list_history(history("", "alice", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.journeys.len(), 1);
    assert_eq!(first.journeys[0].stage(), JourneyStage::Returned);
    assert_eq!(first.journeys[0].book_title, "Read before");
    let second = pages
        .list_history(history(&first.next_page_token, "librarian", "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.journeys.len(), 1);
    assert!(second.journeys[0].reservation_id < first.journeys[0].reservation_id);
    assert!(second.next_page_token.is_empty(), "two finished journeys");
    is_refused(
        pages.list_history(history("", "bob", "alice")).await,
        Code::PermissionDenied,
        "OTHER_MEMBER",
    );

    // Through the REST edge, as the desk's page asks.
    let (edge, stop_edge) = mesh.start_edge().await;
    let http = reqwest::Client::new();
    let get = |path: String, token: String| {
        let http = http.clone();
        async move {
            let res = http
                .get(format!("http://{edge}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = res.status();
            (status, res.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = get("/v1/staff/members?prefix=al_".into(), librarian()).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["members"][0]["memberId"], "al_x", "{body}");
    let (status, body) = get(format!("/v1/books/{}/queue", book.book_id), librarian()).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["totalWaiting"], 2, "{body}");
    let (status, body) = get("/v1/staff/holdShelf?toPullOnly=true".into(), librarian()).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["holds"][0]["barcode"], "Q-1", "{body}");
    let (status, _) = get("/v1/staff/overdue".into(), member("bob")).await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN);
    let (status, body) = get("/v1/mypage/history?pageSize=5".into(), member("alice")).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["journeys"].as_array().map(Vec::len), Some(2), "{body}");
    stop_edge.cancel();

    // Refusals.
    is_refused(
        staff
            .get_book_queue(req(
                &librarian(),
                GetBookQueueRequest {
                    book_id: uuid::Uuid::now_v7().to_string(),
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
        "BOOK_NOT_FOUND",
    );
    is_refused(
        staff
            .get_book_queue(req(
                &librarian(),
                GetBookQueueRequest {
                    book_id: "nope".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    is_refused(
        staff
            .list_members(req(
                &librarian(),
                ListMembersRequest {
                    prefix: "a%".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    is_refused(
        staff
            .list_members(req(&member("bob"), ListMembersRequest::default()))
            .await,
        Code::PermissionDenied,
        "LIBRARIANS_ONLY",
    );
    is_refused(
        staff
            .get_book_queue(req(
                &librarian(),
                GetBookQueueRequest {
                    book_id: book.book_id.clone(),
                    page_token: "7".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
    // When the next copy is expected back: none is out, then alice's loan.
    assert_eq!(q.next_due_at, None, "no copy of the book is out");
    let loan = rent(&mesh, "alice", &book).await;
    let q = eventually("the book's loan in its queue", || {
        let mut staff = staff.clone();
        let book_id = book.book_id.clone();
        async move {
            let q = queue(&mut staff, &book_id, 0, "").await;
            q.next_due_at.is_some().then_some(q)
        }
    })
    .await;
    assert_eq!(q.next_due_at, loan.due_at);
}

both_backends!(a_books_queue_and_the_loans_due_on_a_day_follow_live);
async fn a_books_queue_and_the_loans_due_on_a_day_follow_live(store: Store) {
    let mesh = start(store).await;
    let mut staff = staff_at(mesh.view_addr()).await;
    let book = register(&mesh, "Followed", &["F-1"]).await;
    reserve(&mesh, "alice", &book).await;
    eventually("the book's queue", || {
        let mut staff = staff.clone();
        let book_id = book.book_id.clone();
        async move { Some(queue(&mut staff, &book_id, 0, "").await).filter(|q| q.ready.len() == 1) }
    })
    .await;

    // The queue: bob joins it, then alice picks her copy up.
    let mut queue_stream = staff
        .watch_book_queue(req(
            &librarian(),
            GetBookQueueRequest {
                book_id: book.book_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut queue_stream).await;
    assert_eq!((first.total_waiting, first.ready.len()), (0, 1));
    reserve(&mesh, "bob", &book).await;
    let mut q = next(&mut queue_stream).await;
    while q.total_waiting != 1 {
        q = next(&mut queue_stream).await;
    }
    assert_eq!(q.waiting[0].member_id, "bob");

    // The loans due on the day alice's loan will be due: empty, then hers.
    let day = (time::now() + chrono::Duration::days(14))
        .format("%Y-%m-%d")
        .to_string();
    let mut due_stream = staff
        .watch_due(req(
            &librarian(),
            ListDueRequest {
                day: day.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let empty = next(&mut due_stream).await;
    assert_eq!((empty.day.as_str(), empty.loans.len()), (day.as_str(), 0));
    let loan = rent(&mesh, "alice", &book).await;
    let mut due = next(&mut due_stream).await;
    while due.loans.is_empty() {
        due = next(&mut due_stream).await;
    }
    assert_eq!(due.loans[0].rental_id, loan.rental_id);
    // The queue saw the pick-up too: no READY hold, the copy out until then.
    // The desk's fulfilment and the loan's due date are two services'
    // events: a page between them may show the hold gone and no due date.
    let mut q = next(&mut queue_stream).await;
    while !q.ready.is_empty() || q.next_due_at.is_none() {
        q = next(&mut queue_stream).await;
    }
    assert_eq!(q.next_due_at, loan.due_at);

    // Librarians only, and an unknown book is refused at once.
    is_refused(
        staff
            .watch_due(req(&member("bob"), ListDueRequest::default()))
            .await
            .map(|_| ()),
        Code::PermissionDenied,
        "LIBRARIANS_ONLY",
    );
    is_refused(
        staff
            .watch_book_queue(req(
                &librarian(),
                GetBookQueueRequest {
                    book_id: uuid::Uuid::now_v7().to_string(),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
        Code::NotFound,
        "BOOK_NOT_FOUND",
    );
}

/// A book's queue as a member asks for it: how many wait and when the next
/// copy is expected back.
async fn queue_as(staff: &mut Staff, who: &str, book_id: &str, page_size: i32) -> BookQueue {
    staff
        .get_book_queue(req(
            &member(who),
            GetBookQueueRequest {
                book_id: book_id.into(),
                page_size,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

both_backends!(a_member_sees_a_books_queue_in_aggregate_live);
async fn a_member_sees_a_books_queue_in_aggregate_live(store: Store) {
    let mesh = start(store).await;
    let mut staff = staff_at(mesh.view_addr()).await;
    let book = register(&mesh, "Counted", &["C-1"]).await;
    // alice has the copy on loan; bob and carol wait behind her.
    reserve(&mesh, "alice", &book).await;
    let loan = rent(&mesh, "alice", &book).await;
    reserve(&mesh, "bob", &book).await;
    reserve(&mesh, "carol", &book).await;
    let full = eventually("the queue with the loan", || {
        let mut staff = staff.clone();
        let book_id = book.book_id.clone();
        async move {
            let q = queue(&mut staff, &book_id, 1, "").await;
            (q.total_waiting == 2 && q.next_due_at.is_some()).then_some(q)
        }
    })
    .await;
    assert!(!full.waiting.is_empty() && !full.next_page_token.is_empty());

    // A member, even one who waits: the counts and the next due date, no one
    // by name, no page of the queue.
    let seen = queue_as(&mut staff, "bob", &book.book_id, 1).await;
    assert_eq!(
        (
            seen.book_id.as_str(),
            seen.book_title.as_str(),
            seen.total_waiting
        ),
        (book.book_id.as_str(), "Counted", 2)
    );
    assert_eq!(seen.next_due_at, loan.due_at);
    assert!(seen.generated_at.is_some());
    assert!(
        seen.waiting.is_empty() && seen.ready.is_empty() && seen.next_page_token.is_empty(),
        "{seen:?}"
    );
    let stranger = queue_as(&mut staff, "zoe", &book.book_id, 0).await;
    assert_eq!(
        (
            stranger.total_waiting,
            stranger.next_due_at,
            stranger.waiting.len()
        ),
        (2, loan.due_at, 0)
    );

    // Live: dave joins the queue, and the member watching sees the count move.
    let mut watching = staff
        .watch_book_queue(req(
            &member("zoe"),
            GetBookQueueRequest {
                book_id: book.book_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut watching).await;
    assert_eq!((first.total_waiting, first.next_due_at), (2, loan.due_at));
    reserve(&mesh, "dave", &book).await;
    let mut q = next(&mut watching).await;
    while q.total_waiting != 3 {
        q = next(&mut watching).await;
    }
    assert!(q.waiting.is_empty() && q.ready.is_empty(), "{q:?}");

    // Through the REST edge, as the book's page asks.
    let (edge, stop_edge) = mesh.start_edge().await;
    let res = reqwest::Client::new()
        .get(format!(
            "http://{edge}/v1/books/{}/queue?pageSize=1",
            book.book_id
        ))
        .bearer_auth(member("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["totalWaiting"], 3, "{body}");
    assert!(body["nextDueAt"].is_string(), "{body}");
    for hidden in ["waiting", "ready", "nextPageToken"] {
        assert!(
            body.get(hidden)
                .is_none_or(|v| v.as_array().is_some_and(Vec::is_empty) || v == ""),
            "{hidden} in {body}"
        );
    }
    stop_edge.cancel();

    // An unknown book is refused to members too.
    is_refused(
        staff
            .get_book_queue(req(
                &member("bob"),
                GetBookQueueRequest {
                    book_id: uuid::Uuid::now_v7().to_string(),
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
        "BOOK_NOT_FOUND",
    );
}
