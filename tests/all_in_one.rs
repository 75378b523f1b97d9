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
use support::{channel, eventually, librarian, req, wait_serving};

struct Ports {
    rental: u16,
    reserve: u16,
    book: u16,
    view: u16,
    notice: u16,
    edge: u16,
}

impl Ports {
    fn free() -> Self {
        Self {
            rental: rentalbook_testkit::free_port(),
            reserve: rentalbook_testkit::free_port(),
            book: rentalbook_testkit::free_port(),
            view: rentalbook_testkit::free_port(),
            notice: rentalbook_testkit::free_port(),
            edge: rentalbook_testkit::free_port(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

fn command(data: &Path, ports: &Ports) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rentalbook"));
    cmd.args(["--data-dir", data.to_str().unwrap()])
        .args(["--edge-port", &ports.edge.to_string()])
        .args(["--rental-port", &ports.rental.to_string()])
        .args(["--reserve-port", &ports.reserve.to_string()])
        .args(["--book-port", &ports.book.to_string()])
        .args(["--view-port", &ports.view.to_string()])
        .args(["--notice-port", &ports.notice.to_string()])
        .env("RENT_RECOVERY_INTERVAL", "200ms")
        .env("RESERVE_CALL_TIMEOUT", "1s")
        .env_remove("RENTALBOOK_JWT_SECRET")
        .env("RUST_LOG", "warn")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .stderr(Stdio::null());
    cmd
}

fn start(data: &Path, ports: &Ports) -> Child {
    command(data, ports)
        .env("RENTALBOOK_JWT_SECRET", support::SECRET)
        .stdout(Stdio::null())
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
        .env_remove("NOTICE_DATABASE_URL")
        .env_remove("SMTP_URL")
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
    let lost = workload::lost(&acked, reserve, rental).await;
    println!(
        "workload: {} requests; {} reservations, {} rentals, {} returns acknowledged; SIGKILL after {} reservations; failures by code {:?}; lost = {}",
        acked.requests,
        acked.reservations.len(),
        acked.rentals.len(),
        acked.returns.len(),
        killed_at,
        acked.failures,
        lost.len()
    );
    assert!(killed_at > 0, "the kill came in the middle of the workload");
    assert!(lost.is_empty(), "acknowledged changes lost: {lost:#?}");

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

/// A token signed with the secret the all-in-one made in its data directory.
fn token_from(data: &Path, sub: &str, role: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rentalbook"))
        .args([
            "token",
            "--sub",
            sub,
            "--role",
            role,
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env_remove("RENTALBOOK_JWT_SECRET")
        .output()
        .expect("rentalbook token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_makes_a_secret_and_the_curl_walkthrough_works_over_rest() {
    let data = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let mut process = command(data.path(), &ports)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting rentalbook");
    serving(&ports).await;
    let secret = std::fs::read_to_string(data.path().join("jwt-secret"))
        .expect("a secret in the data directory");
    assert!(
        secret.trim().len() >= 32,
        "a random secret, not a fixed one"
    );

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", ports.edge);
    let (lib, alice, bob) = (
        token_from(data.path(), "lib-1", "librarian"),
        token_from(data.path(), "alice", "member"),
        token_from(data.path(), "bob", "member"),
    );
    let call =
        |method: reqwest::Method, path: &str, token: &str, body: Option<serde_json::Value>| {
            let mut r = http
                .request(method, format!("{base}{path}"))
                .bearer_auth(token);
            if let Some(b) = body {
                r = r.json(&b);
            }
            r.send()
        };
    use reqwest::Method;
    let book: serde_json::Value = call(Method::POST, "/v1/books", &lib, Some(serde_json::json!({"title": "Kindred", "author": "Octavia E. Butler", "totalCopies": 1})))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let book_id = book["bookId"].as_str().unwrap().to_owned();
    let reserve = |token: String| {
        let body = serde_json::json!({ "bookId": book_id });
        let call = &call;
        async move {
            eventually("the desk to know the book", || {
                let (token, body) = (token.clone(), body.clone());
                async move {
                    let r = call(Method::POST, "/v1/reservations", &token, Some(body))
                        .await
                        .ok()?;
                    (r.status() == 200).then_some(())?;
                    r.json::<serde_json::Value>().await.ok()
                }
            })
            .await
        }
    };
    let a = reserve(alice.clone()).await;
    assert_eq!(a["status"], "RESERVATION_STATUS_READY");
    let b = reserve(bob.clone()).await;
    assert_eq!(b["status"], "RESERVATION_STATUS_WAITING");
    assert_eq!(b["queuePosition"], 1);

    let refused = call(
        Method::POST,
        "/v1/rentals",
        &bob,
        Some(serde_json::json!({"bookId": book_id})),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 400);
    let rental: serde_json::Value = call(
        Method::POST,
        "/v1/rentals",
        &alice,
        Some(serde_json::json!({"bookId": book_id})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let rental_id = rental["rentalId"].as_str().unwrap();
    let returned: serde_json::Value = call(
        Method::POST,
        &format!("/v1/rentals/{rental_id}:return"),
        &alice,
        Some(serde_json::json!({})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(returned["status"], "RENTAL_STATUS_RETURNED");
    eventually("bob's My Page to show READY", || {
        let bob = bob.clone();
        let call = &call;
        async move {
            let page: serde_json::Value = call(Method::GET, "/v1/mypage", &bob, None)
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (page["journeys"][0]["stage"] == "JOURNEY_STAGE_READY").then_some(())
        }
    })
    .await;

    process.kill().ok();
    let out = process.wait_with_output().unwrap();
    let banner = String::from_utf8_lossy(&out.stdout);
    assert!(
        banner.contains("rentalbook token --sub alice"),
        "the banner says how to get a token: {banner}"
    );
    assert!(
        banner.contains(&format!("127.0.0.1:{}", ports.edge)),
        "the banner gives the URLs: {banner}"
    );
}
