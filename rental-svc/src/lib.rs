//! rental-svc: loans (SPEC §2, §3 R6–R8). A member rents the book they have a
//! READY reservation for (checked synchronously with reserve-svc) and returns
//! it at once, even while reserve-svc is down.
//!
//! - [`domain`]: loan rules, without I/O.
//! - [`lending`]: the Rent saga and its recovery, and Return with its fallback.
//! - [`desk_client`]: the calls to reserve-svc behind deadline and circuit breaker.
//! - [`store`]: tables and migrations.
//! - [`grpc`]: the RentalService handlers.
//! - [`events`]: return confirmations from reserve-svc's events.
//! - [`privacy`]: a member's HistoryErased and the `HISTORY_RETENTION`
//!   sweep: finished rentals name no member any more.

pub mod desk_client;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod lending;
pub mod privacy;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use rentalbook_plumbing::auth::{Authenticator, ServiceToken, Verifier};
use rentalbook_plumbing::bus::{ConsumerSpec, EventBus};
use rentalbook_plumbing::config::{CommonArgs, OptionalAddr, PolicyDuration};
use rentalbook_plumbing::consumer::Consumer;
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::outbox::Relay;
use rentalbook_plumbing::serve::{self, Launch, Task};
use rentalbook_proto::rental::v1::rental_service_server::RentalServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const NAME: &str = "rental-svc";

#[derive(Parser, Clone, Debug)]
#[command(
    name = "rental-svc",
    version,
    about = "rentalbook's rentals (loans) service (gRPC)"
)]
pub struct Config {
    /// gRPC address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8081")]
    pub listen_addr: SocketAddr,

    /// Plain HTTP address of /metrics, or `off`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9081")]
    pub metrics_addr: OptionalAddr,

    /// This service's own database (PostgreSQL, or sqlite://file.db).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/rentalbook_rental"
    )]
    pub database_url: String,

    /// reserve-svc, for FulfillReservation and RecordReturn.
    #[arg(long, env = "RESERVE_SVC_URL", default_value = "http://127.0.0.1:8082")]
    pub reserve_svc_url: String,

    /// How long a rental lasts.
    #[arg(long, env = "LOAN_PERIOD", default_value = "14d")]
    pub loan_period: PolicyDuration,

    /// Active rentals a member may have at once.
    #[arg(long, env = "MAX_ACTIVE_RENTALS", default_value_t = 5)]
    pub max_active_rentals: u32,

    /// Times a loan may be renewed (R12).
    #[arg(long, env = "MAX_RENEWALS", default_value_t = 2)]
    pub max_renewals: u32,

    /// Deadline of each call to reserve-svc (the caller's deadline may be shorter).
    #[arg(long, env = "RESERVE_CALL_TIMEOUT", default_value = "2s")]
    pub reserve_call_timeout: PolicyDuration,

    /// Consecutive infrastructure failures of reserve-svc that open the circuit breaker.
    #[arg(long, env = "BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,

    /// How long the open breaker turns calls away before probing again.
    #[arg(long, env = "BREAKER_OPEN_FOR", default_value = "5s")]
    pub breaker_open_for: PolicyDuration,

    /// A timed-out call to reserve-svc counts towards opening the breaker only
    /// if the caller's deadline left it at least this long.
    #[arg(long, env = "BREAKER_MIN_BUDGET", default_value = "200ms")]
    pub breaker_min_budget: PolicyDuration,

    /// How often rentals left PENDING by a failed call are settled (R7).
    #[arg(long, env = "RENT_RECOVERY_INTERVAL", default_value = "5s")]
    pub rent_recovery_interval: PolicyDuration,

    /// How long a finished rental (returned, lost, or refused by the desk)
    /// keeps its member: then it is anonymised, as a member's own erasure
    /// of their history does; counts and item history stay.
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
        let service_secret = config
            .common
            .service_secret
            .clone()
            .or(config.common.jwt_secret.clone())
            .unwrap_or_default();
        // Its token carries the audience and issuer every service requires.
        let token = Arc::new(ServiceToken::new(
            &service_secret,
            NAME,
            config.common.tokens.scope.clone(),
        )?);
        let desk = Arc::new(desk_client::DeskClient::new(
            desk_client::DeskSettings {
                url: config.reserve_svc_url.clone(),
                call_timeout: config.reserve_call_timeout.get(),
                breaker_failures: config.breaker_failures,
                breaker_open_for: config.breaker_open_for.get(),
                breaker_min_budget: config.breaker_min_budget.get(),
            },
            token,
        )?);
        let db = Db::connect(&config.database_url, 16).await?;
        let lending = lending::Lending {
            db: db.clone(),
            desk,
            policy: domain::Policy {
                loan_period: config.loan_period.as_chrono(),
                max_active_rentals: config.max_active_rentals,
                max_renewals: config.max_renewals,
            },
        };
        let routes = tonic::service::Routes::new(RentalServiceServer::with_interceptor(
            grpc::Rentals {
                lending: lending.clone(),
            },
            Authenticator::new(verifier),
        ));
        let relay = Relay::new(db.clone(), bus.clone(), NAME);
        let losses = Consumer::new(
            db.clone(),
            bus.clone(),
            ConsumerSpec {
                durable: "rental-svc-losses".into(),
                filter: "reservation.item_lost".into(),
                max_deliver: config.common.event_max_deliver,
                ack_wait: config.common.event_ack_wait.get(),
            },
            Arc::new(events::Losses(lending.clone())),
        );
        let books = Consumer::new(
            db.clone(),
            bus.clone(),
            ConsumerSpec {
                durable: "rental-svc-books".into(),
                filter: "book.merged".into(),
                max_deliver: config.common.event_max_deliver,
                ack_wait: config.common.event_ack_wait.get(),
            },
            Arc::new(events::Books),
        );
        let erasures = Consumer::new(
            db.clone(),
            bus.clone(),
            ConsumerSpec {
                durable: "rental-svc-erasures".into(),
                filter: "member.history_erased".into(),
                max_deliver: config.common.event_max_deliver,
                ack_wait: config.common.event_ack_wait.get(),
            },
            Arc::new(privacy::Erasures),
        );
        let (sweep_db, retention) = (db.clone(), config.history_retention.get());
        let confirmations = Consumer::new(
            db.clone(),
            bus,
            ConsumerSpec {
                durable: "rental-svc".into(),
                filter: "reservation.return_recorded".into(),
                max_deliver: config.common.event_max_deliver,
                ack_wait: config.common.event_ack_wait.get(),
            },
            Arc::new(events::ReturnConfirmations(lending.clone())),
        );
        let interval = config.rent_recovery_interval.get();
        let stale_after = config.reserve_call_timeout.get();
        let tasks: Vec<Task> = vec![
            Box::new(|stop: CancellationToken| Box::pin(relay.run(stop))),
            Box::new(|stop: CancellationToken| Box::pin(confirmations.run(stop))),
            Box::new(|stop: CancellationToken| Box::pin(losses.run(stop))),
            Box::new(|stop: CancellationToken| Box::pin(books.run(stop))),
            Box::new(|stop: CancellationToken| Box::pin(erasures.run(stop))),
            Box::new(move |stop: CancellationToken| {
                Box::pin(rentalbook_plumbing::retention::sweep_periodically(
                    NAME,
                    "rental history",
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
                        match lending.recover(stale_after).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(settled = n, "pending rentals settled"),
                            Err(e) => {
                                tracing::debug!(error = %e, "pending rentals not settled yet")
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
                grpc_names: vec![serve::grpc_name::<RentalServiceServer<grpc::Rentals>>()],
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
        let c = Config::try_parse_from(["rental-svc"]).unwrap();
        assert_eq!(c.history_retention.get(), Duration::from_secs(90 * 86_400));
        let c = Config::try_parse_from(["rental-svc", "--history-retention", "2s"]).unwrap();
        assert_eq!(c.history_retention.get(), Duration::from_secs(2));
        assert!(Config::try_parse_from(["rental-svc", "--history-retention", "0s"]).is_err());
        let mut help = Vec::new();
        <Config as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(help.contains("HISTORY_RETENTION"), "{help}");
    }
}
