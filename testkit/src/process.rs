//! Supervising a server process so that it never outlives the test process.
//!
//! Every server is started through a small `sh` wrapper whose standard input
//! is a pipe whose write end only the test process holds (close-on-exec, so no
//! other child inherits it). The wrapper starts the server in the background,
//! prints its pid, and a background reader waits on that pipe:
//!
//! * a line naming a signal (`TERM`, `KILL`, `INT`, ...) is an explicit stop:
//!   the reader sends that signal and exits, leaving the data directory alone;
//! * end of file means the owner is gone (the test process exited, crashed or
//!   was killed, or the handle was dropped): the reader sends the server's
//!   "end-of-file" signal, waits for it to exit and removes the cleanup
//!   directory if one was given.
//!
//! The wrapper lives in its own process group so that a signal sent to the
//! test's process group does not kill the reader before it can clean up, and
//! its standard error goes to the server's log file so that nothing of it holds
//! the test's captured output open.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const WRAPPER: &str = r#"
log=$1 cleanup=$2 eofsig=$3
shift 3
"$@" </dev/null >>"$log" 2>&1 &
p=$!
echo "$p"
exec 3<&0
{
  if IFS= read -r sig; then
    kill -s "$sig" "$p" 2>/dev/null
  else
    kill -s "$eofsig" "$p" 2>/dev/null
    while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
    if [ -n "$cleanup" ]; then rm -rf "$cleanup"; fi
  fi
} <&3 >/dev/null 2>&1 &
exec 3<&- </dev/null >/dev/null
wait "$p"
"#;

/// What to start and how.
pub(crate) struct Spec<'a> {
    pub program: &'a Path,
    pub args: Vec<String>,
    /// Server output (stdout and stderr) is appended here.
    pub log: &'a Path,
    /// Removed when the owner goes away without an explicit stop.
    pub cleanup: Option<&'a Path>,
    /// Signal sent when the owner goes away without an explicit stop.
    pub eof_signal: &'a str,
    pub run_as: Option<(u32, u32)>,
    pub cwd: &'a Path,
}

/// A running server behind its wrapper.
pub(crate) struct Supervised {
    wrapper: Child,
    control: Option<ChildStdin>,
    pid: i32,
    log: PathBuf,
}

impl Supervised {
    pub(crate) fn spawn(spec: &Spec<'_>) -> Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.log)
            .with_context(|| format!("creating log file {}", spec.log.display()))?;
        if let Some((uid, gid)) = spec.run_as {
            std::os::unix::fs::chown(spec.log, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", spec.log.display()))?;
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("rentalbook-testkit")
            .arg(spec.log)
            .arg(spec.cleanup.map(Path::as_os_str).unwrap_or_default())
            .arg(spec.eof_signal)
            .arg(spec.program)
            .args(&spec.args)
            .current_dir(spec.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .process_group(0);
        if let Some((uid, gid)) = spec.run_as {
            cmd.uid(uid).gid(gid);
        }
        let mut wrapper = cmd
            .spawn()
            .with_context(|| format!("starting {} through sh", spec.program.display()))?;
        let stdout = wrapper.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the server pid from its wrapper")?;
        let pid: i32 = match line.trim().parse() {
            Ok(pid) => pid,
            Err(_) => {
                let _ = wrapper.kill();
                let _ = wrapper.wait();
                bail!(
                    "the wrapper of {} did not report a pid (got {line:?})\n{}",
                    spec.program.display(),
                    log_tail(spec.log)
                );
            }
        };
        Ok(Self {
            control: wrapper.stdin.take(),
            wrapper,
            pid,
            log: spec.log.to_path_buf(),
        })
    }

    /// Whether the server has exited (the wrapper exits right after it).
    pub(crate) fn has_exited(&mut self) -> bool {
        !matches!(self.wrapper.try_wait(), Ok(None))
    }

    /// Sends `signal` (a name such as `TERM`) to the server through the
    /// wrapper, without cleanup. Idempotent.
    fn send(&mut self, signal: &str) {
        if let Some(mut control) = self.control.take() {
            // If the wrapper is gone already, there is nothing to signal.
            let _ = writeln!(control, "{signal}");
        }
    }

    /// Signals the server and waits until it has exited; after `timeout` it
    /// is killed with SIGKILL.
    pub(crate) async fn stop(&mut self, signal: &str, timeout: Duration) {
        self.send(signal);
        let deadline = Instant::now() + timeout;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                self.force_kill();
                let _ = self.wrapper.wait();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Blocking variant of [`Supervised::stop`], for `Drop`.
    pub(crate) fn stop_blocking(&mut self, signal: &str, timeout: Duration) {
        self.send(signal);
        let deadline = Instant::now() + timeout;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                self.force_kill();
                let _ = self.wrapper.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` straight to the server and every process it started
    /// (a database's backends), not through the wrapper: SIGSTOP and SIGCONT
    /// freeze and thaw the whole server, open connections included.
    pub(crate) fn signal_tree(&self, signal: libc::c_int) {
        // Parents first: a stopped parent starts no child meanwhile.
        let mut pids = vec![self.pid];
        while let Some(pid) = pids.pop() {
            // SAFETY: plain kill(2) on the server we started and its children.
            unsafe {
                libc::kill(pid, signal);
            }
            pids.extend(children(pid));
        }
    }

    fn force_kill(&self) {
        // SAFETY: plain kill(2) on the pid of the server we started.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

/// The pids of a process's children, from every thread's `children` file.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// The end of a server log, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    const MAX: usize = 6000;
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(MAX);
            let text = String::from_utf8_lossy(&bytes[start..]);
            format!("--- {} ---\n{}", path.display(), text.trim_end())
        }
        Err(e) => format!("--- {} unreadable: {e} ---", path.display()),
    }
}

/// Looks `name` up on `PATH`, then in the given fallback locations.
pub(crate) fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    });
    on_path.or_else(|| {
        fallbacks
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
    })
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The uid and gid to run PostgreSQL as: `None` unless we are root, in which
/// case the `postgres` system user (PostgreSQL refuses to run as root).
pub(crate) fn postgres_run_as() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == "postgres" {
            let uid = fields[2].parse().context("uid of postgres")?;
            let gid = fields[3].parse().context("gid of postgres")?;
            return Ok(Some((uid, gid)));
        }
    }
    bail!(
        "running as root, but there is no `postgres` user to run PostgreSQL as \
         (install the postgresql package, or run the tests as a normal user)"
    )
}

/// Makes `path` (not recursively) owned by `run_as`, if given.
pub(crate) fn chown_to(path: &Path, run_as: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}
