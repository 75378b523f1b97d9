//! Items (copies with barcodes) and the hold shelf (SPEC §10, R9, R13)
//! against the real services, on both backends.

mod support;

use std::time::Duration;

use prost::Message;
use rentalbook_plumbing::bus::Outgoing;
use rentalbook_proto::book::v1::{AddCopiesRequest, Book, RegisterBookRequest};
use rentalbook_proto::events::v1::{
    BookRegistered, Envelope, Item as EventItem, ItemsRegistered, envelope::Body,
};
use rentalbook_proto::reserve::v1::{
    Item, ItemRequest, ItemState, ListItemsRequest, Reservation, ReservationStatus,
};
use support::{Mesh, Options, Store, eventually, librarian, member, metadata, reason, req};
use tonic::Code;

async fn register(mesh: &Mesh, title: &str, copies: i32, barcodes: &[&str]) -> Book {
    mesh.books()
        .await
        .register_book(req(
            &librarian(),
            RegisterBookRequest {
                title: title.into(),
                author: "Test Author".into(),
                total_copies: copies,
                barcodes: barcodes.iter().map(|b| b.to_string()).collect(),
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner())
        .unwrap_or_else(|s| panic!("registering {title}: {s:?}"))
}

async fn try_items(mesh: &Mesh, book_id: &str) -> Result<Vec<Item>, tonic::Status> {
    mesh.reservations()
        .await
        .list_items(req(
            &librarian(),
            ListItemsRequest {
                book_id: book_id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().items)
}

async fn items(mesh: &Mesh, book_id: &str) -> Vec<Item> {
    try_items(mesh, book_id).await.expect("listing items")
}

/// The desk's items of a book once it knows `n` of them (the desk learns
/// the book from the catalogue's event).
async fn known_items(mesh: &Mesh, book_id: &str, n: usize) -> Vec<Item> {
    eventually("the desk to know the book's items", || async move {
        try_items(mesh, book_id).await.ok().filter(|i| i.len() == n)
    })
    .await
}

async fn withdraw(mesh: &Mesh, token: &str, barcode: &str) -> Result<Item, tonic::Status> {
    mesh.reservations()
        .await
        .withdraw_item(req(
            token,
            ItemRequest {
                barcode: barcode.into(),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn lose(mesh: &Mesh, barcode: &str) -> Result<Item, tonic::Status> {
    mesh.reservations()
        .await
        .mark_item_lost(req(
            &librarian(),
            ItemRequest {
                barcode: barcode.into(),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

fn item<'a>(items: &'a [Item], barcode: &str) -> &'a Item {
    items
        .iter()
        .find(|i| i.barcode == barcode)
        .unwrap_or_else(|| panic!("no item {barcode} in {items:?}"))
}

async fn read(mesh: &Mesh, who: &str, r: &Reservation) -> Reservation {
    mesh.reservation(&member(who), &r.reservation_id).await
}

both_backends!(barcodes_are_given_or_generated_unique_in_the_library);
async fn barcodes_are_given_or_generated_unique_in_the_library(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let given = register(&mesh, "Given", 0, &["K-1", "K-2"]).await;
    assert_eq!(given.total_copies, 2);
    let barcodes: Vec<&str> = given.items.iter().map(|i| i.barcode.as_str()).collect();
    assert_eq!(barcodes, ["K-1", "K-2"]);

    let generated = register(&mesh, "Generated", 3, &[]).await;
    let barcodes: Vec<&str> = generated.items.iter().map(|i| i.barcode.as_str()).collect();
    assert_eq!(barcodes, ["00000001", "00000002", "00000003"]);

    // A barcode on another copy is refused, naming it; nothing is made.
    let mut books = mesh.books().await;
    let taken = books
        .register_book(req(
            &librarian(),
            RegisterBookRequest {
                title: "Taken".into(),
                author: "A".into(),
                barcodes: vec!["K-9".into(), "00000002".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert_eq!(reason(&taken), "BARCODE_TAKEN");
    assert_eq!(metadata(&taken, "barcode"), "00000002");
    assert_eq!(metadata(&taken, "bookId"), generated.book_id);

    // Copies added with barcodes of their own, and generated ones skip a
    // number a librarian took by hand.
    let added = books
        .add_copies(req(
            &librarian(),
            AddCopiesRequest {
                book_id: given.book_id.clone(),
                barcodes: vec!["00000004".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.total_copies, 3);
    assert_eq!(added.items.len(), 3);
    let more = books
        .add_copies(req(
            &librarian(),
            AddCopiesRequest {
                book_id: generated.book_id.clone(),
                copies: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let barcodes: Vec<&str> = more.items.iter().map(|i| i.barcode.as_str()).collect();
    assert_eq!(
        barcodes,
        ["00000001", "00000002", "00000003", "00000005", "00000006"]
    );

    for (barcodes, copies) in [(vec!["a b"], 0), (vec!["X", "X"], 0), (vec!["X"], 2)] {
        let bad = books
            .register_book(req(
                &librarian(),
                RegisterBookRequest {
                    title: "Bad".into(),
                    author: "A".into(),
                    total_copies: copies,
                    barcodes: barcodes.iter().map(|b| b.to_string()).collect(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{barcodes:?}: {bad:?}");
        assert_eq!(reason(&bad), "INVALID_FIELD");
    }

    // The barcodes, book by book for labels: title order, then barcode.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rentalbook"))
        .args(["items", "export", "--book-database-url", &mesh.db_urls()[0]])
        .output()
        .expect("running rentalbook items export");
    assert!(out.status.success(), "{out:?}");
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "book_id,isbn,title,author,barcode");
    let barcodes: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.rsplit(',').next().unwrap())
        .collect();
    assert_eq!(
        barcodes,
        [
            "00000001", "00000002", "00000003", "00000005", "00000006", "00000004", "K-1", "K-2"
        ],
        "Generated before Given:\n{csv}"
    );
    assert!(
        lines[1].starts_with(&format!("{},,Generated,Test Author,", generated.book_id)),
        "{csv}"
    );

    // The desk learns every item, in service and free.
    let desk = known_items(&mesh, &generated.book_id, 5).await;
    assert!(
        desk.iter()
            .all(|i| i.state() == ItemState::InService && i.reservation_id.is_empty()),
        "{desk:?}"
    );
    let denied = mesh
        .reservations()
        .await
        .list_items(req(
            &member("alice"),
            ListItemsRequest {
                book_id: given.book_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(reason(&denied), "LIBRARIANS_ONLY");
}

both_backends!(r9_a_ready_hold_carries_its_item_and_a_returned_copy_goes_to_the_next);
async fn r9_a_ready_hold_carries_its_item_and_a_returned_copy_goes_to_the_next(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = register(&mesh, "Shelf", 0, &["S-2", "S-1"]).await;
    known_items(&mesh, &book.book_id, 2).await;
    let (alice, bob, carol) = (member("alice"), member("bob"), member("carol"));

    let a = mesh.reserve(&alice, &book.book_id).await.unwrap();
    assert_eq!(a.status(), ReservationStatus::Ready);
    assert_eq!(a.barcode, "S-1", "the first free copy by barcode");
    let b = mesh.reserve(&bob, &book.book_id).await.unwrap();
    assert_eq!(b.barcode, "S-2");
    let c = mesh.reserve(&carol, &book.book_id).await.unwrap();
    assert_eq!(c.status(), ReservationStatus::Waiting);
    assert_eq!(c.barcode, "", "nothing held for a waiting member");
    let shelf = items(&mesh, &book.book_id).await;
    assert_eq!(item(&shelf, "S-1").member_id, "alice");
    assert_eq!(
        item(&shelf, "S-1").reservation_status(),
        ReservationStatus::Ready
    );

    // Bob picks his copy up: the loan records it.
    let loan = mesh.rent(&bob, &book.book_id).await.unwrap();
    assert_eq!(loan.barcode, "S-2");
    assert_eq!(read(&mesh, "bob", &b).await.barcode, "S-2");
    let shelf = items(&mesh, &book.book_id).await;
    assert_eq!(
        item(&shelf, "S-2").reservation_status(),
        ReservationStatus::Fulfilled
    );

    // Bob's copy comes back: it is the one held for carol, the next in line.
    mesh.give_back(&bob, &loan.rental_id).await.unwrap();
    let c = read(&mesh, "carol", &c).await;
    assert_eq!(c.status(), ReservationStatus::Ready);
    assert_eq!(c.barcode, "S-2", "the copy that came back is held");
    // Alice lets hers go: nobody waits, so it goes back on the open shelf.
    mesh.reservations()
        .await
        .cancel_reservation(req(
            &alice,
            rentalbook_proto::reserve::v1::CancelReservationRequest {
                reservation_id: a.reservation_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let shelf = items(&mesh, &book.book_id).await;
    assert_eq!(item(&shelf, "S-1").reservation_id, "");
    assert_eq!(item(&shelf, "S-2").member_id, "carol");
}

both_backends!(r9_a_withdrawn_or_lost_held_copy_is_replaced_or_the_hold_requeued);
async fn r9_a_withdrawn_or_lost_held_copy_is_replaced_or_the_hold_requeued(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = register(&mesh, "Worn", 0, &["W-1", "W-2"]).await;
    known_items(&mesh, &book.book_id, 2).await;
    let (alice, bob) = (member("alice"), member("bob"));
    let a = mesh.reserve(&alice, &book.book_id).await.unwrap();
    assert_eq!(a.barcode, "W-1");

    // Withdrawn: the other free copy is held for alice instead.
    let gone = withdraw(&mesh, &librarian(), "W-1").await.unwrap();
    assert_eq!(gone.state(), ItemState::Withdrawn);
    let a2 = read(&mesh, "alice", &a).await;
    assert_eq!(a2.status(), ReservationStatus::Ready);
    assert_eq!(a2.barcode, "W-2");
    assert_eq!(a2.pickup_deadline, a.pickup_deadline, "the deadline stays");
    // Withdrawing again changes nothing.
    assert_eq!(
        withdraw(&mesh, &librarian(), "W-1").await.unwrap().state(),
        ItemState::Withdrawn
    );

    // Bob waits; alice's copy is lost and there is no other: alice is back
    // at the head of the queue, ahead of bob.
    let b = mesh.reserve(&bob, &book.book_id).await.unwrap();
    assert_eq!(b.queue_position, 1);
    assert_eq!(lose(&mesh, "W-2").await.unwrap().state(), ItemState::Lost);
    let a3 = read(&mesh, "alice", &a).await;
    assert_eq!(a3.status(), ReservationStatus::Waiting);
    assert_eq!((a3.queue_position, a3.barcode.as_str()), (1, ""));
    assert_eq!(read(&mesh, "bob", &b).await.queue_position, 2);

    // A new copy goes to alice first.
    mesh.books()
        .await
        .add_copies(req(
            &librarian(),
            AddCopiesRequest {
                book_id: book.book_id.clone(),
                barcodes: vec!["W-3".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let a4 = eventually("alice to get the new copy", || {
        let mesh = &mesh;
        let a = &a;
        async move { Some(read(mesh, "alice", a).await).filter(|r| r.barcode == "W-3") }
    })
    .await;
    assert_eq!(a4.status(), ReservationStatus::Ready);
    assert_eq!(read(&mesh, "bob", &b).await.queue_position, 1);

    // Refusals: members may not, unknown barcodes are NOT_FOUND, a lent
    // copy must be checked in before it is withdrawn, a withdrawn one
    // cannot be lost.
    let denied = withdraw(&mesh, &alice, "W-3").await.unwrap_err();
    assert_eq!(
        (denied.code(), reason(&denied).as_str()),
        (Code::PermissionDenied, "LIBRARIANS_ONLY")
    );
    let unknown = withdraw(&mesh, &librarian(), "NOPE").await.unwrap_err();
    assert_eq!(
        (unknown.code(), reason(&unknown).as_str()),
        (Code::NotFound, "ITEM_NOT_FOUND")
    );
    mesh.rent(&alice, &book.book_id).await.unwrap();
    let lent = withdraw(&mesh, &librarian(), "W-3").await.unwrap_err();
    assert_eq!(
        (lent.code(), reason(&lent).as_str()),
        (Code::FailedPrecondition, "ITEM_ON_LOAN")
    );
    let withdrawn = lose(&mesh, "W-1").await.unwrap_err();
    assert_eq!(reason(&withdrawn), "ITEM_NOT_IN_SERVICE");
    // A lost copy may be written off.
    assert_eq!(
        withdraw(&mesh, &librarian(), "W-2").await.unwrap().state(),
        ItemState::Withdrawn
    );
}

both_backends!(r13_a_copy_lost_on_loan_ends_the_loan_at_the_desk);
async fn r13_a_copy_lost_on_loan_ends_the_loan_at_the_desk(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = register(&mesh, "Lost", 0, &["L-1"]).await;
    known_items(&mesh, &book.book_id, 1).await;
    let alice = member("alice");
    mesh.reserve(&alice, &book.book_id).await.unwrap();
    mesh.rent(&alice, &book.book_id).await.unwrap();
    let bob = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    assert_eq!(bob.status(), ReservationStatus::Waiting);

    let lost = lose(&mesh, "L-1").await.unwrap();
    assert_eq!(lost.state(), ItemState::Lost);
    assert_eq!(lost.reservation_id, "", "the loan no longer holds it");
    // No copy is left for bob; alice may reserve the book again.
    assert_eq!(
        read(&mesh, "bob", &bob).await.status(),
        ReservationStatus::Waiting
    );
    let again = mesh.reserve(&alice, &book.book_id).await.unwrap();
    assert_eq!(again.status(), ReservationStatus::Waiting);
}

both_backends!(copies_registered_before_barcodes_get_items_loans_first_then_holds);
async fn copies_registered_before_barcodes_get_items_loans_first_then_holds(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let bus = mesh.event_bus().await;
    let publish = |body: Body, subject: &'static str| {
        let bus = bus.clone();
        async move {
            let envelope = Envelope {
                event_id: uuid::Uuid::now_v7().to_string(),
                occurred_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                producer: "book-svc".into(),
                body: Some(body),
            };
            bus.publish(&[Outgoing {
                event_id: envelope.event_id.clone(),
                subject: subject.into(),
                payload: envelope.encode_to_vec().into(),
                traceparent: None,
            }])
            .await
            .expect("publishing");
        }
    };
    // A book as registered before copies had barcodes: two copies, no items.
    let book_id = uuid::Uuid::now_v7().to_string();
    publish(
        Body::BookRegistered(BookRegistered {
            book_id: book_id.clone(),
            title: "Old".into(),
            author: "A".into(),
            total_copies: 2,
            ..Default::default()
        }),
        "book.registered",
    )
    .await;
    let (alice, bob) = (member("alice"), member("bob"));
    let b = mesh.reserve(&bob, &book_id).await.unwrap();
    let a = mesh.reserve(&alice, &book_id).await.unwrap();
    assert_eq!(
        (a.status(), a.barcode.as_str()),
        (ReservationStatus::Ready, "")
    );
    // Bob picks up without a barcode to record.
    let loan = mesh.rent(&bob, &book_id).await.unwrap();
    assert_eq!(loan.barcode, "");

    // The catalogue gives the copies items: bob's loan gets the first,
    // alice's hold the second.
    publish(
        Body::ItemsRegistered(ItemsRegistered {
            book_id: book_id.clone(),
            items: ["O-1", "O-2"]
                .iter()
                .map(|b| EventItem {
                    item_id: uuid::Uuid::now_v7().to_string(),
                    barcode: b.to_string(),
                })
                .collect(),
        }),
        "book.items_registered",
    )
    .await;
    let shelf = known_items(&mesh, &book_id, 2).await;
    let shelf = eventually("both copies to be given out", || {
        let mesh = &mesh;
        let book_id = &book_id;
        let shelf = shelf.clone();
        async move {
            if shelf.iter().all(|i| !i.reservation_id.is_empty()) {
                return Some(shelf);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            Some(items(mesh, book_id).await)
                .filter(|s| s.iter().all(|i| !i.reservation_id.is_empty()))
        }
    })
    .await;
    assert_eq!(item(&shelf, "O-1").member_id, "bob");
    assert_eq!(
        item(&shelf, "O-1").reservation_status(),
        ReservationStatus::Fulfilled
    );
    assert_eq!(item(&shelf, "O-2").member_id, "alice");
    assert_eq!(read(&mesh, "alice", &a).await.barcode, "O-2");
    assert_eq!(read(&mesh, "bob", &b).await.barcode, "O-1");
}

both_backends!(a_withdrawal_racing_a_trap_never_strands_a_ready_hold);
async fn a_withdrawal_racing_a_trap_never_strands_a_ready_hold(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    for round in 0..4 {
        let barcodes = [format!("Z{round}-1"), format!("Z{round}-2")];
        let book = register(
            &mesh,
            &format!("Race {round}"),
            0,
            &[barcodes[0].as_str(), barcodes[1].as_str()],
        )
        .await;
        known_items(&mesh, &book.book_id, 2).await;
        // Members reserve while both copies are withdrawn at the same time.
        let members: Vec<String> = (0..3).map(|i| member(&format!("r{round}m{i}"))).collect();
        let reserving =
            futures::future::join_all(members.iter().map(|m| mesh.reserve(m, &book.book_id)));
        let desk = librarian();
        let withdrawing =
            futures::future::join_all(barcodes.iter().map(|b| withdraw(&mesh, &desk, b)));
        let (placed, gone) = tokio::join!(reserving, withdrawing);
        for g in gone {
            assert_eq!(g.unwrap().state(), ItemState::Withdrawn);
        }
        // No copy is left, so nobody may be READY; everyone waits in order.
        let mut positions = Vec::new();
        for (m, p) in members.iter().zip(placed) {
            let r = read_token(&mesh, m, &p.unwrap()).await;
            assert_eq!(
                (r.status(), r.barcode.as_str()),
                (ReservationStatus::Waiting, ""),
                "round {round}: {r:?}"
            );
            positions.push(r.queue_position);
        }
        positions.sort();
        assert_eq!(positions, [1, 2, 3], "round {round}");
    }
}

async fn read_token(mesh: &Mesh, token: &str, r: &Reservation) -> Reservation {
    mesh.reservation(token, &r.reservation_id).await
}
