//! Starts what is measured: the all-in-one `rentalbook` process on free ports
//! (the REST edge included) with a temporary data directory, or the mesh,
//! each service a process of its own (`rentalbook service <name> -- ...`) on
//! PostgreSQL and NATS JetStream (given, or private ones started from the
//! installed binaries), with the `edge` binary in front of them. Measures
//! each process's start to serving and its idle memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rentalbook_testkit::{PrivateNats, PrivatePostgres};
use serde::Serialize;
use tempfile::TempDir;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::client::{Endpoints, endpoint};
use crate::procstat;

/// What to benchmark.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// The whole product in one process, on SQLite and the embedded event bus.
    AllInOne { bin: PathBuf },
    /// Each service its own process, each with its own PostgreSQL database,
    /// over NATS JetStream. `None` starts a private server for the run.
    Mesh {
        bin: PathBuf,
        /// Whether to start the REST edge in front of the services
        /// (`rentalbook service edge`); without it the mesh is gRPC only.
        edge: bool,
        database_url_base: Option<String>,
        nats_url: Option<String>,
        /// The private PostgreSQL flushes every commit to disk (fsync and
        /// synchronous commit on), as a library would run it; by default it
        /// runs with both off, as the tests do.
        durable_postgres: bool,
        /// The private PostgreSQL loads pg_stat_statements, for
        /// [`crate::pgstats`].
        pg_statements: bool,
    },
}

impl TargetSpec {
    pub fn name(&self) -> &'static str {
        match self {
            TargetSpec::AllInOne { .. } => "all-in-one",
            TargetSpec::Mesh { .. } => "mesh",
        }
    }
}

/// One process of the target.
pub struct Proc {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    /// Spawn to every health check of the process answering SERVING.
    pub start_to_serving: Duration,
    child: tokio::process::Child,
}

/// A process's figures before any load.
#[derive(Clone, Debug, Serialize)]
pub struct Startup {
    pub process: String,
    pub start_to_serving_ms: f64,
    /// Resident memory one second after serving, before any request but the health checks.
    pub idle_rss_kib: u64,
}

/// The running target.
pub struct Target {
    pub spec: TargetSpec,
    pub endpoints: Endpoints,
    pub procs: Vec<Proc>,
    pub secret: String,
    /// A database of the storage baseline's own, on the same server (mesh)
    /// or in the same directory (all-in-one) as the services'.
    pub baseline_db_url: String,
    pub startups: Vec<Startup>,
    /// Where the target's processes export their metrics (`/metrics`), for
    /// the statements each phase asks of the databases.
    pub metrics: Vec<SocketAddr>,
    /// Whether the REST edge runs (always in the all-in-one).
    pub has_edge: bool,
    /// Private servers the harness started (mesh): name and pid, whose CPU
    /// (with their children's: PostgreSQL's backends) the phases count.
    pub servers: Vec<(String, u32)>,
    /// The `postgres` database of the private PostgreSQL when it loads
    /// pg_stat_statements.
    pub pg_stats_url: Option<String>,
    /// Description of the storage, for the report.
    pub storage: String,
    pub events: String,
    dir: TempDir,
    _nats: Option<PrivateNats>,
    _pg: Option<PrivatePostgres>,
}

pub const SERVICES: [&str; 4] = ["book-svc", "reserve-svc", "rental-svc", "view-svc"];

/// Settings of the harness's environment that would steer the target
/// elsewhere; the harness gives the target its settings itself.
pub(crate) const SCRUBBED_ENV: &[&str] = &[
    "NATS_URL",
    "NATS_STREAM",
    "NATS_SUBJECT_PREFIX",
    "DATABASE_URL",
    "BOOK_DATABASE_URL",
    "RESERVE_DATABASE_URL",
    "RENTAL_DATABASE_URL",
    "VIEW_DATABASE_URL",
    "NOTICE_DATABASE_URL",
    "LISTEN_ADDR",
    "METRICS_ADDR",
    "RESERVE_SVC_URL",
    "RENTALBOOK_DATA_DIR",
    "RENTALBOOK_JWKS_FILE",
    "RENTALBOOK_SERVICE_SECRET",
    "RENTALBOOK_HOST",
    "RENTAL_PORT",
    "RESERVE_PORT",
    "BOOK_PORT",
    "VIEW_PORT",
    "NOTICE_PORT",
    "EDGE_PORT",
    "BOOK_SVC_URL",
    "RENTAL_SVC_URL",
    "VIEW_SVC_URL",
    "NOTICE_SVC_URL",
    "SMTP_URL",
    "CORS_ALLOWED_ORIGINS",
    "MAX_BODY_BYTES",
    "REQUEST_TIMEOUT",
    "EDGE_DEV_SIGN_IN",
    "VIEW_CONSUMER_NAME",
    "VIEW_REBUILD",
    "RENTALBOOK_CHECK_SKIP",
    "MAX_CONCURRENT_REQUESTS",
];

/// How the harness learns that a process serves an address.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// The gRPC health service answers SERVING.
    Grpc(SocketAddr),
    /// `GET /healthz` answers 200 (the edge).
    Http(SocketAddr),
}

impl Probe {
    fn addr(self) -> SocketAddr {
        match self {
            Probe::Grpc(a) | Probe::Http(a) => a,
        }
    }

    /// One attempt: whether the address serves now.
    async fn serving(self) -> bool {
        match self {
            Probe::Grpc(addr) => grpc_serving(addr).await,
            Probe::Http(addr) => {
                let Ok(http) = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(2))
                    .build()
                else {
                    return false;
                };
                http.get(format!("http://{addr}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        }
    }
}

/// `base` (`postgres://user@host:port`, with or without a database and a
/// query string) naming `database` instead.
pub(crate) fn postgres_url(base: &str, database: &str) -> String {
    let (base, query) = match base.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (base, String::new()),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    format!("{server}/{database}{query}")
}

/// The last `lines` lines of a log.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Probes `probe` until the address serves.
async fn wait_serving(
    probe: Probe,
    child: &mut tokio::process::Child,
    log: &Path,
) -> anyhow::Result<()> {
    let addr = probe.addr();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the process serving {addr} exited during startup ({status}):\n{}",
                log_tail(log, 20)
            );
        }
        if probe.serving().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} not serving after 60 s:\n{}", log_tail(log, 20));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn command(bin: &Path, secret: &str, log: &Path) -> anyhow::Result<tokio::process::Command> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(bin);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("RENTALBOOK_JWT_SECRET", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    Ok(cmd)
}

/// Spawns a process and waits until every address serves.
async fn launch(
    name: &str,
    mut cmd: tokio::process::Command,
    probes: Vec<Probe>,
    log: PathBuf,
) -> anyhow::Result<Proc> {
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let pid = child.id().context("the child's pid")?;
    for p in probes {
        wait_serving(p, &mut child, &log).await?;
    }
    Ok(Proc {
        name: name.to_owned(),
        pid,
        log,
        start_to_serving: started.elapsed(),
        child,
    })
}

impl Target {
    /// Starts the target; `run_id` names its databases and stream.
    pub async fn start(spec: TargetSpec, run_id: &str) -> anyhow::Result<Target> {
        let dir = tempfile::Builder::new()
            .prefix("rentalbook-bench-")
            .tempdir()
            .context("a temp dir for the run")?;
        let secret = crate::client::fresh_secret();
        let endpoints = Endpoints::free();
        let mut target = match &spec {
            TargetSpec::AllInOne { bin } => {
                let data = dir.path().join("data");
                let proc =
                    Self::spawn_all_in_one(bin, &data, &endpoints, &secret, dir.path(), 0).await?;
                Target {
                    baseline_db_url: format!(
                        "sqlite://{}",
                        data.join("bench-baseline.db").display()
                    ),
                    storage: format!(
                        "SQLite files (WAL) in a temp dir ({})",
                        filesystem_of(dir.path())
                    ),
                    pg_stats_url: None,
                    events: "embedded event bus (SQLite)".into(),
                    spec: spec.clone(),
                    metrics: vec![endpoints.edge],
                    endpoints,
                    procs: vec![proc],
                    secret,
                    has_edge: true,
                    startups: Vec::new(),
                    servers: Vec::new(),
                    dir,
                    _nats: None,
                    _pg: None,
                }
            }
            TargetSpec::Mesh {
                bin,
                edge,
                database_url_base,
                nats_url,
                durable_postgres,
                pg_statements,
            } => {
                let settings: &[&str] = if *pg_statements {
                    &crate::pgstats::SETTINGS
                } else {
                    &[]
                };
                let (pg, base) = match database_url_base {
                    Some(b) => (None, b.clone()),
                    None => {
                        let pg = PrivatePostgres::start_with_settings(*durable_postgres, settings)
                            .await
                            .context("starting a private PostgreSQL")?;
                        let url = pg.url();
                        (Some(pg), url)
                    }
                };
                let (nats, nats_url) = match nats_url {
                    Some(u) => (None, u.clone()),
                    None => {
                        let n = PrivateNats::start_new()
                            .await
                            .context("starting a private nats-server")?;
                        let url = n.url();
                        (Some(n), url)
                    }
                };
                let stream = format!("RBBENCH_{}", run_id.to_uppercase());
                let prefix = stream.to_lowercase();
                let db_of = |svc: &str| {
                    postgres_url(
                        &base,
                        &format!("rb_bench_{run_id}_{}", svc.replace('-', "_")),
                    )
                };
                let mut launches = Vec::new();
                let mut metrics = Vec::new();
                for name in SERVICES {
                    let a = match name {
                        "book-svc" => endpoints.book,
                        "reserve-svc" => endpoints.reserve,
                        "rental-svc" => endpoints.rental,
                        _ => endpoints.view,
                    };
                    let log = dir.path().join(format!("{name}.log"));
                    let mut cmd = command(bin, &secret, &log)?;
                    let metrics_addr =
                        SocketAddr::from(([127, 0, 0, 1], rentalbook_testkit::free_port()));
                    metrics.push(metrics_addr);
                    cmd.args(["service", name, "--"])
                        .args(["--listen-addr", &a.to_string()])
                        .args(["--metrics-addr", &metrics_addr.to_string()])
                        .args(["--database-url", &db_of(name)])
                        .args(["--nats-url", &nats_url])
                        .args(["--nats-stream", &stream])
                        .args(["--nats-subject-prefix", &prefix]);
                    if name == "rental-svc" {
                        cmd.args([
                            "--reserve-svc-url",
                            &format!("http://{}", endpoints.reserve),
                        ]);
                    }
                    launches.push(launch(name, cmd, vec![Probe::Grpc(a)], log));
                }
                if *edge {
                    let log = dir.path().join("edge.log");
                    let mut cmd = command(bin, &secret, &log)?;
                    let url = |a: SocketAddr| format!("http://{a}");
                    cmd.args(["service", "edge", "--"])
                        .args(["--listen-addr", &endpoints.edge.to_string()])
                        .args(["--book-svc-url", &url(endpoints.book)])
                        .args(["--reserve-svc-url", &url(endpoints.reserve)])
                        .args(["--rental-svc-url", &url(endpoints.rental)])
                        .args(["--view-svc-url", &url(endpoints.view)]);
                    launches.push(launch("edge", cmd, vec![Probe::Http(endpoints.edge)], log));
                }
                let procs = futures::future::try_join_all(launches).await?;
                let pg_note = if pg.is_none() {
                    "the PostgreSQL server given by --database-url-base"
                } else if *durable_postgres {
                    "a private PostgreSQL started for the run, durable (fsync=on, synchronous_commit=on, PostgreSQL's defaults)"
                } else {
                    "a private PostgreSQL started for the run (fsync=off, synchronous_commit=off, as the tests run it)"
                };
                let mut servers = Vec::new();
                if let Some(pid) = pg
                    .as_ref()
                    .and_then(|p| procstat::server_on_port("postgres", p.port()))
                {
                    servers.push(("postgres (server + backends)".to_owned(), pid));
                }
                if let Some(pid) = nats
                    .as_ref()
                    .and_then(|n| procstat::server_on_port("nats-server", n.port()))
                {
                    servers.push(("nats-server".to_owned(), pid));
                }
                Target {
                    servers,
                    baseline_db_url: db_of("baseline"),
                    storage: format!(
                        "{pg_note}{}; one database per service",
                        if *pg_statements {
                            ", pg_stat_statements loaded"
                        } else {
                            ""
                        }
                    ),
                    pg_stats_url: pg.as_ref().filter(|_| *pg_statements).map(|p| p.url()),
                    events: if nats.is_some() {
                        "a private nats-server (JetStream, file store in a temp dir)".into()
                    } else {
                        format!("NATS JetStream at {nats_url}")
                    },
                    spec: spec.clone(),
                    metrics,
                    endpoints,
                    procs,
                    secret,
                    has_edge: *edge,
                    startups: Vec::new(),
                    dir,
                    _nats: nats,
                    _pg: pg,
                }
            }
        };
        target.startups = target.measure_idle().await;
        Ok(target)
    }

    async fn spawn_all_in_one(
        bin: &Path,
        data: &Path,
        e: &Endpoints,
        secret: &str,
        dir: &Path,
        generation: u32,
    ) -> anyhow::Result<Proc> {
        let log = dir.join(format!("rentalbook-{generation}.log"));
        let mut cmd = command(bin, secret, &log)?;
        cmd.arg("--data-dir")
            .arg(data)
            .args(["--host", "127.0.0.1"])
            .args(["--rental-port", &e.rental.port().to_string()])
            .args(["--reserve-port", &e.reserve.port().to_string()])
            .args(["--book-port", &e.book.port().to_string()])
            .args(["--view-port", &e.view.port().to_string()])
            .args(["--notice-port", &e.notice.port().to_string()])
            .args(["--edge-port", &e.edge.port().to_string()]);
        let probes = [e.rental, e.reserve, e.book, e.view, e.notice]
            .into_iter()
            .map(Probe::Grpc)
            .chain([Probe::Http(e.edge)])
            .collect();
        launch("rentalbook (all-in-one)", cmd, probes, log).await
    }

    /// Waits a second after serving and reads each process's resident memory.
    async fn measure_idle(&self) -> Vec<Startup> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.procs
            .iter()
            .map(|p| Startup {
                process: p.name.clone(),
                start_to_serving_ms: p.start_to_serving.as_secs_f64() * 1000.0,
                idle_rss_kib: procstat::sample(p.pid).map_or(0, |s| s.rss_kib),
            })
            .collect()
    }

    /// CPU time and memory of each process now.
    pub fn sample(&self) -> Vec<(String, procstat::ProcSample)> {
        self.procs
            .iter()
            .map(|p| (p.name.clone(), procstat::sample(p.pid).unwrap_or_default()))
            .collect()
    }

    /// Whether every process is still running.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited ({status}):\n{}", p.name, log_tail(&p.log, 20));
            }
        }
        Ok(())
    }

    /// Stops every process with SIGTERM (SIGKILL after 15 s); how long each took.
    pub async fn stop(&mut self) -> Vec<(String, Duration)> {
        let mut took = Vec::new();
        for p in &mut self.procs {
            let started = Instant::now();
            // SAFETY: a signal to our own child, by its pid.
            unsafe {
                libc::kill(p.pid as libc::pid_t, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(15), p.child.wait())
                .await
                .is_err()
            {
                let _ = p.child.kill().await;
            }
            took.push((p.name.clone(), started.elapsed()));
        }
        took
    }

    /// All-in-one only: stops the process and starts it again on the same
    /// data directory (a warm start, with the run's data), measuring it.
    pub async fn restart_all_in_one(&mut self) -> anyhow::Result<Option<Startup>> {
        let TargetSpec::AllInOne { bin } = self.spec.clone() else {
            return Ok(None);
        };
        self.stop().await;
        let data = self.dir.path().join("data");
        let proc = Self::spawn_all_in_one(
            &bin,
            &data,
            &self.endpoints,
            &self.secret,
            self.dir.path(),
            1,
        )
        .await?;
        self.procs = vec![proc];
        let mut idle = self.measure_idle().await;
        Ok(idle.pop())
    }
}

fn filesystem_of(path: &Path) -> String {
    // The filesystem type of the temp dir (tmpfs makes SQLite's fsyncs free).
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1])).then(|| (f[1].len(), f[2].to_owned()))
        })
        .max()
        .map_or_else(|| "unknown filesystem".into(), |(_, fs)| fs)
}

/// One attempt: whether `addr`'s gRPC health answers SERVING now.
pub(crate) async fn grpc_serving(addr: SocketAddr) -> bool {
    let attempt = async {
        let channel = endpoint(addr)
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .ok()?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?
            .into_inner()
            .status;
        (status == ServingStatus::Serving as i32).then_some(())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_name_the_database() {
        assert_eq!(
            postgres_url("postgres://postgres@127.0.0.1:5432", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            postgres_url("postgres://u:p@h:1/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
    }
}
