//! The system under the campaign, with the handles its faults need: the mesh
//! (each service a `rentalbook service <name>` process with its own
//! PostgreSQL database, over a private nats-server, rental-svc reaching
//! reserve-svc through the fault proxy), or the all-in-one `rentalbook`
//! process on SQLite files and the embedded bus.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rentalbook_testkit::{PrivateNats, PrivatePostgres};

use crate::target::{SCRUBBED_ENV, grpc_serving as serving, log_tail, postgres_url};
use sea_orm::ConnectionTrait;

use super::proxy::FaultProxy;
use crate::client::Endpoints;

/// Which system the campaign runs against.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Each service its own process on PostgreSQL and NATS JetStream. The
    /// databases go on `database_url_base`'s server (a private one when
    /// None); NATS is always a private server, so it can be stopped.
    Mesh { database_url_base: Option<String> },
    /// The one `rentalbook` process on SQLite files and the embedded bus.
    AllInOne,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Mesh { .. } => "mesh",
            Backend::AllInOne => "all-in-one",
        }
    }
}

pub use crate::target::SERVICES;
/// The all-in-one's process, as faults name it.
pub const ALL_IN_ONE: &str = "rentalbook";
/// The all-in-one's SQLite files.
pub const SQLITE_FILES: [&str; 5] = ["book.db", "reserve.db", "rental.db", "view.db", "events.db"];

/// Policy for the campaign: holds expire (R4 runs), calls to the desk give
/// up soon, the breaker opens and closes within a fault, stuck rentals are
/// settled quickly, and events come again soon after a consumer vanishes.
/// A consumer gives up on an event it refuses after 3 tries (8 by default),
/// so that a failure of its own taken for the event's (and dead-lettered)
/// shows within the shortest fault.
const POLICY: &[(&str, &str)] = &[
    ("EVENT_MAX_DELIVER", "3"),
    ("HOLD_PICKUP_WINDOW", "15s"),
    ("EXPIRY_SWEEP_INTERVAL", "1s"),
    ("RESERVE_CALL_TIMEOUT", "1s"),
    ("BREAKER_FAILURES", "3"),
    ("BREAKER_OPEN_FOR", "1s"),
    ("RENT_RECOVERY_INTERVAL", "200ms"),
    ("EVENT_ACK_WAIT", "2s"),
    ("LOG_FORMAT", "text"),
    ("RUST_LOG", "warn"),
];

struct Proc {
    name: String,
    args: Vec<String>,
    probes: Vec<SocketAddr>,
    child: Option<tokio::process::Child>,
    paused: bool,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> Option<libc::pid_t> {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .map(|p| p as libc::pid_t)
    }
}

/// The running system.
pub struct System {
    pub backend: Backend,
    bin: PathBuf,
    pub secret: String,
    pub endpoints: Endpoints,
    procs: Vec<Proc>,
    /// Logs, the all-in-one's data, the history and the check's reports.
    pub dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    nats: Option<PrivateNats>,
    pg: Option<PrivatePostgres>,
    /// The PostgreSQL server's URL (any database), for the database faults.
    pg_server: Option<String>,
    /// Each service's database: URL and name.
    databases: BTreeMap<&'static str, (String, String)>,
    stream: String,
    pub proxy: Option<FaultProxy>,
}

impl System {
    /// Starts the system; `run_id` names its databases and stream, `keep`
    /// leaves its directory behind (else a temp dir removed at the end).
    pub async fn start(
        backend: Backend,
        bin: &Path,
        run_id: &str,
        keep: Option<PathBuf>,
    ) -> anyhow::Result<System> {
        let (dir, temp) = match keep {
            Some(d) => {
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("rentalbook-chaos-")
                    .tempdir()
                    .context("a temp dir for the campaign")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let secret = crate::client::fresh_secret();
        let endpoints = Endpoints::free();
        let mut system = System {
            backend: backend.clone(),
            bin: bin.to_path_buf(),
            secret,
            endpoints,
            procs: Vec::new(),
            dir,
            temp,
            nats: None,
            pg: None,
            pg_server: None,
            databases: BTreeMap::new(),
            stream: format!("RBCHAOS_{}", run_id.to_uppercase()),
            proxy: None,
        };
        match &backend {
            Backend::AllInOne => {
                let data = system.dir.join("data");
                let e = system.endpoints;
                let args = [
                    "--data-dir".to_owned(),
                    data.display().to_string(),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--rental-port".into(),
                    e.rental.port().to_string(),
                    "--reserve-port".into(),
                    e.reserve.port().to_string(),
                    "--book-port".into(),
                    e.book.port().to_string(),
                    "--view-port".into(),
                    e.view.port().to_string(),
                    "--notice-port".into(),
                    e.notice.port().to_string(),
                    "--edge-port".into(),
                    e.edge.port().to_string(),
                ];
                system.procs.push(Proc {
                    name: ALL_IN_ONE.into(),
                    args: args.to_vec(),
                    probes: vec![e.rental, e.reserve, e.book, e.view],
                    child: None,
                    paused: false,
                    log: system.dir.join("rentalbook.log"),
                });
            }
            Backend::Mesh { database_url_base } => {
                let base = match database_url_base {
                    Some(b) => b.clone(),
                    None => {
                        let pg = PrivatePostgres::start_new()
                            .await
                            .context("starting a private PostgreSQL")?;
                        let url = pg.url();
                        system.pg = Some(pg);
                        url
                    }
                };
                let nats = PrivateNats::start_new()
                    .await
                    .context("starting a private nats-server")?;
                let nats_url = nats.url();
                system.nats = Some(nats);
                let proxy = FaultProxy::start(system.endpoints.reserve).await?;
                let prefix = system.stream.to_lowercase();
                for name in SERVICES {
                    let database = format!("rb_chaos_{run_id}_{}", name.replace('-', "_"));
                    let url = postgres_url(&base, &database);
                    system.databases.insert(name, (url.clone(), database));
                    let a = system.service_addr(name);
                    let mut args: Vec<String> = [
                        "service",
                        name,
                        "--",
                        "--listen-addr",
                        &a.to_string(),
                        "--metrics-addr",
                        "off",
                        "--database-url",
                        &url,
                        "--nats-url",
                        &nats_url,
                        "--nats-stream",
                        &system.stream,
                        "--nats-subject-prefix",
                        &prefix,
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                    if name == "rental-svc" {
                        args.extend([
                            "--reserve-svc-url".into(),
                            format!("http://{}", proxy.addr()),
                        ]);
                    }
                    system.procs.push(Proc {
                        name: name.into(),
                        args,
                        probes: vec![a],
                        child: None,
                        paused: false,
                        log: system.dir.join(format!("{name}.log")),
                    });
                }
                system.pg_server = Some(base);
                system.proxy = Some(proxy);
            }
        }
        let names: Vec<String> = system.procs.iter().map(|p| p.name.clone()).collect();
        for name in &names {
            system.spawn(name)?;
        }
        for name in &names {
            system.wait_serving(name, Duration::from_secs(90)).await?;
        }
        Ok(system)
    }

    pub fn service_addr(&self, name: &str) -> SocketAddr {
        match name {
            "book-svc" => self.endpoints.book,
            "reserve-svc" => self.endpoints.reserve,
            "rental-svc" => self.endpoints.rental,
            _ => self.endpoints.view,
        }
    }

    /// The processes faults may hit.
    pub fn process_names(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.name.clone()).collect()
    }

    fn proc_mut(&mut self, name: &str) -> anyhow::Result<&mut Proc> {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name}"))
    }

    fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let secret = self.secret.clone();
        let p = self.proc_mut(name)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .with_context(|| format!("opening {}", p.log.display()))?;
        let mut cmd = tokio::process::Command::new(&bin);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd.envs(POLICY.iter().copied())
            .env("RENTALBOOK_JWT_SECRET", &secret)
            .args(&p.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        p.child = Some(cmd.spawn().with_context(|| format!("starting {name}"))?);
        p.paused = false;
        Ok(())
    }

    /// Waits until every address of the process serves.
    pub async fn wait_serving(&mut self, name: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let probes = self.proc_mut(name)?.probes.clone();
        for a in probes {
            loop {
                let p = self.proc_mut(name)?;
                if let Some(child) = p.child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    let log = p.log.clone();
                    p.child = None;
                    bail!("{name} exited ({status}):\n{}", log_tail(&log, 30));
                }
                if serving(a).await {
                    break;
                }
                if Instant::now() > deadline {
                    let log = self.proc_mut(name)?.log.clone();
                    bail!(
                        "{name} not serving {a} after {within:?}:\n{}",
                        log_tail(&log, 30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// SIGKILL, and waits until it is gone.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let p = self.proc_mut(name)?;
        if let Some(mut child) = p.child.take() {
            if p.paused {
                if let Some(pid) = child.id() {
                    // SAFETY: a signal to our own child.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
                }
                p.paused = false;
            }
            child.kill().await.ok();
        }
        Ok(())
    }

    /// Starts a killed process again and waits until it serves.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        self.spawn(name)?;
        self.wait_serving(name, Duration::from_secs(60)).await
    }

    /// SIGSTOP: the process hangs with its connections open.
    pub fn pause(&mut self, name: &str) -> anyhow::Result<()> {
        let p = self.proc_mut(name)?;
        if let Some(pid) = p.pid() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            p.paused = true;
        }
        Ok(())
    }

    /// SIGCONT after [`System::pause`].
    pub fn resume(&mut self, name: &str) -> anyhow::Result<()> {
        let p = self.proc_mut(name)?;
        if let Some(pid) = p.pid() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        p.paused = false;
        Ok(())
    }

    async fn pg_admin(&self) -> anyhow::Result<sea_orm::DatabaseConnection> {
        let server = self
            .pg_server
            .as_deref()
            .context("the all-in-one has no PostgreSQL")?;
        let url = postgres_url(server, "postgres");
        let mut opts = sea_orm::ConnectOptions::new(url);
        opts.max_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .sqlx_logging(false);
        Ok(sea_orm::Database::connect(opts).await?)
    }

    /// Takes a service's database away (no new connections, open ones
    /// ended) or gives it back.
    pub async fn set_database(&self, service: &str, available: bool) -> anyhow::Result<()> {
        let (_, name) = self
            .databases
            .get(service)
            .with_context(|| format!("{service} has no database of its own"))?;
        let admin = self.pg_admin().await?;
        admin
            .execute_unprepared(&format!(
                "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS {available}"
            ))
            .await?;
        if !available {
            admin
                .execute_unprepared(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ))
                .await?;
        }
        admin.close().await?;
        Ok(())
    }

    pub async fn stop_nats(&mut self) -> anyhow::Result<()> {
        self.nats
            .as_mut()
            .context("the all-in-one has no NATS")?
            .stop()
            .await;
        Ok(())
    }

    pub async fn start_nats(&mut self) -> anyhow::Result<()> {
        if let Some(n) = self.nats.as_mut() {
            n.start().await?;
        }
        Ok(())
    }

    /// All-in-one: an outside writer holds `file`'s write lock for `hold`.
    pub async fn hold_write_lock(&self, file: &str, hold: Duration) -> anyhow::Result<()> {
        use sea_orm::sqlx::{Connection as _, SqliteConnection};
        let path = self.dir.join("data").join(file);
        let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        // The service's own writers wait up to their busy timeout; so do we.
        sea_orm::sqlx::query("PRAGMA busy_timeout = 10000")
            .execute(&mut conn)
            .await?;
        sea_orm::sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .with_context(|| format!("taking {file}'s write lock"))?;
        tokio::time::sleep(hold).await;
        sea_orm::sqlx::query("ROLLBACK").execute(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// Ends every fault: processes running and thawed, databases and NATS
    /// back, the proxy passing; waits until everything serves.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        if let Some(p) = &self.proxy {
            p.set(super::proxy::Mode::Pass);
        }
        self.start_nats().await?;
        for service in self.databases.keys().copied().collect::<Vec<_>>() {
            self.set_database(service, true).await?;
        }
        for name in self.process_names() {
            let p = self.proc_mut(&name)?;
            if p.paused {
                self.resume(&name)?;
            }
            let p = self.proc_mut(&name)?;
            let gone = match p.child.as_mut() {
                None => true,
                Some(c) => c.try_wait()?.is_some(),
            };
            if gone {
                self.spawn(&name)?;
            }
            self.wait_serving(&name, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// `rentalbook check` on this system, with the workload's history.
    pub fn check_command(&self, history: &Path, skip_replay: bool) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.bin);
        // An operator's RENTALBOOK_CHECK_SKIP still applies.
        for var in SCRUBBED_ENV
            .iter()
            .filter(|v| **v != "RENTALBOOK_CHECK_SKIP")
        {
            cmd.env_remove(var);
        }
        cmd.arg("check")
            .args(["--grace", "2s"])
            .arg("--history")
            .arg(history);
        if skip_replay {
            cmd.args(["--skip", "replay"]);
        }
        match &self.backend {
            Backend::AllInOne => {
                cmd.arg("--data-dir").arg(self.dir.join("data"));
            }
            Backend::Mesh { .. } => {
                let url = |s: &str| self.databases[s].0.clone();
                cmd.args(["--book-database-url", &url("book-svc")])
                    .args(["--reserve-database-url", &url("reserve-svc")])
                    .args(["--rental-database-url", &url("rental-svc")])
                    .args(["--view-database-url", &url("view-svc")])
                    .args([
                        "--nats-url",
                        &self.nats.as_ref().map(|n| n.url()).unwrap_or_default(),
                    ])
                    .args(["--nats-stream", &self.stream])
                    .args(["--nats-subject-prefix", &self.stream.to_lowercase()]);
            }
        }
        cmd
    }

    /// Keeps the campaign's directory after the end; where it is.
    pub fn persist(&mut self) -> PathBuf {
        match self.temp.take() {
            Some(t) => t.keep(),
            None => self.dir.clone(),
        }
    }

    /// The last lines of every process's log.
    pub fn log_tails(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {}:\n{}", p.name, log_tail(&p.log, 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every process (SIGTERM, SIGKILL after 15 s) and, on a server
    /// the campaign did not start, drops its databases.
    pub async fn stop(&mut self) {
        self.stop_processes().await;
        if self.pg.is_none()
            && let Ok(admin) = self.pg_admin().await
        {
            // Cleanup only: a busy server (a DROP waits for a checkpoint)
            // must not hold the run up; what is left is named by the run.
            for (_, name) in self.databases.values() {
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), admin.execute_unprepared(&sql))
                        .await;
            }
            let _ = admin.close().await;
        }
    }

    /// Stops every process (SIGTERM, SIGKILL after 15 s); the databases,
    /// the data directory and NATS stay.
    pub async fn stop_processes(&mut self) {
        for p in &mut self.procs {
            let Some(mut child) = p.child.take() else {
                continue;
            };
            if let Some(pid) = child.id() {
                // SAFETY: signals to our own child.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGCONT);
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            p.paused = false;
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// A mesh service's database URL.
    pub fn database_url(&self, service: &str) -> Option<String> {
        self.databases.get(service).map(|(url, _)| url.clone())
    }

    /// The all-in-one's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The mesh's NATS URL, stream and subject prefix.
    pub fn nats(&self) -> Option<(String, String, String)> {
        self.nats
            .as_ref()
            .map(|n| (n.url(), self.stream.clone(), self.stream.to_lowercase()))
    }
}
