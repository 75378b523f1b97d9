//! The edge's connections, accepted and served here rather than by
//! `axum::serve` so that what a client may hold and send is bounded.
//!
//! One port answers HTTP/1.1 and HTTP/2 over cleartext (h2c, prior
//! knowledge), told apart by the connection's first bytes (hyper-util's
//! `auto` server). No client holds a connection for nothing:
//!
//! - at most [`Settings::max_connections`] are open at once; past it the
//!   edge stops accepting, and new connections wait in the listen backlog
//!   (which costs the process no file descriptor) until one closes;
//! - a connection must send its first byte, and every HTTP/1.1 request its
//!   whole head, within [`Settings::header_read_timeout`] (hyper's own
//!   timer for the head, which also runs while an HTTP/1.1 connection waits
//!   for its next request);
//! - a connection on which nothing has moved either way for
//!   [`Settings::idle_timeout`] is closed: HTTP/2 gets a GOAWAY and a second
//!   to go. Event streams carry a comment every `SSE_KEEP_ALIVE`, and every
//!   call is answered within `REQUEST_TIMEOUT`, both shorter, so neither
//!   counts as idle.
//!
//! A body that does not arrive in time is the handler's to refuse (408).
//! A request's head may take [`Settings::max_header_bytes`]
//! for its headers and 64 KiB for its URI before the parser gives up; below
//! that the handler applies the edge's own, lower limits with the usual JSON
//! answer. When the HTTP/1.1 parser gives up itself (a head past its buffer,
//! more than 100 header lines, a URI past 64 KiB, a line it cannot read), it
//! answers 400, 414 or 431 with an empty body; [`Answering`] rewrites those
//! few answers on their way out into the same JSON shape as every other
//! error, so a client parses one shape whatever it sent.

use std::io;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest URI hyper's HTTP/1.1 parser reads (its own constant).
const PARSER_MAX_URI: usize = 65_534;

/// How many header lines hyper's HTTP/1.1 parser reads (its default).
const PARSER_MAX_HEADERS: usize = 100;

/// How long an HTTP/2 connection closed for idleness has after its GOAWAY.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What bounds a connection.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The handler's limit on a request's headers; the parsers read a URI's
    /// worth more so that the handler can answer in JSON.
    pub max_header_bytes: usize,
    /// For a connection's first byte and each HTTP/1.1 request head.
    pub header_read_timeout: Duration,
    /// For a connection on which nothing moves.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: NonZeroUsize,
}

impl Settings {
    /// The most a request's head may take in the HTTP/1.1 parser's buffer,
    /// and in an HTTP/2 header list.
    fn parser_head_bytes(&self) -> usize {
        self.max_header_bytes + PARSER_MAX_URI + 1024
    }

    fn builder(&self) -> Builder<TokioExecutor> {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.parser_head_bytes());
        builder
            .http2()
            .max_header_list_size(u32::try_from(self.parser_head_bytes()).unwrap_or(u32::MAX));
        builder
    }
}

/// Accepts and serves connections until `shutdown` is cancelled, then stops
/// accepting, asks every connection to finish (HTTP/1.1: after the request
/// in flight; HTTP/2: GOAWAY) and waits for them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let builder = settings.builder();
    let slots = Arc::new(Semaphore::new(settings.max_connections.get()));
    let mut connections = JoinSet::new();
    let mut saturated = false;
    loop {
        if slots.available_permits() == 0 && !saturated {
            tracing::warn!(
                max = settings.max_connections.get(),
                "MAX_CONNECTIONS open: new connections wait until one closes"
            );
        }
        saturated = slots.available_permits() == 0;
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or the peer gave up in the
                    // backlog: try again shortly rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        connections.spawn(connection(
            tcp,
            router.clone(),
            builder.clone(),
            settings,
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn connection(
    tcp: TcpStream,
    router: Router,
    builder: Builder<TokioExecutor>,
    settings: Settings,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    // No Nagle delay: a response written in pieces (headers, then the body;
    // an event of a stream) must not wait for the client's ACK.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Answering::new(tcp, settings, activity.clone()));
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let mut closing = false;
    let mut give_up_at = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            why = activity.quiet(&settings), if !closing => {
                tracing::debug!(why, "closing a connection");
                closing = true;
                give_up_at = Some(Instant::now() + IDLE_CLOSE_GRACE);
                conn.as_mut().graceful_shutdown();
            }
            _ = async { tokio::time::sleep_until(give_up_at.unwrap_or_else(Instant::now)).await },
                if give_up_at.is_some() => return,
        }
    }
}

/// When a connection last moved a byte, for the idle rules.
struct Activity {
    opened: Instant,
    /// Milliseconds from `opened` to the last byte read or written.
    last_ms: AtomicU64,
    /// Whether the client has sent anything at all.
    heard: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            heard: AtomicBool::new(false),
        }
    }

    fn touch(&self, read: bool) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
        if read {
            self.heard.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves once the connection breaks an idle rule, saying which.
    async fn quiet(&self, settings: &Settings) -> &'static str {
        loop {
            let (deadline, why) = if self.heard.load(Ordering::Relaxed) {
                let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
                (self.opened + last + settings.idle_timeout, "idle")
            } else {
                (
                    self.opened + settings.header_read_timeout,
                    "no request within HEADER_READ_TIMEOUT",
                )
            };
            if Instant::now() >= deadline {
                return why;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A connection's socket, which rewrites the HTTP/1.1 parser's own refusals
/// into JSON answers (see the module's doc).
struct Answering<T> {
    io: T,
    settings: Settings,
    activity: Arc<Activity>,
    /// The connection's first bytes, until it is known whether it speaks
    /// HTTP/2 (whose frames are never rewritten).
    preface: Vec<u8>,
    http2: Option<bool>,
    /// A rewritten answer not yet written out.
    pending: Vec<u8>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<T> Answering<T> {
    fn new(io: T, settings: Settings, activity: Arc<Activity>) -> Self {
        Self {
            io,
            settings,
            activity,
            preface: Vec::new(),
            http2: None,
            pending: Vec::new(),
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if self.http2.is_some() {
            return;
        }
        let wanted = H2_PREFACE.len() - self.preface.len();
        self.preface
            .extend_from_slice(&bytes[..bytes.len().min(wanted)]);
        if !H2_PREFACE.starts_with(&self.preface) {
            self.http2 = Some(false);
        } else if self.preface.len() == H2_PREFACE.len() {
            self.http2 = Some(true);
        }
    }

    /// The JSON answer for an empty answer of the HTTP/1.1 parser's own.
    fn rewrite(&self, written: &[u8]) -> Option<Vec<u8>> {
        if self.http2 != Some(false) {
            return None;
        }
        parser_refusal(written, self.settings)
    }
}

/// `head` rewritten with a JSON body, if it is one of hyper's answers to a
/// request it could not parse: 400, 414 or 431 with `content-length: 0`.
/// The edge's own answers with these statuses always carry a JSON body, so
/// they never match.
fn parser_refusal(head: &[u8], settings: Settings) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let text = text.strip_suffix("\r\n\r\n")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let message = match status {
        "400" => "the request is not valid HTTP: its request line or a header could not be read"
            .to_owned(),
        "414" => format!("the URI is longer than {PARSER_MAX_URI} bytes"),
        "431" => format!(
            "the request's head is larger than {} bytes or has more than {PARSER_MAX_HEADERS} header lines",
            settings.parser_head_bytes()
        ),
        _ => return None,
    };
    let rest: Vec<&str> = lines.collect();
    if rest.iter().any(|l| l.is_empty())
        || !rest
            .iter()
            .any(|l| l.eq_ignore_ascii_case("content-length: 0"))
    {
        return None;
    }
    let body = serde_json::json!({
        "code": tonic::Code::InvalidArgument as i32,
        "message": message,
        "details": [],
    })
    .to_string();
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for line in rest.iter().filter(|l| {
        let name = l.split(':').next().unwrap_or_default();
        !name.eq_ignore_ascii_case("content-length") && !name.eq_ignore_ascii_case("connection")
    }) {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<T: AsyncWrite + Unpin> Answering<T> {
    /// Writes out what is pending; Ready once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.activity.touch(false);
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Answering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            self.activity.touch(true);
            if self.http2.is_none() {
                let new = new.to_vec();
                self.saw(&new);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Answering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(answer) = self.rewrite(buf) {
            self.pending = answer;
            // The parser's answer counts as written; the JSON one goes out
            // now or with the flush that follows.
            if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        if n > 0 {
            self.activity.touch(false);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    /// Not vectored: hyper then writes each response head in one piece,
    /// which is what [`parser_refusal`] recognises.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        max_header_bytes: 32 * 1024,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: NonZeroUsize::MIN,
    };

    #[test]
    fn the_parsers_empty_refusals_become_json() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 05:08:22 GMT\r\n\r\n";
        let out = String::from_utf8(parser_refusal(hyper_431, SETTINGS).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ncontent-type: application/json"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains("\r\ndate: Tue, 01 Dec 2026"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], 3);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("100 header lines")
        );

        for status in ["400 Bad Request", "414 URI Too Long"] {
            let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            assert!(
                parser_refusal(head.as_bytes(), SETTINGS).is_some(),
                "{status}"
            );
        }
    }

    #[test]
    fn other_answers_pass_as_they_are() {
        for written in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 51\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n{}",
            b"{\"code\":3}",
            b"",
        ] {
            assert!(parser_refusal(written, SETTINGS).is_none(), "{written:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silent_and_idle_connections_break_a_rule_in_time() {
        let silent = Activity::new();
        let started = Instant::now();
        let why = silent.quiet(&SETTINGS).await;
        assert_eq!(started.elapsed(), SETTINGS.header_read_timeout);
        assert!(why.contains("HEADER_READ_TIMEOUT"), "{why}");

        let talking = Activity::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        talking.touch(true);
        let started = Instant::now();
        assert_eq!(talking.quiet(&SETTINGS).await, "idle");
        assert_eq!(started.elapsed(), SETTINGS.idle_timeout);
    }

    #[test]
    fn http2_connections_are_never_rewritten() {
        let activity = Arc::new(Activity::new());
        let mut h2 = Answering::new((), SETTINGS, activity.clone());
        h2.saw(b"PRI * HT");
        assert_eq!(h2.http2, None);
        h2.saw(b"TP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(h2.http2, Some(true));
        let refusal = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(h2.rewrite(refusal).is_none());
        let mut h1 = Answering::new((), SETTINGS, activity);
        h1.saw(b"POST /v1/books");
        assert_eq!(h1.http2, Some(false));
        assert!(h1.rewrite(refusal).is_some());
    }
}
