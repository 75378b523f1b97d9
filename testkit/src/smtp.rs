//! A real SMTP server for tests: aiosmtpd (PyPI `aiosmtpd`, Debian
//! `python3-aiosmtpd`) on a free port of 127.0.0.1, keeping every message
//! it receives in a Maildir that the test reads. It can be stopped and
//! started again on the same port (an outage), and it stops with its owner.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One message the sink received.
#[derive(Clone, Debug)]
pub struct Mail {
    pub to: String,
    pub from: String,
    pub subject: String,
    /// The text, its transfer encoding undone.
    pub body: String,
    pub message_id: String,
}

pub struct SmtpSink {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// `python3`, with aiosmtpd on its path: from `$RENTALBOOK_AIOSMTPD` (where
/// `scripts/test` installs it), else as installed.
fn python() -> Command {
    let mut c = Command::new("python3");
    if let Some(dir) = std::env::var_os("RENTALBOOK_AIOSMTPD") {
        c.env("PYTHONPATH", dir);
    }
    c
}

impl SmtpSink {
    /// Starts a sink on a free port.
    pub fn start() -> Result<Self> {
        let mut sink = Self {
            port: crate::free_port(),
            dir: tempfile::tempdir()?,
            child: None,
        };
        sink.start_again()?;
        Ok(sink)
    }

    /// `smtp://127.0.0.1:PORT`, plain.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn maildir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// Starts the server again (same port, same mailbox) after [`stop`].
    ///
    /// [`stop`]: SmtpSink::stop
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::File::create(self.dir.path().join("aiosmtpd.log"))?;
        let child = python()
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(self.maildir())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("running python3 -m aiosmtpd (scripts/test installs it)")?;
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(self.dir.path().join("aiosmtpd.log"))
                    .unwrap_or_default();
                self.child = None;
                bail!("aiosmtpd exited with {status}: {log}");
            }
            if started.elapsed() > crate::START_TIMEOUT {
                bail!("aiosmtpd did not listen on port {} in time", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server: connections to its port are refused until
    /// [`start_again`](SmtpSink::start_again).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir().join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let modified = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                files.push((modified, e.path()));
            }
        }
        files.sort();
        files.iter().filter_map(|(_, p)| parse(p)).collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn parse(path: &Path) -> Option<Mail> {
    let raw = std::fs::read(path).ok()?;
    let message = mail_parser::MessageParser::default().parse(&raw)?;
    let first = |a: Option<&mail_parser::Address<'_>>| {
        a.and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or_default()
            .to_owned()
    };
    Some(Mail {
        to: first(message.to()),
        from: first(message.from()),
        subject: message.subject().unwrap_or_default().to_owned(),
        body: message
            .body_text(0)
            .map(|b| b.replace("\r\n", "\n"))
            .unwrap_or_default(),
        message_id: message.message_id().unwrap_or_default().to_owned(),
    })
}
