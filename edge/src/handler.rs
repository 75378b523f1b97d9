//! The one HTTP handler: the edge's own endpoints (`/healthz`, `/metrics`,
//! `/openapi.json`), the web pages and their session endpoints (open, like
//! `/healthz`), then the route table. Every request's URI and headers are
//! first held to their sizes. A routed request is checked for credentials
//! (one that changes something by the token cookie must come from the
//! edge's own pages, as JSON), its body read within its size and time and
//! transcoded, and the RPC called with the caller's identity and a deadline.
//! `OPTIONS` on a route's path answers which methods it takes. Every request is
//! counted and timed by method, route and status: `http_requests_total` and
//! `http_request_duration_seconds` (to the response's head; an event
//! stream's lifetime is not a duration). The route is the matched template
//! (`/v1/books/{book_id}`), the edge's own path, `web` or `unmatched`, never
//! the raw path, and methods outside HTTP's own are `other`: the series stay
//! few whatever clients send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use tonic::metadata::{Ascii, MetadataValue};

use crate::Shared;
use crate::errors::{ApiError, json_response, method_list};
use crate::origin::{self, Evidence};
use crate::request::{self, FORWARDED, TOKEN_COOKIE};
use crate::routes::{Captured, Lookup, Route};
use crate::transcode::{self, Inputs};

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
    if let Err(e) = request::check_size(req.uri(), req.headers(), shared.max_header_bytes) {
        return ("unmatched".to_owned(), e.into_response());
    }
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
        Lookup::MethodNotAllowed(mut allow) => {
            allow.push(Method::OPTIONS);
            let res = if req.method() == Method::OPTIONS {
                options(&allow)
            } else {
                ApiError::method_not_allowed(req.method(), &path, allow).into_response()
            };
            ("unmatched".to_owned(), res)
        }
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
    let credentials = request::credentials(&parts.headers)?;
    if credentials.is_none() && parts.uri.path().starts_with("/v1/") {
        return Err(ApiError::unauthenticated(format!(
            "sign in: send `Authorization: Bearer <token>` or the {TOKEN_COOKIE} cookie"
        )));
    }
    request::check_forwarded(credentials.as_ref(), &parts.headers)?;
    // What the browser signed in by itself must come from the edge's own
    // pages, when it changes something.
    if credentials.as_ref().is_some_and(|c| c.by_cookie)
        && !matches!(parts.method, Method::GET | Method::HEAD)
    {
        origin::from_own_pages(
            &parts.uri,
            &parts.headers,
            shared.public_origin.as_ref(),
            Evidence::Required,
        )?;
        origin::require_json(&parts.headers)?;
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
    let body = request::read_body(
        body,
        &parts.headers,
        shared.max_body_bytes,
        shared.body_read_timeout,
    )
    .await?;
    let msg = transcode::request_message(
        route,
        Inputs {
            captured: &captured,
            query: parts.uri.query(),
            body: &body,
            idempotency_key,
        },
    )?;
    crate::rules::check(&msg, &route.rpc.checks)?;

    let mut request = tonic::Request::new(msg);
    // Whom an event stream counts against: the token's subject (the service
    // verifies the token before the stream is counted).
    let caller = request::token_of(&parts.headers)
        .map(|token| request::claims(&token).map_or(token, |c| c.member))
        .unwrap_or_default();
    if let Some(credentials) = credentials {
        request
            .metadata_mut()
            .insert("authorization", credentials.authorization);
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
        return crate::sse::stream(shared, route, request, &caller).await;
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

/// What a path answers, for `OPTIONS`.
fn options(allow: &[Method]) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&method_list(allow)) {
        res.headers_mut().insert(header::ALLOW, v);
    }
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
