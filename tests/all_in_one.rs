//! The all-in-one binary: killed with SIGKILL in the middle of a concurrent
//! workload and started again on the same data directory, it loses no
//! acknowledged change and applies no event twice.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rentalbook_proto::book::v1::book_service_client::BookServiceClient;
use rentalbook_proto::book::v1::{GetBookRequest, RegisterBookRequest};
use rentalbook_proto::rental::v1::rental_service_client::RentalServiceClient;
use rentalbook_proto::rental::v1::{
    GetRentalRequest, ListRentalsRequest, RentRequest, RentalStatus, ReturnRentalRequest,
};
use rentalbook_proto::reserve::v1::reservation_service_client::ReservationServiceClient;
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, GetReservationRequest, ListReservationsRequest, ReservationStatus,
    ReserveRequest,
};
use rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient;
use rentalbook_proto::view::v1::{GetMyPageRequest, JourneyStage};
use support::{channel, eventually, librarian, member, req, wait_serving};

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

/// What the workload saw acknowledged.
#[derive(Default)]
struct Acked {
    reservations: Vec<(String, String)>,
    rentals: Vec<(String, String)>,
    returns: Vec<(String, String)>,
}

async fn member_workload(
    ports: Arc<Ports>,
    who: String,
    books: Vec<String>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    let token = member(&who);
    let mut desk = ReservationServiceClient::new(channel(Ports::addr(ports.reserve)).await);
    let mut loans = RentalServiceClient::new(channel(Ports::addr(ports.rental)).await);
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let book_id = books[(i + who.len()) % books.len()].clone();
        match desk
            .reserve(req(
                &token,
                ReserveRequest {
                    book_id: book_id.clone(),
                    request_id: String::new(),
                },
            ))
            .await
        {
            Ok(r) => acked
                .lock()
                .unwrap()
                .reservations
                .push((who.clone(), r.into_inner().reservation_id)),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
        // Settle every open reservation: pick up the READY ones, give up some waiting.
        let Ok(open) = desk
            .list_reservations(req(
                &token,
                ListReservationsRequest {
                    open_only: true,
                    ..Default::default()
                },
            ))
            .await
        else {
            continue;
        };
        for r in open.into_inner().reservations {
            if r.status() == ReservationStatus::Waiting {
                if i.is_multiple_of(3) {
                    let _ = desk
                        .cancel_reservation(req(
                            &token,
                            CancelReservationRequest {
                                reservation_id: r.reservation_id,
                                request_id: String::new(),
                            },
                        ))
                        .await;
                }
                continue;
            }
            let Ok(loan) = loans
                .rent(req(
                    &token,
                    RentRequest {
                        book_id: r.book_id,
                        request_id: String::new(),
                    },
                ))
                .await
            else {
                continue;
            };
            let loan = loan.into_inner();
            acked
                .lock()
                .unwrap()
                .rentals
                .push((who.clone(), loan.rental_id.clone()));
            if let Ok(back) = loans
                .return_rental(req(
                    &token,
                    ReturnRentalRequest {
                        rental_id: loan.rental_id.clone(),
                        request_id: String::new(),
                    },
                ))
                .await
            {
                acked
                    .lock()
                    .unwrap()
                    .returns
                    .push((who.clone(), back.into_inner().rental_id));
            }
        }
    }
}

/// Compares the truth of reserve-svc and rental-svc with book-svc's and
/// view-svc's projections; returns the differences.
async fn differences(ports: &Ports, members: &[String], books: &[String]) -> Vec<String> {
    let lib = librarian();
    let mut desk = ReservationServiceClient::new(channel(Ports::addr(ports.reserve)).await);
    let mut loans = RentalServiceClient::new(channel(Ports::addr(ports.rental)).await);
    let mut catalogue = BookServiceClient::new(channel(Ports::addr(ports.book)).await);
    let mut pages = MyPageServiceClient::new(channel(Ports::addr(ports.view)).await);
    let mut diffs = Vec::new();
    let mut counts: HashMap<String, (i32, i32, i32)> = HashMap::new();
    for m in members {
        let Ok(rs) = desk
            .list_reservations(req(
                &lib,
                ListReservationsRequest {
                    member_id: m.clone(),
                    page_size: 100,
                    ..Default::default()
                },
            ))
            .await
        else {
            return vec!["reserve-svc unreachable".into()];
        };
        let rs = rs.into_inner().reservations;
        let Ok(ls) = loans
            .list_rentals(req(
                &lib,
                ListRentalsRequest {
                    member_id: m.clone(),
                    page_size: 100,
                    ..Default::default()
                },
            ))
            .await
        else {
            return vec!["rental-svc unreachable".into()];
        };
        let ls = ls.into_inner().rentals;
        let rental_of: BTreeMap<_, _> = ls.iter().map(|l| (l.rental_id.clone(), l)).collect();
        for r in &rs {
            let c = counts.entry(r.book_id.clone()).or_default();
            match r.status() {
                ReservationStatus::Ready => c.0 += 1,
                ReservationStatus::Waiting => c.2 += 1,
                ReservationStatus::Fulfilled => match rental_of.get(&r.rental_id) {
                    Some(l) if l.status() == RentalStatus::Active => c.1 += 1,
                    Some(l) if l.status() == RentalStatus::Returned => {}
                    other => diffs.push(format!(
                        "R7: reservation {} FULFILLED but its rental is {:?}",
                        r.reservation_id,
                        other.map(|l| l.status())
                    )),
                },
                _ => {}
            }
        }
        for l in &ls {
            if matches!(l.status(), RentalStatus::Active | RentalStatus::Returned)
                && !rs.iter().any(|r| {
                    r.rental_id == l.rental_id && r.status() == ReservationStatus::Fulfilled
                })
            {
                diffs.push(format!(
                    "R7: rental {} is {:?} without a FULFILLED reservation",
                    l.rental_id,
                    l.status()
                ));
            }
        }
        let Ok(page) = pages
            .get_my_page(req(
                &lib,
                GetMyPageRequest {
                    member_id: m.clone(),
                },
            ))
            .await
        else {
            return vec!["view-svc unreachable".into()];
        };
        let page = page.into_inner();
        if page.journeys.len() != rs.len() {
            diffs.push(format!(
                "{m}: {} journeys for {} reservations",
                page.journeys.len(),
                rs.len()
            ));
        }
        for r in &rs {
            let Some(j) = page
                .journeys
                .iter()
                .find(|j| j.reservation_id == r.reservation_id)
            else {
                continue;
            };
            let expected = match r.status() {
                ReservationStatus::Waiting => JourneyStage::Waiting,
                ReservationStatus::Ready => JourneyStage::Ready,
                ReservationStatus::Cancelled => JourneyStage::Cancelled,
                ReservationStatus::Expired => JourneyStage::Expired,
                _ => match rental_of.get(&r.rental_id).map(|l| l.status()) {
                    Some(RentalStatus::Returned) => JourneyStage::Returned,
                    _ => JourneyStage::Rented,
                },
            };
            if j.stage() != expected || j.queue_position != r.queue_position {
                diffs.push(format!(
                    "{m}: journey {} is {:?} #{} but the truth is {:?} #{}",
                    r.reservation_id,
                    j.stage(),
                    j.queue_position,
                    expected,
                    r.queue_position
                ));
            }
        }
    }
    for b in books {
        let Ok(book) = catalogue
            .get_book(req(&lib, GetBookRequest { book_id: b.clone() }))
            .await
        else {
            return vec!["book-svc unreachable".into()];
        };
        let book = book.into_inner();
        let (held, on_loan, waiting) = counts.get(b).copied().unwrap_or_default();
        if (book.held_copies, book.on_loan_copies, book.waiting) != (held, on_loan, waiting) {
            diffs.push(format!(
                "book {b}: book-svc shows held/on loan/waiting {}/{}/{}, the truth is {held}/{on_loan}/{waiting}",
                book.held_copies, book.on_loan_copies, book.waiting
            ));
        }
    }
    diffs
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
    // Wait until the desk knows the books.
    let mut desk = ReservationServiceClient::new(channel(Ports::addr(ports.reserve)).await);
    for b in &books {
        eventually("the desk to know the book", || {
            let mut desk = desk.clone();
            let b = b.clone();
            async move {
                let r = desk
                    .reserve(req(
                        &member("probe"),
                        ReserveRequest {
                            book_id: b,
                            request_id: String::new(),
                        },
                    ))
                    .await;
                match r {
                    Ok(r) => {
                        desk.cancel_reservation(req(
                            &member("probe"),
                            CancelReservationRequest {
                                reservation_id: r.into_inner().reservation_id,
                                request_id: String::new(),
                            },
                        ))
                        .await
                        .ok()?;
                        Some(())
                    }
                    Err(_) => None,
                }
            }
        })
        .await;
    }

    let members: Vec<String> = (0..10).map(|i| format!("member-{i}")).collect();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = members
        .iter()
        .map(|m| {
            tokio::spawn(member_workload(
                ports.clone(),
                m.clone(),
                books.clone(),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    process.kill().expect("SIGKILL");
    process.wait().unwrap();
    let killed_at = acked.lock().unwrap().reservations.len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut process = start(data.path(), &ports);
    serving(&ports).await;
    // The workload goes on against the restarted process for a while.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    println!(
        "workload: {} reservations, {} rentals, {} returns acknowledged; SIGKILL after {} reservations",
        acked.reservations.len(),
        acked.rentals.len(),
        acked.returns.len(),
        killed_at
    );
    assert!(killed_at > 0, "the kill came in the middle of the workload");

    // Nothing acknowledged is lost.
    for (who, id) in &acked.reservations {
        desk.get_reservation(req(
            &member(who),
            GetReservationRequest {
                reservation_id: id.clone(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("acknowledged reservation {id} lost: {e}"));
    }
    let mut loans = RentalServiceClient::new(channel(Ports::addr(ports.rental)).await);
    for (who, id) in &acked.rentals {
        let l = loans
            .get_rental(req(
                &member(who),
                GetRentalRequest {
                    rental_id: id.clone(),
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("acknowledged rental {id} lost: {e}"))
            .into_inner();
        assert!(matches!(
            l.status(),
            RentalStatus::Active | RentalStatus::Returned
        ));
    }
    for (who, id) in &acked.returns {
        let l = loans
            .get_rental(req(
                &member(who),
                GetRentalRequest {
                    rental_id: id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            l.status(),
            RentalStatus::Returned,
            "acknowledged return {id} lost"
        );
    }

    // The projections converge on the truth: nothing applied twice or missed.
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        last = differences(&ports, &members, &books).await;
        if last.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last.is_empty(), "differences after the restart: {last:#?}");
    println!(
        "consistency after restart: 0 differences (converged in {:?})",
        started.elapsed()
    );
    process.kill().ok();
    process.wait().ok();
}
