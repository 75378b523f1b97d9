//! rental-svc against a stand-in lending desk (a ReservationService of this
//! test, on a free port): the circuit breaker of SPEC §5, deadlines a caller
//! made too short, Rent while the breaker is open, and two settles of one
//! rental racing each other (R7).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use rentalbook_plumbing::bus::{NatsBus, NatsSettings};
use rentalbook_plumbing::error::retry_after;
use rentalbook_proto::rental::v1::rental_service_client::RentalServiceClient;
use rentalbook_proto::rental::v1::{
    GetRentalRequest, ListRentalsRequest, RentRequest, Rental, RentalStatus,
};
use rentalbook_proto::reserve::v1::reservation_service_server::{
    ReservationService, ReservationServiceServer,
};
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, FulfillReservationRequest, FulfillReservationResponse,
    GetReservationRequest, ListReservationsRequest, ListReservationsResponse, RecordReturnRequest,
    RecordReturnResponse, Reservation, ReservationStatus, ReserveRequest,
};
use support::{SECRET, channel, eventually, member, req, wait_serving};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

/// The breaker's gauge is one per process: under a test runner that shares a
/// process between tests, they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Answer = BoxFuture<'static, Result<Reservation, Status>>;
/// How the stand-in answers the n-th FulfillReservation (from 1).
type Script = Arc<dyn Fn(usize, FulfillReservationRequest) -> Answer + Send + Sync>;

/// The stand-in lending desk: FulfillReservation answers as its script says.
#[derive(Clone)]
struct Desk {
    script: Arc<Mutex<Script>>,
    asked: Arc<Mutex<Vec<FulfillReservationRequest>>>,
    calls: Arc<AtomicUsize>,
}

impl Desk {
    async fn start(script: Script) -> (Desk, SocketAddr) {
        let desk = Desk {
            script: Arc::new(Mutex::new(script)),
            asked: Arc::default(),
            calls: Arc::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the stand-in desk");
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(ReservationServiceServer::new(desk.clone()))
            .serve_with_incoming(TcpIncoming::from(listener));
        tokio::spawn(server);
        (desk, addr)
    }

    fn answer(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    /// FulfillReservation calls that reached the desk so far.
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn asked(&self) -> Vec<FulfillReservationRequest> {
        self.asked.lock().unwrap().clone()
    }
}

fn fulfilled(r: &FulfillReservationRequest) -> Reservation {
    Reservation {
        reservation_id: uuid::Uuid::now_v7().to_string(),
        book_id: r.book_id.clone(),
        member_id: r.member_id.clone(),
        status: ReservationStatus::Fulfilled as i32,
        rental_id: r.rental_id.clone(),
        ..Default::default()
    }
}

fn ok() -> Script {
    Arc::new(|_, r| futures::future::ready(Ok(fulfilled(&r))).boxed())
}

fn slow(delay: Duration) -> Script {
    Arc::new(move |_, r| {
        async move {
            tokio::time::sleep(delay).await;
            Ok(fulfilled(&r))
        }
        .boxed()
    })
}

fn refuse() -> Script {
    Arc::new(|_, _| {
        futures::future::ready(Err(Status::failed_precondition(
            "no reservation ready for you: reserve the book and wait until it is READY",
        )))
        .boxed()
    })
}

fn hang() -> Script {
    Arc::new(|_, _| futures::future::pending().boxed())
}

#[tonic::async_trait]
impl ReservationService for Desk {
    async fn fulfill_reservation(
        &self,
        request: Request<FulfillReservationRequest>,
    ) -> Result<Response<FulfillReservationResponse>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let r = request.into_inner();
        self.asked.lock().unwrap().push(r.clone());
        let script = self.script.lock().unwrap().clone();
        let reservation = script(n, r).await?;
        Ok(Response::new(FulfillReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn record_return(
        &self,
        _: Request<RecordReturnRequest>,
    ) -> Result<Response<RecordReturnResponse>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn reserve(&self, _: Request<ReserveRequest>) -> Result<Response<Reservation>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn cancel_reservation(
        &self,
        _: Request<CancelReservationRequest>,
    ) -> Result<Response<Reservation>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn get_reservation(
        &self,
        _: Request<GetReservationRequest>,
    ) -> Result<Response<Reservation>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn list_reservations(
        &self,
        _: Request<ListReservationsRequest>,
    ) -> Result<Response<ListReservationsResponse>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn list_items(
        &self,
        _: Request<rentalbook_proto::reserve::v1::ListItemsRequest>,
    ) -> Result<Response<rentalbook_proto::reserve::v1::ListItemsResponse>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn withdraw_item(
        &self,
        _: Request<rentalbook_proto::reserve::v1::ItemRequest>,
    ) -> Result<Response<rentalbook_proto::reserve::v1::Item>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn mark_item_lost(
        &self,
        _: Request<rentalbook_proto::reserve::v1::ItemRequest>,
    ) -> Result<Response<rentalbook_proto::reserve::v1::Item>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn get_item(
        &self,
        _: Request<rentalbook_proto::reserve::v1::GetItemRequest>,
    ) -> Result<Response<rentalbook_proto::reserve::v1::Item>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn check_out_item(
        &self,
        _: Request<rentalbook_proto::reserve::v1::CheckOutItemRequest>,
    ) -> Result<Response<FulfillReservationResponse>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn may_renew(
        &self,
        _: Request<rentalbook_proto::reserve::v1::MayRenewRequest>,
    ) -> Result<Response<rentalbook_proto::reserve::v1::MayRenewResponse>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }

    async fn check_in_item(
        &self,
        _: Request<rentalbook_proto::reserve::v1::CheckInItemRequest>,
    ) -> Result<Response<rentalbook_proto::reserve::v1::CheckInItemResponse>, Status> {
        Err(Status::unimplemented("not part of this stand-in"))
    }
}

/// rental-svc in this process on a free port and a database of its own,
/// pointed at the stand-in desk, with these extra flags.
async fn rental_svc(desk: SocketAddr, flags: &[&str]) -> RentalServiceClient<Channel> {
    let nats_url = rentalbook_testkit::nats_url().await;
    let stream = rentalbook_testkit::unique_name("RB");
    let prefix = stream.to_lowercase();
    let db = rentalbook_testkit::fresh_postgres_url().await;
    let mut args: Vec<String> = [
        "rental-svc",
        "--database-url",
        &db,
        "--reserve-svc-url",
        &format!("http://{desk}"),
        "--metrics-addr",
        "off",
        "--nats-url",
        &nats_url,
        "--nats-stream",
        &stream,
        "--nats-subject-prefix",
        &prefix,
        "--jwt-secret",
        SECRET,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(flags.iter().map(|s| s.to_string()));
    let config = <rental_svc::Config as clap::Parser>::try_parse_from(args).unwrap();
    let bus = NatsBus::connect(NatsSettings {
        url: nats_url,
        stream,
        subject_prefix: prefix,
        max_age: None,
        replicas: 1,
        client_name: "rental-svc".into(),
    })
    .await
    .expect("connecting to NATS");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding rental-svc");
    let app = rental_svc::App::build_with(config, listener, bus)
        .await
        .expect("rental-svc");
    let addr = app.local_addr();
    tokio::spawn(app.run(CancellationToken::new()));
    wait_serving(addr).await;
    RentalServiceClient::new(channel(addr).await)
}

fn book() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A Rent of `book` by `who`, with a deadline when given.
fn rent(who: &str, book: &str, deadline: Option<Duration>) -> Request<RentRequest> {
    let mut r = req(
        &member(who),
        RentRequest {
            book_id: book.to_owned(),
            request_id: String::new(),
        },
    );
    if let Some(d) = deadline {
        r.set_timeout(d);
    }
    r
}

/// The breaker's state as the metrics show it: 0 closed, 1 half-open, 2 open.
fn breaker_state() -> Option<f64> {
    rentalbook_plumbing::telemetry::render_metrics()
        .lines()
        .find(|l| l.starts_with("circuit_breaker_state{") && l.contains("peer=\"reserve-svc\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn assert_busy(err: &Status) {
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("try again"), "{}", err.message());
    assert!(retry_after(err).is_some(), "carries a RetryInfo: {err:?}");
}

async fn rentals_of(rentals: &RentalServiceClient<Channel>, who: &str) -> Vec<Rental> {
    rentals
        .clone()
        .list_rentals(req(&member(who), ListRentalsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .rentals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_a_hung_desk_fails_fast_ignores_refusals_and_closes_again() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (desk, addr) = Desk::start(refuse()).await;
    let rentals = rental_svc(
        addr,
        &[
            "--reserve-call-timeout",
            "500ms",
            "--breaker-failures",
            "3",
            "--breaker-open-for",
            "1s",
            "--rent-recovery-interval",
            "1h",
        ],
    )
    .await;

    // Business refusals are answers: however many, the breaker stays closed.
    for i in 0..5 {
        let err = rentals
            .clone()
            .rent(rent(&format!("refused-{i}"), &book(), None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    }
    assert_eq!(
        breaker_state(),
        Some(0.0),
        "refusals leave the breaker closed"
    );

    // A hung desk: the first calls wait out the call timeout, then it opens.
    desk.answer(hang());
    for i in 0..3 {
        let started = Instant::now();
        let err = rentals
            .clone()
            .rent(rent(&format!("hung-{i}"), &book(), None))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_busy(&err);
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "call {i} waited about the call timeout, not {took:?}"
        );
    }
    assert_eq!(
        breaker_state(),
        Some(2.0),
        "three timeouts open the breaker"
    );
    let asked = desk.calls();
    let opened = Instant::now();

    // While open, Rent fails fast without asking the desk.
    let started = Instant::now();
    let err = rentals
        .clone()
        .rent(rent("hung-3", &book(), None))
        .await
        .unwrap_err();
    assert_busy(&err);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "refused at once while open, not after {:?}",
        started.elapsed()
    );
    assert_eq!(desk.calls(), asked, "the open breaker kept the call away");

    // After the open period a call goes through again and closes it.
    desk.answer(ok());
    let wanted = book();
    let loan = eventually("a Rent to get through after the open period", || {
        let mut rentals = rentals.clone();
        let wanted = wanted.clone();
        async move { rentals.rent(rent("back", &wanted, None)).await.ok() }
    })
    .await
    .into_inner();
    assert_eq!(loan.status(), RentalStatus::Active);
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "the breaker stayed open for its open period, closed after {:?}",
        opened.elapsed()
    );
    assert_eq!(
        breaker_state(),
        Some(0.0),
        "a good answer closes the breaker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_too_short_deadlines_do_not_open_the_breaker_for_everyone() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_desk, addr) = Desk::start(slow(Duration::from_millis(300))).await;
    let rentals = rental_svc(
        addr,
        &[
            "--reserve-call-timeout",
            "2s",
            "--breaker-failures",
            "3",
            "--breaker-open-for",
            "30s",
            "--rent-recovery-interval",
            "1h",
        ],
    )
    .await;

    for i in 0..10 {
        let res = rentals
            .clone()
            .rent(rent(
                &format!("hasty-{i}"),
                &book(),
                Some(Duration::from_millis(40)),
            ))
            .await;
        assert!(res.is_err(), "a 40 ms Rent against a 300 ms desk fails");
    }
    let loan = rentals
        .clone()
        .rent(rent("patient", &book(), None))
        .await
        .expect("someone else's Rent with time to wait works")
        .into_inner();
    assert_eq!(loan.status(), RentalStatus::Active);
    assert_eq!(breaker_state(), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_of_calls_with_enough_budget_open_the_breaker() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (desk, addr) = Desk::start(hang()).await;
    let rentals = rental_svc(
        addr,
        &[
            "--reserve-call-timeout",
            "5s",
            "--breaker-failures",
            "3",
            "--breaker-open-for",
            "30s",
            "--rent-recovery-interval",
            "1h",
        ],
    )
    .await;

    // Deadlines shorter than the call timeout but well above the floor: the
    // desk had time to answer and did not.
    let deadline = Some(Duration::from_millis(600));
    for i in 0..3 {
        let started = Instant::now();
        let err = rentals
            .clone()
            .rent(rent(&format!("waiting-{i}"), &book(), deadline))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the caller's deadline bounded the call"
        );
        assert_ne!(err.code(), Code::FailedPrecondition, "{err:?}");
    }
    assert_eq!(
        breaker_state(),
        Some(2.0),
        "three timeouts open the breaker"
    );
    let asked = desk.calls();
    let started = Instant::now();
    let err = rentals
        .clone()
        .rent(rent("next", &book(), deadline))
        .await
        .unwrap_err();
    assert_busy(&err);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(desk.calls(), asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rent_turned_away_by_the_open_breaker_leaves_no_rental() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (desk, addr) = Desk::start(hang()).await;
    let rentals = rental_svc(
        addr,
        &[
            "--reserve-call-timeout",
            "300ms",
            "--breaker-failures",
            "2",
            "--breaker-open-for",
            "1s",
            "--rent-recovery-interval",
            "100ms",
        ],
    )
    .await;
    for who in ["xavier", "yuki"] {
        let err = rentals
            .clone()
            .rent(rent(who, &book(), None))
            .await
            .unwrap_err();
        assert_busy(&err);
    }
    assert_eq!(breaker_state(), Some(2.0));
    let asked = desk.calls();

    let err = rentals
        .clone()
        .rent(rent("dora", &book(), None))
        .await
        .unwrap_err();
    assert_busy(&err);
    assert_eq!(desk.calls(), asked, "the desk was never asked");
    assert!(
        rentals_of(&rentals, "dora").await.is_empty(),
        "a Rent turned away commits nothing"
    );

    // Once the desk answers, the sweep settles the loans whose calls were
    // made, and makes none for the Rent that was turned away.
    desk.answer(ok());
    eventually("the sweep to settle xavier's rental", || {
        let rentals = rentals.clone();
        async move {
            let mine = rentals_of(&rentals, "xavier").await;
            (mine.len() == 1 && mine[0].status() == RentalStatus::Active).then_some(())
        }
    })
    .await;
    assert!(
        rentals_of(&rentals, "dora").await.is_empty(),
        "no loan for a Rent that was turned away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ok_from_the_desk_wins_over_a_refusal_of_a_racing_settle() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Both settles reach the desk; the first is refused only once the second
    // is there, and the second's OK comes after that refusal is written.
    let second_arrived = Arc::new(Notify::new());
    let script: Script = {
        let second_arrived = second_arrived.clone();
        Arc::new(move |n, r| {
            let second_arrived = second_arrived.clone();
            async move {
                if n == 1 {
                    let _ = tokio::time::timeout(Duration::from_secs(5), second_arrived.notified())
                        .await;
                    Err(Status::failed_precondition(
                        "no reservation ready for you: reserve the book and wait until it is READY",
                    ))
                } else {
                    second_arrived.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(fulfilled(&r))
                }
            }
            .boxed()
        })
    };
    let (desk, addr) = Desk::start(script).await;
    let rentals = rental_svc(
        addr,
        &[
            "--reserve-call-timeout",
            "3s",
            "--rent-recovery-interval",
            "1h",
        ],
    )
    .await;

    let book = book();
    let (mut first, mut second) = (rentals.clone(), rentals.clone());
    let (a, b) = tokio::join!(
        first.rent(rent("alice", &book, None)),
        second.rent(rent("alice", &book, None)),
    );
    let asked = desk.asked();
    assert_eq!(asked.len(), 2, "both settles asked the desk");
    assert_eq!(
        asked[0].rental_id, asked[1].rental_id,
        "both settled the same PENDING rental"
    );
    let answers = [a, b];
    let loan = answers
        .iter()
        .find_map(|r| r.as_ref().ok())
        .expect("the settle that got OK answers with the loan")
        .get_ref()
        .clone();
    assert_eq!(loan.rental_id, asked[0].rental_id);
    assert_eq!(loan.status(), RentalStatus::Active, "the OK won");
    let stored = rentals
        .clone()
        .get_rental(req(
            &member("alice"),
            GetRentalRequest {
                rental_id: loan.rental_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.status(), RentalStatus::Active, "and stays ACTIVE");
}
