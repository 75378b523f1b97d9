//! The whole product in one process: each service on its port with its own
//! SQLite file in the data directory, over the embedded durable event bus —
//! or over NATS and PostgreSQL when their URLs are given.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rentalbook_plumbing::bus::{EventBus, NatsBus, NatsSettings};
use rentalbook_plumbing::embedded_bus::EmbeddedBus;
use tokio::net::TcpListener;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Where the SQLite files, the event log and the JWT secret live.
    #[arg(
        long,
        env = "RENTALBOOK_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Address every port listens on; loopback keeps a laptop's library private.
    #[arg(long, env = "RENTALBOOK_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// rental-svc's gRPC port.
    #[arg(long, env = "RENTAL_PORT", default_value_t = 8081)]
    pub rental_port: u16,

    /// reserve-svc's gRPC port.
    #[arg(long, env = "RESERVE_PORT", default_value_t = 8082)]
    pub reserve_port: u16,

    /// book-svc's gRPC port.
    #[arg(long, env = "BOOK_PORT", default_value_t = 8083)]
    pub book_port: u16,

    /// view-svc's gRPC port.
    #[arg(long, env = "VIEW_PORT", default_value_t = 8084)]
    pub view_port: u16,

    /// notice-svc's gRPC port.
    #[arg(long, env = "NOTICE_PORT", default_value_t = 8085)]
    pub notice_port: u16,

    /// The REST edge's port (REST/JSON, My Page as Server-Sent Events, /metrics).
    #[arg(long, env = "EDGE_PORT", default_value_t = 8088)]
    pub edge_port: u16,

    /// Use NATS JetStream at this URL instead of the embedded event bus.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,

    /// book-svc's database (default: book.db in the data directory).
    #[arg(long, env = "BOOK_DATABASE_URL")]
    pub book_database_url: Option<String>,

    /// reserve-svc's database (default: reserve.db in the data directory).
    #[arg(long, env = "RESERVE_DATABASE_URL")]
    pub reserve_database_url: Option<String>,

    /// rental-svc's database (default: rental.db in the data directory).
    #[arg(long, env = "RENTAL_DATABASE_URL")]
    pub rental_database_url: Option<String>,

    /// view-svc's database (default: view.db in the data directory).
    #[arg(long, env = "VIEW_DATABASE_URL")]
    pub view_database_url: Option<String>,

    /// notice-svc's database (default: notice.db in the data directory).
    #[arg(long, env = "NOTICE_DATABASE_URL")]
    pub notice_database_url: Option<String>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

const SECRET_FILE: &str = "jwt-secret";

/// The all-in-one's JWT secret, if it has made one.
pub fn read_secret(data_dir: &Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(data_dir.join(SECRET_FILE))?;
    Ok(s.trim().to_owned())
}

/// The secret from the environment, else the data directory's, else a new
/// random one written there (readable by the owner only).
fn secret(data_dir: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::env::var("RENTALBOOK_JWT_SECRET")
        && !s.is_empty()
    {
        return Ok(s);
    }
    if let Ok(s) = read_secret(data_dir)
        && !s.is_empty()
    {
        return Ok(s);
    }
    let fresh = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let path = data_dir.join(SECRET_FILE);
    std::fs::write(&path, &fresh).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(fresh)
}

fn sqlite(data_dir: &Path, file: &str) -> String {
    format!("sqlite://{}", data_dir.join(file).display())
}

struct Plan {
    host: IpAddr,
    secret: String,
    nats: Option<String>,
}

impl Plan {
    /// Arguments every service gets; the environment fills in the policy.
    fn common(&self, service: &str, port: u16, database_url: String) -> Vec<String> {
        let mut args = vec![
            service.to_owned(),
            "--listen-addr".into(),
            SocketAddr::new(self.host, port).to_string(),
            "--metrics-addr".into(),
            "off".into(),
            "--database-url".into(),
            database_url,
            "--jwt-secret".into(),
            self.secret.clone(),
        ];
        if let Some(nats) = &self.nats {
            args.extend(["--nats-url".into(), nats.clone()]);
        }
        args
    }
}

async fn bind(host: IpAddr, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port)).await.with_context(|| {
        format!("{what} cannot listen on {host}:{port}; is another rentalbook running?")
    })
}

/// Runs everything until Ctrl-C or SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    rentalbook_plumbing::telemetry::init_logging(&args.log_format);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.clone();
    let plan = Plan {
        host: args.host,
        secret: secret(&data_dir)?,
        nats: args.nats_url.clone(),
    };
    // Before any database is opened: a database's counters are taken from
    // the recorder when it connects (the event bus's first of all).
    rentalbook_plumbing::telemetry::init_metrics(None)?;
    let bus: Arc<dyn EventBus> = match &args.nats_url {
        Some(url) => {
            NatsBus::connect(NatsSettings {
                url: url.clone(),
                stream: std::env::var("NATS_STREAM").unwrap_or_else(|_| "RENTALBOOK".into()),
                subject_prefix: std::env::var("NATS_SUBJECT_PREFIX")
                    .unwrap_or_else(|_| "rentalbook".into()),
                max_age: None,
                replicas: 1,
                client_name: "rentalbook".into(),
            })
            .await?
        }
        None => EmbeddedBus::open(&sqlite(&data_dir, "events.db")).await?,
    };
    let db = |given: &Option<String>, file: &str| {
        given.clone().unwrap_or_else(|| sqlite(&data_dir, file))
    };

    let book = book_svc::App::build_with(
        <book_svc::Config as clap::Parser>::try_parse_from(plan.common(
            "book-svc",
            args.book_port,
            db(&args.book_database_url, "book.db"),
        ))?,
        bind(args.host, args.book_port, "book-svc").await?,
        bus.clone(),
    )
    .await?;
    let reserve = reserve_svc::App::build_with(
        <reserve_svc::Config as clap::Parser>::try_parse_from(plan.common(
            "reserve-svc",
            args.reserve_port,
            db(&args.reserve_database_url, "reserve.db"),
        ))?,
        bind(args.host, args.reserve_port, "reserve-svc").await?,
        bus.clone(),
    )
    .await?;
    let mut rental_args = plan.common(
        "rental-svc",
        args.rental_port,
        db(&args.rental_database_url, "rental.db"),
    );
    rental_args.extend([
        "--reserve-svc-url".into(),
        format!("http://{}", reserve.local_addr()),
    ]);
    let rental = rental_svc::App::build_with(
        <rental_svc::Config as clap::Parser>::try_parse_from(rental_args)?,
        bind(args.host, args.rental_port, "rental-svc").await?,
        bus.clone(),
    )
    .await?;
    let view = view_svc::App::build_with(
        <view_svc::Config as clap::Parser>::try_parse_from(plan.common(
            "view-svc",
            args.view_port,
            db(&args.view_database_url, "view.db"),
        ))?,
        bind(args.host, args.view_port, "view-svc").await?,
        bus.clone(),
    )
    .await?;
    // Notices show on My Page; by e-mail too when SMTP_URL is set (the
    // environment fills in notice-svc's settings).
    let notice = notice_svc::App::build_with(
        <notice_svc::Config as clap::Parser>::try_parse_from(plan.common(
            "notice-svc",
            args.notice_port,
            db(&args.notice_database_url, "notice.db"),
        ))?,
        bind(args.host, args.notice_port, "notice-svc").await?,
        bus.clone(),
    )
    .await?;
    let mut edge_config = <edge::Config as clap::Parser>::try_parse_from([
        "edge".to_owned(),
        "--listen-addr".into(),
        SocketAddr::new(args.host, args.edge_port).to_string(),
        "--book-svc-url".into(),
        format!("http://{}", book.local_addr()),
        "--reserve-svc-url".into(),
        format!("http://{}", reserve.local_addr()),
        "--rental-svc-url".into(),
        format!("http://{}", rental.local_addr()),
        "--view-svc-url".into(),
        format!("http://{}", view.local_addr()),
        "--notice-svc-url".into(),
        format!("http://{}", notice.local_addr()),
    ])?;
    // The web pages' "sign in as" form, for a laptop's private library only.
    if args.host.is_loopback() {
        edge_config.dev_sign_in = true;
        edge_config.dev_sign_in_secret = Some(edge::DevSignInSecret::new(plan.secret.clone()));
    }
    let edge = edge::App::build_with(
        edge_config,
        bind(args.host, args.edge_port, "the edge").await?,
    )
    .await?;

    let shutdown = rentalbook_plumbing::serve::shutdown_on_signal();
    let mut running = tokio::task::JoinSet::new();
    running.spawn(book.run(shutdown.clone()));
    running.spawn(reserve.run(shutdown.clone()));
    running.spawn(rental.run(shutdown.clone()));
    running.spawn(view.run(shutdown.clone()));
    running.spawn(notice.run(shutdown.clone()));
    let edge_addr = edge.local_addr();
    running.spawn(edge.run(shutdown.clone()));
    // The banner comes last, once every service has run its migrations and
    // serves, so that it is the last thing on a fresh terminal.
    let banner_task = {
        let (args, data_dir, shutdown) = (args.clone(), data_dir.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                serving = serving(edge_addr) => banner(&args, &data_dir, serving),
                _ = shutdown.cancelled() => {}
            }
        })
    };

    let mut result = Ok(());
    while let Some(done) = running.join_next().await {
        let outcome = done.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            tracing::error!(
                error = format!("{e:#}"),
                "a service stopped; stopping the rest"
            );
            shutdown.cancel();
            result = Err(e);
        }
    }
    banner_task.abort();
    result
}

/// The all-in-one's log filter when `RUST_LOG` says nothing: rentalbook's
/// own lines at info, the libraries' (sqlx, sea-orm and its migrations,
/// hyper, h2, tonic, async-nats, ...) at warn.
pub const DEFAULT_LOG_FILTER: &str = "warn,rentalbook=info,rentalbook_plumbing=info,\
     book_svc=info,reserve_svc=info,rental_svc=info,view_svc=info,notice_svc=info,edge=info";

/// How long the banner waits for every service to serve before it is
/// printed anyway, with a word that something is still starting.
const STARTUP_WAIT: Duration = Duration::from_secs(60);

/// Waits until the edge's `/healthz` says every backend is SERVING (their
/// migrations have run); false when that has not happened within
/// [`STARTUP_WAIT`].
async fn serving(edge: SocketAddr) -> bool {
    let mut edge = edge;
    if edge.ip().is_unspecified() {
        edge.set_ip(match edge.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let started = Instant::now();
    while started.elapsed() < STARTUP_WAIT {
        let healthy = tokio::task::spawn_blocking(move || healthz_all_serving(edge))
            .await
            .unwrap_or(false);
        if healthy {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One `GET /healthz` over plain HTTP/1.1: 200, and no backend other than SERVING.
fn healthz_all_serving(edge: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let attempt = || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&edge, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        write!(
            stream,
            "GET /healthz HTTP/1.1\r\nHost: {edge}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    let Ok(answer) = attempt() else {
        return false;
    };
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return false;
    };
    head.starts_with("HTTP/1.1 200")
        && body.contains("\"SERVING\"")
        && !["NOT_SERVING", "UNREACHABLE", "UNKNOWN"]
            .iter()
            .any(|bad| body.contains(bad))
}

fn banner(args: &ServeArgs, data_dir: &Path, serving: bool) {
    let host = args.host;
    let (rental, reserve, book, view, notice, edge) = (
        args.rental_port,
        args.reserve_port,
        args.book_port,
        args.view_port,
        args.notice_port,
        args.edge_port,
    );
    let events = match &args.nats_url {
        Some(url) => format!("NATS JetStream at {url}"),
        None => format!("embedded, in {}", data_dir.join("events.db").display()),
    };
    let notices = match std::env::var("SMTP_URL") {
        Ok(url) if !url.trim().is_empty() => format!(
            "on My Page, and e-mailed through {}",
            rentalbook_plumbing::db::redact(url.trim())
        ),
        _ => "on My Page (set SMTP_URL to e-mail them too; see the README)".to_owned(),
    };
    let pages = SocketAddr::new(host, edge);
    let sign_in = if host.is_loopback() {
        format!("sign in at http://{pages}/   (dev sign-in on: loopback only)")
    } else {
        format!("http://{pages}/   (dev sign-in off: not a loopback address; see docs/WEB.md)")
    };
    println!(
        "\nrentalbook is running (all in one process; data in {dir})\n\
         \x20 web pages   {sign_in}\n\
         \x20 REST        http://{host}:{edge}/v1/...   (OpenAPI at /openapi.json, metrics at /metrics)\n\
         \x20 gRPC        rental-svc {host}:{rental}  reserve-svc {host}:{reserve}  book-svc {host}:{book}  view-svc {host}:{view}  notice-svc {host}:{notice}\n\
         \x20 events      {events}\n\
         \x20 notices     {notices}\n\
         \x20 a token     rentalbook token --sub alice --role member   (or --role librarian)\n\
         \x20             (cargo run --release -- token ... from a checkout)\n\
         {starting}Stop with Ctrl-C.\n",
        dir = data_dir.display(),
        starting = if serving {
            ""
        } else {
            "  (some services are still starting: see the log above)\n"
        },
    );
}
