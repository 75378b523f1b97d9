//! The gRPC services behind the edge: one long-lived, lazily connected
//! channel per backend, so a backend that is down costs a refused connection
//! (or the short connect timeout) and a 503, never a hang, and one that comes
//! back is used again without restarting the edge.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use prost_reflect::DynamicMessage;
use tonic::codec::Streaming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::codec::DynamicCodec;
use crate::routes::Rpc;

/// How long to wait for a TCP connection to a backend.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The channels, by backend name (`book`, `reserve`, `rental`, `view`).
#[derive(Clone, Debug)]
pub struct Backends {
    channels: BTreeMap<String, Channel>,
}

impl Backends {
    /// Channels to `urls` (name → `http://host:port`); nothing connects yet.
    /// Must run inside a tokio runtime.
    pub fn new(urls: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut channels = BTreeMap::new();
        for (name, url) in urls {
            let endpoint = Endpoint::from_shared(url.to_string())
                .with_context(|| format!("the {name} service's URL `{url}`"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_while_idle(true);
            channels.insert(name.to_string(), endpoint.connect_lazy());
        }
        Ok(Self { channels })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.channels.keys().map(String::as_str)
    }

    fn grpc(&self, rpc: &Rpc) -> Result<tonic::client::Grpc<Channel>, Status> {
        let channel = self.channels.get(&rpc.backend).ok_or_else(|| {
            Status::unavailable(format!("no {} service is configured", rpc.backend))
        })?;
        Ok(tonic::client::Grpc::new(channel.clone()))
    }

    /// One request, one answer.
    pub async fn unary(
        &self,
        rpc: &Rpc,
        request: Request<DynamicMessage>,
    ) -> Result<DynamicMessage, Status> {
        let mut grpc = self.grpc(rpc)?;
        grpc.ready()
            .await
            .map_err(|_| unreachable_backend(&rpc.backend))?;
        grpc.unary(
            request,
            rpc.grpc_path.clone(),
            DynamicCodec::new(rpc.method.output()),
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| from_transport(s, &rpc.backend))
    }

    /// One request, a stream of answers.
    pub async fn server_streaming(
        &self,
        rpc: &Rpc,
        request: Request<DynamicMessage>,
    ) -> Result<Streaming<DynamicMessage>, Status> {
        let mut grpc = self.grpc(rpc)?;
        grpc.ready()
            .await
            .map_err(|_| unreachable_backend(&rpc.backend))?;
        grpc.server_streaming(
            request,
            rpc.grpc_path.clone(),
            DynamicCodec::new(rpc.method.output()),
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| from_transport(s, &rpc.backend))
    }

    /// Each backend's gRPC health (`SERVING`, `NOT_SERVING`, `UNREACHABLE`),
    /// asked at once with a short deadline.
    pub async fn health(&self, within: Duration) -> BTreeMap<String, String> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;

        let checks = self.channels.iter().map(|(name, channel)| {
            let mut client = HealthClient::new(channel.clone());
            async move {
                let mut req = Request::new(HealthCheckRequest {
                    service: String::new(),
                });
                req.set_timeout(within);
                let status = match tokio::time::timeout(within, client.check(req)).await {
                    Ok(Ok(res)) => ServingStatus::try_from(res.into_inner().status)
                        .map(|s| s.as_str_name().to_owned())
                        .unwrap_or_else(|_| "UNKNOWN".to_owned()),
                    _ => "UNREACHABLE".to_owned(),
                };
                (name.clone(), status)
            }
        });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .collect()
    }
}

fn unreachable_backend(backend: &str) -> Status {
    Status::unavailable(format!(
        "the {backend} service cannot be reached right now; try again shortly"
    ))
}

/// A status made by the client side (connection refused, reset, timed out)
/// rather than sent by the backend carries the transport error as its
/// source; it says UNAVAILABLE in words a client can use.
fn from_transport(status: Status, backend: &str) -> Status {
    if std::error::Error::source(&status).is_none() {
        return status;
    }
    tracing::warn!(backend, error = %status, "backend call failed in transport");
    match status.code() {
        Code::DeadlineExceeded => {
            Status::deadline_exceeded(format!("the {backend} service did not answer in time"))
        }
        _ => unreachable_backend(backend),
    }
}
