//! Private nats-server instances with JetStream.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tempfile::TempDir;
use tokio::sync::OnceCell;

use crate::process::{Spec, Supervised, find_program};
use crate::{START_TIMEOUT, STOP_TIMEOUT, StartFailure, free_port, wait_port_closed};

/// A nats-server with JetStream on a free port of 127.0.0.1 and its own store
/// directory, owned by one test, for fault tests that stop and restart NATS.
///
/// * [`PrivateNats::stop`] stops it gracefully with SIGTERM (nats-server
///   flushes its JetStream store) and waits until the port is closed.
/// * [`PrivateNats::kill`] stops it abruptly with SIGKILL, like a crash.
/// * [`PrivateNats::start`] starts it again on the same port with the same
///   store directory, so streams and their messages persist.
/// * Dropping it stops it (SIGTERM) and removes its directory. If the test
///   process dies without dropping it, the server is stopped and its directory
///   removed all the same (see the wrapper in `process.rs`).
pub struct PrivateNats {
    port: u16,
    dir: TempDir,
    server: Option<Supervised>,
}

impl PrivateNats {
    /// Starts a new server and waits until it accepts JetStream requests.
    pub async fn start_new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("rentalbook-nats-")
            .tempdir()
            .context("creating a temp dir for nats-server")?;
        let server_dir = dir.path().to_path_buf();
        let (port, server) = launch_on_free_port(&server_dir, Some(&server_dir)).await?;
        Ok(Self {
            port,
            dir,
            server: Some(server),
        })
    }

    /// `nats://127.0.0.1:PORT`; the same across stop/start.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Stops the server with SIGTERM and waits until its port is closed.
    /// Does nothing if it is stopped already.
    pub async fn stop(&mut self) {
        self.halt("TERM").await;
    }

    /// Kills the server with SIGKILL (a crash) and waits until its port is
    /// closed. Does nothing if it is stopped already.
    pub async fn kill(&mut self) {
        self.halt("KILL").await;
    }

    async fn halt(&mut self, signal: &str) {
        if let Some(mut server) = self.server.take() {
            server.stop(signal, STOP_TIMEOUT).await;
            wait_port_closed(self.port, STOP_TIMEOUT).await;
        }
    }

    /// Starts the server again on the same port and store directory and waits
    /// until it accepts JetStream requests. Does nothing if it is running.
    pub async fn start(&mut self) -> Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        let dir = self.dir.path().to_path_buf();
        let server = launch(self.port, &dir, Some(&dir))
            .await
            .map_err(|f| f.error)?;
        self.server = Some(server);
        Ok(())
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop_blocking("TERM", STOP_TIMEOUT);
        }
    }
}

impl std::fmt::Debug for PrivateNats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateNats")
            .field("url", &self.url())
            .field("dir", &self.dir.path())
            .field("running", &self.is_running())
            .finish()
    }
}

/// The process-wide server behind [`crate::nats_url`].
struct Shared {
    url: String,
    // Never dropped: the wrapper stops the server when this process exits.
    _server: Mutex<Supervised>,
}

static SHARED: OnceCell<Shared> = OnceCell::const_new();

pub(crate) async fn shared_url() -> Result<String> {
    let shared = SHARED
        .get_or_try_init(|| async {
            let dir = tempfile::Builder::new()
                .prefix("rentalbook-nats-shared-")
                .tempdir()
                .context("creating a temp dir for nats-server")?
                .keep();
            match launch_on_free_port(&dir, Some(&dir)).await {
                Ok((port, server)) => Ok(Shared {
                    url: format!("nats://127.0.0.1:{port}"),
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

fn nats_server_binary() -> Result<PathBuf> {
    find_program(
        "nats-server",
        &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
    )
    .ok_or_else(|| {
        anyhow!(
            "nats-server not found on PATH nor in /usr/sbin \
                 (install it: apt-get install -y nats-server, or run scripts/test)"
        )
    })
}

/// Starts a server in `dir` on a free port, trying another port if the
/// server exits at once (another process took the port meanwhile).
async fn launch_on_free_port(dir: &Path, cleanup: Option<&Path>) -> Result<(u16, Supervised)> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let port = free_port();
        match launch(port, dir, cleanup).await {
            Ok(server) => return Ok((port, server)),
            Err(failure) if failure.exited_early && attempts < 3 => continue,
            Err(failure) => return Err(failure.error),
        }
    }
}

async fn launch(
    port: u16,
    dir: &Path,
    cleanup: Option<&Path>,
) -> std::result::Result<Supervised, StartFailure> {
    let program = nats_server_binary().map_err(StartFailure::fatal)?;
    let store = dir.join("store");
    let log = dir.join("nats-server.log");
    let spec = Spec {
        program: &program,
        args: vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            store.display().to_string(),
        ],
        log: &log,
        cleanup,
        eof_signal: "TERM",
        run_as: None,
        cwd: dir,
    };
    let mut server = Supervised::spawn(&spec).map_err(StartFailure::fatal)?;
    match wait_ready(port, &mut server).await {
        Ok(()) => Ok(server),
        Err(failure) => {
            server.stop("KILL", STOP_TIMEOUT).await;
            Err(failure)
        }
    }
}

async fn wait_ready(port: u16, server: &mut Supervised) -> std::result::Result<(), StartFailure> {
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last_error = String::from("port not open yet");
    loop {
        if server.has_exited() {
            return Err(StartFailure {
                exited_early: true,
                error: anyhow!(
                    "nats-server on port {port} exited during startup\n{}",
                    server.log_tail()
                ),
            });
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            match jetstream_ready(&url).await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = format!("{e:#}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(StartFailure::fatal(anyhow!(
                "nats-server on port {port} not ready after {:?}: {last_error}\n{}",
                START_TIMEOUT,
                server.log_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects and asks JetStream for the account info, raw: the typed
/// `query_account` of async-nats (built for newer servers) cannot parse the
/// answer of older servers such as Debian's 2.9.
async fn jetstream_ready(url: &str) -> Result<()> {
    let attempt = async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url)
            .await?;
        let reply = client.request("$JS.API.INFO", "".into()).await?;
        let body = String::from_utf8_lossy(&reply.payload);
        if !body.contains("account_info_response") || body.contains("\"error\"") {
            anyhow::bail!("JetStream not ready: {body}");
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .map_err(|_| anyhow!("JetStream did not answer within 3s"))?
}
