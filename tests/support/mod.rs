//! Starts the real services in this test process, each on a free port with
//! its own database, on a stream and subject prefix of the test's own, and
//! gives the test typed clients and tokens.

#![allow(dead_code)]

pub mod workload;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rentalbook_plumbing::auth::{Role, mint};
use rentalbook_plumbing::bus::{EventBus, NatsBus, NatsSettings};
use rentalbook_plumbing::embedded_bus::EmbeddedBus;
use rentalbook_plumbing::ids::MemberId;
use rentalbook_proto::book::v1::book_service_client::BookServiceClient;
use rentalbook_proto::book::v1::{Book, RegisterBookRequest};
use rentalbook_proto::notice::v1::notice_service_client::NoticeServiceClient;
use rentalbook_proto::rental::v1::rental_service_client::RentalServiceClient;
use rentalbook_proto::rental::v1::{RentRequest, Rental, ReturnRentalRequest};
use rentalbook_proto::reserve::v1::reservation_service_client::ReservationServiceClient;
use rentalbook_proto::reserve::v1::{GetReservationRequest, Reservation, ReserveRequest};
use rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub const SECRET: &str = "test-secret-0123456789";

/// Where the services keep their data and pass their events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// PostgreSQL databases and NATS JetStream: the mesh.
    Postgres,
    /// SQLite files and the embedded bus: the all-in-one.
    Sqlite,
}

/// Runs a test body once on each backend, as two tests:
/// `both_backends!(name)` makes `name::postgres_and_nats` and
/// `name::sqlite_and_embedded_bus`, each calling `name(Store)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_and_nats() {
                super::$name($crate::support::Store::Postgres).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_and_embedded_bus() {
                super::$name($crate::support::Store::Sqlite).await;
            }
        }
    };
}

/// Policy and timing knobs of a test's mesh.
#[derive(Clone, Debug)]
pub struct Options {
    pub store: Store,
    pub pickup_window: &'static str,
    pub loan_period: &'static str,
    pub sweep_interval: &'static str,
    pub max_open_reservations: u32,
    pub max_active_rentals: u32,
    pub max_renewals: u32,
    pub reserve_call_timeout: &'static str,
    pub breaker_failures: u32,
    pub breaker_open_for: &'static str,
    pub recovery_interval: &'static str,
    /// Tries of a poison event before it is dead-lettered.
    pub event_max_deliver: u32,
    /// `--history-retention` of view-svc, reserve-svc and rental-svc.
    pub history_retention: &'static str,
    /// Flags every service gets besides the usual ones (the token rules:
    /// `--jwt-audience`, `--jwt-issuer`, `--jwt-leeway`).
    pub common_args: Vec<&'static str>,
    /// notice-svc's flags besides the usual ones (`--smtp-url`, its
    /// periods).
    pub notice_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            store: Store::Postgres,
            pickup_window: "72h",
            loan_period: "14d",
            sweep_interval: "200ms",
            max_open_reservations: 5,
            max_active_rentals: 5,
            max_renewals: 2,
            reserve_call_timeout: "1s",
            breaker_failures: 3,
            breaker_open_for: "1s",
            recovery_interval: "200ms",
            event_max_deliver: 8,
            history_retention: "90d",
            common_args: Vec::new(),
            notice_args: Vec::new(),
        }
    }
}

/// Parses a service's flags (these plus the mesh's bus settings), builds it
/// on `listener` with the mesh's event bus and runs it in this process.
macro_rules! launch {
    ($mesh:expr, $svc:ident, $name:literal, $args:expr, $listener:expr) => {{
        let mut args: Vec<String> = $args;
        args.extend(common_args(&$mesh.nats_url, &$mesh.stream, &$mesh.prefix));
        args.extend([
            "--event-max-deliver".to_owned(),
            $mesh.options.event_max_deliver.to_string(),
        ]);
        args.extend($mesh.options.common_args.iter().map(|a| a.to_string()));
        let config = <$svc::Config as clap::Parser>::try_parse_from(args).unwrap();
        let bus = $mesh.bus_for($name).await;
        let app = $svc::App::build_with(config, $listener, bus)
            .await
            .expect($name);
        let addr = app.local_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(stop.clone()));
        Running {
            addr,
            stop,
            task: Some(task),
        }
    }};
}

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

/// book-svc, reserve-svc, rental-svc, view-svc and notice-svc of one test.
pub struct Mesh {
    pub options: Options,
    pub nats_url: String,
    pub stream: String,
    pub prefix: String,
    db_urls: [String; 4],
    notice_db_url: String,
    _sqlite_dir: Option<tempfile::TempDir>,
    /// The one bus every service shares on SQLite.
    embedded: Option<Arc<EmbeddedBus>>,
    book: Running,
    reserve: Running,
    rental: Running,
    view: Running,
    notice: Running,
}

fn common_args(nats_url: &str, stream: &str, prefix: &str) -> Vec<String> {
    [
        "--metrics-addr",
        "off",
        "--nats-url",
        nats_url,
        "--nats-stream",
        stream,
        "--nats-subject-prefix",
        prefix,
        "--jwt-secret",
        SECRET,
        "--event-ack-wait",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn bus(nats_url: &str, stream: &str, prefix: &str, name: &str) -> Arc<dyn EventBus> {
    NatsBus::connect(NatsSettings {
        url: nats_url.to_owned(),
        stream: stream.to_owned(),
        subject_prefix: prefix.to_owned(),
        max_age: None,
        replicas: 1,
        client_name: name.to_owned(),
    })
    .await
    .expect("connecting to NATS")
}

impl Mesh {
    pub async fn start() -> Mesh {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Mesh {
        let nats_url = rentalbook_testkit::nats_url().await;
        let stream = rentalbook_testkit::unique_name("RB");
        let prefix = stream.to_lowercase();
        let mut embedded = None;
        let (db_urls, notice_db_url, sqlite_dir) = match options.store {
            Store::Postgres => (
                [
                    rentalbook_testkit::fresh_postgres_url().await,
                    rentalbook_testkit::fresh_postgres_url().await,
                    rentalbook_testkit::fresh_postgres_url().await,
                    rentalbook_testkit::fresh_postgres_url().await,
                ],
                rentalbook_testkit::fresh_postgres_url().await,
                None,
            ),
            Store::Sqlite => {
                let dir = tempfile::tempdir().expect("a temp dir");
                embedded = Some(
                    EmbeddedBus::open(&format!(
                        "sqlite://{}",
                        dir.path().join("events.db").display()
                    ))
                    .await
                    .expect("opening the embedded bus"),
                );
                let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
                (
                    [
                        url("book.db"),
                        url("reserve.db"),
                        url("rental.db"),
                        url("view.db"),
                    ],
                    url("notice.db"),
                    Some(dir),
                )
            }
        };
        let placeholder = || Running {
            addr: "127.0.0.1:0".parse().unwrap(),
            stop: CancellationToken::new(),
            task: None,
        };
        let mut mesh = Mesh {
            options,
            nats_url,
            stream,
            prefix,
            db_urls,
            notice_db_url,
            _sqlite_dir: sqlite_dir,
            embedded,
            book: placeholder(),
            reserve: placeholder(),
            rental: placeholder(),
            view: placeholder(),
            notice: placeholder(),
        };
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        mesh.book = mesh.spawn_book(any_port).await;
        mesh.reserve = mesh.spawn_reserve(any_port).await;
        mesh.rental = mesh.spawn_rental(any_port).await;
        mesh.view = mesh.spawn_view(any_port, "view-svc", false).await;
        mesh.notice = mesh.spawn_notice(any_port).await;
        for addr in [
            mesh.book.addr,
            mesh.reserve.addr,
            mesh.rental.addr,
            mesh.view.addr,
            mesh.notice.addr,
        ] {
            wait_serving(addr).await;
        }
        mesh
    }

    async fn spawn_book(&self, addr: SocketAddr) -> Running {
        let args = vec![
            "book-svc".to_owned(),
            "--database-url".into(),
            self.db_urls[0].clone(),
        ];
        let listener = TcpListener::bind(addr).await.expect("binding book-svc");
        launch!(self, book_svc, "book-svc", args, listener)
    }

    async fn spawn_reserve(&self, addr: SocketAddr) -> Running {
        let o = &self.options;
        let args = vec![
            "reserve-svc".to_owned(),
            "--database-url".into(),
            self.db_urls[1].clone(),
            "--hold-pickup-window".into(),
            o.pickup_window.into(),
            "--expiry-sweep-interval".into(),
            o.sweep_interval.into(),
            "--max-open-reservations".into(),
            o.max_open_reservations.to_string(),
            "--history-retention".into(),
            o.history_retention.into(),
        ];
        let listener = bind_again(addr).await;
        launch!(self, reserve_svc, "reserve-svc", args, listener)
    }

    async fn spawn_rental(&self, addr: SocketAddr) -> Running {
        let o = &self.options;
        let args = vec![
            "rental-svc".to_owned(),
            "--database-url".into(),
            self.db_urls[2].clone(),
            "--reserve-svc-url".into(),
            format!("http://{}", self.reserve.addr),
            "--loan-period".into(),
            o.loan_period.into(),
            "--max-active-rentals".into(),
            o.max_active_rentals.to_string(),
            "--max-renewals".into(),
            o.max_renewals.to_string(),
            "--reserve-call-timeout".into(),
            o.reserve_call_timeout.into(),
            "--breaker-failures".into(),
            o.breaker_failures.to_string(),
            "--breaker-open-for".into(),
            o.breaker_open_for.into(),
            "--rent-recovery-interval".into(),
            o.recovery_interval.into(),
            "--history-retention".into(),
            o.history_retention.into(),
        ];
        let listener = TcpListener::bind(addr).await.expect("binding rental-svc");
        launch!(self, rental_svc, "rental-svc", args, listener)
    }

    async fn spawn_view(&self, addr: SocketAddr, consumer: &str, rebuild: bool) -> Running {
        self.spawn_view_on(addr, &self.db_urls[3], consumer, rebuild)
            .await
    }

    async fn spawn_view_on(
        &self,
        addr: SocketAddr,
        db_url: &str,
        consumer: &str,
        rebuild: bool,
    ) -> Running {
        let mut args = vec![
            "view-svc".to_owned(),
            "--database-url".into(),
            db_url.to_owned(),
            "--consumer-name".into(),
            consumer.to_owned(),
            "--history-retention".into(),
            self.options.history_retention.into(),
        ];
        if rebuild {
            args.push("--rebuild".into());
        }
        let listener = bind_again(addr).await;
        launch!(self, view_svc, "view-svc", args, listener)
    }

    async fn spawn_notice(&self, addr: SocketAddr) -> Running {
        let mut args = vec![
            "notice-svc".to_owned(),
            "--database-url".into(),
            self.notice_db_url.clone(),
            "--notice-clock-interval".into(),
            "200ms".into(),
        ];
        args.extend(self.options.notice_args.iter().cloned());
        let listener = bind_again(addr).await;
        launch!(self, notice_svc, "notice-svc", args, listener)
    }

    /// Stops notice-svc (graceful shutdown); the rest goes on without it.
    pub async fn stop_notice(&mut self) {
        self.notice.stop().await;
    }

    /// Starts notice-svc again on the same port and database.
    pub async fn start_notice(&mut self) {
        self.notice = self.spawn_notice(self.notice.addr).await;
        wait_serving(self.notice.addr).await;
    }

    pub fn notice_addr(&self) -> SocketAddr {
        self.notice.addr
    }

    /// notice-svc's database.
    pub fn notice_db_url(&self) -> &str {
        &self.notice_db_url
    }

    /// Stops view-svc; the rest of the mesh goes on without it.
    pub async fn stop_view(&mut self) {
        self.view.stop().await;
    }

    /// Starts view-svc again on the same port and database, optionally
    /// rebuilding its read model from the start of the stream.
    pub async fn start_view(&mut self, rebuild: bool) {
        self.view = self.spawn_view(self.view.addr, "view-svc", rebuild).await;
        wait_serving(self.view.addr).await;
    }

    /// A second view-svc with a database and consumer of its own, fed from the
    /// same stream from the first event: what a rebuild by replay gives.
    pub async fn start_replica_view(&self) -> (SocketAddr, CancellationToken) {
        let db_url = match self.options.store {
            Store::Postgres => rentalbook_testkit::fresh_postgres_url().await,
            Store::Sqlite => format!(
                "sqlite://{}",
                self._sqlite_dir
                    .as_ref()
                    .expect("sqlite dir")
                    .path()
                    .join("replica.db")
                    .display()
            ),
        };
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let running = self
            .spawn_view_on(any_port, &db_url, "view-svc-replica", false)
            .await;
        wait_serving(running.addr).await;
        (running.addr, running.stop.clone())
    }

    /// Another instance of view-svc on the same database and durable
    /// consumer: what a second replica in a deployment is.
    pub async fn start_second_view_instance(&self) -> (SocketAddr, CancellationToken) {
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let running = self
            .spawn_view_on(any_port, &self.db_urls[3], "view-svc", false)
            .await;
        wait_serving(running.addr).await;
        (running.addr, running.stop.clone())
    }

    pub fn view_addr(&self) -> SocketAddr {
        self.view.addr
    }

    pub async fn views(&self) -> MyPageServiceClient<Channel> {
        MyPageServiceClient::new(channel(self.view.addr).await)
    }

    /// The bus a service of this mesh gets: its own NATS connection, or
    /// the shared embedded bus.
    async fn bus_for(&self, name: &str) -> Arc<dyn EventBus> {
        match &self.embedded {
            Some(bus) => bus.clone(),
            None => bus(&self.nats_url, &self.stream, &self.prefix, name).await,
        }
    }

    /// `rentalbook dead-letters` on this mesh's bus, as an operator runs it:
    /// a process of its own beside the running services.
    pub fn dead_letters_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rentalbook"));
        cmd.arg("dead-letters")
            .env_remove("NATS_URL")
            .env("RUST_LOG", "warn");
        match &self._sqlite_dir {
            Some(dir) => cmd.arg("--data-dir").arg(dir.path()),
            None => cmd.args([
                "--nats-url",
                &self.nats_url,
                "--nats-stream",
                &self.stream,
                "--nats-subject-prefix",
                &self.prefix,
            ]),
        };
        cmd
    }

    /// The mesh's event bus, as a test sees it (to publish, read the
    /// stream, or look at consumers and dead letters).
    pub async fn event_bus(&self) -> Arc<dyn EventBus> {
        self.bus_for("test").await
    }

    /// The last sequence of the stream.
    async fn last_seq(bus: &dyn EventBus) -> u64 {
        let mut last = 0;
        loop {
            let events = bus.history(last, 1000).await.expect("reading the stream");
            match events.last() {
                Some(e) => last = e.seq,
                None => return last,
            }
        }
    }

    /// Waits until the stream has stopped growing and every one of
    /// `consumers` has applied everything in it; returns the last sequence.
    pub async fn quiet(&self, consumers: &[&str]) -> u64 {
        let bus = self.event_bus().await;
        let started = Instant::now();
        let mut last_seen = None;
        let mut calm = 0;
        loop {
            let last = Self::last_seq(bus.as_ref()).await;
            let mut drained = true;
            for consumer in consumers {
                drained &= bus.pending(consumer).await.ok().flatten() == Some(0);
            }
            if drained && last_seen == Some(last) {
                calm += 1;
                if calm >= 3 {
                    return last;
                }
            } else {
                calm = 0;
            }
            last_seen = Some(last);
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "timed out waiting for {consumers:?} to apply every event"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the stream has stopped growing and the durable consumer
    /// has applied everything in it.
    pub async fn settled(&self, consumer: &str) {
        self.quiet(&[consumer]).await;
    }

    /// Stops reserve-svc (graceful shutdown); its port is refused meanwhile.
    pub async fn stop_reserve(&mut self) {
        self.reserve.stop().await;
    }

    /// Starts reserve-svc again on the same port and database.
    pub async fn start_reserve(&mut self) {
        self.reserve = self.spawn_reserve(self.reserve.addr).await;
        wait_serving(self.reserve.addr).await;
    }

    pub async fn stop_book(&mut self) {
        self.book.stop().await;
    }

    pub async fn start_book(&mut self) {
        self.book = self.spawn_book(self.book.addr).await;
        wait_serving(self.book.addr).await;
    }

    pub fn book_addr(&self) -> SocketAddr {
        self.book.addr
    }

    pub fn reserve_addr(&self) -> SocketAddr {
        self.reserve.addr
    }

    pub fn rental_addr(&self) -> SocketAddr {
        self.rental.addr
    }

    pub fn reserve_db_url(&self) -> &str {
        &self.db_urls[1]
    }

    /// The four services' databases: book, reserve, rental, view.
    pub fn db_urls(&self) -> &[String; 4] {
        &self.db_urls
    }

    pub async fn books(&self) -> BookServiceClient<Channel> {
        BookServiceClient::new(channel(self.book.addr).await)
    }

    pub async fn reservations(&self) -> ReservationServiceClient<Channel> {
        ReservationServiceClient::new(channel(self.reserve.addr).await)
    }

    pub async fn rentals(&self) -> RentalServiceClient<Channel> {
        RentalServiceClient::new(channel(self.rental.addr).await)
    }

    /// Registers a book as a librarian.
    pub async fn register_book(&self, title: &str, copies: i32) -> Book {
        self.books()
            .await
            .register_book(req(
                &librarian(),
                RegisterBookRequest {
                    title: title.into(),
                    author: "Test Author".into(),
                    total_copies: copies,
                    ..Default::default()
                },
            ))
            .await
            .expect("registering a book")
            .into_inner()
    }

    /// Rents a book for the caller (a pick-up).
    pub async fn rent(&self, token: &str, book_id: &str) -> Result<Rental, Status> {
        self.rentals()
            .await
            .rent(req(
                token,
                RentRequest {
                    book_id: book_id.into(),
                    request_id: String::new(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    /// Returns a rental.
    pub async fn give_back(&self, token: &str, rental_id: &str) -> Result<Rental, Status> {
        self.rentals()
            .await
            .return_rental(req(
                token,
                ReturnRentalRequest {
                    rental_id: rental_id.into(),
                    request_id: String::new(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    /// A reservation as the caller sees it.
    pub async fn reservation(&self, token: &str, id: &str) -> Reservation {
        self.reservations()
            .await
            .get_reservation(req(
                token,
                GetReservationRequest {
                    reservation_id: id.into(),
                },
            ))
            .await
            .expect("reading a reservation")
            .into_inner()
    }

    /// Reserves, waiting out the moment in which reserve-svc has not yet
    /// seen the book's registration event.
    pub async fn reserve(&self, token: &str, book_id: &str) -> Result<Reservation, Status> {
        let mut client = self.reservations().await;
        let started = Instant::now();
        loop {
            let res = client
                .reserve(req(
                    token,
                    ReserveRequest {
                        book_id: book_id.into(),
                        request_id: String::new(),
                    },
                ))
                .await;
            match res {
                Err(s)
                    if s.code() == Code::NotFound
                        && started.elapsed() < Duration::from_secs(10) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other.map(|r| r.into_inner()),
            }
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for r in [
            &self.book,
            &self.reserve,
            &self.rental,
            &self.view,
            &self.notice,
        ] {
            r.stop.cancel();
        }
    }
}

async fn bind_again(addr: SocketAddr) -> TcpListener {
    let started = Instant::now();
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("binding {addr} again: {e}"),
        }
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// Waits until the health service says SERVING.
pub async fn wait_serving(addr: SocketAddr) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let client = HealthClient::new(channel(addr).await);
    // A process starting on a loaded machine runs its migrations first.
    eventually_within(Duration::from_secs(45), "the service to be SERVING", || {
        let mut client = client.clone();
        async move {
            let res = client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?;
            (res.into_inner().status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
}

/// A token for a member.
/// The reason of a refusal's `google.rpc.ErrorInfo`.
pub fn reason(status: &Status) -> String {
    rentalbook_plumbing::error::reason(status).unwrap_or_else(|| format!("none in {status:?}"))
}

/// A metadata value of a refusal's `google.rpc.ErrorInfo`.
pub fn metadata(status: &Status, key: &str) -> String {
    rentalbook_plumbing::error::reason_metadata(status, key).unwrap_or_default()
}

pub fn token(sub: &str, role: Role) -> String {
    mint(
        SECRET,
        &MemberId::parse(sub).unwrap(),
        role,
        Duration::from_secs(3600),
    )
    .unwrap()
}

pub fn member(sub: &str) -> String {
    token(sub, Role::Member)
}

pub fn librarian() -> String {
    token("librarian-1", Role::Librarian)
}

/// A request with a bearer token.
pub fn req<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Polls `f` until it returns Some, for at most 15 s.
pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(15), what, f).await
}

/// Polls `f` until it returns Some, for at most `limit`.
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl Mesh {
    /// The REST edge in this process on a free port, pointed at this mesh's
    /// services; cancel the token to stop it.
    pub async fn start_edge(&self) -> (SocketAddr, CancellationToken) {
        self.start_edge_with(self.view.addr, &[]).await
    }
}

impl Mesh {
    /// view-svc's database, which every instance of view-svc on the mesh's
    /// durable consumer shares.
    pub fn view_db_url(&self) -> &str {
        &self.db_urls[3]
    }
}

impl Mesh {
    /// Another instance of view-svc on the mesh's database and durable
    /// consumer, with `extra` flags besides the usual ones.
    pub async fn start_view_instance_with(
        &self,
        extra: &[&str],
    ) -> (SocketAddr, CancellationToken) {
        let mut args = vec![
            "view-svc".to_owned(),
            "--database-url".into(),
            self.db_urls[3].clone(),
            "--consumer-name".into(),
            "view-svc".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding view-svc");
        let running = launch!(self, view_svc, "view-svc", args, listener);
        wait_serving(running.addr).await;
        (running.addr, running.stop.clone())
    }

    /// The REST edge in this process in front of this mesh's services, with
    /// view-svc at `view` and `extra` flags besides; cancel the token to
    /// stop it.
    pub async fn start_edge_with(
        &self,
        view: SocketAddr,
        extra: &[&str],
    ) -> (SocketAddr, CancellationToken) {
        let mut args = vec![
            "edge".to_owned(),
            "--listen-addr".into(),
            "127.0.0.1:0".into(),
            "--book-svc-url".into(),
            format!("http://{}", self.book.addr),
            "--reserve-svc-url".into(),
            format!("http://{}", self.reserve.addr),
            "--rental-svc-url".into(),
            format!("http://{}", self.rental.addr),
            "--view-svc-url".into(),
            format!("http://{view}"),
            "--notice-svc-url".into(),
            format!("http://{}", self.notice.addr),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = <edge::Config as clap::Parser>::try_parse_from(args).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the edge");
        let app = edge::App::build_with(config, listener)
            .await
            .expect("the edge");
        let addr = app.local_addr();
        let stop = CancellationToken::new();
        tokio::spawn(app.run(stop.clone()));
        (addr, stop)
    }
}

impl Mesh {
    pub async fn notices(&self) -> NoticeServiceClient<Channel> {
        NoticeServiceClient::new(channel(self.notice.addr).await)
    }

    /// A notice-svc of its own beside the mesh's (its own database, durable
    /// consumer and `extra` flags), started now: what a first start on an
    /// existing stream is.
    pub async fn start_notice_instance_with(
        &self,
        consumer: &str,
        extra: &[String],
    ) -> (SocketAddr, CancellationToken) {
        let db_url = match self.options.store {
            Store::Postgres => rentalbook_testkit::fresh_postgres_url().await,
            Store::Sqlite => format!(
                "sqlite://{}",
                self._sqlite_dir
                    .as_ref()
                    .expect("sqlite dir")
                    .path()
                    .join(format!("{consumer}.db"))
                    .display()
            ),
        };
        let mut args = vec![
            "notice-svc".to_owned(),
            "--database-url".into(),
            db_url,
            "--consumer-name".into(),
            consumer.into(),
            "--notice-clock-interval".into(),
            "200ms".into(),
        ];
        args.extend(extra.iter().cloned());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding notice-svc");
        let running = launch!(self, notice_svc, "notice-svc", args, listener);
        wait_serving(running.addr).await;
        (running.addr, running.stop.clone())
    }
}
