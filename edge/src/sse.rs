//! Server-streaming RPCs (WatchMyPage) as Server-Sent Events: one `data:`
//! event per message in proto3 JSON, a keep-alive comment every
//! `SSE_KEEP_ALIVE` (15 s) so that proxies and browsers between the edge and
//! the reader keep the connection, an `error` event if the stream fails
//! midway. The backend's own heartbeat (view-svc resends the page) keeps the
//! gRPC stream behind it alive; the comments cover the HTTP side.
//! When the client goes away the body is dropped, which drops the gRPC
//! stream and so cancels it at the backend; when the edge shuts down the
//! stream ends cleanly.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::HeaderValue;
use prost_reflect::DynamicMessage;

use crate::errors::ApiError;
use crate::handler::Shared;
use crate::routes::Route;
use crate::transcode;

/// Opens the stream at the backend and answers with its events. Failures
/// before the first message (refusals, an unreachable backend) are ordinary
/// JSON errors.
pub async fn stream(
    shared: &Arc<Shared>,
    route: &Route,
    request: tonic::Request<DynamicMessage>,
) -> Result<Response, ApiError> {
    let opened = tokio::time::timeout(
        shared.request_timeout,
        shared.backends.server_streaming(&route.rpc, request),
    )
    .await
    .map_err(|_| {
        ApiError::deadline_exceeded(format!(
            "the {} service did not answer in time",
            route.rpc.backend
        ))
    })?
    .map_err(|s| ApiError::from_status(&s, &shared.pool))?;

    let pool = shared.pool.clone();
    let response_body = route.response_body.clone();
    let events = opened
        .map(move |item| -> Result<Event, Infallible> {
            let json = item
                .map_err(|status| ApiError::from_status(&status, &pool))
                .and_then(|msg| transcode::response_json(response_body.as_ref(), &msg));
            Ok(match json {
                Ok(bytes) => Event::default().data(String::from_utf8_lossy(&bytes)),
                Err(e) => Event::default().event("error").data(e.body().to_string()),
            })
        })
        .take_until(shared.streams_stop.clone().cancelled_owned());
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(shared.sse_keep_alive))
        .into_response();
    // Ask buffering proxies to pass events on at once.
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}
