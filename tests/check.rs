//! `rentalbook check` catches what it is there to catch: each test builds a
//! small, quiet, consistent system (a book with a loan out and two members
//! waiting, a book with a returned loan, a cancelled hold and a READY one),
//! shows the check finds nothing, corrupts one thing on purpose with SQL and
//! shows the check naming the invariant that thing breaks. The all-in-one
//! (SQLite files, the embedded bus) carries one test per invariant; the mesh
//! (PostgreSQL, NATS JetStream) one test for what it reads off the stream.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use rentalbook_bench::chaos::Backend;
use rentalbook_bench::chaos::history::{Call, History, outcome_name};
use rentalbook_bench::chaos::system::System;
use rentalbook_bench::client::{GrpcTransport, Transport, channel, with_token};
use rentalbook_bench::workload::{register_books, token};
use rentalbook_plumbing::auth::Role;
use rentalbook_proto::rental::v1::rental_service_client::RentalServiceClient;
use rentalbook_proto::rental::v1::{RentRequest, ReturnRentalRequest};
use rentalbook_proto::reserve::v1::reservation_service_client::ReservationServiceClient;
use rentalbook_proto::reserve::v1::{CancelReservationRequest, ReservationStatus, ReserveRequest};
use sea_orm::ConnectionTrait;

/// The quiet system and what it holds.
struct Fixture {
    system: System,
    history: PathBuf,
    /// Book A: one copy, lent to m1; m2 and m3 wait. Book B: two copies;
    /// m4 rented and returned, m5 cancelled, m6 holds a READY copy.
    book_a: String,
    book_b: String,
    reservation: HashMap<&'static str, String>,
    rental: HashMap<&'static str, String>,
}

struct Script {
    desk: ReservationServiceClient<tonic::transport::Channel>,
    loans: RentalServiceClient<tonic::transport::Channel>,
    secret: String,
    history: History,
}

impl Script {
    fn me(&self, member: &str) -> String {
        token(&self.secret, member, Role::Member)
    }

    async fn reserve(&mut self, member: &str, book_id: &str) -> (String, ReservationStatus) {
        let started = Instant::now();
        let answer = self
            .desk
            .reserve(with_token(
                &self.me(member),
                ReserveRequest {
                    book_id: book_id.into(),
                    request_id: String::new(),
                },
            ))
            .await
            .map(|r| r.into_inner());
        let r = answer.clone().expect("Reserve");
        self.history.record(
            started,
            Call {
                member: member.into(),
                op: "Reserve",
                book_id: book_id.into(),
                result_id: r.reservation_id.clone(),
                outcome: outcome_name(None),
                ..Default::default()
            },
        );
        let status = r.status();
        (r.reservation_id, status)
    }

    async fn cancel(&mut self, member: &str, book_id: &str, reservation_id: &str) {
        let started = Instant::now();
        self.desk
            .cancel_reservation(with_token(
                &self.me(member),
                CancelReservationRequest {
                    reservation_id: reservation_id.into(),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("CancelReservation");
        self.history.record(
            started,
            Call {
                member: member.into(),
                op: "CancelReservation",
                book_id: book_id.into(),
                target_id: reservation_id.into(),
                outcome: outcome_name(None),
                ..Default::default()
            },
        );
    }

    async fn rent(&mut self, member: &str, book_id: &str) -> String {
        let started = Instant::now();
        let l = self
            .loans
            .rent(with_token(
                &self.me(member),
                RentRequest {
                    book_id: book_id.into(),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("Rent")
            .into_inner();
        self.history.record(
            started,
            Call {
                member: member.into(),
                op: "Rent",
                book_id: book_id.into(),
                result_id: l.rental_id.clone(),
                outcome: outcome_name(None),
                ..Default::default()
            },
        );
        l.rental_id
    }

    async fn give_back(&mut self, member: &str, book_id: &str, rental_id: &str) {
        let started = Instant::now();
        self.loans
            .return_rental(with_token(
                &self.me(member),
                ReturnRentalRequest {
                    rental_id: rental_id.into(),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("ReturnRental");
        self.history.record(
            started,
            Call {
                member: member.into(),
                op: "ReturnRental",
                book_id: book_id.into(),
                target_id: rental_id.into(),
                outcome: outcome_name(None),
                ..Default::default()
            },
        );
    }
}

/// What `rentalbook check` said: whether it found nothing, the invariants
/// it named, and its report.
fn check(fixture: &Fixture) -> (bool, BTreeSet<String>, String) {
    let out = fixture
        .system
        .check_command(&fixture.history, false)
        .output()
        .expect("running rentalbook check");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let named = report
        .lines()
        .filter_map(|l| l.strip_prefix("  [")?.split_once(']'))
        .map(|(invariant, _)| invariant.to_owned())
        .collect();
    (out.status.success(), named, report)
}

/// Starts the backend, plays the script, waits until the check finds
/// nothing and stops the processes (the databases, files and NATS stay).
async fn quiet_system(backend: Backend) -> Fixture {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let system = System::start(
        backend,
        Path::new(env!("CARGO_BIN_EXE_rentalbook")),
        &run_id,
        None,
    )
    .await
    .expect("starting the system");
    let client = GrpcTransport::new(&system.endpoints, 1).client(0);
    let librarian = token(&system.secret, "librarian", Role::Librarian);
    let book_a = register_books(&client, &librarian, &system.secret, "a", 1, 1)
        .await
        .unwrap()
        .remove(0);
    let book_b = register_books(&client, &librarian, &system.secret, "b", 1, 2)
        .await
        .unwrap()
        .remove(0);
    let mut s = Script {
        desk: ReservationServiceClient::new(channel(system.endpoints.reserve)),
        loans: RentalServiceClient::new(channel(system.endpoints.rental)),
        secret: system.secret.clone(),
        history: History::new(Instant::now()),
    };
    let mut reservation = HashMap::new();
    let mut rental = HashMap::new();
    let (r, st) = s.reserve("m1", &book_a).await;
    assert_eq!(st, ReservationStatus::Ready);
    reservation.insert("m1", r);
    rental.insert("m1", s.rent("m1", &book_a).await);
    for m in ["m2", "m3"] {
        let (r, st) = s.reserve(m, &book_a).await;
        assert_eq!(st, ReservationStatus::Waiting);
        reservation.insert(m, r);
    }
    let (r, _) = s.reserve("m4", &book_b).await;
    reservation.insert("m4", r);
    let l = s.rent("m4", &book_b).await;
    s.give_back("m4", &book_b, &l).await;
    rental.insert("m4", l);
    let (r, _) = s.reserve("m5", &book_b).await;
    s.cancel("m5", &book_b, &r).await;
    reservation.insert("m5", r);
    let (r, st) = s.reserve("m6", &book_b).await;
    assert_eq!(st, ReservationStatus::Ready);
    reservation.insert("m6", r);

    let history = system.dir.join("history.tsv");
    s.history.write(&history).unwrap();
    let mut fixture = Fixture {
        system,
        history,
        book_a,
        book_b,
        reservation,
        rental,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (clean, _, report) = check(&fixture);
        if clean {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not consistent within 30 s:\n{report}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fixture.system.stop_processes().await;
    let (clean, _, report) = check(&fixture);
    assert!(clean, "the quiet system is consistent:\n{report}");
    fixture
}

impl Fixture {
    /// Runs SQL on a service's database (`book`, `reserve`, `rental`,
    /// `view`) or, on the all-in-one, on the event log (`events`).
    async fn sql(&self, database: &str, statements: &[String]) {
        let url = match self.system.database_url(&format!("{database}-svc")) {
            Some(url) => url,
            None => format!(
                "sqlite://{}",
                self.system
                    .data_dir()
                    .join(format!("{database}.db"))
                    .display()
            ),
        };
        let db = sea_orm::Database::connect(&url).await.unwrap();
        for s in statements {
            db.execute_unprepared(s)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        db.close().await.unwrap();
    }

    /// Asserts that the check names `invariant`.
    fn caught(&self, invariant: &str, what: &str) {
        let (clean, named, report) = check(self);
        println!("{what}:\n{report}");
        assert!(!clean, "{what} went unnoticed:\n{report}");
        assert!(
            named.contains(invariant),
            "{what}: the check does not name `{invariant}` (it names {named:?}):\n{report}"
        );
    }
}

async fn all_in_one() -> Fixture {
    quiet_system(Backend::AllInOne).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_cancellation_that_is_not_there() {
    let f = all_in_one().await;
    f.sql(
        "reserve",
        &[format!(
            "UPDATE reservations SET status = 'EXPIRED' WHERE reservation_id = '{}'",
            f.reservation["m5"]
        )],
    )
    .await;
    f.caught(
        "acknowledged",
        "a cancellation acknowledged to m5 turned into an expiry",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_copies_out_than_the_book_has() {
    let f = all_in_one().await;
    f.sql(
        "reserve",
        &[format!(
            "UPDATE book_stock SET total_copies = 0 WHERE book_id = '{}'",
            f.book_a
        )],
    )
    .await;
    f.caught("capacity", "book A lent out with no copies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lent_copy_back_on_the_open_shelf() {
    let f = all_in_one().await;
    f.sql(
        "reserve",
        &[format!(
            "UPDATE items SET reservation_id = NULL WHERE book_id = '{}'",
            f.book_a
        )],
    )
    .await;
    f.caught("items", "book A's lent copy free on the shelf");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_counts_differently_from_the_desk() {
    let f = all_in_one().await;
    f.sql(
        "book",
        &[format!(
            "UPDATE books SET on_loan_copies = on_loan_copies + 1 WHERE book_id = '{}'",
            f.book_b
        )],
    )
    .await;
    f.caught("catalogue", "book-svc counts one more copy of B on loan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_books_with_one_isbn() {
    let f = all_in_one().await;
    // As two registrations of one book before RegisterBook refused a known
    // ISBN left it, once the migration made both ISBN-13.
    f.sql(
        "book",
        &[format!(
            "UPDATE books SET isbn = '9780807083697' WHERE book_id IN ('{}', '{}')",
            f.book_a, f.book_b
        )],
    )
    .await;
    f.caught("duplicate-isbn", "books A and B given one ISBN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_waiting_members_in_one_queue_place() {
    let f = all_in_one().await;
    f.sql(
        "reserve",
        &[format!(
            "UPDATE reservations SET queue_seq = (SELECT queue_seq FROM reservations WHERE reservation_id = '{}') WHERE reservation_id = '{}'",
            f.reservation["m2"], f.reservation["m3"]
        )],
    )
    .await;
    f.caught("queue", "m3 put in m2's place in A's queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_two_open_reservations_for_a_book() {
    let f = all_in_one().await;
    f.sql(
        "reserve",
        &[
            "DROP INDEX uq_reservations_open".to_owned(),
            format!(
                "INSERT INTO reservations (reservation_id, book_id, member_id, status, queue_seq, pickup_deadline, rental_id, returned_at, created_at, updated_at) \
                 SELECT 'second-of-m2', book_id, member_id, status, queue_seq + 1000, pickup_deadline, rental_id, returned_at, created_at, updated_at \
                 FROM reservations WHERE reservation_id = '{}'",
                f.reservation["m2"]
            ),
        ],
    )
    .await;
    f.caught("one-open", "m2 given a second WAITING reservation for A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fulfilled_reservation_whose_rental_was_rejected() {
    let f = all_in_one().await;
    f.sql(
        "rental",
        &[format!(
            "UPDATE rentals SET status = 'REJECTED' WHERE rental_id = '{}'",
            f.rental["m1"]
        )],
    )
    .await;
    f.caught(
        "loans",
        "m1's rental REJECTED behind a FULFILLED reservation",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_book_svc_never_applied() {
    let f = all_in_one().await;
    f.sql(
        "book",
        &["DELETE FROM inbox WHERE event_id IN (SELECT event_id FROM inbox WHERE consumer = 'book-svc' LIMIT 1)".to_owned()],
    )
    .await;
    f.caught("applied-once", "an inbox row of book-svc removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_in_the_dead_letters() {
    let f = all_in_one().await;
    f.sql(
        "events",
        &["INSERT INTO bus_dead_letters (durable, seq, subject, payload, reason, stored_at) \
           SELECT 'view-svc', seq, subject, payload, 'put here by the test', stored_at FROM bus_events LIMIT 1"
            .to_owned()],
    )
    .await;
    f.caught("dead-letters", "an event put among the dead letters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_left_pending() {
    let f = all_in_one().await;
    f.sql(
        "rental",
        &[format!(
            "UPDATE rentals SET return_confirmation = 'PENDING' WHERE rental_id = '{}'",
            f.rental["m4"]
        )],
    )
    .await;
    f.caught("confirmed", "m4's return back to PENDING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_left_in_an_outbox() {
    let f = all_in_one().await;
    f.sql(
        "rental",
        &[
            "INSERT INTO outbox (event_id, subject, payload, traceparent, created_at) \
           VALUES ('left-behind', 'rental.returned', x'', NULL, '2026-01-01 00:00:00+00:00')"
                .to_owned(),
        ],
    )
    .await;
    f.caught("outbox", "an event left unpublished in rental-svc's outbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journey_in_the_wrong_stage() {
    let f = all_in_one().await;
    f.sql(
        "view",
        &[format!(
            "UPDATE journeys SET stage = 'CANCELLED' WHERE reservation_id = '{}'",
            f.reservation["m2"]
        )],
    )
    .await;
    f.caught("journeys", "m2's waiting journey shown CANCELLED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_is_not_the_replay_of_the_stream() {
    let f = all_in_one().await;
    // The due date is not compared with any service's truth: only the
    // replay can tell it is wrong.
    f.sql(
        "view",
        &[format!(
            "UPDATE journeys SET due_at = '2031-01-01 00:00:00+00:00' WHERE reservation_id = '{}'",
            f.reservation["m1"]
        )],
    )
    .await;
    f.caught("replay", "m1's due date moved on My Page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_mesh_the_stream_is_read_from_nats_jetstream() {
    let database_url_base = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let mut f = quiet_system(Backend::Mesh { database_url_base }).await;

    f.sql(
        "view",
        &["DELETE FROM inbox WHERE event_id IN (SELECT event_id FROM inbox WHERE consumer = 'view-svc' LIMIT 1)".to_owned()],
    )
    .await;
    f.caught("applied-once", "an inbox row of view-svc removed");

    f.sql(
        "view",
        &[format!(
            "UPDATE journey_steps SET at = at + interval '1 hour' WHERE reservation_id = '{}'",
            f.reservation["m4"]
        )],
    )
    .await;
    f.caught("replay", "the steps of m4's journey moved an hour");

    let (url, _, prefix) = f.system.nats().unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Rentalbook-Original-Subject",
        format!("{prefix}.reservation.placed").as_str(),
    );
    headers.insert("Rentalbook-Dead-Letter-Reason", "put here by the test");
    let envelope = rentalbook_proto::events::v1::Envelope {
        event_id: "dead-on-arrival".into(),
        ..Default::default()
    };
    js.publish_with_headers(
        format!("{prefix}_dlq.view-svc"),
        headers,
        envelope.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    f.caught("dead-letters", "an event put on the dead-letter stream");
    f.system.stop().await;
}
