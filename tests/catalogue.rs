//! The catalogue (SPEC §3, §10) against the real services on both backends:
//! ISBNs kept as ISBN-13 and a second book with a known ISBN refused naming
//! the first; search by every word in any order, ISBN in any form and Korean
//! names, ranked and paged; a librarian's correction of title and author,
//! which My Page follows and a replay of the stream gives again.

mod support;

use rentalbook_proto::book::v1::{
    Book, GetBookRequest, ListBooksRequest, RegisterBookRequest, UpdateBookRequest,
};
use rentalbook_proto::reserve::v1::Reservation;
use rentalbook_proto::view::v1::{GetMyPageRequest, MyPage};
use serde_json::{Value, json};
use support::{Mesh, Options, Store, eventually, librarian, member, req};
use tonic::Code;

fn book(isbn: &str, title: &str, author: &str) -> RegisterBookRequest {
    RegisterBookRequest {
        isbn: isbn.into(),
        title: title.into(),
        author: author.into(),
        total_copies: 1,
        request_id: String::new(),
        barcodes: Vec::new(),
    }
}

async fn mesh(store: Store) -> Mesh {
    Mesh::start_with(Options {
        store,
        ..Options::default()
    })
    .await
}

async fn register(mesh: &Mesh, request: RegisterBookRequest) -> Result<Book, tonic::Status> {
    mesh.books()
        .await
        .register_book(req(&librarian(), request))
        .await
        .map(|r| r.into_inner())
}

/// The titles a query finds, in the order given, a page of `page_size` at
/// a time; checks that pages are no longer than asked and that only the
/// last one has no token.
async fn search(mesh: &Mesh, query: &str, page_size: i32) -> Vec<String> {
    let mut client = mesh.books().await;
    let mut titles = Vec::new();
    let mut page_token = String::new();
    for _ in 0..100 {
        let page = client
            .list_books(req(
                &member("reader"),
                ListBooksRequest {
                    query: query.into(),
                    page_size,
                    page_token,
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("searching {query:?}: {e}"))
            .into_inner();
        assert!(
            page.books.len() <= page_size as usize,
            "{query:?}: a page of {} books for page_size {page_size}",
            page.books.len()
        );
        titles.extend(page.books.into_iter().map(|b| b.title));
        if page.next_page_token.is_empty() {
            return titles;
        }
        page_token = page.next_page_token;
    }
    panic!("{query:?}: paging does not end");
}

both_backends!(isbns_are_kept_as_isbn_13_and_a_known_isbn_is_refused_naming_its_book);
async fn isbns_are_kept_as_isbn_13_and_a_known_isbn_is_refused_naming_its_book(store: Store) {
    let mesh = mesh(store).await;
    let kindred = register(
        &mesh,
        RegisterBookRequest {
            request_id: "kindred-1".into(),
            ..book("0-8070-8369-0", "Kindred", "Octavia E. Butler")
        },
    )
    .await
    .unwrap();
    assert_eq!(kindred.isbn, "9780807083697", "ISBN-10 kept as ISBN-13");

    for typed in ["978-0-8070-8369-7", "0807083690", "978 0807083697"] {
        let refused = register(&mesh, book(typed, "Kindred (again)", "O. Butler"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists, "{typed}: {refused:?}");
        for named in ["Kindred", &kindred.book_id, "9780807083697"] {
            assert!(
                refused.message().contains(named),
                "{typed}: the refusal names {named}: {}",
                refused.message()
            );
        }
        let meta = |key| rentalbook_plumbing::error::reason_metadata(&refused, key);
        assert_eq!(
            rentalbook_plumbing::error::reason(&refused).as_deref(),
            Some("DUPLICATE_ISBN")
        );
        assert_eq!(meta("bookId"), Some(kindred.book_id.clone()));
        assert_eq!(meta("isbn").as_deref(), Some("9780807083697"));
        assert_eq!(meta("title").as_deref(), Some("Kindred"));
    }
    // A retry of the registration itself is its first answer, not a refusal.
    let again = register(
        &mesh,
        RegisterBookRequest {
            request_id: "kindred-1".into(),
            ..book("0-8070-8369-0", "Kindred", "Octavia E. Butler")
        },
    )
    .await
    .unwrap();
    assert_eq!(again.book_id, kindred.book_id);

    // Librarians racing to register one ISBN: exactly one book.
    let racers = (0..8).map(|i| {
        let mesh = &mesh;
        async move {
            register(
                mesh,
                book("978-0-306-40615-7", &format!("Racer {i}"), "Someone"),
            )
            .await
        }
    });
    let answers = futures::future::join_all(racers).await;
    let registered = answers.iter().filter(|a| a.is_ok()).count();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Err(s) if s.code() == Code::AlreadyExists))
        .count();
    assert_eq!((registered, refused), (1, 7), "{answers:?}");
    assert_eq!(search(&mesh, "9780306406157", 10).await.len(), 1);
    assert_eq!(
        search(&mesh, "", 100).await.len(),
        2,
        "nothing else was made"
    );
}

both_backends!(search_finds_every_word_in_title_author_or_isbn_ranked_and_paged);
async fn search_finds_every_word_in_title_author_or_isbn_ranked_and_paged(store: Store) {
    let mesh = mesh(store).await;
    for request in [
        book("0807083690", "Kindred", "Octavia E. Butler"),
        book(
            "978-0-446-67550-5",
            "Parable of the Sower",
            "Octavia E. Butler",
        ),
        book("", "Butler's Lives of the Saints", "Alban Butler"),
        book("", "소년이 온다", "한강"),
        book("", "채식주의자", "한강"),
        book("", "한강의 기적", "김철수"),
        book("9780441013593", "Dune", "Frank Herbert"),
        book("", "Dune", "Brian Herbert"),
        book("", "Children of Dune", "Frank Herbert"),
        book("", "The Road", "Cormac McCarthy"),
    ] {
        register(&mesh, request).await.unwrap();
    }
    let kindred = || vec!["Kindred"];
    for (query, expected) in [
        ("Octavia Butler", vec!["Kindred", "Parable of the Sower"]),
        ("butler octavia", vec!["Kindred", "Parable of the Sower"]),
        ("OCTAVIA sower", vec!["Parable of the Sower"]),
        ("Butler, Octavia", vec!["Kindred", "Parable of the Sower"]),
        // A title with the word comes before authors with it.
        (
            "butler",
            vec![
                "Butler's Lives of the Saints",
                "Kindred",
                "Parable of the Sower",
            ],
        ),
        ("978-0-8070-8369-7", kindred()),
        ("0807083690", kindred()),
        ("0-8070-8369-0", kindred()),
        ("9780807083697", kindred()),
        ("kindred 978-0-8070-8369-7", kindred()),
        ("한강", vec!["한강의 기적", "소년이 온다", "채식주의자"]),
        ("온다 한강", vec!["소년이 온다"]),
        ("소년", vec!["소년이 온다"]),
        // Equal numbers of words in the title: by title, then equal titles
        // in registration order.
        ("dune herbert", vec!["Children of Dune", "Dune", "Dune"]),
        ("frank dune", vec!["Children of Dune", "Dune"]),
        (
            "the",
            vec![
                "Butler's Lives of the Saints",
                "Parable of the Sower",
                "The Road",
            ],
        ),
        ("octavia smith", vec![]),
        ("2001", vec![]),
    ] {
        for page_size in [1, 2, 100] {
            assert_eq!(
                search(&mesh, query, page_size).await,
                expected,
                "query {query:?}, page_size {page_size}"
            );
        }
    }
    // The two books titled Dune come in registration order.
    let mut client = mesh.books().await;
    let dunes: Vec<String> = client
        .list_books(req(
            &member("reader"),
            ListBooksRequest {
                query: "dune herbert".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .books
        .into_iter()
        .map(|b| b.author)
        .collect();
    assert_eq!(dunes, ["Frank Herbert", "Frank Herbert", "Brian Herbert"]);

    // Refusals name the field.
    for (query, page_token, field) in [
        ("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13", "", "query"),
        ("dune", "not a token", "page_token"),
        ("dune", "01890a5d-ac96-774b-bcce-b302099a8057", "page_token"),
    ] {
        let refused = client
            .list_books(req(
                &member("reader"),
                ListBooksRequest {
                    query: query.into(),
                    page_size: 1,
                    page_token: page_token.into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(field), "{refused:?}");
    }
}

async fn page(mesh: &Mesh, who: &str) -> MyPage {
    mesh.views()
        .await
        .get_my_page(req(&member(who), GetMyPageRequest::default()))
        .await
        .unwrap()
        .into_inner()
}

async fn titles_on_page(mesh: &Mesh, who: &str, title: &str) {
    eventually(&format!("{who}'s page to show {title:?}"), || async move {
        let p = page(mesh, who).await;
        (p.journeys.len() == 1 && p.journeys[0].book_title == title).then_some(())
    })
    .await;
}

fn correction(book_id: &str, title: &str, author: &str) -> UpdateBookRequest {
    UpdateBookRequest {
        book_id: book_id.into(),
        title: title.into(),
        author: author.into(),
        request_id: String::new(),
    }
}

both_backends!(a_librarian_corrects_title_and_author_and_my_page_and_a_replay_follow);
async fn a_librarian_corrects_title_and_author_and_my_page_and_a_replay_follow(store: Store) {
    let mesh = mesh(store).await;
    let book = register(&mesh, book("0807083690", "Kindrid", "Octavia Butler"))
        .await
        .unwrap();
    mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    titles_on_page(&mesh, "alice", "Kindrid").await;

    let mut books = mesh.books().await;
    let refused = books
        .update_book(req(
            &member("alice"),
            correction(&book.book_id, "Mine now", ""),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    for (request, code, field) in [
        (
            correction(&book.book_id, "", " "),
            Code::InvalidArgument,
            "title or author",
        ),
        (
            correction(&book.book_id, &"t".repeat(301), ""),
            Code::InvalidArgument,
            "title",
        ),
        (
            correction("nope", "Kindred", ""),
            Code::InvalidArgument,
            "book_id",
        ),
        (
            correction("01890a5d-ac96-774b-bcce-b302099a8057", "Kindred", ""),
            Code::NotFound,
            "01890a5d-ac96-774b-bcce-b302099a8057",
        ),
    ] {
        let refused = books
            .update_book(req(&librarian(), request))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(refused.message().contains(field), "{refused:?}");
    }

    let corrected = books
        .update_book(req(
            &librarian(),
            correction(&book.book_id, " Kindred ", ""),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (corrected.title.as_str(), corrected.author.as_str()),
        ("Kindred", "Octavia Butler")
    );
    assert_eq!(corrected.isbn, book.isbn);
    let got = books
        .get_book(req(
            &member("alice"),
            GetBookRequest {
                book_id: book.book_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.title, "Kindred",
        "GetBook answers the correction at once"
    );
    assert_eq!(search(&mesh, "kindrid", 10).await, Vec::<String>::new());
    assert_eq!(search(&mesh, "kindred butler", 10).await, ["Kindred"]);
    titles_on_page(&mesh, "alice", "Kindred").await;

    // Through the edge: PATCH /v1/books/{book_id}, the author this time.
    let (edge, stop_edge) = mesh.start_edge().await;
    let http = reqwest::Client::new();
    let res = http
        .patch(format!("http://{edge}/v1/books/{}", book.book_id))
        .bearer_auth(librarian())
        .json(&json!({"author": "Octavia E. Butler"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (&body["title"], &body["author"]),
        (&json!("Kindred"), &json!("Octavia E. Butler"))
    );
    let res = http
        .get(format!("http://{edge}/v1/books"))
        .query(&[("query", "octavia e. butler 978-0-8070-8369-7")])
        .bearer_auth(member("alice"))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["books"][0]["bookId"], json!(book.book_id), "{body}");
    stop_edge.cancel();

    // Nothing to correct: the same answer and no event.
    let same = books
        .update_book(req(
            &librarian(),
            correction(&book.book_id, "Kindred", "Octavia E. Butler"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.title, "Kindred");
    mesh.settled("view-svc").await;
    let bus = mesh.event_bus().await;
    let corrections: Vec<_> = bus
        .history(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.subject.ends_with("book.updated"))
        .collect();
    assert_eq!(corrections.len(), 2, "one BookUpdated per change");

    // A read model rebuilt from the stream shows the corrected title.
    let (replica, stop_replica) = mesh.start_replica_view().await;
    let replica = rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient::new(
        support::channel(replica).await,
    );
    let replayed = eventually("the replica to catch up", || {
        let mut replica = replica.clone();
        async move {
            let p = replica
                .get_my_page(req(&member("alice"), GetMyPageRequest::default()))
                .await
                .ok()?
                .into_inner();
            (p.journeys.len() == 1).then_some(p)
        }
    })
    .await;
    assert_eq!(replayed.journeys[0].book_title, "Kindred");
    stop_replica.cancel();

    let (clean, report) = rentalbook_check(&mesh);
    assert!(clean, "rentalbook check after the corrections:\n{report}");
}

/// Runs `rentalbook check` on the mesh's databases and stream: whether it
/// found nothing, and its report.
fn rentalbook_check(mesh: &Mesh) -> (bool, String) {
    let [book, reserve, rental, view] = mesh.db_urls();
    let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_rentalbook"));
    for var in [
        "NATS_URL",
        "NATS_STREAM",
        "NATS_SUBJECT_PREFIX",
        "RENTALBOOK_DATA_DIR",
        "RENTALBOOK_CHECK_SKIP",
        "BOOK_DATABASE_URL",
        "RESERVE_DATABASE_URL",
        "RENTAL_DATABASE_URL",
        "VIEW_DATABASE_URL",
        "VIEW_CONSUMER_NAME",
    ] {
        check.env_remove(var);
    }
    check
        .args(["check", "--grace", "2s"])
        .args(["--book-database-url", book])
        .args(["--reserve-database-url", reserve])
        .args(["--rental-database-url", rental])
        .args(["--view-database-url", view]);
    match mesh.options.store {
        Store::Postgres => check
            .args(["--nats-url", &mesh.nats_url])
            .args(["--nats-stream", &mesh.stream])
            .args(["--nats-subject-prefix", &mesh.prefix]),
        Store::Sqlite => {
            let dir = std::path::Path::new(book.trim_start_matches("sqlite://"))
                .parent()
                .expect("the databases' directory");
            check.arg("--events-db").arg(dir.join("events.db"))
        }
    };
    let out = check.output().expect("running rentalbook check");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

both_backends!(a_word_in_hundreds_of_books_pages_through_every_one_in_title_order);
async fn a_word_in_hundreds_of_books_pages_through_every_one_in_title_order(store: Store) {
    use futures::StreamExt;
    let mesh = mesh(store).await;
    // More books than the search reads by id, so that it asks the database
    // for them in one query.
    let n = 520;
    let mut titles: Vec<String> = (0..n).map(|i| format!("Saga {:03}", i * 7 % n)).collect();
    futures::stream::iter(titles.clone())
        .map(|title| {
            let mesh = &mesh;
            async move { register(mesh, book("", &title, "Anonymous")).await.unwrap() }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    titles.sort();
    assert_eq!(search(&mesh, "saga", 100).await, titles);
    assert_eq!(search(&mesh, "anonymous saga", 37).await, titles);
    let with_12: Vec<String> = titles
        .iter()
        .filter(|t| t.contains("12"))
        .cloned()
        .collect();
    assert_eq!(with_12.len(), 16);
    assert_eq!(search(&mesh, "saga 12", 100).await, with_12);
}

fn untitled(title: &str, copies: i32) -> RegisterBookRequest {
    RegisterBookRequest {
        total_copies: copies,
        ..book("", title, "Octavia Butler")
    }
}

/// Each member's journeys on their page: (reservation, book, stage, place).
async fn journeys_of(mesh: &Mesh, who: &str) -> Vec<(String, String, i32, i32)> {
    page(mesh, who)
        .await
        .journeys
        .into_iter()
        .map(|j| (j.reservation_id, j.book_id, j.stage, j.queue_position))
        .collect()
}

both_backends!(merging_books_moves_copies_queues_and_loans_to_the_oldest_record);
async fn merging_books_moves_copies_queues_and_loans_to_the_oldest_record(store: Store) {
    use rentalbook_proto::book::v1::MergeBooksRequest;
    use rentalbook_proto::reserve::v1::ReservationStatus;
    use rentalbook_proto::view::v1::JourneyStage;
    let mesh = mesh(store).await;
    let older = register(&mesh, untitled("Kindred", 1)).await.unwrap();
    let newer = register(&mesh, untitled("Kindred (2nd copy)", 2))
        .await
        .unwrap();
    let (a, b) = (older.book_id.as_str(), newer.book_id.as_str());
    // The older record: ann holds its copy, bob then carol wait.
    let ann = mesh.reserve(&member("ann"), a).await.unwrap();
    let bob_waits = mesh.reserve(&member("bob"), a).await.unwrap();
    let carol = mesh.reserve(&member("carol"), a).await.unwrap();
    // The newer one: dave and bob hold its two copies, erin waits.
    let dave = mesh.reserve(&member("dave"), b).await.unwrap();
    let bob_holds = mesh.reserve(&member("bob"), b).await.unwrap();
    let erin = mesh.reserve(&member("erin"), b).await.unwrap();
    assert_eq!(
        [&ann, &bob_waits, &carol, &dave, &bob_holds, &erin].map(|r| r.status),
        [
            ReservationStatus::Ready,
            ReservationStatus::Waiting,
            ReservationStatus::Waiting,
            ReservationStatus::Ready,
            ReservationStatus::Ready,
            ReservationStatus::Waiting,
        ]
        .map(|s| s as i32)
    );
    let ann_loan = mesh.rent(&member("ann"), a).await.unwrap();

    let mut books = mesh.books().await;
    let merge = |ids: &[&str]| MergeBooksRequest {
        book_ids: ids.iter().map(|s| s.to_string()).collect(),
        request_id: String::new(),
    };
    let refused = books
        .merge_books(req(&member("ann"), merge(&[b, a])))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    for (ids, code) in [
        (vec![a], Code::InvalidArgument),
        (vec![a, a], Code::InvalidArgument),
        (
            vec![a, "01890a5d-ac96-774b-bcce-b302099a8057"],
            Code::NotFound,
        ),
    ] {
        let refused = books
            .merge_books(req(&librarian(), merge(&ids)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{ids:?}: {refused:?}");
    }

    // Given newest first, the oldest record is kept all the same.
    let kept = books
        .merge_books(req(&librarian(), merge(&[b, a])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.book_id, a);
    assert_eq!((kept.title.as_str(), kept.total_copies), ("Kindred", 3));
    let barcodes = |book: &Book| {
        let mut all: Vec<String> = book.items.iter().map(|i| i.barcode.clone()).collect();
        all.sort();
        all
    };
    let mut every = barcodes(&older);
    every.extend(barcodes(&newer));
    every.sort();
    assert_eq!(
        barcodes(&kept),
        every,
        "the copies of both, with their barcodes"
    );
    // The merged id leads to the kept book; the catalogue lists it once.
    let got = books
        .get_book(req(
            &member("erin"),
            GetBookRequest {
                book_id: b.to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.book_id, a);
    assert_eq!(search(&mesh, "kindred", 10).await, ["Kindred"]);
    // Merging again changes nothing.
    let again = books
        .merge_books(req(&librarian(), merge(&[a, b])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.book_id.as_str(), again.total_copies), (a, 3));

    // The desk: bob keeps the copy held for him and leaves the queue; the
    // queue is carol (joined first) then erin; nothing is free.
    eventually("bob's second reservation to be cancelled", || async {
        (mesh
            .reservation(&member("bob"), &bob_waits.reservation_id)
            .await
            .status
            == ReservationStatus::Cancelled as i32)
            .then_some(())
    })
    .await;
    let place = |r: Reservation| (r.book_id, r.status, r.queue_position);
    assert_eq!(
        place(
            mesh.reservation(&member("bob"), &bob_holds.reservation_id)
                .await
        ),
        (a.to_owned(), ReservationStatus::Ready as i32, 0)
    );
    assert_eq!(
        place(
            mesh.reservation(&member("carol"), &carol.reservation_id)
                .await
        ),
        (a.to_owned(), ReservationStatus::Waiting as i32, 1)
    );
    assert_eq!(
        place(
            mesh.reservation(&member("erin"), &erin.reservation_id)
                .await
        ),
        (a.to_owned(), ReservationStatus::Waiting as i32, 2)
    );
    let waiting = JourneyStage::Waiting as i32;
    eventually("My Page to show the merged queue", || async {
        let carol_page = journeys_of(&mesh, "carol").await;
        let erin_page = journeys_of(&mesh, "erin").await;
        (carol_page == [(carol.reservation_id.clone(), a.to_owned(), waiting, 1)]
            && erin_page == [(erin.reservation_id.clone(), a.to_owned(), waiting, 2)])
        .then_some(())
    })
    .await;
    // Requests naming the merged id reach the kept book: dave picks up with
    // it, frank reserves with it and queues behind erin.
    let dave_loan = mesh.rent(&member("dave"), b).await.unwrap();
    assert_eq!(dave_loan.book_id, a);
    let frank = mesh.reserve(&member("frank"), b).await.unwrap();
    assert_eq!((frank.book_id.as_str(), frank.queue_position), (a, 3));
    // ann's copy comes back and goes to carol, the head of the merged queue.
    mesh.give_back(&member("ann"), &ann_loan.rental_id)
        .await
        .unwrap();
    eventually("carol's hold to be READY", || async {
        (mesh
            .reservation(&member("carol"), &carol.reservation_id)
            .await
            .status
            == ReservationStatus::Ready as i32)
            .then_some(())
    })
    .await;
    let rentals_of_b = mesh
        .rentals()
        .await
        .get_rental(req(
            &member("dave"),
            rentalbook_proto::rental::v1::GetRentalRequest {
                rental_id: dave_loan.rental_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rentals_of_b.book_id, a);

    // My Page: every journey is the kept book's, in the merged queue.
    eventually("the pages to follow the merge", || async {
        let erin_page = journeys_of(&mesh, "erin").await;
        let bob_page = journeys_of(&mesh, "bob").await;
        let dave_page = journeys_of(&mesh, "dave").await;
        let ok = erin_page == [(erin.reservation_id.clone(), a.to_owned(), waiting, 1)]
            && bob_page.len() == 2
            && bob_page.iter().all(|j| j.1 == a)
            && bob_page
                .iter()
                .any(|j| j.0 == bob_waits.reservation_id && j.2 == JourneyStage::Cancelled as i32)
            && dave_page
                == [(
                    dave.reservation_id.clone(),
                    a.to_owned(),
                    JourneyStage::Rented as i32,
                    0,
                )];
        ok.then_some(())
    })
    .await;
    let frank_page = journeys_of(&mesh, "frank").await;
    assert_eq!(
        frank_page,
        [(frank.reservation_id.clone(), a.to_owned(), waiting, 2)]
    );

    // A read model rebuilt from the stream shows the same.
    mesh.settled("view-svc").await;
    let (replica, stop_replica) = mesh.start_replica_view().await;
    let replica = rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient::new(
        support::channel(replica).await,
    );
    for who in ["ann", "bob", "carol", "dave", "erin", "frank"] {
        let live = page(&mesh, who).await;
        let replayed = eventually("the replica to catch up", || {
            let mut replica = replica.clone();
            let live = live.clone();
            async move {
                let p = replica
                    .get_my_page(req(&member(who), GetMyPageRequest::default()))
                    .await
                    .ok()?
                    .into_inner();
                (p.journeys == live.journeys).then_some(p)
            }
        })
        .await;
        assert_eq!(replayed.journeys.len(), live.journeys.len(), "{who}");
    }
    stop_replica.cancel();

    let (clean, report) = rentalbook_check(&mesh);
    assert!(clean, "rentalbook check after the merge:\n{report}");
}
