//! The gRPC server every service runs, composed in one place: admission
//! control (a global concurrency limit that sheds the excess with UNAVAILABLE
//! at once), request metrics, health, reflection v1 and v1alpha, and a
//! graceful shutdown that stops accepting, finishes in-flight calls and lets
//! the background tasks (outbox relay, consumers, sweeps) finish.

use std::sync::Arc;
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

use crate::db::Db;
use crate::error::unavailable_retry_after;

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
        tasks,
    } = launch;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        names: grpc_names,
    };
    health.set(ServingStatus::NotServing).await;

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
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .layer(AdmissionLayer {
            service: name,
            permits: Arc::new(Semaphore::new(max_concurrent_requests.max(1))),
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

    // Migrations first; until they have run the service says NOT_SERVING.
    let mut backoff = crate::time::Backoff::new(Duration::from_millis(200));
    loop {
        match M::up(db.conn(), None).await {
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
    health.set(ServingStatus::Serving).await;

    let tasks_stop = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    for task in tasks {
        running.spawn(task(tasks_stop.clone()));
    }
    // SERVING only while the own database answers and every consumer can
    // apply its events to it; NATS is not consulted (the outbox buffers
    // events while it is away).
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
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            service: self.service,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Clone)]
struct Admission<S> {
    inner: S,
    service: &'static str,
    permits: Arc<Semaphore>,
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
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    metrics::counter!("rpc_shed_total", "service" => service).increment(1);
                    let status = unavailable_retry_after(
                        "the lending desk is busy, try again in 1 s",
                        Duration::from_secs(1),
                    );
                    record(service, &path, "Unavailable", Duration::ZERO);
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        };
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
                let res = inner.call(req).await;
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
