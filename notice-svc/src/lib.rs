//! notice-svc: notices to members (SPEC §10). A hold ready or expired, a
//! loan due soon or overdue: each occasion is told once, on My Page (the
//! NoticeSent event, which view-svc shows) and by e-mail when the member
//! gave an address and `SMTP_URL` is set. It owns the members' notice
//! settings and the notice log, and the member's erasure of their finished
//! history (HistoryErased, which every service applies).
//!
//! - [`domain`]: occasions, their keys and moments, retries, settings.
//! - [`texts`]: the e-mails' words in Korean and English.
//! - [`notify`]: making a notice, once per occasion, in a transaction.
//! - [`events`]: holds, loans and titles from the events.
//! - [`clock`]: due-soon and overdue notices as time passes; retention.
//! - [`mailer`]: e-mail delivery with retries, apart from the consumer.
//! - [`store`]: tables and migrations.
//! - [`grpc`]: the NoticeService handlers.

pub mod clock;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod mailer;
pub mod notify;
pub mod store;
pub mod texts;

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
use rentalbook_proto::notice::v1::notice_service_server::NoticeServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::Language;

pub const NAME: &str = "notice-svc";

#[derive(Parser, Clone, Debug)]
#[command(
    name = "notice-svc",
    version,
    about = "rentalbook's notices to members, by e-mail and on My Page (gRPC)"
)]
pub struct Config {
    /// gRPC address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8085")]
    pub listen_addr: SocketAddr,

    /// Plain HTTP address of /metrics, or `off`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9085")]
    pub metrics_addr: OptionalAddr,

    /// This service's own database (PostgreSQL, or sqlite://file.db).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/rentalbook_notice"
    )]
    pub database_url: String,

    /// Durable consumer of the events notices come from.
    #[arg(long, env = "NOTICE_CONSUMER_NAME", default_value = "notice-svc")]
    pub consumer_name: String,

    /// Where e-mail goes: `smtp://host:port` (plain, a local sink),
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465` (TLS),
    /// with `user:password@` before the host when the server wants them.
    /// Unset: no e-mail, notices show on My Page only.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// The notices' sender, such as `Mapo Library <notices@library.example>`.
    #[arg(
        long,
        env = "SMTP_FROM",
        default_value = "rentalbook <notices@localhost>"
    )]
    pub smtp_from: String,

    /// How long one SMTP exchange may take before it counts as failed.
    #[arg(long, env = "SMTP_TIMEOUT", default_value = "20s")]
    pub smtp_timeout: PolicyDuration,

    /// The library's name, which every e-mail gives.
    #[arg(long, env = "LIBRARY_NAME", default_value = "The library")]
    pub library_name: String,

    /// The notices' language (`ko` or `en`) until a member chooses.
    #[arg(long, env = "DEFAULT_LANGUAGE", default_value = "ko", value_parser = parse_language)]
    pub default_language: String,

    /// How long before a loan is due its member is told: whole days count
    /// as the library's days (2d: from the start of the day two days
    /// before the due day, in LIBRARY_TIMEZONE).
    #[arg(long, env = "DUE_SOON_BEFORE", default_value = "2d")]
    pub due_soon_before: PolicyDuration,

    /// How often an overdue loan's member is reminded after the first
    /// overdue notice.
    #[arg(long, env = "OVERDUE_REMINDER_EVERY", default_value = "7d")]
    pub overdue_reminder_every: PolicyDuration,

    /// The library's time zone, an IANA name such as `Asia/Seoul`: days and
    /// the times in e-mails are the library's.
    #[arg(long, env = "LIBRARY_TIMEZONE", default_value = "UTC", value_parser = parse_time_zone)]
    pub library_timezone: chrono_tz::Tz,

    /// How long a notice's e-mail is retried (with backoff) before it is
    /// marked failed and listed for librarians.
    #[arg(long, env = "NOTICE_SEND_FOR", default_value = "24h")]
    pub notice_send_for: PolicyDuration,

    /// How long delivered notices stay in the notice log.
    #[arg(long, env = "NOTICE_RETENTION", default_value = "90d")]
    pub notice_retention: PolicyDuration,

    /// How often the clock looks for loans due soon or overdue.
    #[arg(long, env = "NOTICE_CLOCK_INTERVAL", default_value = "30s")]
    pub notice_clock_interval: PolicyDuration,

    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_language(s: &str) -> Result<String, String> {
    Language::parse(s)
        .map(|l| l.code().to_owned())
        .ok_or_else(|| format!("`{s}` is not `ko` or `en`"))
}

fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("`{name}` is not an IANA time zone name (such as UTC, Asia/Seoul, Europe/Berlin)")
    })
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
        let language = Language::parse(&config.default_language).unwrap_or(Language::Ko);
        let smtp = match &config.smtp_url {
            Some(url) if !url.trim().is_empty() => Some(mailer::Smtp::new(
                url.trim(),
                &config.smtp_from,
                config.smtp_timeout.get(),
            )?),
            _ => None,
        };
        let db = Db::connect(&config.database_url, 8).await?;
        let mail_waiting = Arc::new(tokio::sync::Notify::new());
        let notices = notify::Notices::new(NAME, language, smtp.is_some(), mail_waiting.clone());
        let routes = tonic::service::Routes::new(NoticeServiceServer::with_interceptor(
            grpc::NoticeApi {
                db: db.clone(),
                notices: notices.clone(),
            },
            Authenticator::new(verifier),
        ));
        let relay = Relay::new(db.clone(), bus.clone(), NAME);
        let consumer = Consumer::new(
            db.clone(),
            bus,
            ConsumerSpec {
                durable: config.consumer_name.clone(),
                filter: String::new(),
                max_deliver: config.common.event_max_deliver,
                ack_wait: config.common.event_ack_wait.get(),
            },
            Arc::new(events::Events(notices.clone())),
        );
        let schedule = domain::Schedule {
            due_soon_before: config.due_soon_before.as_chrono(),
            overdue_every: config.overdue_reminder_every.as_chrono(),
            time_zone: config.library_timezone,
        };
        let clock = clock::Clock {
            db: db.clone(),
            notices: notices.clone(),
            schedule,
            interval: config.notice_clock_interval.get(),
            retention: config.notice_retention.as_chrono(),
        };
        let first_start = (db.clone(), notices);
        let mut tasks: Vec<Task> = vec![
            Box::new(|stop: CancellationToken| Box::pin(relay.run(stop))),
            Box::new(move |stop: CancellationToken| {
                Box::pin(async move {
                    // The first start is recorded before any event is read.
                    let (db, notices) = first_start;
                    let mut backoff = rentalbook_plumbing::time::Backoff::new(
                        std::time::Duration::from_millis(200),
                    );
                    while let Err(e) = notices.first_start(db.conn()).await {
                        tracing::warn!(error = %e, "first start not recorded yet");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                    consumer.run(stop).await
                })
            }),
            Box::new(|stop: CancellationToken| Box::pin(clock.run(stop))),
        ];
        if let Some(smtp) = smtp {
            let mailer = mailer::Mailer {
                db: db.clone(),
                smtp,
                waiting: mail_waiting,
                library_name: config.library_name.clone(),
                time_zone: config.library_timezone,
                default_language: language,
                send_for: config.notice_send_for.as_chrono(),
            };
            tasks.push(Box::new(|stop: CancellationToken| {
                Box::pin(mailer.run(stop))
            }));
        }
        Ok(Self {
            launch: Launch {
                name: NAME,
                listener,
                db,
                routes,
                grpc_names: vec![serve::grpc_name::<NoticeServiceServer<grpc::NoticeApi>>()],
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
    use super::*;

    #[test]
    fn the_notice_settings_have_defaults_and_help_lists_them() {
        let c = Config::try_parse_from(["notice-svc"]).unwrap();
        assert_eq!(c.smtp_url, None);
        assert_eq!(c.default_language, "ko");
        assert_eq!(c.due_soon_before.as_chrono(), chrono::Duration::days(2));
        assert_eq!(
            c.overdue_reminder_every.as_chrono(),
            chrono::Duration::days(7)
        );
        assert_eq!(c.notice_send_for.as_chrono(), chrono::Duration::hours(24));
        assert!(Config::try_parse_from(["notice-svc", "--default-language", "fr"]).is_err());
        assert!(Config::try_parse_from(["notice-svc", "--library-timezone", "Mars/Base"]).is_err());
        let mut help = Vec::new();
        <Config as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        for setting in [
            "SMTP_URL",
            "SMTP_FROM",
            "LIBRARY_NAME",
            "DEFAULT_LANGUAGE",
            "DUE_SOON_BEFORE",
            "OVERDUE_REMINDER_EVERY",
            "LIBRARY_TIMEZONE",
            "NOTICE_SEND_FOR",
            "NOTICE_RETENTION",
        ] {
            assert!(help.contains(setting), "{setting} in {help}");
        }
    }
}
