//! Fault tests on the mesh of real processes (SPEC §5, issue "Resilience"):
//! each service runs as its own process (`rentalbook service ...`) against a
//! private NATS and PostgreSQL, and the tests stop, kill and restart them in
//! the middle of a concurrent workload. `rentalbook check` then compares the
//! services' truth with the projections. Each test prints what it did.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rentalbook_proto::book::v1::book_service_client::BookServiceClient;
use rentalbook_proto::book::v1::{ListBooksRequest, RegisterBookRequest};
use rentalbook_proto::rental::v1::rental_service_client::RentalServiceClient;
use rentalbook_proto::rental::v1::{
    GetRentalRequest, RentRequest, ReturnConfirmation, ReturnRentalRequest,
};
use rentalbook_proto::reserve::v1::reservation_service_client::ReservationServiceClient;
use rentalbook_proto::reserve::v1::{GetReservationRequest, ReservationStatus, ReserveRequest};
use rentalbook_testkit::PrivateNats;
use support::workload::{self, Workload};
use support::{channel, eventually, librarian, member, req, wait_serving};
use tonic::Code;

const SERVICES: [&str; 4] = ["book-svc", "reserve-svc", "rental-svc", "view-svc"];

struct Proc {
    name: &'static str,
    port: u16,
    db: String,
    child: Option<Child>,
}

/// The four services as processes of their own.
struct ProcMesh {
    nats_url: String,
    stream: String,
    procs: Vec<Proc>,
    extra: Vec<(&'static str, Vec<String>)>,
    /// Each process's output (its log lines at `warn` and above, and an
    /// error it exits with), shown if the test fails.
    logs: tempfile::TempDir,
}

impl ProcMesh {
    async fn start(nats_url: String, extra: Vec<(&'static str, Vec<String>)>) -> Self {
        let mut procs = Vec::new();
        for name in SERVICES {
            procs.push(Proc {
                name,
                port: rentalbook_testkit::free_port(),
                db: rentalbook_testkit::fresh_postgres_url().await,
                child: None,
            });
        }
        let mut mesh = Self {
            nats_url,
            stream: rentalbook_testkit::unique_name("FAULT"),
            procs,
            extra,
            logs: tempfile::tempdir().expect("a directory for the services' logs"),
        };
        for name in SERVICES {
            mesh.spawn(name);
        }
        for name in SERVICES {
            wait_serving(mesh.addr(name)).await;
        }
        mesh
    }

    fn proc(&self, name: &str) -> &Proc {
        self.procs.iter().find(|p| p.name == name).unwrap()
    }

    fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.proc(name).port))
    }

    fn spawn(&mut self, name: &str) {
        let reserve = self.addr("reserve-svc");
        let p = self.proc(name);
        // Metrics are off unless the test asks for them.
        let metrics_asked = self
            .extra
            .iter()
            .any(|(svc, args)| *svc == name && args.iter().any(|a| a == "--metrics-addr"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rentalbook"));
        cmd.args(["service", name, "--"])
            .args(["--listen-addr", &format!("127.0.0.1:{}", p.port)])
            .args(["--database-url", &p.db]);
        if !metrics_asked {
            cmd.args(["--metrics-addr", "off"]);
        }
        cmd.args(["--nats-url", &self.nats_url, "--nats-stream", &self.stream])
            .args(["--nats-subject-prefix", &self.stream.to_lowercase()])
            .args(["--jwt-secret", support::SECRET, "--event-ack-wait", "2s"]);
        if name == "rental-svc" {
            cmd.args(["--reserve-svc-url", &format!("http://{reserve}")])
                .args(["--reserve-call-timeout", "2s", "--breaker-failures", "3"])
                .args([
                    "--breaker-open-for",
                    "1s",
                    "--rent-recovery-interval",
                    "200ms",
                ]);
        }
        for (svc, args) in &self.extra {
            if *svc == name {
                cmd.args(args);
            }
        }
        let child = cmd
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .stdout(self.log_file(name))
            .stderr(self.log_file(name))
            .spawn()
            .expect("starting a service process");
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap()
            .child = Some(child);
    }

    fn kill(&mut self, name: &str) {
        if let Some(mut c) = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap()
            .child
            .take()
        {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// SIGTERM and wait: a graceful stop.
    fn terminate(&mut self, name: &str) {
        if let Some(mut c) = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap()
            .child
            .take()
        {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .ok();
            c.wait().ok();
        }
    }

    async fn restart(&mut self, name: &str) {
        self.spawn(name);
        wait_serving(self.addr(name)).await;
    }

    /// `rentalbook check` against the four databases.
    fn check(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_rentalbook"))
            .args(["check", "--grace", "2s"])
            .args(["--book-database-url", &self.proc("book-svc").db])
            .args(["--reserve-database-url", &self.proc("reserve-svc").db])
            .args(["--rental-database-url", &self.proc("rental-svc").db])
            .args(["--view-database-url", &self.proc("view-svc").db])
            .output()
            .expect("running rentalbook check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Waits for the check to find no difference; returns how long it took.
    async fn converged(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let (ok, report) = self.check();
            if ok {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "still inconsistent after {within:?}:\n{report}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn books(&self, n: usize, copies: i32) -> Vec<String> {
        let mut catalogue = BookServiceClient::new(channel(self.addr("book-svc")).await);
        let mut books = Vec::new();
        for i in 0..n {
            let b = catalogue
                .register_book(req(
                    &librarian(),
                    RegisterBookRequest {
                        title: format!("Fault {i}"),
                        author: "A".into(),
                        total_copies: copies,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            books.push(b.book_id);
        }
        workload::wait_until_desk_knows(self.addr("reserve-svc"), &books).await;
        books
    }

    fn workload(&self, members: usize, books: &[String]) -> Workload {
        let members: Vec<String> = (0..members).map(|i| format!("member-{i}")).collect();
        Workload::start(
            self.addr("reserve-svc"),
            self.addr("rental-svc"),
            &members,
            books,
        )
    }
}

impl ProcMesh {
    fn log_path(&self, name: &str) -> std::path::PathBuf {
        self.logs.path().join(format!("{name}.log"))
    }

    /// Appends: a restarted process continues its predecessor's log.
    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .expect("a service's log file")
    }
}

impl Drop for ProcMesh {
    fn drop(&mut self) {
        for name in SERVICES {
            self.kill(name);
        }
        if std::thread::panicking() {
            for name in SERVICES {
                let log = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- {name}'s last log lines:");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Prints the figures of a run (docs/FAULTS.md quotes them), then asserts
/// that nothing acknowledged was lost and that `rentalbook check` finds no
/// difference (no projection counting a change twice or missing one).
async fn report(mesh: &ProcMesh, what: &str, acked: &workload::Acked, faults: &str, extra: &str) {
    let lost = workload::lost(acked, mesh.addr("reserve-svc"), mesh.addr("rental-svc")).await;
    let (consistent, check) = mesh.check();
    let differences = if consistent {
        0
    } else {
        check.lines().filter(|l| l.starts_with("  ")).count().max(1)
    };
    println!(
        "{what}: {} requests ({} reservations, {} rentals, {} returns acknowledged); faults injected: {faults}; failures by code {:?}; lost = {}; differences = {differences}{extra}",
        acked.requests,
        acked.reservations.len(),
        acked.rentals.len(),
        acked.returns.len(),
        acked.failures,
        lost.len(),
    );
    assert!(lost.is_empty(), "acknowledged changes lost: {lost:#?}");
    assert!(consistent, "{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn book_svc_down_lending_goes_on_and_the_catalogue_converges() {
    let mut mesh = ProcMesh::start(rentalbook_testkit::nats_url().await, vec![]).await;
    let books = mesh.books(3, 2).await;
    let work = mesh.workload(8, &books);
    tokio::time::sleep(Duration::from_millis(400)).await;
    mesh.terminate("book-svc");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mesh.restart("book-svc").await;
    let acked = work.stop().await;
    assert_eq!(
        acked.infrastructure_failures(),
        0,
        "every reserve, rent and return succeeded: {:?}",
        acked.failures
    );
    let took = mesh.converged(Duration::from_secs(20)).await;
    report(
        &mesh,
        "book-svc stopped",
        &acked,
        "book-svc stopped for 1.5 s",
        &format!("; converged {took:?} after"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserve_svc_down_rent_fails_fast_return_falls_back_and_completes() {
    let mut mesh = ProcMesh::start(rentalbook_testkit::nats_url().await, vec![]).await;
    let books = mesh.books(4, 1).await;
    let (reserve, rental) = (mesh.addr("reserve-svc"), mesh.addr("rental-svc"));
    let mut desk = ReservationServiceClient::new(channel(reserve).await);
    let mut loans = RentalServiceClient::new(channel(rental).await);
    // Four loans out, each with a member waiting behind it; one READY hold to rent.
    let mut loans_out = Vec::new();
    let mut waiting = Vec::new();
    for (i, b) in books.iter().enumerate().take(3) {
        let holder = format!("holder-{i}");
        desk.reserve(req(
            &member(&holder),
            ReserveRequest {
                book_id: b.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
        let l = loans
            .rent(req(
                &member(&holder),
                RentRequest {
                    book_id: b.clone(),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        loans_out.push((holder, l.rental_id));
        let w = format!("waiter-{i}");
        let r = desk
            .reserve(req(
                &member(&w),
                ReserveRequest {
                    book_id: b.clone(),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        waiting.push((w, r.reservation_id));
    }
    desk.reserve(req(
        &member("renter"),
        ReserveRequest {
            book_id: books[3].clone(),
            request_id: String::new(),
        },
    ))
    .await
    .unwrap();

    mesh.kill("reserve-svc");
    // Rent: the first calls find the desk gone, then the breaker answers at once.
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let err = loans
            .rent(req(
                &member("renter"),
                RentRequest {
                    book_id: books[3].clone(),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap_err();
        latencies.push(started.elapsed());
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("try again"), "{}", err.message());
    }
    let open_breaker = &latencies[5..];
    let worst_open = open_breaker.iter().max().unwrap();
    assert!(
        *worst_open < Duration::from_millis(500),
        "with the breaker open Rent fails fast: {latencies:?}"
    );
    // Return: succeeds, PENDING.
    let started = Instant::now();
    for (holder, rental_id) in &loans_out {
        let r = loans
            .return_rental(req(
                &member(holder),
                ReturnRentalRequest {
                    rental_id: rental_id.clone(),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("a return succeeds while the desk is down")
            .into_inner();
        assert_eq!(r.return_confirmation(), ReturnConfirmation::Pending);
    }
    let returns_took = started.elapsed();

    mesh.restart("reserve-svc").await;
    let mut desk = ReservationServiceClient::new(channel(reserve).await);
    for (holder, rental_id) in &loans_out {
        eventually("the pending return to be confirmed", || {
            let mut loans = loans.clone();
            let (holder, rental_id) = (holder.clone(), rental_id.clone());
            async move {
                let r = loans
                    .get_rental(req(&member(&holder), GetRentalRequest { rental_id }))
                    .await
                    .ok()?
                    .into_inner();
                (r.return_confirmation() == ReturnConfirmation::Confirmed).then_some(())
            }
        })
        .await;
    }
    for (w, id) in &waiting {
        let r = desk
            .get_reservation(req(
                &member(w),
                GetReservationRequest {
                    reservation_id: id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status(),
            ReservationStatus::Ready,
            "the next member in line got the copy"
        );
    }
    let took = mesh.converged(Duration::from_secs(20)).await;
    println!(
        "reserve-svc killed: Rent answered UNAVAILABLE in {:?} (first calls) and at most {worst_open:?} with the breaker open; {} returns answered PENDING in {returns_took:?}; after restart all confirmed, {} waiting members READY; consistent {took:?} after",
        &latencies[..5],
        loans_out.len(),
        waiting.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_down_requests_succeed_and_everything_is_delivered_once() {
    let mut nats = PrivateNats::start_new().await.unwrap();
    let mesh = ProcMesh::start(nats.url(), vec![]).await;
    let books = mesh.books(3, 2).await;
    let work = mesh.workload(8, &books);
    tokio::time::sleep(Duration::from_millis(400)).await;
    nats.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = work.stop().await;
    assert_eq!(
        acked.infrastructure_failures(),
        0,
        "RPCs succeed while NATS is away: {:?}",
        acked.failures
    );
    let took = mesh.converged(Duration::from_secs(30)).await;
    report(
        &mesh,
        "NATS stopped",
        &acked,
        "NATS stopped for 1.5 s",
        &format!("; converged {took:?} after"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_each_service_at_random_moments_then_restart_is_consistent() {
    let mut mesh = ProcMesh::start(rentalbook_testkit::nats_url().await, vec![]).await;
    let books = mesh.books(3, 2).await;
    let work = mesh.workload(8, &books);
    // A fixed seed: the moments differ per service but each run is the same.
    let mut seed: u64 = 0x5eed_1234;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut kills = Vec::new();
    for name in SERVICES {
        let after = Duration::from_millis(150 + next() % 400);
        tokio::time::sleep(after).await;
        mesh.kill(name);
        tokio::time::sleep(Duration::from_millis(200)).await;
        mesh.restart(name).await;
        kills.push(format!("{name} after {after:?}"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = work.stop().await;
    let took = mesh.converged(Duration::from_secs(30)).await;
    report(
        &mesh,
        "SIGKILL each service",
        &acked,
        &kills.join(", "),
        &format!("; R7 and projections consistent {took:?} after"),
    )
    .await;
}

/// The value of `rpc_shed_total` on a Prometheus page (0 before the first).
fn shed_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("rpc_shed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn scrape(metrics: SocketAddr) -> String {
    reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("scraping /metrics")
        .text()
        .await
        .expect("the metrics page")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_at_ten_times_the_limit_is_shed_fast_and_the_rest_served() {
    let limit = 4;
    let metrics = SocketAddr::from(([127, 0, 0, 1], rentalbook_testkit::free_port()));
    let mesh = ProcMesh::start(
        rentalbook_testkit::nats_url().await,
        vec![(
            "book-svc",
            vec![
                "--max-concurrent-requests".into(),
                limit.to_string(),
                "--metrics-addr".into(),
                metrics.to_string(),
            ],
        )],
    )
    .await;
    mesh.books(20, 1).await;
    let shed_before = shed_total(&scrape(metrics).await);
    let catalogue = BookServiceClient::new(channel(mesh.addr("book-svc")).await);
    let mut shed = Vec::new();
    let mut served = 0;
    let calls_made = limit * 10 * 10;
    for _ in 0..10 {
        let calls: Vec<_> = (0..limit * 10)
            .map(|_| {
                let mut c = catalogue.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let r = c
                        .list_books(req(
                            &member("reader"),
                            ListBooksRequest {
                                page_size: 100,
                                ..Default::default()
                            },
                        ))
                        .await;
                    (r.map(|_| ()), started.elapsed())
                })
            })
            .collect();
        for c in calls {
            match c.await.unwrap() {
                (Ok(()), _) => served += 1,
                (Err(s), took) => {
                    assert_eq!(
                        s.code(),
                        Code::ResourceExhausted,
                        "shed with RESOURCE_EXHAUSTED: {s:?}"
                    );
                    assert!(rentalbook_plumbing::error::retry_after(&s).is_some());
                    shed.push(took);
                }
            }
        }
    }
    wait_serving(mesh.addr("book-svc")).await;
    let shed_counted = shed_total(&scrape(metrics).await) - shed_before;
    shed.sort();
    let worst = shed.last().copied().unwrap_or_default();
    println!(
        "overload: {calls_made} calls at {}x the limit of {limit}; served {served}, shed {} (slowest refusal {worst:?}, rpc_shed_total +{shed_counted}); book-svc stayed up",
        10,
        shed.len()
    );
    assert!(served > 0, "admitted calls succeed");
    assert!(
        !shed.is_empty(),
        "at ten times the limit some calls are shed"
    );
    assert_eq!(served + shed.len(), calls_made, "every call served or shed");
    assert_eq!(
        shed_counted,
        shed.len() as u64,
        "rpc_shed_total counts every shed call"
    );
    assert!(worst < Duration::from_secs(2), "refusals come fast");
}
