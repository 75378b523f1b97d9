//! The all-in-one binary: killed with SIGKILL in the middle of a concurrent
//! workload and started again on the same data directory, it loses no
//! acknowledged change and applies no event twice.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rentalbook_proto::book::v1::RegisterBookRequest;
use rentalbook_proto::book::v1::book_service_client::BookServiceClient;
use rentalbook_proto::reserve::v1::ListReservationsRequest;
use rentalbook_proto::reserve::v1::reservation_service_client::ReservationServiceClient;
use rentalbook_proto::view::v1::GetMyPageRequest;
use rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient;
use support::workload::{self, Workload};
use support::{channel, librarian, req, wait_serving};

struct Ports {
    rental: u16,
    reserve: u16,
    book: u16,
    view: u16,
}

impl Ports {
    fn free() -> Self {
        Self {
            rental: rentalbook_testkit::free_port(),
            reserve: rentalbook_testkit::free_port(),
            book: rentalbook_testkit::free_port(),
            view: rentalbook_testkit::free_port(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

fn start(data: &Path, ports: &Ports) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rentalbook"))
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--rental-port", &ports.rental.to_string()])
        .args(["--reserve-port", &ports.reserve.to_string()])
        .args(["--book-port", &ports.book.to_string()])
        .args(["--view-port", &ports.view.to_string()])
        .env("RENTALBOOK_JWT_SECRET", support::SECRET)
        .env("RENT_RECOVERY_INTERVAL", "200ms")
        .env("RESERVE_CALL_TIMEOUT", "1s")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting rentalbook")
}

async fn serving(ports: &Ports) {
    for p in [ports.rental, ports.reserve, ports.book, ports.view] {
        wait_serving(Ports::addr(p)).await;
    }
}

/// Runs `rentalbook check` on the data directory: the differences it lists.
fn check(data: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rentalbook"))
        .args([
            "check",
            "--data-dir",
            data.to_str().unwrap(),
            "--grace",
            "2s",
        ])
        .env_remove("BOOK_DATABASE_URL")
        .env_remove("RESERVE_DATABASE_URL")
        .env_remove("RENTAL_DATABASE_URL")
        .env_remove("VIEW_DATABASE_URL")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_the_middle_of_a_workload_loses_nothing_and_applies_nothing_twice() {
    let data = tempfile::tempdir().unwrap();
    let ports = Arc::new(Ports::free());
    let mut process = start(data.path(), &ports);
    serving(&ports).await;

    let lib = librarian();
    let mut catalogue = BookServiceClient::new(channel(Ports::addr(ports.book)).await);
    let mut books = Vec::new();
    for i in 0..3 {
        let b = catalogue
            .register_book(req(
                &lib,
                RegisterBookRequest {
                    title: format!("Crash {i}"),
                    author: "A".into(),
                    total_copies: 2,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        books.push(b.book_id);
    }
    let (reserve, rental) = (Ports::addr(ports.reserve), Ports::addr(ports.rental));
    workload::wait_until_desk_knows(reserve, &books).await;

    let members: Vec<String> = (0..10).map(|i| format!("member-{i}")).collect();
    let work = Workload::start(reserve, rental, &members, &books);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    process.kill().expect("SIGKILL");
    process.wait().unwrap();
    let killed_at = work.reservations_so_far();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut process = start(data.path(), &ports);
    serving(&ports).await;
    // The workload goes on against the restarted process for a while.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let acked = work.stop().await;
    println!(
        "workload: {} requests; {} reservations, {} rentals, {} returns acknowledged; SIGKILL after {} reservations; failures by code {:?}",
        acked.requests,
        acked.reservations.len(),
        acked.rentals.len(),
        acked.returns.len(),
        killed_at,
        acked.failures
    );
    assert!(killed_at > 0, "the kill came in the middle of the workload");
    workload::assert_nothing_lost(&acked, reserve, rental).await;

    // The projections converge on the truth: nothing applied twice or missed,
    // and every rental agrees with its reservation (R7).
    let started = Instant::now();
    let mut last = (false, String::new());
    while started.elapsed() < Duration::from_secs(20) {
        last = check(data.path());
        if last.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(last.0, "rentalbook check after the restart:\n{}", last.1);
    println!(
        "consistency after restart: 0 differences (converged in {:?})",
        started.elapsed()
    );
    // Each page has one journey per reservation, however often events came.
    let mut pages = MyPageServiceClient::new(channel(Ports::addr(ports.view)).await);
    let mut desk = ReservationServiceClient::new(channel(reserve).await);
    for m in &members {
        let page = pages
            .get_my_page(req(
                &librarian(),
                GetMyPageRequest {
                    member_id: m.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let listed = desk
            .list_reservations(req(
                &librarian(),
                ListReservationsRequest {
                    member_id: m.clone(),
                    page_size: 100,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .reservations;
        assert_eq!(
            page.journeys.len(),
            listed.len(),
            "{m}: one journey per reservation"
        );
        for j in &page.journeys {
            let mut kinds: Vec<i32> = j.steps.iter().map(|s| s.kind).collect();
            kinds.dedup();
            assert_eq!(kinds.len(), j.steps.len(), "no step twice");
        }
    }
    process.kill().ok();
    process.wait().ok();

    // And the check does see a difference when there is one.
    use sea_orm::ConnectionTrait;
    let view = sea_orm::Database::connect(format!(
        "sqlite://{}",
        data.path().join("view.db").display()
    ))
    .await
    .unwrap();
    view.execute_unprepared("DELETE FROM journeys WHERE reservation_id IN (SELECT reservation_id FROM journeys LIMIT 1)")
        .await
        .unwrap();
    let (consistent, report) = check(data.path());
    assert!(!consistent && report.contains("has no journey"), "{report}");
}
