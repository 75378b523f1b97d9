//! Private PostgreSQL clusters and per-test databases.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use tempfile::TempDir;
use tokio::sync::OnceCell;

use crate::process::{Spec, Supervised, chown_to, find_program, is_executable, postgres_run_as};
use crate::{START_TIMEOUT, STOP_TIMEOUT, StartFailure, free_port, wait_port_closed};

/// A private PostgreSQL cluster in a temp dir, on a free port of 127.0.0.1,
/// owned by one test, for fault tests that stop and restart the database.
///
/// Authentication is `trust`; the superuser is `postgres`. When the tests run
/// as root, the cluster runs as the `postgres` system user.
///
/// * [`PrivatePostgres::stop`] stops it with SIGINT ("fast" shutdown: open
///   sessions are disconnected, then a clean shutdown) and waits until the
///   port is closed.
/// * [`PrivatePostgres::kill`] stops it with SIGQUIT ("immediate" shutdown,
///   like a crash: the next start runs crash recovery). The cluster runs with
///   `synchronous_commit=off`, so commits of the last few hundred
///   milliseconds before a kill may be lost, as after a real crash.
/// * [`PrivatePostgres::start`] starts it again on the same port and data
///   directory.
/// * Dropping it stops it (SIGINT) and removes its directory. If the test
///   process dies without dropping it, the server is stopped and its directory
///   removed all the same.
pub struct PrivatePostgres {
    port: u16,
    dir: TempDir,
    run_as: Option<(u32, u32)>,
    /// Started with [`PrivatePostgres::start_durable`].
    durable: bool,
    /// Settings given to [`PrivatePostgres::start_with_settings`].
    settings: Vec<String>,
    server: Option<Supervised>,
    /// Frozen by [`PrivatePostgres::pause`].
    paused: bool,
}

impl PrivatePostgres {
    /// Creates a new cluster (initdb), starts it and waits until it accepts
    /// connections.
    pub async fn start_new() -> Result<Self> {
        Self::start_with(false).await
    }

    /// Like [`PrivatePostgres::start_new`], but durable as a library would
    /// run its server: `fsync`, `synchronous_commit` and `full_page_writes`
    /// on (PostgreSQL's defaults), so each commit waits for its WAL flush.
    /// For measuring what a commit costs, not for fault tests.
    pub async fn start_durable() -> Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(durable: bool) -> Result<Self> {
        Self::start_with_settings(durable, &[]).await
    }

    /// Like [`PrivatePostgres::start_new`] or, when `durable`,
    /// [`PrivatePostgres::start_durable`], with more server settings
    /// (`name=value`, as `postgres -c` takes them), kept across stop/start:
    /// `shared_preload_libraries=pg_stat_statements` to measure what each
    /// statement costs the server, say.
    pub async fn start_with_settings(durable: bool, settings: &[&str]) -> Result<Self> {
        let run_as = postgres_run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("rentalbook-pg-")
            .tempdir()
            .context("creating a temp dir for PostgreSQL")?;
        let mut cluster = Cluster::init(dir.path(), run_as).await?;
        cluster.durable = durable;
        cluster.settings = settings.iter().map(|s| (*s).to_owned()).collect();
        let (port, server) = cluster.launch_on_free_port(Some(dir.path())).await?;
        Ok(Self {
            port,
            dir,
            run_as,
            durable,
            settings: cluster.settings,
            server: Some(server),
            paused: false,
        })
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`; the same across
    /// stop/start.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Stops the server ("fast" shutdown, SIGINT) and waits until its port is
    /// closed. Does nothing if it is stopped already.
    pub async fn stop(&mut self) {
        self.halt("INT").await;
    }

    /// Stops the server like a crash ("immediate" shutdown, SIGQUIT) and
    /// waits until its port is closed. Does nothing if it is stopped already.
    pub async fn kill(&mut self) {
        self.halt("QUIT").await;
    }

    /// Freezes the server and its backends (SIGSTOP), as a hung database:
    /// connections stay open and nothing answers. [`PrivatePostgres::resume`]
    /// thaws it; stopping or dropping it thaws it first.
    pub fn pause(&mut self) {
        if let Some(server) = &self.server {
            server.signal_tree(libc::SIGSTOP);
            self.paused = true;
        }
    }

    /// Thaws a server frozen by [`PrivatePostgres::pause`].
    pub fn resume(&mut self) {
        if let Some(server) = &self.server {
            server.signal_tree(libc::SIGCONT);
        }
        self.paused = false;
    }

    async fn halt(&mut self, signal: &str) {
        if self.paused {
            self.resume();
        }
        if let Some(mut server) = self.server.take() {
            server.stop(signal, STOP_TIMEOUT).await;
            wait_port_closed(self.port, STOP_TIMEOUT).await;
        }
    }

    /// Starts the server again on the same port and data directory and waits
    /// until it accepts connections. Does nothing if it is running.
    pub async fn start(&mut self) -> Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        let cluster = Cluster {
            dir: self.dir.path().to_path_buf(),
            run_as: self.run_as,
            durable: self.durable,
            settings: self.settings.clone(),
        };
        let server = cluster
            .launch(self.port, Some(self.dir.path()))
            .await
            .map_err(|f| f.error)?;
        self.server = Some(server);
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        if let Some(mut server) = self.server.take() {
            server.stop_blocking("INT", STOP_TIMEOUT);
        }
    }
}

impl std::fmt::Debug for PrivatePostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivatePostgres")
            .field("url", &self.url())
            .field("dir", &self.dir.path())
            .field("running", &self.is_running())
            .finish()
    }
}

/// The process-wide cluster behind [`crate::fresh_postgres_url`].
struct Shared {
    url: String,
    // Never dropped: the wrapper stops the server when this process exits.
    _server: Mutex<Supervised>,
}

static SHARED: OnceCell<Shared> = OnceCell::const_new();

async fn shared_admin_url() -> Result<String> {
    let shared = SHARED
        .get_or_try_init(|| async {
            let run_as = postgres_run_as()?;
            let dir = tempfile::Builder::new()
                .prefix("rentalbook-pg-shared-")
                .tempdir()
                .context("creating a temp dir for PostgreSQL")?
                .keep();
            let started = async {
                let cluster = Cluster::init(&dir, run_as).await?;
                cluster.launch_on_free_port(Some(&dir)).await
            }
            .await;
            match started {
                Ok((port, server)) => Ok(Shared {
                    url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                    _server: Mutex::new(server),
                }),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    Err(e)
                }
            }
        })
        .await?;
    Ok(shared.url.clone())
}

/// See [`crate::fresh_postgres_url`].
pub(crate) async fn fresh_database_url() -> Result<String> {
    let admin = match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ => shared_admin_url().await?,
    };
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let db = connect(&admin).await?;
            let created = db
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .map(|_| ());
            let _ = db.close().await;
            created.map_err(anyhow::Error::from)
        }
        .await;
        match result {
            Ok(()) => return Ok(with_database(&admin, &name)),
            Err(_) if attempt < 5 => {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => {
                return Err(e.context(format!("creating database {name} on {}", redact(&admin))));
            }
        }
    }
}

/// `url` with its database (path) replaced by `database`; the query string,
/// if any, is kept.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{}", &base[..path_start], database);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..authority_start],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// One connection, with short timeouts, quiet.
async fn connect(url: &str) -> Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.to_string());
    options
        .max_connections(1)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(3))
        .acquire_timeout(Duration::from_secs(3))
        .sqlx_logging(false);
    Ok(Database::connect(options).await?)
}

struct PgBinaries {
    initdb: PathBuf,
    postgres: PathBuf,
}

/// initdb and postgres from the highest version under /usr/lib/postgresql,
/// else from PATH.
fn pg_binaries() -> Result<PgBinaries> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Vec<u32> = name
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            (is_executable(&bin.join("initdb")) && is_executable(&bin.join("postgres")))
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(PgBinaries {
            initdb: bin.join("initdb"),
            postgres: bin.join("postgres"),
        });
    }
    let initdb = find_program("initdb", &[]);
    let postgres = initdb
        .as_ref()
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| p.parent().map(|d| d.join("postgres")))
        .filter(|p| is_executable(p))
        .or_else(|| find_program("postgres", &[]));
    match (initdb, postgres) {
        (Some(initdb), Some(postgres)) => Ok(PgBinaries { initdb, postgres }),
        _ => bail!(
            "PostgreSQL server binaries (initdb, postgres) not found under \
             /usr/lib/postgresql/*/bin nor on PATH \
             (install them: apt-get install -y postgresql, or run scripts/test)"
        ),
    }
}

/// A cluster directory: `data/` (PGDATA), the socket and `postgres.log`.
struct Cluster {
    dir: PathBuf,
    run_as: Option<(u32, u32)>,
    /// Every commit flushed to disk (PostgreSQL's defaults); otherwise
    /// fsync and synchronous commit are off, as tests want.
    durable: bool,
    /// More `-c` settings, after those above.
    settings: Vec<String>,
}

impl Cluster {
    async fn init(dir: &Path, run_as: Option<(u32, u32)>) -> Result<Self> {
        chown_to(dir, run_as)?;
        let bins = pg_binaries()?;
        let data = dir.join("data");
        let mut cmd = Command::new(&bins.initdb);
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .current_dir(dir)
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .context("initdb task")?
            .with_context(|| format!("running {}", bins.initdb.display()))?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            run_as,
            durable: false,
            settings: Vec::new(),
        })
    }

    async fn launch_on_free_port(&self, cleanup: Option<&Path>) -> Result<(u16, Supervised)> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port();
            match self.launch(port, cleanup).await {
                Ok(server) => return Ok((port, server)),
                Err(failure) if failure.exited_early && attempts < 3 => continue,
                Err(failure) => return Err(failure.error),
            }
        }
    }

    async fn launch(
        &self,
        port: u16,
        cleanup: Option<&Path>,
    ) -> std::result::Result<Supervised, StartFailure> {
        let bins = pg_binaries().map_err(StartFailure::fatal)?;
        let log = self.dir.join("postgres.log");
        let mut args = vec![
            "-D".to_string(),
            self.dir.join("data").display().to_string(),
            "-p".to_string(),
            port.to_string(),
            "-k".to_string(),
            self.dir.display().to_string(),
        ];
        let durability = if self.durable {
            ["fsync=on", "synchronous_commit=on", "full_page_writes=on"]
        } else {
            [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ]
        };
        for setting in ["listen_addresses=127.0.0.1", "max_connections=300"]
            .into_iter()
            .chain(durability)
            .chain(self.settings.iter().map(String::as_str))
        {
            args.push("-c".to_string());
            args.push(setting.to_string());
        }
        let spec = Spec {
            program: &bins.postgres,
            args,
            log: &log,
            cleanup,
            eof_signal: "INT",
            run_as: self.run_as,
            cwd: &self.dir,
        };
        let mut server = Supervised::spawn(&spec).map_err(StartFailure::fatal)?;
        match wait_ready(port, &mut server).await {
            Ok(()) => Ok(server),
            Err(failure) => {
                server.stop("QUIT", STOP_TIMEOUT).await;
                Err(failure)
            }
        }
    }
}

async fn wait_ready(port: u16, server: &mut Supervised) -> std::result::Result<(), StartFailure> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last_error = String::from("port not open yet");
    loop {
        if server.has_exited() {
            return Err(StartFailure {
                exited_early: true,
                error: anyhow!(
                    "PostgreSQL on port {port} exited during startup\n{}",
                    server.log_tail()
                ),
            });
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            match select_one(&url).await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = format!("{e:#}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(StartFailure::fatal(anyhow!(
                "PostgreSQL on port {port} not ready after {:?}: {last_error}\n{}",
                START_TIMEOUT,
                server.log_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn select_one(url: &str) -> Result<()> {
    let db = connect(url).await?;
    let result = db.execute_unprepared("SELECT 1").await;
    let _ = db.close().await;
    result?;
    Ok(())
}
