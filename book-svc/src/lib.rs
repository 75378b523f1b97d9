//! book-svc: the catalogue (SPEC §2). Librarians register books, add copies
//! and correct titles and authors; anyone signed in can look books up and
//! search them. Each book's status (AVAILABLE, RESERVED, ON_LOAN) is a
//! projection of the lending desk's events, so this service may be down
//! while lending goes on.
//!
//! - [`domain`]: what a valid book, ISBN and correction are, and a book's
//!   status from its copies.
//! - [`search`]: what a book and a query become for searching, and ranking.
//! - [`store`]: tables, migrations and the search query.
//! - [`grpc`]: the BookService handlers (MergeBooks in `merge`).
//! - [`cache`]: books as GetBook last read them.
//! - [`events`]: the status projection fed by reserve-svc's events.

pub mod cache;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod items;
mod merge;
pub mod search;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rentalbook_plumbing::auth::{Authenticator, Verifier};
use rentalbook_plumbing::bus::{ConsumerSpec, EventBus};
use rentalbook_plumbing::config::{CommonArgs, OptionalAddr};
use rentalbook_plumbing::consumer::Consumer;
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::outbox::Relay;
use rentalbook_plumbing::serve::{self, Launch, Task};
use rentalbook_proto::book::v1::book_service_server::BookServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const NAME: &str = "book-svc";

#[derive(Parser, Clone, Debug)]
#[command(
    name = "book-svc",
    version,
    about = "rentalbook's catalogue service (gRPC)"
)]
pub struct Config {
    /// gRPC address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8083")]
    pub listen_addr: SocketAddr,

    /// Plain HTTP address of /metrics, or `off`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9083")]
    pub metrics_addr: OptionalAddr,

    /// This service's own database (PostgreSQL, or sqlite://file.db).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/rentalbook_book"
    )]
    pub database_url: String,

    /// How long GetBook may answer from memory without reading the
    /// database again (`0s`: always read it). Changes this process commits
    /// show at once; this bounds how long other replicas' changes take.
    #[arg(long, env = "BOOK_CACHE_TTL", default_value = "1s", value_parser = parse_ttl)]
    pub book_cache_ttl: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 1s or 500ms: {e}"))
}

/// Books GetBook holds in memory at the most.
const CACHED_BOOKS: usize = 10_000;

/// A book-svc ready to serve on its bound port.
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

        let cache = Arc::new(cache::BookCache::new(config.book_cache_ttl, CACHED_BOOKS));
        let catalogue = grpc::Catalogue {
            db: db.clone(),
            cache: cache.clone(),
        };
        let routes = tonic::service::Routes::new(BookServiceServer::with_interceptor(
            catalogue,
            Authenticator::new(verifier),
        ));

        let relay = Relay::new(db.clone(), bus.clone(), NAME);
        let consumer = Consumer::new(
            db.clone(),
            bus,
            ConsumerSpec {
                durable: "book-svc".into(),
                filter: "reservation.>".into(),
                max_deliver: config.common.event_max_deliver,
                ack_wait: config.common.event_ack_wait.get(),
            },
            Arc::new(events::StatusProjection { cache }),
        );
        let backfill_db = db.clone();
        let tasks: Vec<Task> = vec![
            Box::new(|stop: CancellationToken| {
                Box::pin(items::backfill_at_start(backfill_db, stop))
            }),
            Box::new(|stop: CancellationToken| Box::pin(relay.run(stop))),
            Box::new(|stop: CancellationToken| Box::pin(consumer.run(stop))),
        ];
        Ok(Self {
            launch: Launch {
                name: NAME,
                listener,
                db,
                routes,
                grpc_names: vec![serve::grpc_name::<BookServiceServer<grpc::Catalogue>>()],
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
