//! view-svc: My Page (SPEC §2, §7) and the circulation desk's lists for
//! librarians (§10), the read side of rentalbook. It is built only from the
//! domain events (CQRS): nothing else writes its database, and everything
//! else works while it is down; when it comes back it catches up from its
//! durable consumer. `--rebuild` drops the read model and replays the stream
//! from the first event, while no replica applies events.
//!
//! - [`domain`]: journey stages (a hold by its book's latest change, the
//!   loan forward only); what the clock changes; the library's days and
//!   renewals.
//! - [`projection`]: events into the read model, then watchers told.
//! - [`rebuild`]: `--rebuild`, safe with several replicas.
//! - [`privacy`]: a member's HistoryErased and the `HISTORY_RETENTION`
//!   sweep: finished journeys and old notices leave the read model.
//! - [`pages`]: a member's page and history from the read model.
//! - [`staff`]: the hold shelf, overdue and due loans, a book's queue,
//!   members by id prefix.
//! - [`watch`]: who watches which page or list, and the loop of every watch
//!   stream.
//! - [`fanout`]: replicas telling each other what changed.
//! - [`store`]: tables and migrations.
//! - [`grpc`]: MyPageService and StaffService; their watch streams send
//!   again after `WATCH_HEARTBEAT` of silence so that proxies keep them.

pub mod domain;
pub mod fanout;
pub mod grpc;
pub mod pages;
pub mod privacy;
pub mod projection;
pub mod rebuild;
pub mod staff;
pub mod store;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use rentalbook_plumbing::auth::{Authenticator, Verifier};
use rentalbook_plumbing::bus::{ConsumerSpec, EventBus};
use rentalbook_plumbing::config::{CommonArgs, OptionalAddr, PolicyDuration};
use rentalbook_plumbing::consumer::Consumer;
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::serve::{self, Launch, Task};
use rentalbook_proto::view::v1::my_page_service_server::MyPageServiceServer;
use rentalbook_proto::view::v1::staff_service_server::StaffServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const NAME: &str = "view-svc";

/// Changes waiting to be told to the other replicas; beyond it they are
/// dropped (a wake-up, never a fact).
const FANOUT_BUFFER: usize = 4096;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "view-svc",
    version,
    about = "rentalbook's My Page and circulation desk lists, a read model (gRPC)"
)]
pub struct Config {
    /// gRPC address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8084")]
    pub listen_addr: SocketAddr,

    /// Plain HTTP address of /metrics, or `off`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9084")]
    pub metrics_addr: OptionalAddr,

    /// This service's own database (PostgreSQL, or sqlite://file.db).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/rentalbook_view"
    )]
    pub database_url: String,

    /// Durable consumer that feeds the read model.
    #[arg(long, env = "VIEW_CONSUMER_NAME", default_value = "view-svc")]
    pub consumer_name: String,

    /// Drop the read model and replay every event from the start of the
    /// stream; the other replicas stop applying events until it is dropped.
    #[arg(long, env = "VIEW_REBUILD")]
    pub rebuild: bool,

    /// How long an open WatchMyPage stream may stay silent before the current
    /// page is sent again: proxies reset streams on which nothing moves
    /// (Envoy's stream idle timeout is 5 min by default), so keep this well
    /// under the shortest idle timeout between the edge and view-svc.
    #[arg(long, env = "WATCH_HEARTBEAT", default_value = "60s")]
    pub watch_heartbeat: PolicyDuration,

    /// Times a loan may be renewed (R12), as rental-svc allows: My Page
    /// shows the renewals left. Set it to the same value for both.
    #[arg(long, env = "MAX_RENEWALS", default_value_t = 2)]
    pub max_renewals: u32,

    /// The library's time zone, an IANA name such as `Asia/Seoul`: the
    /// days of "loans due on a day" begin and end there.
    #[arg(long, env = "LIBRARY_TIMEZONE", default_value = "UTC", value_parser = parse_time_zone)]
    pub library_timezone: chrono_tz::Tz,

    /// How long finished journeys (returned, lost, cancelled, expired) and
    /// notices stay on My Page: older ones leave the read model, as a
    /// member's own erasure of their history takes them.
    #[arg(long, env = "HISTORY_RETENTION", default_value = "90d")]
    pub history_retention: PolicyDuration,

    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("`{name}` is not an IANA time zone name (such as UTC, Asia/Seoul, Europe/Berlin)")
    })
}

pub struct App {
    launch: Launch,
    shutdown_streams: CancellationToken,
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
        // With several replicas, a watcher may be on another replica than
        // the one that applies an event: they tell each other.
        let replica = rentalbook_plumbing::ids::Id::new().to_string();
        let mut watchers = watch::Watchers::new(db.clone());
        let mut fanout_rx = None;
        if bus.fans_out() {
            let (tx, rx) = tokio::sync::mpsc::channel(FANOUT_BUFFER);
            watchers = watchers.with_fanout(tx);
            fanout_rx = Some(rx);
        }
        let watchers = Arc::new(watchers);
        let shutdown_streams = CancellationToken::new();
        let shared = grpc::Shared {
            watchers: watchers.clone(),
            library: domain::Library {
                max_renewals: config.max_renewals,
                time_zone: config.library_timezone,
            },
            shutdown: shutdown_streams.clone(),
            heartbeat: config.watch_heartbeat.get(),
        };
        let routes = tonic::service::Routes::new(MyPageServiceServer::with_interceptor(
            grpc::MyPages {
                shared: shared.clone(),
            },
            Authenticator::new(verifier.clone()),
        ))
        .add_service(StaffServiceServer::with_interceptor(
            grpc::Staff { shared },
            Authenticator::new(verifier),
        ));
        let durable = config.consumer_name.clone();
        let consumer = Consumer::new(
            db.clone(),
            bus.clone(),
            ConsumerSpec {
                durable: durable.clone(),
                filter: String::new(),
                max_deliver: config.common.event_max_deliver,
                ack_wait: config.common.event_ack_wait.get(),
            },
            Arc::new(projection::Projection {
                watchers: watchers.clone(),
            }),
        );
        let (sweep_db, sweep_watchers) = (db.clone(), watchers.clone());
        let retention = config.history_retention.get();
        let (publish_bus, listen_bus) = (bus.clone(), bus.clone());
        let rebuild_first = config.rebuild;
        let model = db.clone();
        let mut tasks: Vec<Task> = vec![Box::new(move |stop: CancellationToken| {
            Box::pin(async move {
                if rebuild_first {
                    tracing::info!(consumer = %durable, "rebuilding My Page from the start of the stream");
                    if let Err(e) = rebuild::rebuild(&model, bus.as_ref(), &durable).await {
                        tracing::error!(error = format!("{e:#}"), "not rebuilding");
                    }
                }
                consumer.run(stop).await
            })
        })];
        tasks.push(Box::new(move |stop: CancellationToken| {
            Box::pin(rentalbook_plumbing::retention::sweep_periodically(
                NAME,
                "history",
                retention,
                stop,
                move |cutoff| {
                    let (db, watchers) = (sweep_db.clone(), sweep_watchers.clone());
                    async move { Ok(privacy::sweep(&db, &watchers, cutoff).await?) }
                },
            ))
        }));
        if let Some(fanout_rx) = fanout_rx {
            let me = replica.clone();
            tasks.push(Box::new(move |stop: CancellationToken| {
                Box::pin(fanout::publish(publish_bus, me, fanout_rx, stop))
            }));
            tasks.push(Box::new(move |stop: CancellationToken| {
                Box::pin(fanout::listen(listen_bus, replica, watchers, stop))
            }));
        }
        Ok(Self {
            launch: Launch {
                name: NAME,
                listener,
                db,
                routes,
                grpc_names: vec![
                    serve::grpc_name::<MyPageServiceServer<grpc::MyPages>>(),
                    serve::grpc_name::<StaffServiceServer<grpc::Staff>>(),
                ],
                max_concurrent_requests: config.common.max_concurrent_requests,
                request_id_retention: config.common.request_id_retention.get(),
                tasks,
            },
            shutdown_streams,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.launch.local_addr()
    }

    /// Serves until `shutdown` is cancelled; open watch streams end then.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let streams = self.shutdown_streams.clone();
        let end_streams = shutdown.clone();
        tokio::spawn(async move {
            end_streams.cancelled().await;
            streams.cancel();
        });
        serve::run::<store::Migrator>(self.launch, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_watch_heartbeat_has_a_default_and_help_lists_it() {
        let c = Config::try_parse_from(["view-svc"]).unwrap();
        assert_eq!(c.watch_heartbeat.get(), Duration::from_secs(60));
        let c = Config::try_parse_from(["view-svc", "--watch-heartbeat", "250ms"]).unwrap();
        assert_eq!(c.watch_heartbeat.get(), Duration::from_millis(250));
        assert!(Config::try_parse_from(["view-svc", "--watch-heartbeat", "0s"]).is_err());
        let mut help = Vec::new();
        <Config as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(help.contains("WATCH_HEARTBEAT"), "{help}");
    }

    #[test]
    fn renewals_and_the_time_zone_have_defaults_and_help_lists_them() {
        let c = Config::try_parse_from(["view-svc"]).unwrap();
        assert_eq!(c.max_renewals, 2);
        assert_eq!(c.library_timezone, chrono_tz::Tz::UTC);
        let c = Config::try_parse_from([
            "view-svc",
            "--max-renewals",
            "0",
            "--library-timezone",
            "Asia/Seoul",
        ])
        .unwrap();
        assert_eq!(c.max_renewals, 0);
        assert_eq!(c.library_timezone.name(), "Asia/Seoul");
        let wrong = Config::try_parse_from(["view-svc", "--library-timezone", "Mars/Olympus"])
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("IANA"), "{wrong}");
        assert!(Config::try_parse_from(["view-svc", "--max-renewals", "-1"]).is_err());
        let mut help = Vec::new();
        <Config as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(help.contains("MAX_RENEWALS"), "{help}");
        assert!(help.contains("LIBRARY_TIMEZONE"), "{help}");
    }

    #[test]
    fn the_history_retention_has_a_default_and_help_lists_it() {
        let c = Config::try_parse_from(["view-svc"]).unwrap();
        assert_eq!(c.history_retention.get(), Duration::from_secs(90 * 86_400));
        let c = Config::try_parse_from(["view-svc", "--history-retention", "2s"]).unwrap();
        assert_eq!(c.history_retention.get(), Duration::from_secs(2));
        assert!(Config::try_parse_from(["view-svc", "--history-retention", "0s"]).is_err());
        let mut help = Vec::new();
        <Config as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(help.contains("HISTORY_RETENTION"), "{help}");
    }
}
