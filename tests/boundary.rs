//! The boundary of every service (SPEC §5, §6): who may call, what a request
//! may carry, and how it is refused. Every field is validated with a message
//! naming it, business refusals carry precise codes (never INTERNAL), and a
//! refused request changes nothing.

mod support;

use std::collections::HashSet;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use rentalbook_plumbing::auth::{Role, mint};
use rentalbook_plumbing::ids::MemberId;
use rentalbook_proto::book::v1::{
    AddCopiesRequest, Book, GetBookRequest, ListBooksRequest, RegisterBookRequest,
};
use rentalbook_proto::rental::v1::{
    GetRentalRequest, ListRentalsRequest, RentRequest, Rental, RentalStatus, ReturnConfirmation,
    ReturnRentalRequest,
};
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, FulfillReservationRequest, GetReservationRequest,
    ListReservationsRequest, RecordReturnRequest, Reservation, ReservationStatus, ReserveRequest,
};
use rentalbook_proto::view::v1::{GetMyPageRequest, WatchMyPageRequest};
use support::{Mesh, Options, Store, librarian, member, req, token};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A well-formed id that names nothing.
const UNKNOWN_ID: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

/// A token signed with the mesh's secret whose `exp` passed an hour ago,
/// well beyond any clock-skew leeway.
fn expired_token(sub: &str, role: &str) -> String {
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "role": role, "exp": an_hour_ago}),
        &jsonwebtoken::EncodingKey::from_secret(support::SECRET.as_bytes()),
    )
    .unwrap()
}

/// A request with the given `authorization` header, or none.
fn with_auth<T>(authorization: Option<&str>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(value) = authorization {
        r.metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    r
}

/// Asserts that `res` is refused with `code`, and returns the refusal.
#[track_caller]
fn refused<T: Debug>(case: &str, res: Result<Response<T>, Status>, code: Code) -> Status {
    match res {
        Ok(ok) => panic!("{case}: expected {code:?}, got OK: {:?}", ok.into_inner()),
        Err(s) => {
            assert_eq!(s.code(), code, "{case}: {}", s.message());
            s
        }
    }
}

/// Asserts INVALID_ARGUMENT with a message naming `field`.
#[track_caller]
fn invalid<T: Debug>(case: &str, res: Result<Response<T>, Status>, field: &str) {
    let s = refused(case, res, Code::InvalidArgument);
    assert!(
        s.message().contains(field),
        "{case}: the message should name `{field}`: {}",
        s.message()
    );
}

fn book_request(isbn: &str, title: &str, author: &str, copies: i32) -> RegisterBookRequest {
    RegisterBookRequest {
        isbn: isbn.into(),
        title: title.into(),
        author: author.into(),
        total_copies: copies,
        request_id: String::new(),
        barcodes: Vec::new(),
    }
}

/// Every book matching `query`, a page of `page_size` at a time; also checks
/// that only the last page has no next_page_token.
async fn list_books(mesh: &Mesh, query: &str, page_size: i32) -> (Vec<Book>, usize) {
    let mut client = mesh.books().await;
    let mut books = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_books(req(
                &member("reader"),
                ListBooksRequest {
                    query: query.into(),
                    page_size,
                    page_token: page_token.clone(),
                },
            ))
            .await
            .expect("listing books")
            .into_inner();
        pages += 1;
        assert!(
            page_size == 0 || page.books.len() <= page_size as usize,
            "a page holds at most page_size books"
        );
        books.extend(page.books);
        if page.next_page_token.is_empty() {
            return (books, pages);
        }
        assert!(pages < 1000, "paging does not end");
        page_token = page.next_page_token;
    }
}

async fn all_books(mesh: &Mesh) -> Vec<Book> {
    list_books(mesh, "", 100).await.0
}

fn titles(books: &[Book]) -> Vec<String> {
    let mut t: Vec<String> = books.iter().map(|b| b.title.clone()).collect();
    t.sort();
    t
}

async fn get_book(mesh: &Mesh, book_id: &str) -> Book {
    mesh.books()
        .await
        .get_book(req(
            &librarian(),
            GetBookRequest {
                book_id: book_id.into(),
            },
        ))
        .await
        .expect("reading a book")
        .into_inner()
}

async fn get_reservation(mesh: &Mesh, id: &str) -> Reservation {
    mesh.reservations()
        .await
        .get_reservation(req(
            &librarian(),
            GetReservationRequest {
                reservation_id: id.into(),
            },
        ))
        .await
        .expect("reading a reservation")
        .into_inner()
}

async fn get_rental(mesh: &Mesh, id: &str) -> Rental {
    mesh.rentals()
        .await
        .get_rental(req(
            &librarian(),
            GetRentalRequest {
                rental_id: id.into(),
            },
        ))
        .await
        .expect("reading a rental")
        .into_inner()
}

async fn reservations_of(mesh: &Mesh, who: &str) -> Vec<Reservation> {
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
}

async fn rentals_of(mesh: &Mesh, who: &str) -> Vec<Rental> {
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
}

/// Reserve with a request id, waiting out the moment in which reserve-svc
/// has not seen the book's registration yet (a NOT_FOUND is not remembered).
async fn reserve_with_id(
    mesh: &Mesh,
    token: &str,
    book_id: &str,
    request_id: &str,
) -> Result<Reservation, Status> {
    let mut client = mesh.reservations().await;
    let started = Instant::now();
    loop {
        let res = client
            .reserve(req(
                token,
                ReserveRequest {
                    book_id: book_id.into(),
                    request_id: request_id.into(),
                },
            ))
            .await;
        match res {
            Err(s) if s.code() == Code::NotFound && started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other.map(Response::into_inner),
        }
    }
}

async fn rent(mesh: &Mesh, token: &str, book_id: &str, request_id: &str) -> Rental {
    mesh.rentals()
        .await
        .rent(req(
            token,
            RentRequest {
                book_id: book_id.into(),
                request_id: request_id.into(),
            },
        ))
        .await
        .expect("renting")
        .into_inner()
}

// ------------------------------------------------------------------ identity

both_backends!(every_service_refuses_calls_without_a_valid_bearer_token);
async fn every_service_refuses_calls_without_a_valid_bearer_token(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let book = mesh.register_book("Auth", 1).await;
    let before = all_books(&mesh).await;

    let alice = MemberId::parse("alice").unwrap();
    let lib = MemberId::parse("librarian-1").unwrap();
    let forged_member = mint(
        "other-secret",
        &alice,
        Role::Member,
        Duration::from_secs(600),
    )
    .unwrap();
    let forged_librarian = mint(
        "other-secret",
        &lib,
        Role::Librarian,
        Duration::from_secs(600),
    )
    .unwrap();
    let forged_service = mint(
        "other-secret",
        &MemberId::parse("rental-svc").unwrap(),
        Role::Service,
        Duration::from_secs(600),
    )
    .unwrap();
    let good = token("alice", Role::Member);
    let expired = |sub: &str, role: &str| format!("Bearer {}", expired_token(sub, role));
    let headers: Vec<(&str, Option<String>)> = vec![
        ("no authorization header", None),
        ("an expired member token", Some(expired("alice", "member"))),
        (
            "an expired librarian token",
            Some(expired("librarian-1", "librarian")),
        ),
        (
            "an expired service token",
            Some(expired("rental-svc", "service")),
        ),
        (
            "a member token signed with another secret",
            Some(format!("Bearer {forged_member}")),
        ),
        (
            "a librarian token signed with another secret",
            Some(format!("Bearer {forged_librarian}")),
        ),
        (
            "a service token signed with another secret",
            Some(format!("Bearer {forged_service}")),
        ),
        ("Basic credentials", Some("Basic xyz".into())),
        ("Basic with a valid token", Some(format!("Basic {good}"))),
        ("a token without a scheme", Some(good.clone())),
        ("garbage after Bearer", Some("Bearer not.a.jwt".into())),
        ("an empty bearer token", Some("Bearer ".into())),
    ];

    let mut books = mesh.books().await;
    let mut desk = mesh.reservations().await;
    let mut loans = mesh.rentals().await;
    let mut pages = mesh.views().await;
    for (case, header) in &headers {
        let h = header.as_deref();
        let case = |rpc: &str| format!("{case}: {rpc}");
        refused(
            &case("BookService/GetBook"),
            books
                .get_book(with_auth(
                    h,
                    GetBookRequest {
                        book_id: book.book_id.clone(),
                    },
                ))
                .await,
            Code::Unauthenticated,
        );
        refused(
            &case("BookService/ListBooks"),
            books
                .list_books(with_auth(h, ListBooksRequest::default()))
                .await,
            Code::Unauthenticated,
        );
        refused(
            &case("BookService/RegisterBook"),
            books
                .register_book(with_auth(h, book_request("", "Forged", "X", 1)))
                .await,
            Code::Unauthenticated,
        );
        refused(
            &case("BookService/AddCopies"),
            books
                .add_copies(with_auth(
                    h,
                    AddCopiesRequest {
                        book_id: book.book_id.clone(),
                        copies: 5,
                        request_id: String::new(),
                        barcodes: Vec::new(),
                    },
                ))
                .await,
            Code::Unauthenticated,
        );
        refused(
            &case("ReservationService/Reserve"),
            desk.reserve(with_auth(
                h,
                ReserveRequest {
                    book_id: book.book_id.clone(),
                    request_id: String::new(),
                },
            ))
            .await,
            Code::Unauthenticated,
        );
        refused(
            &case("ReservationService/ListReservations"),
            desk.list_reservations(with_auth(h, ListReservationsRequest::default()))
                .await,
            Code::Unauthenticated,
        );
        refused(
            &case("ReservationService/FulfillReservation"),
            desk.fulfill_reservation(with_auth(
                h,
                FulfillReservationRequest {
                    member_id: "alice".into(),
                    book_id: book.book_id.clone(),
                    rental_id: UNKNOWN_ID.into(),
                },
            ))
            .await,
            Code::Unauthenticated,
        );
        refused(
            &case("RentalService/Rent"),
            loans
                .rent(with_auth(
                    h,
                    RentRequest {
                        book_id: book.book_id.clone(),
                        request_id: String::new(),
                    },
                ))
                .await,
            Code::Unauthenticated,
        );
        refused(
            &case("RentalService/ListRentals"),
            loans
                .list_rentals(with_auth(h, ListRentalsRequest::default()))
                .await,
            Code::Unauthenticated,
        );
        refused(
            &case("MyPageService/GetMyPage"),
            pages
                .get_my_page(with_auth(h, GetMyPageRequest::default()))
                .await,
            Code::Unauthenticated,
        );
        refused(
            &case("MyPageService/WatchMyPage"),
            pages
                .watch_my_page(with_auth(h, WatchMyPageRequest::default()))
                .await,
            Code::Unauthenticated,
        );
    }

    // Nothing the refused calls asked for happened.
    assert_eq!(all_books(&mesh).await, before, "the catalogue is unchanged");
    assert!(reservations_of(&mesh, "alice").await.is_empty());
    assert!(rentals_of(&mesh, "alice").await.is_empty());

    // And the real token works, with either spelling of the scheme.
    for scheme in ["Bearer", "bearer"] {
        books
            .get_book(with_auth(
                Some(&format!("{scheme} {good}")),
                GetBookRequest {
                    book_id: book.book_id.clone(),
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("{scheme}: {s:?}"));
    }
}

both_backends!(roles_and_ownership_are_enforced_and_refusals_change_nothing);
async fn roles_and_ownership_are_enforced_and_refusals_change_nothing(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let (alice, bob, lib) = (member("alice"), member("bob"), librarian());
    let book = mesh.register_book("Perms", 1).await;
    let mut books = mesh.books().await;
    let before = all_books(&mesh).await;

    // The catalogue is the librarians'.
    refused(
        "a member registering a book",
        books
            .register_book(req(&alice, book_request("", "Mine", "Me", 1)))
            .await,
        Code::PermissionDenied,
    );
    refused(
        "a member adding copies",
        books
            .add_copies(req(
                &alice,
                AddCopiesRequest {
                    book_id: book.book_id.clone(),
                    copies: 3,
                    request_id: String::new(),
                    barcodes: Vec::new(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(all_books(&mesh).await, before, "the catalogue is unchanged");

    let a = mesh.reserve(&alice, &book.book_id).await.unwrap();
    let b = mesh.reserve(&bob, &book.book_id).await.unwrap();
    assert_eq!(a.status(), ReservationStatus::Ready);
    assert_eq!(b.status(), ReservationStatus::Waiting);
    let mut desk = mesh.reservations().await;

    // A member cannot cancel, read or list another member's reservations;
    // another member's reservation is refused exactly like an unknown id
    // (SPEC §6), so that ids cannot be probed.
    let unknown = refused(
        "reading an unknown reservation",
        desk.get_reservation(req(
            &alice,
            GetReservationRequest {
                reservation_id: UNKNOWN_ID.into(),
            },
        ))
        .await,
        Code::NotFound,
    );
    let like_unknown = |s: Status, id: &str| {
        assert_eq!(
            s.message().replace(id, "<id>"),
            unknown.message().replace(UNKNOWN_ID, "<id>"),
            "refused like an unknown id"
        );
    };
    for (who, whose) in [(&bob, &a), (&alice, &b)] {
        let s = refused(
            "cancelling another member's reservation",
            desk.cancel_reservation(req(
                who,
                CancelReservationRequest {
                    reservation_id: whose.reservation_id.clone(),
                    request_id: String::new(),
                },
            ))
            .await,
            Code::NotFound,
        );
        like_unknown(s, &whose.reservation_id);
        let s = refused(
            "reading another member's reservation",
            desk.get_reservation(req(
                who,
                GetReservationRequest {
                    reservation_id: whose.reservation_id.clone(),
                },
            ))
            .await,
            Code::NotFound,
        );
        like_unknown(s, &whose.reservation_id);
    }
    refused(
        "listing another member's reservations",
        desk.list_reservations(req(
            &alice,
            ListReservationsRequest {
                member_id: "bob".into(),
                ..Default::default()
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    assert_eq!(
        get_reservation(&mesh, &a.reservation_id).await.status(),
        ReservationStatus::Ready
    );
    let b_now = get_reservation(&mesh, &b.reservation_id).await;
    assert_eq!(
        (b_now.status(), b_now.queue_position),
        (ReservationStatus::Waiting, 1)
    );

    // The internal RPCs are for role `service` only: not members, not librarians.
    for (who, caller) in [("a member", &alice), ("a librarian", &lib)] {
        refused(
            &format!("{who} calling FulfillReservation"),
            desk.fulfill_reservation(req(
                caller,
                FulfillReservationRequest {
                    member_id: "alice".into(),
                    book_id: book.book_id.clone(),
                    rental_id: UNKNOWN_ID.into(),
                },
            ))
            .await,
            Code::PermissionDenied,
        );
        refused(
            &format!("{who} calling RecordReturn"),
            desk.record_return(req(
                caller,
                RecordReturnRequest {
                    rental_id: UNKNOWN_ID.into(),
                    book_id: book.book_id.clone(),
                    member_id: "alice".into(),
                },
            ))
            .await,
            Code::PermissionDenied,
        );
    }
    assert_eq!(
        get_reservation(&mesh, &a.reservation_id).await,
        a,
        "alice's READY reservation is untouched"
    );

    // Rentals: only their member (or a librarian) reads or returns them.
    let loan = rent(&mesh, &alice, &book.book_id, "").await;
    let mut loans = mesh.rentals().await;
    let unknown = refused(
        "reading an unknown rental",
        loans
            .get_rental(req(
                &bob,
                GetRentalRequest {
                    rental_id: UNKNOWN_ID.into(),
                },
            ))
            .await,
        Code::NotFound,
    );
    let like_unknown = |s: Status| {
        assert_eq!(
            s.message().replace(&loan.rental_id, "<id>"),
            unknown.message().replace(UNKNOWN_ID, "<id>"),
            "refused like an unknown id"
        );
    };
    like_unknown(refused(
        "reading another member's rental",
        loans
            .get_rental(req(
                &bob,
                GetRentalRequest {
                    rental_id: loan.rental_id.clone(),
                },
            ))
            .await,
        Code::NotFound,
    ));
    like_unknown(refused(
        "returning another member's rental",
        loans
            .return_rental(req(
                &bob,
                ReturnRentalRequest {
                    rental_id: loan.rental_id.clone(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::NotFound,
    ));
    refused(
        "listing another member's rentals",
        loans
            .list_rentals(req(
                &bob,
                ListRentalsRequest {
                    member_id: "alice".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(
        get_rental(&mesh, &loan.rental_id).await.status(),
        RentalStatus::Active
    );

    // A librarian may read anyone's, and cancel anyone's.
    let seen = loans
        .get_rental(req(
            &lib,
            GetRentalRequest {
                rental_id: loan.rental_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.member_id, "alice");
    assert_eq!(rentals_of(&mesh, "alice").await, vec![seen]);
    let listed = reservations_of(&mesh, "bob").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reservation_id, b.reservation_id);
    let cancelled = desk
        .cancel_reservation(req(
            &lib,
            CancelReservationRequest {
                reservation_id: b.reservation_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .expect("a librarian cancels anyone's reservation")
        .into_inner();
    assert_eq!(cancelled.status(), ReservationStatus::Cancelled);
    assert_eq!(cancelled.member_id, "bob");
    // ... and the member still sees their own.
    let own = desk
        .get_reservation(req(
            &bob,
            GetReservationRequest {
                reservation_id: b.reservation_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.status(), ReservationStatus::Cancelled);
}

// ---------------------------------------------------------------- validation

both_backends!(every_field_is_validated_with_a_message_naming_it);
async fn every_field_is_validated_with_a_message_naming_it(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let (alice, lib) = (member("alice"), librarian());
    let book = mesh.register_book("Valid", 1).await;
    let mut books = mesh.books().await;
    let mut desk = mesh.reservations().await;
    let mut loans = mesh.rentals().await;

    // RegisterBook, field by field; each request has exactly one bad field.
    let bad_request_id = RegisterBookRequest {
        request_id: "a b".into(),
        ..book_request("", "T", "A", 1)
    };
    let cases = [
        ("empty title", book_request("", "", "A", 1), "title"),
        ("blank title", book_request("", "   ", "A", 1), "title"),
        (
            "301-char title",
            book_request("", &"t".repeat(301), "A", 1),
            "title",
        ),
        ("empty author", book_request("", "T", "", 1), "author"),
        (
            "201-char author",
            book_request("", "T", &"a".repeat(201), 1),
            "author",
        ),
        (
            "bad ISBN checksum",
            book_request("978-0-306-40615-8", "T", "A", 1),
            "isbn",
        ),
        ("short ISBN", book_request("12345", "T", "A", 1), "isbn"),
        (
            "total_copies 0",
            book_request("", "T", "A", 0),
            "total_copies",
        ),
        (
            "total_copies 100000",
            book_request("", "T", "A", 100_000),
            "total_copies",
        ),
        (
            "negative total_copies",
            book_request("", "T", "A", -1),
            "total_copies",
        ),
        ("request_id with a space", bad_request_id, "request_id"),
    ];
    for (case, request, field) in cases {
        invalid(
            &format!("RegisterBook with {case}"),
            books.register_book(req(&lib, request)).await,
            field,
        );
    }
    assert_eq!(
        titles(&all_books(&mesh).await),
        vec!["Valid"],
        "no refused registration left a book"
    );
    // The limits themselves are fine.
    let longest = books
        .register_book(req(
            &lib,
            book_request(
                "978-0-306-40615-7",
                &"t".repeat(300),
                &"a".repeat(200),
                1000,
            ),
        ))
        .await
        .expect("a 300-char title, a 200-char author and 1000 copies are allowed")
        .into_inner();
    assert_eq!(longest.isbn, "9780306406157", "kept without separators");

    // AddCopies.
    for (case, copies, field) in [
        ("copies 0", 0, "copies"),
        ("copies -3", -3, "copies"),
        ("copies 100000", 100_000, "copies"),
    ] {
        invalid(
            &format!("AddCopies with {case}"),
            books
                .add_copies(req(
                    &lib,
                    AddCopiesRequest {
                        book_id: book.book_id.clone(),
                        copies,
                        request_id: String::new(),
                        barcodes: Vec::new(),
                    },
                ))
                .await,
            field,
        );
    }

    // Every id field, malformed and missing.
    for bad in ["not-an-id", ""] {
        let case = |rpc: &str| format!("{rpc} with id {bad:?}");
        invalid(
            &case("GetBook"),
            books
                .get_book(req(
                    &alice,
                    GetBookRequest {
                        book_id: bad.into(),
                    },
                ))
                .await,
            "book_id",
        );
        invalid(
            &case("AddCopies"),
            books
                .add_copies(req(
                    &lib,
                    AddCopiesRequest {
                        book_id: bad.into(),
                        copies: 1,
                        request_id: String::new(),
                        barcodes: Vec::new(),
                    },
                ))
                .await,
            "book_id",
        );
        invalid(
            &case("Reserve"),
            desk.reserve(req(
                &alice,
                ReserveRequest {
                    book_id: bad.into(),
                    request_id: String::new(),
                },
            ))
            .await,
            "book_id",
        );
        invalid(
            &case("GetReservation"),
            desk.get_reservation(req(
                &alice,
                GetReservationRequest {
                    reservation_id: bad.into(),
                },
            ))
            .await,
            "reservation_id",
        );
        invalid(
            &case("CancelReservation"),
            desk.cancel_reservation(req(
                &alice,
                CancelReservationRequest {
                    reservation_id: bad.into(),
                    request_id: String::new(),
                },
            ))
            .await,
            "reservation_id",
        );
        invalid(
            &case("Rent"),
            loans
                .rent(req(
                    &alice,
                    RentRequest {
                        book_id: bad.into(),
                        request_id: String::new(),
                    },
                ))
                .await,
            "book_id",
        );
        invalid(
            &case("GetRental"),
            loans
                .get_rental(req(
                    &alice,
                    GetRentalRequest {
                        rental_id: bad.into(),
                    },
                ))
                .await,
            "rental_id",
        );
        invalid(
            &case("ReturnRental"),
            loans
                .return_rental(req(
                    &alice,
                    ReturnRentalRequest {
                        rental_id: bad.into(),
                        request_id: String::new(),
                    },
                ))
                .await,
            "rental_id",
        );
    }

    // Paging and filters of the lists.
    for (case, page_size, page_token, field) in [
        ("page_size 101", 101, "", "page_size"),
        ("page_size -1", -1, "", "page_size"),
        ("a garbage page_token", 10, "garbage!", "page_token"),
    ] {
        invalid(
            &format!("ListBooks with {case}"),
            books
                .list_books(req(
                    &alice,
                    ListBooksRequest {
                        query: String::new(),
                        page_size,
                        page_token: page_token.into(),
                    },
                ))
                .await,
            field,
        );
        invalid(
            &format!("ListReservations with {case}"),
            desk.list_reservations(req(
                &alice,
                ListReservationsRequest {
                    page_size,
                    page_token: page_token.into(),
                    ..Default::default()
                },
            ))
            .await,
            field,
        );
        invalid(
            &format!("ListRentals with {case}"),
            loans
                .list_rentals(req(
                    &alice,
                    ListRentalsRequest {
                        page_size,
                        page_token: page_token.into(),
                        ..Default::default()
                    },
                ))
                .await,
            field,
        );
    }
    invalid(
        "ListBooks with a 301-char query",
        books
            .list_books(req(
                &alice,
                ListBooksRequest {
                    query: "q".repeat(301),
                    ..Default::default()
                },
            ))
            .await,
        "query",
    );
    invalid(
        "ListReservations for a malformed member_id",
        desk.list_reservations(req(
            &lib,
            ListReservationsRequest {
                member_id: "b b".into(),
                ..Default::default()
            },
        ))
        .await,
        "member_id",
    );
    invalid(
        "ListRentals for a malformed member_id",
        loans
            .list_rentals(req(
                &lib,
                ListRentalsRequest {
                    member_id: "b b".into(),
                    ..Default::default()
                },
            ))
            .await,
        "member_id",
    );

    // Nothing changed anywhere.
    assert_eq!(all_books(&mesh).await.len(), 2);
    assert_eq!(get_book(&mesh, &book.book_id).await.total_copies, 1);
    assert!(reservations_of(&mesh, "alice").await.is_empty());
    assert!(rentals_of(&mesh, "alice").await.is_empty());
}

both_backends!(business_refusals_use_precise_codes_and_change_nothing);
async fn business_refusals_use_precise_codes_and_change_nothing(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let (alice, lib) = (member("alice"), librarian());
    let mut books = mesh.books().await;
    let mut desk = mesh.reservations().await;
    let mut loans = mesh.rentals().await;
    let add = |book_id: &str, copies: i32| AddCopiesRequest {
        book_id: book_id.into(),
        copies,
        request_id: String::new(),
        barcodes: Vec::new(),
    };

    // At most 1000 copies of a book.
    let big = mesh.register_book("Big", 999).await;
    let over = refused(
        "AddCopies past 1000 copies",
        books.add_copies(req(&lib, add(&big.book_id, 2))).await,
        Code::FailedPrecondition,
    );
    assert!(over.message().contains("1000"), "{}", over.message());
    assert_eq!(get_book(&mesh, &big.book_id).await.total_copies, 999);
    let full = books
        .add_copies(req(&lib, add(&big.book_id, 1)))
        .await
        .expect("up to 1000 copies")
        .into_inner();
    assert_eq!(full.total_copies, 1000);
    refused(
        "AddCopies to a book with 1000 copies",
        books.add_copies(req(&lib, add(&big.book_id, 1))).await,
        Code::FailedPrecondition,
    );
    assert_eq!(get_book(&mesh, &big.book_id).await.total_copies, 1000);

    // Well-formed ids that name nothing.
    refused(
        "GetBook of an unknown book",
        books
            .get_book(req(
                &alice,
                GetBookRequest {
                    book_id: UNKNOWN_ID.into(),
                },
            ))
            .await,
        Code::NotFound,
    );
    refused(
        "AddCopies to an unknown book",
        books.add_copies(req(&lib, add(UNKNOWN_ID, 1))).await,
        Code::NotFound,
    );
    refused(
        "GetReservation of an unknown reservation",
        desk.get_reservation(req(
            &alice,
            GetReservationRequest {
                reservation_id: UNKNOWN_ID.into(),
            },
        ))
        .await,
        Code::NotFound,
    );
    refused(
        "CancelReservation of an unknown reservation",
        desk.cancel_reservation(req(
            &alice,
            CancelReservationRequest {
                reservation_id: UNKNOWN_ID.into(),
                request_id: String::new(),
            },
        ))
        .await,
        Code::NotFound,
    );
    refused(
        "GetRental of an unknown rental",
        loans
            .get_rental(req(
                &alice,
                GetRentalRequest {
                    rental_id: UNKNOWN_ID.into(),
                },
            ))
            .await,
        Code::NotFound,
    );
    refused(
        "ReturnRental of an unknown rental",
        loans
            .return_rental(req(
                &alice,
                ReturnRentalRequest {
                    rental_id: UNKNOWN_ID.into(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::NotFound,
    );
    refused(
        "Rent of an unknown book",
        loans
            .rent(req(
                &alice,
                RentRequest {
                    book_id: UNKNOWN_ID.into(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::NotFound,
    );

    // Renting without a READY reservation, cancelling a FULFILLED one.
    let book = mesh.register_book("Precise", 1).await;
    mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    refused(
        "Rent without a READY reservation",
        loans
            .rent(req(
                &alice,
                RentRequest {
                    book_id: book.book_id.clone(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert!(rentals_of(&mesh, "alice").await.is_empty());
    let a = mesh.reserve(&alice, &book.book_id).await.unwrap();
    assert_eq!(a.status(), ReservationStatus::Waiting);
    refused(
        "Reserve a book twice",
        desk.reserve(req(
            &alice,
            ReserveRequest {
                book_id: book.book_id.clone(),
                request_id: String::new(),
            },
        ))
        .await,
        Code::AlreadyExists,
    );
    assert_eq!(reservations_of(&mesh, "alice").await, vec![a]);
}

// ------------------------------------------------------------------- listing

both_backends!(list_books_matches_title_author_and_isbn_and_pages_through_every_book_once);
async fn list_books_matches_title_author_and_isbn_and_pages_through_every_book_once(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let lib = librarian();
    let mut books = mesh.books().await;
    let catalogue = [
        ("9780441013593", "Dune", "Frank Herbert"),
        (
            "978-0-441-47812-5",
            "The Left Hand of Darkness",
            "Ursula K. Le Guin",
        ),
        ("", "A Wizard of Earthsea", "Ursula K. Le Guin"),
        ("0-8044-2957-X", "Physics Handbook", "Anonymous"),
        ("978-0-306-40615-7", "Mortal Engines", "Philip Reeve"),
        ("", "Children of Dune", "Frank Herbert"),
        ("", "Solaris", "Stanisław Lem"),
    ];
    let mut ids = HashSet::new();
    for (isbn, title, author) in catalogue {
        let b = books
            .register_book(req(&lib, book_request(isbn, title, author, 1)))
            .await
            .unwrap()
            .into_inner();
        ids.insert(b.book_id);
    }

    for (query, expected) in [
        ("dune", vec!["Children of Dune", "Dune"]),
        ("DUNE", vec!["Children of Dune", "Dune"]),
        ("  Darkness  ", vec!["The Left Hand of Darkness"]),
        (
            "le guin",
            vec!["A Wizard of Earthsea", "The Left Hand of Darkness"],
        ),
        (
            "URSULA",
            vec!["A Wizard of Earthsea", "The Left Hand of Darkness"],
        ),
        ("herbert", vec!["Children of Dune", "Dune"]),
        ("STANISŁAW", vec!["Solaris"]),
        ("9780441013593", vec!["Dune"]),
        ("0441", vec!["Dune", "The Left Hand of Darkness"]),
        ("080442957x", vec!["Physics Handbook"]),
        ("080442957X", vec!["Physics Handbook"]),
        ("40615", vec!["Mortal Engines"]),
        ("no such words", vec![]),
    ] {
        let (found, _) = list_books(&mesh, query, 0).await;
        assert_eq!(titles(&found), expected, "query {query:?}");
        // Paging a query gives the same books.
        let (paged, pages) = list_books(&mesh, query, 1).await;
        assert_eq!(titles(&paged), expected, "query {query:?} a page at a time");
        assert_eq!(pages, expected.len().max(1), "query {query:?}: pages");
    }

    // Every book exactly once, whatever the page size; only the last page
    // has no token.
    for page_size in [1, 2, 3, 6, 7, 8, 100] {
        let (found, pages) = list_books(&mesh, "", page_size).await;
        let seen: Vec<String> = found.iter().map(|b| b.book_id.clone()).collect();
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(
            seen.len(),
            unique.len(),
            "page_size {page_size}: no repeats"
        );
        assert_eq!(unique, ids, "page_size {page_size}: every book");
        assert_eq!(
            pages,
            7usize.div_ceil(page_size as usize),
            "page_size {page_size}: pages"
        );
    }
}

both_backends!(list_books_query_treats_like_wildcards_as_plain_characters);
async fn list_books_query_treats_like_wildcards_as_plain_characters(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let lib = librarian();
    let mut books = mesh.books().await;
    for title in ["100% Rust", "Snake_case Style", "Dune"] {
        books
            .register_book(req(&lib, book_request("", title, "Someone", 1)))
            .await
            .unwrap();
    }
    let mut wrong = Vec::new();
    for (query, expected) in [
        ("%", vec!["100% Rust"]),
        ("_", vec!["Snake_case Style"]),
        ("d%e", vec![]),
        ("d_ne", vec![]),
    ] {
        let (found, _) = list_books(&mesh, query, 0).await;
        let found = titles(&found);
        if found != expected {
            wrong.push(format!("{query:?} found {found:?}, expected {expected:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "queries should match their text literally:\n{}",
        wrong.join("\n")
    );
}

// -------------------------------------------------------------- idempotency

both_backends!(request_ids_make_retries_safe_per_caller_and_method);
async fn request_ids_make_retries_safe_per_caller_and_method(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let (alice, bob, lib) = (member("alice"), member("bob"), librarian());
    let mut books = mesh.books().await;

    // RegisterBook: the same id gives the same book, once.
    let register = |title: &str| RegisterBookRequest {
        request_id: "reg-1".into(),
        ..book_request("", title, "Idem Potent", 1)
    };
    let first = books
        .register_book(req(&lib, register("Once")))
        .await
        .unwrap()
        .into_inner();
    let again = books
        .register_book(req(&lib, register("Once")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "the same answer");
    assert_eq!(titles(&all_books(&mesh).await), vec!["Once"]);
    let s = refused(
        "RegisterBook: the same request_id for another book",
        books.register_book(req(&lib, register("Twice"))).await,
        Code::InvalidArgument,
    );
    assert!(s.message().contains("request_id"), "{}", s.message());
    let other_librarian = token("librarian-2", Role::Librarian);
    let theirs = books
        .register_book(req(&other_librarian, register("Once")))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        theirs.book_id, first.book_id,
        "another caller's id is their own"
    );
    assert_eq!(titles(&all_books(&mesh).await), vec!["Once", "Once"]);
    let second = mesh.register_book("Second", 1).await;

    // Reserve: same member, same id, same reservation.
    let a1 = reserve_with_id(&mesh, &alice, &first.book_id, "res-1")
        .await
        .unwrap();
    let a2 = reserve_with_id(&mesh, &alice, &first.book_id, "res-1")
        .await
        .unwrap();
    assert_eq!(a2, a1, "the same reservation, answered the same");
    assert_eq!(a1.status(), ReservationStatus::Ready);
    assert_eq!(reservations_of(&mesh, "alice").await.len(), 1);
    let s = refused(
        "Reserve: the same request_id for another book",
        reserve_with_id(&mesh, &alice, &second.book_id, "res-1")
            .await
            .map(Response::new),
        Code::InvalidArgument,
    );
    assert!(s.message().contains("request_id"), "{}", s.message());
    assert_eq!(reservations_of(&mesh, "alice").await, vec![a1.clone()]);
    // Another member's "res-1" is theirs.
    let b1 = reserve_with_id(&mesh, &bob, &first.book_id, "res-1")
        .await
        .unwrap();
    assert_ne!(b1.reservation_id, a1.reservation_id);
    assert_eq!(
        (b1.member_id.as_str(), b1.status(), b1.queue_position),
        ("bob", ReservationStatus::Waiting, 1)
    );
    // The scope is per method too: bob's "res-1" for CancelReservation is new.
    let mut desk = mesh.reservations().await;
    let cancel = |id: &str, request_id: &str| CancelReservationRequest {
        reservation_id: id.into(),
        request_id: request_id.into(),
    };

    // CancelReservation: the repeat gives the same answer.
    let c1 = desk
        .cancel_reservation(req(&bob, cancel(&b1.reservation_id, "res-1")))
        .await
        .unwrap()
        .into_inner();
    let c2 = desk
        .cancel_reservation(req(&bob, cancel(&b1.reservation_id, "res-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c1.status(), ReservationStatus::Cancelled);
    assert_eq!(c2, c1);
    let c3 = desk
        .cancel_reservation(req(&bob, cancel(&b1.reservation_id, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c3, c1, "cancelling again without an id changes nothing");
    let s = refused(
        "CancelReservation: the same request_id for another reservation",
        desk.cancel_reservation(req(&bob, cancel(UNKNOWN_ID, "res-1")))
            .await,
        Code::InvalidArgument,
    );
    assert!(s.message().contains("request_id"), "{}", s.message());
    assert_eq!(
        get_reservation(&mesh, &a1.reservation_id).await.status(),
        ReservationStatus::Ready,
        "alice's hold is untouched by bob's cancellations"
    );

    // Rent and ReturnRental: the repeat gives the same answer.
    let r1 = rent(&mesh, &alice, &first.book_id, "loan-1").await;
    let r2 = rent(&mesh, &alice, &first.book_id, "loan-1").await;
    assert_eq!(r2, r1);
    assert_eq!(rentals_of(&mesh, "alice").await.len(), 1);
    let mut loans = mesh.rentals().await;
    let give_back = |request_id: &str| ReturnRentalRequest {
        rental_id: r1.rental_id.clone(),
        request_id: request_id.into(),
    };
    let back1 = loans
        .return_rental(req(&alice, give_back("ret-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back1.status(), RentalStatus::Returned);
    assert_eq!(back1.return_confirmation(), ReturnConfirmation::Confirmed);
    let back2 = loans
        .return_rental(req(&alice, give_back("ret-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back2, back1);
    let back3 = loans
        .return_rental(req(&alice, give_back("")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        back3, back1,
        "returning again without an id changes nothing"
    );
    assert_eq!(rentals_of(&mesh, "alice").await, vec![back1]);
}

both_backends!(a_request_id_reused_for_another_rental_is_refused_even_if_that_one_is_returned);
async fn a_request_id_reused_for_another_rental_is_refused_even_if_that_one_is_returned(
    store: Store,
) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let alice = member("alice");
    let mut loans = mesh.rentals().await;
    let give_back = |rental_id: &str, request_id: &str| ReturnRentalRequest {
        rental_id: rental_id.into(),
        request_id: request_id.into(),
    };
    let mut rentals = Vec::new();
    for title in ["First", "Second"] {
        let book = mesh.register_book(title, 1).await;
        mesh.reserve(&alice, &book.book_id).await.unwrap();
        rentals.push(rent(&mesh, &alice, &book.book_id, "").await);
    }
    let (first, second) = (&rentals[0], &rentals[1]);
    // The first is returned without a request id, the second with "ret-1".
    loans
        .return_rental(req(&alice, give_back(&first.rental_id, "")))
        .await
        .unwrap();
    let second_back = loans
        .return_rental(req(&alice, give_back(&second.rental_id, "ret-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second_back.status(), RentalStatus::Returned);

    // "ret-1" now names the return of the second rental: using it for the
    // first is a different request, refused like everywhere else (SPEC §5).
    let s = refused(
        "ReturnRental: request_id of another rental's return, for a returned rental",
        loans
            .return_rental(req(&alice, give_back(&first.rental_id, "ret-1")))
            .await,
        Code::InvalidArgument,
    );
    assert!(s.message().contains("request_id"), "{}", s.message());
}

// --------------------------------------------------------- health and probes

both_backends!(health_answers_serving_without_a_token);
async fn health_answers_serving_without_a_token(store: Store) {
    let mesh = Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    for (addr, name) in [
        (mesh.book_addr(), "rentalbook.book.v1.BookService"),
        (
            mesh.reserve_addr(),
            "rentalbook.reserve.v1.ReservationService",
        ),
        (mesh.rental_addr(), "rentalbook.rental.v1.RentalService"),
    ] {
        let mut health = HealthClient::new(support::channel(addr).await);
        // Readiness ("" and the service's own name) and liveness.
        for service in ["", name, rentalbook_plumbing::serve::LIVENESS] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|s| panic!("{name} Check({service:?}): {s:?}"))
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{name} Check({service:?})"
            );
        }
        let unknown = health
            .check(HealthCheckRequest {
                service: "rentalbook.nope.v1.Nothing".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound, "{name}: an unknown service");
    }
    // A stray authorization header does not matter to probes either.
    let mut health = HealthClient::new(support::channel(mesh.book_addr()).await);
    let mut probe = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    probe
        .metadata_mut()
        .insert("authorization", "Basic xyz".parse().unwrap());
    assert_eq!(
        health.check(probe).await.unwrap().into_inner().status,
        ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn reflection_lists_the_services_of_each_port_in_both_versions() {
    use tonic_reflection::pb::{v1, v1alpha};
    let mesh = Mesh::start().await;
    let infrastructure = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    for (addr, own) in [
        (mesh.book_addr(), "rentalbook.book.v1.BookService"),
        (
            mesh.reserve_addr(),
            "rentalbook.reserve.v1.ReservationService",
        ),
        (mesh.rental_addr(), "rentalbook.rental.v1.RentalService"),
    ] {
        let expected: HashSet<String> = infrastructure
            .iter()
            .chain([&own])
            .map(|s| s.to_string())
            .collect();
        let channel = support::channel(addr).await;

        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let ask = |request| v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut answers = client
            .server_reflection_info(futures::stream::iter([
                ask(v1::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                )),
                ask(
                    v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                        own.to_owned(),
                    ),
                ),
            ]))
            .await
            .unwrap()
            .into_inner();
        let listed = match answers.message().await.unwrap().unwrap().message_response {
            Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => l
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<HashSet<_>>(),
            other => panic!("{own}: not a list of services: {other:?}"),
        };
        assert_eq!(listed, expected, "v1 on the port of {own}");
        match answers.message().await.unwrap().unwrap().message_response {
            Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(f)) => {
                assert!(!f.file_descriptor_proto.is_empty(), "{own}: its file")
            }
            other => panic!("{own}: no file for the service: {other:?}"),
        }

        // grpcurl 1.8 asks v1alpha.
        let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let mut answers = client
            .server_reflection_info(futures::stream::iter([v1alpha::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
                ),
            }]))
            .await
            .unwrap()
            .into_inner();
        let listed = match answers.message().await.unwrap().unwrap().message_response {
            Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
                l.service
                    .into_iter()
                    .map(|s| s.name)
                    .collect::<HashSet<_>>()
            }
            other => panic!("{own}: not a list of services: {other:?}"),
        };
        assert_eq!(listed, expected, "v1alpha on the port of {own}");
    }
}

// ------------------------------------------------------------- token rules

/// Seconds since the epoch, `offset` from now.
fn epoch_secs(offset: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now + offset
}

/// A token as an identity provider signs it: `sub`, `role`, an `exp` an
/// hour away and `claims` besides (which may replace any of them), signed
/// with the mesh's secret.
fn provider_token(sub: &str, role: &str, claims: serde_json::Value) -> String {
    let mut all = serde_json::json!({"sub": sub, "role": role, "exp": epoch_secs(3600)});
    if let (Some(all), Some(extra)) = (all.as_object_mut(), claims.as_object()) {
        all.extend(extra.clone());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &all,
        &jsonwebtoken::EncodingKey::from_secret(support::SECRET.as_bytes()),
    )
    .unwrap()
}

/// A token from `rentalbook token`, with the environment it is given.
fn token_command(sub: &str, role: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rentalbook"))
        .args(["token", "--sub", sub, "--role", role, "--ttl", "1h"])
        .env("RENTALBOOK_JWT_SECRET", support::SECRET)
        .env_remove("RENTALBOOK_JWT_AUDIENCE")
        .env_remove("RENTALBOOK_JWT_ISSUER")
        .envs(env.iter().copied())
        .output()
        .expect("running rentalbook token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A JWT's claims (signed with the mesh's secret), whatever they say.
fn claims_of(token: &str) -> serde_json::Value {
    let mut any = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    any.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(support::SECRET.as_bytes()),
        &any,
    )
    .unwrap()
    .claims
}

const AUDIENCE: &str = "rentalbook";
const ISSUER: &str = "https://id.library.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_issuer_and_not_before_are_checked_when_set() {
    let mesh = Mesh::start_with(Options {
        common_args: vec![
            "--jwt-audience",
            AUDIENCE,
            "--jwt-issuer",
            ISSUER,
            "--jwt-leeway",
            "10s",
        ],
        ..Options::default()
    })
    .await;
    let ours = serde_json::json!({"aud": AUDIENCE, "iss": ISSUER});
    let with = |claims: serde_json::Value| {
        let mut all = ours.clone();
        all.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        provider_token("alice", "member", all)
    };
    let without = |claim: &str| {
        let mut all = ours.clone();
        all.as_object_mut().unwrap().remove(claim);
        provider_token("alice", "member", all)
    };

    // What the command mints carries the audience and the issuer.
    let env = [
        ("RENTALBOOK_JWT_AUDIENCE", AUDIENCE),
        ("RENTALBOOK_JWT_ISSUER", ISSUER),
    ];
    let lib = token_command("librarian-1", "librarian", &env);
    assert_eq!(claims_of(&lib)["aud"], AUDIENCE);
    assert_eq!(claims_of(&lib)["iss"], ISSUER);
    let plain = token_command("librarian-1", "librarian", &[]);
    assert!(claims_of(&plain).get("aud").is_none(), "{plain}");

    let mut books = mesh.books().await;
    let mut pages = mesh.views().await;
    let list = || ListBooksRequest {
        page_size: 1,
        ..Default::default()
    };
    let taken = [
        ("the command's token", lib.clone()),
        ("an audience and an issuer", with(serde_json::json!({}))),
        (
            "the audience among others",
            with(serde_json::json!({"aud": ["another-api", AUDIENCE]})),
        ),
        (
            "a `nbf` within the leeway",
            with(serde_json::json!({"nbf": epoch_secs(3)})),
        ),
        (
            "a `nbf` passed",
            with(serde_json::json!({"nbf": epoch_secs(-60)})),
        ),
        (
            "an `exp` passed within the leeway",
            with(serde_json::json!({"exp": epoch_secs(-3)})),
        ),
    ];
    for (case, token) in &taken {
        books
            .list_books(req(token, list()))
            .await
            .unwrap_or_else(|s| panic!("{case}: {s:?}"));
    }
    let refused_with = [
        (
            "another audience",
            with(serde_json::json!({"aud": "another-api"})),
            "aud",
        ),
        ("no audience", without("aud"), "aud"),
        (
            "another issuer",
            with(serde_json::json!({"iss": "https://evil.example"})),
            "iss",
        ),
        ("no issuer", without("iss"), "iss"),
        (
            "a `nbf` in the future",
            with(serde_json::json!({"nbf": epoch_secs(600)})),
            "not valid yet",
        ),
        (
            "an `exp` passed beyond the leeway",
            with(serde_json::json!({"exp": epoch_secs(-60)})),
            "expired",
        ),
        ("the default command's token", plain.clone(), "aud"),
    ];
    for (case, token, says) in &refused_with {
        let s = refused(
            case,
            books.list_books(req(token, list())).await,
            Code::Unauthenticated,
        );
        assert!(s.message().contains(says), "{case}: {}", s.message());
        let s = refused(
            case,
            pages
                .get_my_page(req(token, GetMyPageRequest::default()))
                .await,
            Code::Unauthenticated,
        );
        assert!(s.message().contains(says), "{case}: {}", s.message());
    }

    // A whole loan with the provider's tokens: rental-svc's own token to
    // reserve-svc carries the audience and the issuer too.
    let alice = with(serde_json::json!({}));
    let book = books
        .register_book(req(&lib, book_request("", "Audiences", "A. Author", 1)))
        .await
        .expect("registering with the command's token")
        .into_inner();
    let reserved = mesh.reserve(&alice, &book.book_id).await.unwrap();
    assert_eq!(reserved.status(), ReservationStatus::Ready);
    let loan = rent(&mesh, &alice, &book.book_id, "").await;
    assert_eq!(loan.status(), RentalStatus::Active);

    // REST: the same rules, in the usual JSON error.
    let (edge, _stop) = mesh.start_edge().await;
    let http = reqwest::Client::new();
    let get = |token: String| {
        http.get(format!("http://{edge}/v1/books?pageSize=1"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(get(alice.clone()).await.unwrap().status(), 200);
    for (case, token, says) in refused_with {
        let res = get(token).await.unwrap();
        assert_eq!(res.status(), 401, "{case}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["code"], 16, "{case}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{case}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rules_an_audience_is_taken_and_a_future_nbf_is_not() {
    let mesh = Mesh::start().await;
    let mut pages = mesh.views().await;
    let from_a_provider = provider_token(
        "alice",
        "member",
        serde_json::json!({"aud": "account", "iss": "https://id.example"}),
    );
    let page = pages
        .get_my_page(req(&from_a_provider, GetMyPageRequest::default()))
        .await
        .expect("an identity provider's token with an audience")
        .into_inner();
    assert_eq!(page.member_id, "alice");
    let early = provider_token(
        "alice",
        "member",
        serde_json::json!({"nbf": epoch_secs(3600)}),
    );
    let s = refused(
        "a `nbf` an hour away",
        pages
            .get_my_page(req(&early, GetMyPageRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    assert!(s.message().contains("not valid yet"), "{}", s.message());
}
