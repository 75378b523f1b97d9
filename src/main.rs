//! `rentalbook`: the whole product in one process (the default), and the
//! operator's commands.

mod all_in_one;
mod check;
mod dead_letters;
mod items;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rentalbook_plumbing::auth::{Role, TokenScope, mint_for};
use rentalbook_plumbing::config::PolicyDuration;
use rentalbook_plumbing::ids::MemberId;

#[derive(Parser)]
#[command(
    name = "rentalbook",
    version,
    about = "Book reservation and rental for libraries",
    long_about = "Book reservation and rental for libraries.\n\nWithout a command, runs the whole product in one process: book-svc, reserve-svc, rental-svc, view-svc, notice-svc and the REST edge on their ports, each with a SQLite file in the data directory, over an embedded durable event bus. With NATS_URL set it uses NATS JetStream instead, and with the *_DATABASE_URL settings PostgreSQL.",
    after_help = "Lending policy (read from the environment, as in the mesh): LOAN_PERIOD (14d), HOLD_PICKUP_WINDOW (72h), MAX_OPEN_RESERVATIONS (5), MAX_ACTIVE_RENTALS (5), EXPIRY_SWEEP_INTERVAL (30s), RENT_RECOVERY_INTERVAL (5s), RESERVE_CALL_TIMEOUT (2s), BREAKER_FAILURES (5), BREAKER_OPEN_FOR (5s), MAX_CONCURRENT_REQUESTS (256). Notices: SMTP_URL (unset: My Page only), SMTP_FROM, LIBRARY_NAME, DEFAULT_LANGUAGE (ko), DUE_SOON_BEFORE (2d), OVERDUE_REMINDER_EVERY (7d), LIBRARY_TIMEZONE (UTC), NOTICE_SEND_FOR (24h), NOTICE_RETENTION (90d). Every service binary lists its own settings under --help."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    serve: all_in_one::ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the whole product in one process (the default).
    Serve,
    /// Compares the services' truth with the projections and lists every difference
    /// (exit status 1 when there are any).
    Check(check::CheckArgs),
    /// The copies' barcodes (`rentalbook items export > items.csv`), to print
    /// labels.
    Items(items::ItemsArgs),
    /// Lists the events consumers gave up on, or replays them
    /// (`rentalbook dead-letters list`, `rentalbook dead-letters replay --all`).
    DeadLetters(dead_letters::DeadLetterArgs),
    /// Runs one service as its own process, as its own binary would
    /// (`rentalbook service reserve-svc -- --help` lists its settings).
    Service {
        /// book-svc, reserve-svc, rental-svc, view-svc, notice-svc or edge.
        name: String,
        /// The service's own flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Mints a bearer token, for local use and tests.
    Token {
        /// The member id the token speaks for.
        #[arg(long)]
        sub: String,
        /// member, librarian or service.
        #[arg(long, default_value = "member")]
        role: Role,
        /// How long the token is good for.
        #[arg(long, default_value = "12h")]
        ttl: PolicyDuration,
        /// The secret the services verify tokens with; by default the one in the data directory.
        #[arg(long, env = "RENTALBOOK_JWT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Where the all-in-one keeps its secret.
        #[arg(long, env = "RENTALBOOK_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// The audience and issuer the services require, if any: the token
        /// carries them.
        #[command(flatten)]
        scope: TokenScope,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve) => {
            if std::env::var_os("RUST_LOG").is_none() {
                // SAFETY: no other thread runs yet; the runtime is built below.
                unsafe { std::env::set_var("RUST_LOG", all_in_one::DEFAULT_LOG_FILTER) };
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(all_in_one::serve(cli.serve))
        }
        Some(Command::Check(args)) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            if runtime.block_on(check::run(args))? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Some(Command::Items(args)) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(items::run(args))
        }
        Some(Command::DeadLetters(args)) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            if runtime.block_on(dead_letters::run(args))? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Some(Command::Service { name, args }) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(one_service(&name, args))
        }
        Some(Command::Token {
            sub,
            role,
            ttl,
            secret,
            data_dir,
            scope,
        }) => {
            let member = MemberId::parse(&sub).map_err(anyhow::Error::msg)?;
            let secret = match secret.filter(|s| !s.is_empty()) {
                Some(s) => s,
                None => all_in_one::read_secret(&data_dir).with_context(|| {
                    format!(
                        "no RENTALBOOK_JWT_SECRET and no secret in {} (start `rentalbook` once to create it)",
                        data_dir.display()
                    )
                })?,
            };
            let ttl: Duration = ttl.get();
            println!("{}", mint_for(&secret, &member, role, ttl, &scope)?);
            Ok(())
        }
    }
}

/// Runs one service with its own command line, until SIGTERM or Ctrl-C.
async fn one_service(name: &str, args: Vec<String>) -> anyhow::Result<()> {
    let argv = std::iter::once(name.to_owned()).chain(args);
    let shutdown = rentalbook_plumbing::serve::shutdown_on_signal();
    match name {
        "book-svc" => {
            let config = book_svc::Config::parse_from(argv);
            rentalbook_plumbing::telemetry::init_logging(&config.common.log_format);
            book_svc::App::build(config).await?.run(shutdown).await
        }
        "reserve-svc" => {
            let config = reserve_svc::Config::parse_from(argv);
            rentalbook_plumbing::telemetry::init_logging(&config.common.log_format);
            reserve_svc::App::build(config).await?.run(shutdown).await
        }
        "rental-svc" => {
            let config = rental_svc::Config::parse_from(argv);
            rentalbook_plumbing::telemetry::init_logging(&config.common.log_format);
            rental_svc::App::build(config).await?.run(shutdown).await
        }
        "view-svc" => {
            let config = view_svc::Config::parse_from(argv);
            rentalbook_plumbing::telemetry::init_logging(&config.common.log_format);
            view_svc::App::build(config).await?.run(shutdown).await
        }
        "notice-svc" => {
            let config = notice_svc::Config::parse_from(argv);
            rentalbook_plumbing::telemetry::init_logging(&config.common.log_format);
            notice_svc::App::build(config).await?.run(shutdown).await
        }
        "edge" => edge::run_process(argv).await,
        other => anyhow::bail!(
            "`{other}` is not a service (book-svc, reserve-svc, rental-svc, view-svc, notice-svc, edge)"
        ),
    }
}
