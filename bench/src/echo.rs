//! The gRPC ceiling: a bare tonic server with one unary method that echoes
//! its request back, with none of the services' layers (no token check, no
//! admission control, no metrics, no database). The message is
//! `rentalbook.book.v1.GetBookRequest`, the request of the read RPC it is
//! compared with, carried with the same bearer header.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use rentalbook_proto::book::v1::GetBookRequest;
use tokio::io::AsyncBufReadExt;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use crate::client::CallError;

pub const SERVICE: &str = "rentalbook.bench.v1.Echo";
const PATH: &str = "/rentalbook.bench.v1.Echo/Echo";

/// The echo service as a tower service, routed by path like generated code.
#[derive(Clone, Default)]
pub struct EchoServer;

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = SERVICE;
}

struct EchoMethod;

impl tonic::server::UnaryService<GetBookRequest> for EchoMethod {
    type Response = GetBookRequest;
    type Future = std::future::Ready<Result<tonic::Response<GetBookRequest>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<GetBookRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(request.into_inner())))
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() == PATH {
                let codec = ProstCodec::<GetBookRequest, GetBookRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.unary(EchoMethod, req).await)
            } else {
                Ok(tonic::Status::unimplemented("no such method").into_http())
            }
        })
    }
}

/// Serves the echo on a bound listener until the future is dropped, with
/// TCP_NODELAY on every accepted connection, as tonic's own `serve` sets it
/// by default (`serve_with_incoming` leaves it to the caller).
pub async fn serve(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(EchoServer)
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// A running echo server: in this process on a runtime of its own (so it
/// does not share the harness's worker threads), or a child process.
pub struct RunningEcho {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: Option<tokio::process::Child>,
    thread: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl RunningEcho {
    /// In this process, on its own multi-threaded runtime with as many
    /// worker threads as the machine has cores (like the services').
    pub fn in_process() -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-echo".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("bench-echo-worker")
                    .build()
                    .expect("a runtime for the echo server");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(std_listener).expect("the echo listener");
                    tokio::select! {
                        _ = serve(listener) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Self {
            addr,
            pid: None,
            child: None,
            thread: Some((stop, thread)),
        })
    }

    /// A child process: `<bench binary> serve-echo`, which prints its address.
    pub async fn child(bench_bin: &Path) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(bench_bin)
            .arg("serve-echo")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve-echo", bench_bin.display()))?;
        let stdout = child.stdout.take().context("the echo server's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("the echo server did not say its address within 10 s")??
            .context("the echo server exited before saying its address")?;
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or(line.trim())
            .parse()
            .with_context(|| format!("the echo server said `{line}`"))?;
        Ok(Self {
            addr,
            pid: child.id(),
            child: Some(child),
            thread: None,
        })
    }

    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        if let Some((stop, thread)) = self.thread.take() {
            let _ = stop.send(());
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// One echo call, as a client of the same shape as the product's.
pub async fn call(channel: Channel, token: &str, book_id: &str) -> Result<(), CallError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| CallError {
        code: tonic::Code::Unavailable,
        message: e.to_string(),
    })?;
    let request = crate::client::with_token(
        token,
        GetBookRequest {
            book_id: book_id.to_owned(),
        },
    );
    let codec = ProstCodec::<GetBookRequest, GetBookRequest>::default();
    let path = http::uri::PathAndQuery::from_static(PATH);
    let reply: tonic::Response<GetBookRequest> = grpc
        .unary(request, path, codec)
        .await
        .map_err(CallError::from)?;
    if reply.get_ref().book_id != book_id {
        return Err(CallError {
            code: tonic::Code::DataLoss,
            message: "the echo did not echo".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_echo_echoes() {
        let echo = RunningEcho::in_process().unwrap();
        let channel = crate::client::channel(echo.addr);
        call(channel, "t", "0193f2a9-0000-7000-8000-000000000000")
            .await
            .unwrap();
        echo.stop().await;
    }
}
