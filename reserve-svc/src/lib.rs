//! reserve-svc: the lending desk (SPEC §2, §3). It alone decides who gets a
//! copy: reservations and each book's hold queue (R1–R5), the pickup-expiry
//! sweep, and the internal FulfillReservation and RecordReturn that rental-svc
//! calls. It learns copy totals from book-svc's events.
//!
//! - [`domain`]: the queue rules, without I/O.
//! - [`desk`]: the rules applied in transactions, under a lock per book.
//! - [`store`]: tables and migrations.
//! - [`grpc`]: the ReservationService handlers.
//! - [`events`]: copy totals and returns from events.
//! - [`privacy`]: a member's HistoryErased and the `HISTORY_RETENTION`
//!   sweep: finished reservations name no member any more.

pub mod desk;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod items;
pub mod privacy;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use rentalbook_plumbing::auth::{Authenticator, Verifier};
use rentalbook_plumbing::bus::{ConsumerSpec, EventBus};
use rentalbook_plumbing::config::{CommonArgs, OptionalAddr, PolicyDuration};
use rentalbook_plumbing::consumer::Consumer;
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::outbox::Relay;
use rentalbook_plumbing::serve::{self, Launch, Task};
use rentalbook_proto::reserve::v1::reservation_service_server::ReservationServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const NAME: &str = "reserve-svc";

#[derive(Parser, Clone, Debug)]
#[command(
    name = "reserve-svc",
    version,
    about = "rentalbook's lending desk: reservations and hold queues (gRPC)"
)]
pub struct Config {
    /// gRPC address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8082")]
    pub listen_addr: SocketAddr,

    /// Plain HTTP address of /metrics, or `off`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9082")]
    pub metrics_addr: OptionalAddr,

    /// This service's own database (PostgreSQL, or sqlite://file.db).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/rentalbook_reserve"
    )]
    pub database_url: String,

    /// How long a READY reservation holds its copy for pickup.
    #[arg(long, env = "HOLD_PICKUP_WINDOW", default_value = "72h")]
    pub hold_pickup_window: PolicyDuration,

    /// Open (WAITING or READY) reservations a member may have at once.
    #[arg(long, env = "MAX_OPEN_RESERVATIONS", default_value_t = 5)]
    pub max_open_reservations: u32,

    /// How often READY reservations past their pickup deadline are expired.
    #[arg(long, env = "EXPIRY_SWEEP_INTERVAL", default_value = "30s")]
    pub expiry_sweep_interval: PolicyDuration,

    /// How long a finished reservation (cancelled, expired, or its loan
    /// over) keeps its member: then it is anonymised, as a member's own
    /// erasure of their history does; counts and item history stay.
    #[arg(long, env = "HISTORY_RETENTION", default_value = "90d")]
    pub history_retention: PolicyDuration,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub struct App {
    launch: Launch,
}

impl App {
    /// Binds the port and connects to NATS as the configuration says.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let bus = config.common.nats_bus(NAME).await?;
        let listener = TcpListener::bind(config.listen_addr).await?;
        Self::build_with(config, listener, bus).await
    }

    /// With an already bound listener and a given event bus.
    pub async fn build_with(
        config: Config,
        listener: TcpListener,
        bus: Arc<dyn EventBus>,
    ) -> anyhow::Result<Self> {
        rentalbook_plumbing::telemetry::init_metrics(config.metrics_addr.0)?;
        let verifier = Arc::new(Verifier::from_args(&config.common)?);
        let db = Db::connect(&config.database_url, 16).await?;
        let desk = desk::Desk {
            db: db.clone(),
            policy: domain::Policy {
                pickup_window: config.hold_pickup_window.as_chrono(),
                max_open_reservations: config.max_open_reservations,
            },
        };
        let routes = tonic::service::Routes::new(ReservationServiceServer::with_interceptor(
            grpc::Reservations { desk: desk.clone() },
            Authenticator::new(verifier),
        ));
        let spec = |durable: &str, filter: &str| ConsumerSpec {
            durable: durable.into(),
            filter: filter.into(),
            max_deliver: config.common.event_max_deliver,
            ack_wait: config.common.event_ack_wait.get(),
        };
        let relay = Relay::new(db.clone(), bus.clone(), NAME);
        let catalogue = Consumer::new(
            db.clone(),
            bus.clone(),
            spec("reserve-svc-books", "book.>"),
            Arc::new(events::Catalogue(desk.clone())),
        );
        let returns = Consumer::new(
            db.clone(),
            bus.clone(),
            spec("reserve-svc-returns", "rental.returned"),
            Arc::new(events::Returns(desk.clone())),
        );
        let erasures = Consumer::new(
            db.clone(),
            bus,
            spec("reserve-svc-erasures", "member.history_erased"),
            Arc::new(privacy::Erasures),
        );
        let (sweep_db, retention) = (db.clone(), config.history_retention.get());
        let interval = config.expiry_sweep_interval.get();
        let sweeper = desk;
        let tasks: Vec<Task> = vec![
            Box::new(|stop: CancellationToken| Box::pin(relay.run(stop))),
            Box::new(|stop: CancellationToken| Box::pin(catalogue.run(stop))),
            Box::new(|stop: CancellationToken| Box::pin(returns.run(stop))),
            Box::new(|stop: CancellationToken| Box::pin(erasures.run(stop))),
            Box::new(move |stop: CancellationToken| {
                Box::pin(rentalbook_plumbing::retention::sweep_periodically(
                    NAME,
                    "reservation history",
                    retention,
                    stop,
                    move |cutoff| {
                        let db = sweep_db.clone();
                        async move { Ok(privacy::sweep(&db, cutoff).await?) }
                    },
                ))
            }),
            Box::new(move |stop: CancellationToken| {
                Box::pin(async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(interval) => {}
                            _ = stop.cancelled() => return,
                        }
                        match sweeper.expire_due().await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(expired = n, "pickup deadlines passed"),
                            Err(e) => {
                                tracing::warn!(error = %e, "expiry sweep failed; it runs again")
                            }
                        }
                    }
                })
            }),
        ];
        Ok(Self {
            launch: Launch {
                name: NAME,
                listener,
                db,
                routes,
                grpc_names: vec![serve::grpc_name::<
                    ReservationServiceServer<grpc::Reservations>,
                >()],
                max_concurrent_requests: config.common.max_concurrent_requests,
                request_id_retention: config.common.request_id_retention.get(),
                tasks,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.launch.local_addr()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        serve::run::<store::Migrator>(self.launch, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_history_retention_has_a_default_and_help_lists_it() {
        let c = Config::try_parse_from(["reserve-svc"]).unwrap();
        assert_eq!(c.history_retention.get(), Duration::from_secs(90 * 86_400));
        let c = Config::try_parse_from(["reserve-svc", "--history-retention", "2s"]).unwrap();
        assert_eq!(c.history_retention.get(), Duration::from_secs(2));
        assert!(Config::try_parse_from(["reserve-svc", "--history-retention", "0s"]).is_err());
        let mut help = Vec::new();
        <Config as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(help.contains("HISTORY_RETENTION"), "{help}");
    }
}
