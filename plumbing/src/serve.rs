//! The gRPC server every service runs, composed in one place: admission
//! control, request metrics, health, reflection v1 and v1alpha, the purge of
//! old request ids, and a graceful shutdown that stops accepting, finishes
//! in-flight calls and lets the background tasks (outbox relay, consumers,
//! sweeps) finish.
//!
//! Health has two meanings. The name [`LIVENESS`] answers SERVING for as long
//! as the process serves gRPC: Kubernetes' startup and liveness probes ask it,
//! so a database outage never restarts a pod. The overall status `""` and each
//! service's own name follow readiness: NOT_SERVING until the migrations ran,
//! while the database is unreachable or a consumer is stalled on it, and while
//! shutting down; the readiness probe asks the service's own name.
//!
//! On PostgreSQL the migrations run under a session advisory lock, so replicas
//! starting together migrate one at a time.
//!
//! Admission answers product RPCs at once, without touching the database,
//! when they cannot be served: UNAVAILABLE while the migrations have not run
//! yet or the health check finds the database unreachable, RESOURCE_EXHAUSTED
//! beyond the concurrency limit (shedding, SPEC §5); all with a retry hint.
//! Health and reflection always pass. An admitted call runs with its
//! `grpc-timeout` as the deadline that bounds its waits for the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sea_orm_migration::MigratorTrait;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::{Layer, Service};

use sea_orm::DbBackend;

use crate::db::Db;
use crate::error::{resource_exhausted_retry_after, unavailable_retry_after};

/// The health service name that is SERVING for as long as the process serves
/// (what liveness asks); `""` and the services' own names follow readiness.
pub const LIVENESS: &str = "liveness";

/// A background task of a service, started once its migrations have run.
pub type Task = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// Everything a service runs.
pub struct Launch {
    /// Short name for logs and metrics, such as `book-svc`.
    pub name: &'static str,
    pub listener: TcpListener,
    pub db: Db,
    /// The product services (already behind the authenticator).
    pub routes: Routes,
    /// Their fully qualified names, for the health service.
    pub grpc_names: Vec<&'static str>,
    pub max_concurrent_requests: usize,
    /// How long client request ids are remembered before they are purged.
    pub request_id_retention: Duration,
    pub tasks: Vec<Task>,
}

impl Launch {
    /// The address the service serves on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }
}

/// The gRPC name of a generated server type.
pub fn grpc_name<S: NamedService>() -> &'static str {
    S::NAME
}

/// What every port serves besides its own services.
const INFRASTRUCTURE_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Serves until `shutdown` is cancelled; returns when everything has stopped.
pub async fn run<M: MigratorTrait>(
    launch: Launch,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Launch {
        name,
        listener,
        db,
        routes,
        grpc_names,
        max_concurrent_requests,
        request_id_retention,
        tasks,
    } = launch;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        names: grpc_names,
    };
    health.set(ServingStatus::NotServing).await;
    health
        .reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;

    // Every contract is described (a message may come from another
    // package), but only the services this port serves are listed.
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rentalbook_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for served in health.names.iter().copied().chain(INFRASTRUCTURE_SERVICES) {
            builder = builder.with_service_name(served);
        }
        builder
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let addr = listener.local_addr()?;
    let server_stop = CancellationToken::new();
    let migrated = Arc::new(AtomicBool::new(false));
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .layer(AdmissionLayer {
            service: name,
            permits: Arc::new(Semaphore::new(max_concurrent_requests.max(1))),
            migrated: migrated.clone(),
            db: db.clone(),
        })
        .add_routes(routes)
        // No Nagle delay: a reply written in several pieces must not wait
        // for the client's delayed ACK (about 40 ms a response).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            server_stop.clone().cancelled_owned(),
        );
    let server = tokio::spawn(server);
    tracing::info!(service = name, %addr, "serving gRPC");

    // Migrations first; until they have run the service says NOT_SERVING
    // and admission answers product RPCs "starting".
    let mut backoff = crate::time::Backoff::new(Duration::from_millis(200));
    loop {
        let attempt = tokio::select! {
            attempt = migrate::<M>(name, &db) => attempt,
            _ = shutdown.cancelled() => {
                server_stop.cancel();
                let _ = server.await;
                return Ok(());
            }
        };
        match attempt {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(service = name, error = %e, "migrations could not run yet");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => {
                        server_stop.cancel();
                        let _ = server.await;
                        return Ok(());
                    }
                }
            }
        }
    }
    migrated.store(true, Ordering::Release);
    health.set(ServingStatus::Serving).await;

    let tasks_stop = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    for task in tasks {
        running.spawn(task(tasks_stop.clone()));
    }
    running.spawn(crate::idempotency::purge_periodically(
        name,
        db.clone(),
        request_id_retention,
        tasks_stop.clone(),
    ));
    // Ready only while the own database answers and every consumer can
    // apply its events to it; NATS is not consulted (the outbox buffers
    // events while it is away). Liveness is not touched.
    {
        let db = db.clone();
        let health = health.clone();
        let stop = tasks_stop.clone();
        running.spawn(async move {
            let mut serving = true;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.cancelled() => return,
                }
                let reachable = db.ping().await;
                db.set_reachable(reachable);
                let stalled = db.stalled();
                let up = reachable && stalled.is_empty();
                if up != serving {
                    serving = up;
                    tracing::warn!(
                        service = name,
                        database_reachable = reachable,
                        ?stalled,
                        "health changed"
                    );
                    health
                        .set(if up {
                            ServingStatus::Serving
                        } else {
                            ServingStatus::NotServing
                        })
                        .await;
                }
            }
        });
    }

    shutdown.cancelled().await;
    tracing::info!(service = name, "shutting down");
    health.set(ServingStatus::NotServing).await;
    server_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
    tasks_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while running.join_next().await.is_some() {}
    })
    .await;
    tracing::info!(service = name, "stopped");
    Ok(())
}

/// The advisory lock key of a service's migrations: one per service, so that
/// services sharing one database (a schema each) do not wait for each other.
fn migration_lock_key(service: &str) -> String {
    format!("rentalbook:migrations:{service}")
}

/// Runs the pending migrations. On PostgreSQL they run under a session
/// advisory lock taken on a connection of their own, so that replicas starting
/// together migrate one after the other (the later ones find nothing pending)
/// instead of racing on the same DDL. The lock ends with that connection, also
/// when the process dies or the attempt is dropped.
async fn migrate<M: MigratorTrait>(service: &str, db: &Db) -> anyhow::Result<()> {
    use sea_orm::sqlx::{self, Connection, postgres::PgConnection};

    if db.backend() != DbBackend::Postgres {
        M::up(db.conn(), None).await?;
        return Ok(());
    }
    let options = db.conn().get_postgres_connection_pool().connect_options();
    let mut session = PgConnection::connect_with(&options).await?;
    let key = migration_lock_key(service);
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(key.clone())
        .fetch_one(&mut session)
        .await?;
    if !taken {
        tracing::info!(
            service,
            "another replica is migrating the database; waiting for it"
        );
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .bind(key.clone())
            .execute(&mut session)
            .await?;
    }
    let migrated = M::up(db.conn(), None).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(key)
        .execute(&mut session)
        .await;
    let _ = session.close().await;
    migrated?;
    unlocked?;
    Ok(())
}

/// Readiness: `""` and the services' own names ([`LIVENESS`] is set once).
#[derive(Clone)]
struct Health {
    reporter: HealthReporter,
    names: Vec<&'static str>,
}

impl Health {
    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for name in &self.names {
            self.reporter.set_service_status(*name, status).await;
        }
    }
}

/// Cancels the token on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        t.cancel();
    });
    token
}

/// Admission control and request metrics for every RPC.
#[derive(Clone)]
struct AdmissionLayer {
    service: &'static str,
    permits: Arc<Semaphore>,
    /// Set once the migrations have run.
    migrated: Arc<AtomicBool>,
    db: Db,
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            service: self.service,
            permits: self.permits.clone(),
            migrated: self.migrated.clone(),
            db: self.db.clone(),
        }
    }
}

#[derive(Clone)]
struct Admission<S> {
    inner: S,
    service: &'static str,
    permits: Arc<Semaphore>,
    migrated: Arc<AtomicBool>,
    db: Db,
}

/// How long a caller turned away at the door is asked to wait.
const COME_BACK_IN: Duration = Duration::from_secs(1);

impl<S> Admission<S> {
    /// Why a product RPC cannot be served now, as its answer; or its permit.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, tonic::Status> {
        let service = self.service;
        if !self.migrated.load(Ordering::Acquire) {
            return Err(unavailable_retry_after(
                format!("{service} is starting, try again in 1 s"),
                COME_BACK_IN,
            ));
        }
        if !self.db.reachable() {
            return Err(unavailable_retry_after(
                format!("{service} cannot reach its records right now, try again in 1 s"),
                COME_BACK_IN,
            ));
        }
        self.permits.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("rpc_shed_total", "service" => service).increment(1);
            resource_exhausted_retry_after(
                "the lending desk is busy, try again in 1 s",
                COME_BACK_IN,
            )
        })
    }
}

/// The `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if !(2..=9).contains(&value.len()) || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, B, RB> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let service = self.service;
        // Probes and reflection are not product traffic: never shed, not counted.
        let infrastructure =
            path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
        let permit = if infrastructure {
            None
        } else {
            match self.admit() {
                Ok(p) => Some(p),
                Err(status) => {
                    record(
                        service,
                        &path,
                        &format!("{:?}", status.code()),
                        Duration::ZERO,
                    );
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        };
        let deadline =
            grpc_timeout(req.headers()).and_then(|t| tokio::time::Instant::now().checked_add(t));
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = if infrastructure {
            tracing::Span::none()
        } else {
            let span = tracing::info_span!("grpc", service, rpc = %path);
            let traceparent = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok());
            crate::propagation::set_parent(&span, traceparent);
            span
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let start = Instant::now();
                let res = crate::db::with_deadline(deadline, inner.call(req)).await;
                drop(permit);
                if !infrastructure {
                    let code = match &res {
                        Ok(r) => r
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i32>().ok())
                            .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
                            .unwrap_or_else(|| "Ok".to_owned()),
                        Err(_) => "Unknown".to_owned(),
                    };
                    record(service, &path, &code, start.elapsed());
                }
                res
            },
            span,
        ))
    }
}

fn record(service: &'static str, path: &str, code: &str, elapsed: Duration) {
    let method = path.rsplit('/').next().unwrap_or(path).to_owned();
    metrics::counter!("rpc_requests_total", "service" => service, "method" => method.clone(), "code" => code.to_owned()).increment(1);
    metrics::histogram!("rpc_duration_seconds", "service" => service, "method" => method)
        .record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// Admission in front of a service that answers once `gate` is cancelled.
    async fn admission(
        limit: usize,
        gate: CancellationToken,
    ) -> (
        impl Service<
            http::Request<()>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future = BoxFuture<
                'static,
                Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            >,
        > + Clone,
        Arc<AtomicBool>,
        Db,
    ) {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        let migrated = Arc::new(AtomicBool::new(true));
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            let gate = gate.clone();
            async move {
                gate.cancelled().await;
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let layer = AdmissionLayer {
            service: "test-svc",
            permits: Arc::new(Semaphore::new(limit)),
            migrated: migrated.clone(),
            db: db.clone(),
        };
        (layer.layer(inner), migrated, db)
    }

    fn call(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn status_of(res: &http::Response<tonic::body::Body>) -> Option<tonic::Status> {
        tonic::Status::from_header_map(res.headers())
    }

    #[tokio::test]
    async fn beyond_the_limit_calls_are_shed_with_resource_exhausted_and_a_retry_hint() {
        let gate = CancellationToken::new();
        let (svc, _, _) = admission(1, gate.clone()).await;
        // Admitted at the call: it holds the one permit until it answers.
        let busy = svc
            .clone()
            .call(call("/rentalbook.book.v1.BookService/ListBooks"));
        let res = svc
            .clone()
            .call(call("/rentalbook.book.v1.BookService/ListBooks"))
            .await
            .unwrap();
        let shed = status_of(&res).expect("an answer at once");
        assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
        assert!(crate::error::retry_after(&shed).is_some(), "{shed:?}");
        // Probes are never shed.
        let probe = svc.clone().call(call("/grpc.health.v1.Health/Check"));
        gate.cancel();
        let (probe, busy) = tokio::join!(probe, busy);
        assert!(status_of(&probe.unwrap()).is_none());
        assert!(status_of(&busy.unwrap()).is_none());
        let res = svc
            .clone()
            .call(call("/rentalbook.book.v1.BookService/ListBooks"))
            .await
            .unwrap();
        assert!(
            status_of(&res).is_none(),
            "admitted again once the permit is back"
        );
    }

    #[tokio::test]
    async fn before_migrations_and_while_the_database_is_away_product_calls_are_refused_at_once() {
        let gate = CancellationToken::new();
        gate.cancel();
        let (svc, migrated, db) = admission(8, gate).await;
        migrated.store(false, Ordering::Release);
        let res = svc
            .clone()
            .call(call("/rentalbook.book.v1.BookService/GetBook"))
            .await
            .unwrap();
        let starting = status_of(&res).unwrap();
        assert_eq!(starting.code(), Code::Unavailable);
        assert!(starting.message().contains("starting"), "{starting:?}");
        assert!(crate::error::retry_after(&starting).is_some());

        migrated.store(true, Ordering::Release);
        db.set_reachable(false);
        let res = svc
            .clone()
            .call(call("/rentalbook.book.v1.BookService/GetBook"))
            .await
            .unwrap();
        let away = status_of(&res).unwrap();
        assert_eq!(away.code(), Code::Unavailable);
        assert!(crate::error::retry_after(&away).is_some());
        assert!(db.begin().await.is_err(), "no transaction while away");

        // Health and reflection pass meanwhile.
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            let res = svc.clone().call(call(path)).await.unwrap();
            assert!(status_of(&res).is_none(), "{path}");
        }
    }

    /// One migration that takes a while, so that a replica racing another
    /// would find it pending too and fail on the table the other created.
    struct Shelf;

    impl sea_orm_migration::MigrationName for Shelf {
        fn name(&self) -> &str {
            "m0001_create_shelf"
        }
    }

    #[async_trait::async_trait]
    impl sea_orm_migration::MigrationTrait for Shelf {
        async fn up(
            &self,
            manager: &sea_orm_migration::SchemaManager,
        ) -> Result<(), sea_orm::DbErr> {
            use sea_orm::ConnectionTrait;
            let conn = manager.get_connection();
            conn.execute_unprepared("SELECT pg_sleep(0.3)").await?;
            conn.execute_unprepared("CREATE TABLE shelf (id bigint PRIMARY KEY)")
                .await?;
            Ok(())
        }
    }

    struct ShelfMigrator;

    impl MigratorTrait for ShelfMigrator {
        fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
            vec![Box::new(Shelf)]
        }
    }

    async fn shelf_exists(db: &Db) -> bool {
        use sea_orm::ConnectionTrait;
        let row = db
            .conn()
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Postgres,
                "SELECT to_regclass('shelf') IS NOT NULL AS present",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<bool>("", "present").unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_starting_together_migrate_one_after_the_other() {
        let url = rentalbook_testkit::fresh_postgres_url().await;
        let a = Db::connect(&url, 2).await.unwrap();
        let b = Db::connect(&url, 2).await.unwrap();
        let (ra, rb) = tokio::join!(
            migrate::<ShelfMigrator>("test-svc", &a),
            migrate::<ShelfMigrator>("test-svc", &b)
        );
        ra.expect("the first replica migrates");
        rb.expect("the second replica finds nothing left to do");
        assert!(shelf_exists(&a).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrations_wait_while_another_session_holds_the_lock() {
        use sea_orm::sqlx::{self, Connection, postgres::PgConnection};
        let url = rentalbook_testkit::fresh_postgres_url().await;
        let db = Db::connect(&url, 2).await.unwrap();
        let mut holder = PgConnection::connect(&url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .bind(migration_lock_key("test-svc"))
            .execute(&mut holder)
            .await
            .unwrap();

        let waiting = tokio::spawn({
            let db = db.clone();
            async move { migrate::<ShelfMigrator>("test-svc", &db).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "migrated while the lock was held");
        assert!(!shelf_exists(&db).await);

        holder.close().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("migrated once the lock was free")
            .unwrap()
            .unwrap();
        assert!(shelf_exists(&db).await);
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let parse = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(parse("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1M"), Some(Duration::from_secs(60)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789S"), None, "at most 8 digits");
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
