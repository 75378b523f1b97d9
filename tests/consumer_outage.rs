//! A consumer's own database goes away for longer than its poison limit
//! would allow, in the middle of lending, and comes back: nothing is
//! dead-lettered, every PENDING return is confirmed, the queue moves on, and
//! `rentalbook check` finds the services and projections in agreement.
//! Databases are taken away with `ALLOW_CONNECTIONS false` and their
//! sessions ended, as a failed-over or restarting server looks to a client.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use rentalbook_plumbing::serve::LIVENESS;
use rentalbook_proto::rental::v1::{
    GetRentalRequest, RentRequest, Rental, ReturnConfirmation, ReturnRentalRequest,
};
use rentalbook_proto::reserve::v1::{GetReservationRequest, ReservationStatus};
use sea_orm::{ConnectionTrait, Database};
use support::{Mesh, Options, eventually_within, member, req};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// An outage several times longer than three tries of an event take.
const OUTAGE: Duration = Duration::from_secs(5);

async fn admin(db_url: &str) -> (sea_orm::DatabaseConnection, String) {
    let (server, name) = db_url.rsplit_once('/').expect("a database URL");
    let conn = Database::connect(format!("{server}/postgres"))
        .await
        .expect("the admin connection");
    (conn, name.split('?').next().unwrap_or(name).to_owned())
}

/// No new connections to the database, and the open ones ended.
async fn take_away(db_url: &str) {
    let (conn, name) = admin(db_url).await;
    conn.execute_unprepared(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    ))
    .await
    .unwrap();
    conn.execute_unprepared(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .await
    .unwrap();
}

async fn bring_back(db_url: &str) {
    let (conn, name) = admin(db_url).await;
    conn.execute_unprepared(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
}

const RESERVE: &str = "rentalbook.reserve.v1.ReservationService";
const BOOK: &str = "rentalbook.book.v1.BookService";
const VIEW: &str = "rentalbook.view.v1.MyPageService";

/// The health of `service` at `addr`: its own name is readiness,
/// [`LIVENESS`] what the liveness probe asks.
async fn status(addr: SocketAddr, service: &str) -> Option<i32> {
    HealthClient::new(support::channel(addr).await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

/// Not ready while its database is away, and alive all along.
async fn not_ready_but_alive(addr: SocketAddr, service: &str) {
    eventually_within(Duration::from_secs(5), "NOT_SERVING", || async {
        (status(addr, service).await? == ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    assert_eq!(
        status(addr, LIVENESS).await,
        Some(ServingStatus::Serving as i32),
        "{service}: alive while its database is away"
    );
}

/// The health check finds the database again within its period.
async fn serving_again(addr: SocketAddr, service: &str) {
    eventually_within(Duration::from_secs(10), "SERVING again", || async {
        (status(addr, service).await? == ServingStatus::Serving as i32).then_some(())
    })
    .await;
}

/// `rentalbook dead-letters list` on the mesh's stream: the lines it lists.
fn dead_letters(mesh: &Mesh) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_rentalbook"))
        .args(["dead-letters", "list", "--nats-url", &mesh.nats_url])
        .args(["--nats-stream", &mesh.stream])
        .args(["--nats-subject-prefix", &mesh.prefix])
        .output()
        .expect("running rentalbook dead-letters");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

/// `rentalbook check` on the mesh's databases: whether it found them
/// consistent, and its report.
fn check(mesh: &Mesh) -> (bool, String) {
    let [book, reserve, rental, view] = mesh.db_urls();
    let out = Command::new(env!("CARGO_BIN_EXE_rentalbook"))
        .args(["check", "--book-database-url", book])
        .args(["--reserve-database-url", reserve])
        .args(["--rental-database-url", rental])
        .args(["--view-database-url", view])
        .output()
        .expect("running rentalbook check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
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
        .expect("renting")
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
        .expect("returning")
        .into_inner()
}

async fn mesh() -> Mesh {
    Mesh::start_with(Options {
        // Three tries of a failing event took well under a second: the
        // outage lasts several times that.
        event_max_deliver: 3,
        ..Options::default()
    })
    .await
}

async fn consistent_and_nothing_dead_lettered(mesh: &Mesh) {
    eventually_within(
        Duration::from_secs(30),
        "rentalbook check clean",
        || async { check(mesh).0.then_some(()) },
    )
    .await;
    assert_eq!(dead_letters(mesh), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_svc_without_its_database_dead_letters_no_return_and_confirms_it_after() {
    let mesh = mesh().await;
    let book = mesh.register_book("Kindred", 1).await;
    let alice = mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    assert_eq!(alice.status(), ReservationStatus::Ready);
    let loan = rent(&mesh, "alice", &book.book_id).await;
    let bob = mesh.reserve(&member("bob"), &book.book_id).await.unwrap();
    assert_eq!(bob.status(), ReservationStatus::Waiting);

    take_away(mesh.reserve_db_url()).await;
    // The desk cannot record the return: it falls back to the event.
    let returned = give_back(&mesh, "alice", &loan.rental_id).await;
    assert_eq!(returned.return_confirmation(), ReturnConfirmation::Pending);
    not_ready_but_alive(mesh.reserve_addr(), RESERVE).await;
    tokio::time::sleep(OUTAGE).await;
    assert_eq!(
        dead_letters(&mesh),
        Vec::<String>::new(),
        "during the outage"
    );
    bring_back(mesh.reserve_db_url()).await;

    let rentals = mesh.rentals().await;
    eventually_within(Duration::from_secs(20), "the return CONFIRMED", || {
        let mut rentals = rentals.clone();
        let id = loan.rental_id.clone();
        async move {
            let r = rentals
                .get_rental(req(&member("alice"), GetRentalRequest { rental_id: id }))
                .await
                .ok()?
                .into_inner();
            (r.return_confirmation() == ReturnConfirmation::Confirmed).then_some(())
        }
    })
    .await;
    let mut reservations = mesh.reservations().await;
    let bob_now = reservations
        .get_reservation(req(
            &member("bob"),
            GetReservationRequest {
                reservation_id: bob.reservation_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob_now.status(), ReservationStatus::Ready, "bob is next");
    serving_again(mesh.reserve_addr(), RESERVE).await;
    consistent_and_nothing_dead_lettered(&mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_svc_and_view_svc_without_their_databases_catch_up_on_every_event() {
    let mesh = mesh().await;
    let books = [
        mesh.register_book("Parable of the Sower", 2).await,
        mesh.register_book("Dawn", 1).await,
    ];
    // The desk knows both books before the projections go away.
    for book in &books {
        mesh.reserve(&member("warm-up"), &book.book_id)
            .await
            .unwrap();
    }

    let [book_db, _, _, view_db] = mesh.db_urls().clone();
    take_away(&book_db).await;
    take_away(&view_db).await;
    // Lending goes on: members reserve, borrow and return meanwhile.
    let members = ["ana", "ben", "cy", "dee"];
    for (i, who) in members.iter().enumerate() {
        let book = &books[i % books.len()];
        let r = mesh.reserve(&member(who), &book.book_id).await.unwrap();
        if r.status() == ReservationStatus::Ready {
            let loan = rent(&mesh, who, &book.book_id).await;
            give_back(&mesh, who, &loan.rental_id).await;
        }
    }
    for (addr, service) in [(mesh.book_addr(), BOOK), (mesh.view_addr(), VIEW)] {
        not_ready_but_alive(addr, service).await;
    }
    tokio::time::sleep(OUTAGE).await;
    assert_eq!(
        dead_letters(&mesh),
        Vec::<String>::new(),
        "during the outage"
    );
    bring_back(&book_db).await;
    bring_back(&view_db).await;

    consistent_and_nothing_dead_lettered(&mesh).await;
    for (addr, service) in [(mesh.book_addr(), BOOK), (mesh.view_addr(), VIEW)] {
        serving_again(addr, service).await;
    }
}
