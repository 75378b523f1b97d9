//! Server-streaming RPCs (WatchMyPage) as Server-Sent Events: one `data:`
//! event per message in proto3 JSON, a keep-alive comment every
//! `SSE_KEEP_ALIVE` (15 s) so that proxies and browsers between the edge and
//! the reader keep the connection, and, if the stream fails midway (the
//! token it was opened with has expired: UNAUTHENTICATED), an `error` event
//! with the usual JSON error body, after which the stream ends. The backend's own heartbeat (view-svc resends the page) keeps the
//! gRPC stream behind it alive; the comments cover the HTTP side.
//! When the client goes away the body is dropped, which drops the gRPC
//! stream and so cancels it at the backend; when the edge shuts down the
//! stream ends cleanly. A caller holds at most `MAX_WATCHERS_PER_MEMBER`
//! streams here; one more is refused with 429 and a `Retry-After`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, future};
use http::HeaderValue;
use prost_reflect::DynamicMessage;

use crate::Shared;
use rentalbook_plumbing::error::Reason;

use crate::errors::ApiError;
use crate::routes::Route;
use crate::transcode;

/// How long a caller at the cap is told to wait before trying again.
const AT_CAP_RETRY: Duration = Duration::from_secs(10);

/// Opens the stream at the backend and answers with its events. Failures
/// before the first message (refusals, an unreachable backend) are ordinary
/// JSON errors. `caller` is whom the stream counts against.
pub async fn stream(
    shared: &Arc<Shared>,
    route: &Route,
    request: tonic::Request<DynamicMessage>,
    caller: &str,
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
    // Counted only now that the service has accepted the caller's token.
    let place = shared.watchers.admit(caller).ok_or_else(|| {
        let mut e = ApiError::new(
            http::StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::ResourceExhausted,
            format!(
                "you already have {} live My Page streams open; close one (another tab or \
                 device) and try again",
                shared.watchers.max()
            ),
        )
        .with_reason(Reason::TooManyStreams);
        e.retry_after = Some(AT_CAP_RETRY.as_secs());
        e
    })?;

    let pool = shared.pool.clone();
    let response_body = route.response_body.clone();
    // Events until the first error, which is the last.
    let events = opened
        .scan(false, move |failed, item| {
            // The place is held for as long as the stream is.
            let _ = &place;
            if *failed {
                return future::ready(None);
            }
            let json = item
                .map_err(|status| ApiError::from_status(&status, &pool))
                .and_then(|msg| transcode::response_json(response_body.as_ref(), &msg));
            let event = match json {
                Ok(bytes) => Event::default().data(String::from_utf8_lossy(&bytes)),
                Err(e) => {
                    *failed = true;
                    Event::default().event("error").data(e.body().to_string())
                }
            };
            future::ready(Some(Ok::<_, Infallible>(event)))
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
