//! The one HTTP handler: the edge's own endpoints (`/healthz`, `/metrics`,
//! `/openapi.json`), the web pages and their session endpoints (open, like
//! `/healthz`), then the route table. A routed request is checked for
//! credentials, its body read within the limit and transcoded, and the RPC
//! called with the caller's identity and a deadline. Every request is
//! counted and timed by method, route and status: `http_requests_total` and
//! `http_request_duration_seconds` (to the response's head; an event
//! stream's lifetime is not a duration). The route is the matched template
//! (`/v1/books/{book_id}`), the edge's own path, `web` or `unmatched`, never
//! the raw path, and methods outside HTTP's own are `other`: the series stay
//! few whatever clients send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use prost_reflect::DescriptorPool;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};

use crate::backends::Backends;
use crate::errors::ApiError;
use crate::routes::{Captured, Lookup, Route, RouteTable};
use crate::transcode::{self, Inputs};

/// The cookie a browser may carry the token in.
pub const TOKEN_COOKIE: &str = "rentalbook_token";

/// Headers passed on to the backends as they are. The `traceparent` goes
/// on as the edge's own span, a child of the caller's or a new trace.
const FORWARDED: &[&str] = &["tracestate", "x-request-id"];

/// Everything the handler needs, built once at start-up.
pub struct Shared {
    pub table: RouteTable,
    pub backends: Backends,
    pub pool: DescriptorPool,
    pub openapi: Bytes,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Cancelled when the edge shuts down, to end open event streams.
    pub streams_stop: CancellationToken,
    /// How often an event stream carries a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// `/session`, and the dev sign-in when it is on.
    pub sessions: crate::session::Sessions,
}

pub async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let span = tracing::info_span!("http", method = %req.method(), path = %req.uri().path());
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    rentalbook_plumbing::propagation::set_parent(&span, traceparent);
    let (route, res) = tracing::Instrument::instrument(dispatch(&shared, req), span).await;
    let status = res.status();
    metrics::counter!(
        "http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status.as_str().to_owned()
    )
    .increment(1);
    metrics::histogram!(
        "http_request_duration_seconds",
        "method" => method,
        "route" => route.clone()
    )
    .record(started.elapsed().as_secs_f64());
    if status.is_server_error() {
        tracing::warn!(route, status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(route, status = status.as_u16(), "request served");
    }
    res
}

/// The method's label for metrics: HTTP's own methods by name, any other
/// `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The route's label for metrics, and the answer.
async fn dispatch(shared: &Arc<Shared>, req: Request) -> (String, Response) {
    let path = req.uri().path().to_owned();
    if let Some(asset) = crate::web::find(&path) {
        let res = crate::web::serve(asset, req.method(), req.headers());
        return ("web".to_owned(), res);
    }
    if crate::session::is_session_path(&path) {
        return (path, crate::session::handle(&shared.sessions, req).await);
    }
    let own = ["/healthz", "/metrics", "/openapi.json"];
    if let Some(own) = own.iter().find(|p| **p == path) {
        let label = (*own).to_owned();
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let e =
                ApiError::method_not_allowed(req.method(), &path, vec![Method::GET, Method::HEAD]);
            return (label, e.into_response());
        }
        let res = match *own {
            "/healthz" => healthz(shared).await,
            "/metrics" => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                )],
                rentalbook_plumbing::telemetry::render_metrics(),
            )
                .into_response(),
            _ => json_response(StatusCode::OK, shared.openapi.clone()),
        };
        return (label, res);
    }
    match shared.table.lookup(req.method(), &path) {
        Lookup::NotFound => (
            "unmatched".to_owned(),
            ApiError::not_found(format!("there is nothing at {path}")).into_response(),
        ),
        Lookup::MethodNotAllowed(allow) => (
            "unmatched".to_owned(),
            ApiError::method_not_allowed(req.method(), &path, allow).into_response(),
        ),
        Lookup::Found { route, captured } => {
            let label = route.template.as_str().to_owned();
            let res = match call(shared, route, captured, req).await {
                Ok(res) => res,
                Err(e) => e.into_response(),
            };
            (label, res)
        }
    }
}

async fn call(
    shared: &Arc<Shared>,
    route: &Route,
    captured: Vec<Captured>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let authorization = credentials(&parts.headers)?;
    if authorization.is_none() && parts.uri.path().starts_with("/v1/") {
        return Err(ApiError::unauthenticated(format!(
            "sign in: send `Authorization: Bearer <token>` or the {TOKEN_COOKIE} cookie"
        )));
    }
    let idempotency_key = match parts.headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "the Idempotency-Key header must be printable ASCII without spaces",
                    )
                })?,
        ),
    };
    let body = read_body(body, &parts.headers, shared.max_body_bytes).await?;
    let msg = transcode::request_message(
        route,
        Inputs {
            captured: &captured,
            query: parts.uri.query(),
            body: &body,
            idempotency_key,
        },
    )?;

    let mut request = tonic::Request::new(msg);
    if let Some(auth) = authorization {
        request.metadata_mut().insert("authorization", auth);
    }
    for name in FORWARDED {
        if let Some(v) = parts
            .headers
            .get(*name)
            .and_then(|v| MetadataValue::<Ascii>::try_from(v.as_bytes()).ok())
        {
            request.metadata_mut().insert(*name, v);
        }
    }
    if let Some(tp) = rentalbook_plumbing::propagation::current_traceparent()
        .and_then(|tp| MetadataValue::<Ascii>::try_from(tp).ok())
    {
        request.metadata_mut().insert("traceparent", tp);
    }

    if route.rpc.is_server_streaming() {
        return crate::sse::stream(shared, route, request).await;
    }
    request.set_timeout(shared.request_timeout);
    // The backend enforces the deadline; this is the backstop for one that
    // does not answer at all.
    let backstop = shared.request_timeout + Duration::from_millis(500);
    match tokio::time::timeout(backstop, shared.backends.unary(&route.rpc, request)).await {
        Err(_) => Err(ApiError::deadline_exceeded(format!(
            "the {} service did not answer in time",
            route.rpc.backend
        ))),
        Ok(Err(status)) => Err(ApiError::from_status(&status, &shared.pool)),
        Ok(Ok(msg)) => {
            let body = transcode::response_json(route.response_body.as_ref(), &msg)?;
            Ok(json_response(StatusCode::OK, body.into()))
        }
    }
}

/// The caller's `authorization` metadata: the header as it is, else the
/// token cookie as a bearer token; None when there is neither.
fn credentials(headers: &HeaderMap) -> Result<Option<MetadataValue<Ascii>>, ApiError> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        return MetadataValue::<Ascii>::try_from(h.as_bytes())
            .map(Some)
            .map_err(|_| ApiError::unauthenticated("the Authorization header is not valid"));
    }
    match cookie_token(headers) {
        None | Some("") => Ok(None),
        Some(token) => MetadataValue::<Ascii>::try_from(format!("Bearer {token}"))
            .map(Some)
            .map_err(|_| {
                ApiError::unauthenticated(format!("the {TOKEN_COOKIE} cookie is not valid"))
            }),
    }
}

/// The token cookie's value, if the request carries one.
fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| name.trim() == TOKEN_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// The caller's bearer token, from the `Authorization` header or else the
/// token cookie.
pub fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let h = h.to_str().ok()?;
        let (scheme, token) = h.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    cookie_token(headers)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// The whole body, refused with 413 past `limit` bytes. An oversized body
/// is still read (and dropped) up to a bound, so that the client, still
/// sending, gets the 413 rather than a reset connection.
pub async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    const DRAIN_BYTES: usize = 8 * 1024 * 1024;
    const DRAIN_TIME: Duration = Duration::from_secs(2);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let too_large = declared.is_some_and(|n| n > limit as u64);
    if !too_large {
        loop {
            match body.frame().await {
                None => return Ok(buf.freeze()),
                Some(Err(e)) => {
                    return Err(ApiError::bad_request(format!(
                        "the request body could not be read: {e}"
                    )));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        seen += data.len();
                        if seen > limit {
                            break;
                        }
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
    if declared.is_none_or(|n| n <= DRAIN_BYTES as u64) {
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while seen <= DRAIN_BYTES {
                match body.frame().await {
                    Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
        })
        .await;
    }
    Err(ApiError::too_large(limit))
}

pub fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

async fn healthz(shared: &Shared) -> Response {
    let backends = shared.backends.health(Duration::from_millis(300)).await;
    let body = serde_json::json!({ "status": "ok", "backends": backends });
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default().into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn credentials_come_from_the_header_or_the_cookie() {
        let c = credentials(&headers(&[("authorization", "Bearer abc")])).unwrap();
        assert_eq!(c.unwrap(), "Bearer abc");
        let c = credentials(&headers(&[("cookie", "theme=dark; rentalbook_token=t0k")])).unwrap();
        assert_eq!(c.unwrap(), "Bearer t0k");
        let c = credentials(&headers(&[
            ("cookie", "a=b"),
            ("cookie", "rentalbook_token=\"q\""),
        ]))
        .unwrap();
        assert_eq!(c.unwrap(), "Bearer q");
        // The header wins over the cookie.
        let c = credentials(&headers(&[
            ("authorization", "Bearer h"),
            ("cookie", "rentalbook_token=c"),
        ]))
        .unwrap();
        assert_eq!(c.unwrap(), "Bearer h");
        assert!(credentials(&headers(&[])).unwrap().is_none());
        assert!(
            credentials(&headers(&[("cookie", "rentalbook_token=")]))
                .unwrap()
                .is_none()
        );
        assert!(
            credentials(&headers(&[("cookie", "other_token=x")]))
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let e = read_body(Body::from(vec![b'x'; 11]), &HeaderMap::new(), 10)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let ok = read_body(Body::from(vec![b'x'; 10]), &HeaderMap::new(), 10)
            .await
            .unwrap();
        assert_eq!(ok.len(), 10);
        let e = read_body(Body::empty(), &headers(&[("content-length", "1000")]), 10)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
