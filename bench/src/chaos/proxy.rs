//! A TCP fault proxy: forwards connections to one upstream address, and on
//! command delays every chunk, stalls all traffic (packets dropped, as TCP
//! sees it: nothing arrives until the path heals), or resets every
//! connection. The campaign puts it between rental-svc and reserve-svc.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwards everything at once.
    Pass,
    /// Holds every chunk this long before forwarding it, both ways.
    Delay(Duration),
    /// Accepts connections and forwards nothing until the mode changes.
    Drop,
    /// Resets every open connection and every new one.
    Reset,
}

/// Connections seen, for the report.
#[derive(Default)]
pub struct ProxyCounts {
    pub accepted: AtomicU64,
    pub reset: AtomicU64,
}

pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    pub counts: Arc<ProxyCounts>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let counts = Arc::new(ProxyCounts::default());
        let task = tokio::spawn(accept(listener, upstream, rx, counts.clone()));
        Ok(Self {
            addr,
            mode,
            counts,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    counts: Arc<ProxyCounts>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counts.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(inbound, upstream, mode.clone(), counts.clone()));
    }
}

/// Closes a socket with a reset instead of a graceful close.
fn abort_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this process owns and has not closed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

async fn connection(
    inbound: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    counts: Arc<ProxyCounts>,
) {
    let _ = inbound.set_nodelay(true);
    // A new connection waits while traffic is dropped, and is reset at once
    // while connections are.
    let now = mode.wait_for(|m| *m != Mode::Drop).await.map(|m| *m);
    if !matches!(now, Ok(Mode::Pass | Mode::Delay(_))) {
        counts.reset.fetch_add(1, Ordering::Relaxed);
        abort_on_close(inbound.as_raw_fd());
        return;
    }
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        counts.reset.fetch_add(1, Ordering::Relaxed);
        abort_on_close(inbound.as_raw_fd());
        return;
    };
    let _ = outbound.set_nodelay(true);
    let fds = (inbound.as_raw_fd(), outbound.as_raw_fd());
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let mut reset = mode.clone();
    // The halves live inside the pumps, so the sockets are still open when
    // the reset's linger is set, and close with it when the pumps are dropped.
    tokio::select! {
        _ = async {
            tokio::try_join!(
                pump(in_read, out_write, mode.clone()),
                pump(out_read, in_write, mode.clone()),
            )
        } => {}
        _ = reset.wait_for(|m| *m == Mode::Reset) => {
            counts.reset.fetch_add(1, Ordering::Relaxed);
            abort_on_close(fds.0);
            abort_on_close(fds.1);
        }
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let now = *mode.wait_for(|m| *m != Mode::Drop).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the proxy stopped")
        })?;
        match now {
            Mode::Delay(d) => tokio::time::sleep(d).await,
            Mode::Reset => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset by the fault proxy",
                ));
            }
            Mode::Pass | Mode::Drop => {}
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<()> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn passes_delays_stalls_and_resets() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s).await.unwrap();

        proxy.set(Mode::Delay(Duration::from_millis(100)));
        let started = std::time::Instant::now();
        round_trip(&mut s).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));

        proxy.set(Mode::Drop);
        let stalled = tokio::time::timeout(Duration::from_millis(300), round_trip(&mut s)).await;
        assert!(stalled.is_err(), "nothing gets through while dropping");
        proxy.set(Mode::Pass);
        // What was sent while dropping arrives once the path heals.
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        round_trip(&mut s).await.unwrap();

        proxy.set(Mode::Reset);
        assert!(
            round_trip(&mut s).await.is_err(),
            "the connection was reset"
        );
        proxy.set(Mode::Pass);
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut fresh).await.unwrap();
    }
}
