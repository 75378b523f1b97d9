//! What the edge reads from a request before anything reaches a service:
//! the caller's credentials (the `Authorization` header, or the token
//! cookie a browser carries) and what their token claims, the size of what it sent (URI and headers, so
//! that what is passed on fits the services' limits and an oversized request
//! gets a JSON answer), and the body, within its size and time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri, header};
use http_body_util::BodyExt;
use rentalbook_plumbing::config::PolicyDuration;
use serde_json::Value;
use tonic::metadata::{Ascii, MetadataValue};

use crate::errors::ApiError;

/// The cookie a browser may carry the token in.
pub const TOKEN_COOKIE: &str = "rentalbook_token";

/// Headers passed on to the backends as they are. The `traceparent` goes
/// on as the edge's own span, a child of the caller's or a new trace.
pub const FORWARDED: &[&str] = &["tracestate", "x-request-id"];

/// The most bytes of `authorization` and the [`FORWARDED`] headers together
/// that go on to a service. The services (hyper's HTTP/2 server) refuse more
/// than 16 KiB of metadata, and a refusal there reaches the edge without a
/// gRPC status; what the edge adds itself (path, deadline, trace, content
/// type) stays well under the remaining 4 KiB.
pub const FORWARDED_BYTES: usize = 12 * 1024;

/// The longest path and query the edge reads. Every route's URI is short;
/// a longer one is refused with 414 rather than transcoded.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The caller's credentials, as the services get them.
#[derive(Debug)]
pub struct Credentials {
    /// The `authorization` metadata value (`Bearer <token>`).
    pub authorization: MetadataValue<Ascii>,
    /// Whether they came from the token cookie: the browser attached them by
    /// itself, so the request must be shown to come from the edge's own pages.
    pub by_cookie: bool,
}

/// The caller's credentials: the `Authorization` header as it is, else the
/// token cookie as a bearer token; None when there is neither.
pub fn credentials(headers: &HeaderMap) -> Result<Option<Credentials>, ApiError> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        return MetadataValue::<Ascii>::try_from(h.as_bytes())
            .map(|authorization| {
                Some(Credentials {
                    authorization,
                    by_cookie: false,
                })
            })
            .map_err(|_| ApiError::unauthenticated("the Authorization header is not valid"));
    }
    match cookie_token(headers) {
        None | Some("") => Ok(None),
        Some(token) => MetadataValue::<Ascii>::try_from(format!("Bearer {token}"))
            .map(|authorization| {
                Some(Credentials {
                    authorization,
                    by_cookie: true,
                })
            })
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

/// What the caller's token claims, when it has one that has not expired.
#[derive(Debug, PartialEq, Eq)]
pub struct Claimed {
    pub member: String,
    pub role: String,
    pub expires_at: u64,
}

/// Reads a JWT's claims without verifying it: they only tell the pages what
/// to show and the edge whose stream it counts; every service verifies the
/// token itself on every call, so a forged token fools nothing but its own
/// page.
pub fn claims(token: &str) -> Option<Claimed> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let expires_at = v["exp"].as_u64()?;
    (expires_at > now_secs()).then_some(())?;
    Some(Claimed {
        member: v["sub"].as_str()?.to_owned(),
        role: v["role"].as_str().unwrap_or("member").to_owned(),
        expires_at,
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 414 past [`MAX_URI_BYTES`]; 431 when the headers' names and values
/// together pass `max_header_bytes`.
pub fn check_size(uri: &Uri, headers: &HeaderMap, max_header_bytes: usize) -> Result<(), ApiError> {
    let uri_bytes = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            tonic::Code::InvalidArgument,
            format!("the URI is {uri_bytes} bytes long; this server reads at most {MAX_URI_BYTES}"),
        ));
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > max_header_bytes {
        return Err(headers_too_large(format!(
            "the request's headers are {header_bytes} bytes; this server reads at most {max_header_bytes}"
        )));
    }
    Ok(())
}

/// 431 when what would be passed on to a service (`authorization`, from the
/// header or the cookie, and the [`FORWARDED`] headers) is past
/// [`FORWARDED_BYTES`]; the message names the largest of them.
pub fn check_forwarded(
    credentials: Option<&Credentials>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let mut sizes: Vec<(&str, usize)> = FORWARDED
        .iter()
        .map(|name| {
            let size = headers.get_all(*name).iter().map(|v| v.len()).sum();
            (*name, size)
        })
        .collect();
    if let Some(c) = credentials {
        let name = if c.by_cookie {
            TOKEN_COOKIE
        } else {
            "authorization"
        };
        sizes.push((name, c.authorization.len()));
    }
    let total: usize = sizes.iter().map(|(_, n)| n).sum();
    if total <= FORWARDED_BYTES {
        return Ok(());
    }
    let (largest, size) = sizes
        .iter()
        .max_by_key(|(_, n)| *n)
        .copied()
        .unwrap_or(("authorization", total));
    let what = if largest == TOKEN_COOKIE {
        format!("the {TOKEN_COOKIE} cookie")
    } else {
        format!("the {largest} header")
    };
    Err(headers_too_large(format!(
        "{what} is {size} bytes; the token, tracestate and x-request-id headers may take \
         {FORWARDED_BYTES} bytes together"
    )))
}

fn headers_too_large(message: String) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        tonic::Code::InvalidArgument,
        message,
    )
}

/// The whole body, refused with 413 past `limit` bytes and with 408 when it
/// has not all arrived within `within`. An oversized body is still read (and
/// dropped) up to a bound, so that the client, still sending, gets the 413
/// rather than a reset connection.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    within: Duration,
) -> Result<Bytes, ApiError> {
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
        let whole = tokio::time::timeout(within, async {
            loop {
                match body.frame().await {
                    None => return Ok(true),
                    Some(Err(e)) => {
                        return Err(ApiError::bad_request(format!(
                            "the request body could not be read: {e}"
                        )));
                    }
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            seen += data.len();
                            if seen > limit {
                                return Ok(false);
                            }
                            buf.extend_from_slice(&data);
                        }
                    }
                }
            }
        })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                tonic::Code::DeadlineExceeded,
                format!(
                    "the request body did not arrive within {}",
                    PolicyDuration::from_duration(within)
                ),
            )
        })??;
        if whole {
            return Ok(buf.freeze());
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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

    fn authorization(h: &HeaderMap) -> Option<(String, bool)> {
        credentials(h)
            .unwrap()
            .map(|c| (c.authorization.to_str().unwrap().to_owned(), c.by_cookie))
    }

    #[test]
    fn credentials_come_from_the_header_or_the_cookie() {
        let c = authorization(&headers(&[("authorization", "Bearer abc")]));
        assert_eq!(c, Some(("Bearer abc".into(), false)));
        let c = authorization(&headers(&[("cookie", "theme=dark; rentalbook_token=t0k")]));
        assert_eq!(c, Some(("Bearer t0k".into(), true)));
        let c = authorization(&headers(&[
            ("cookie", "a=b"),
            ("cookie", "rentalbook_token=\"q\""),
        ]));
        assert_eq!(c, Some(("Bearer q".into(), true)));
        // The header wins over the cookie.
        let c = authorization(&headers(&[
            ("authorization", "Bearer h"),
            ("cookie", "rentalbook_token=c"),
        ]));
        assert_eq!(c, Some(("Bearer h".into(), false)));
        assert!(authorization(&headers(&[])).is_none());
        assert!(authorization(&headers(&[("cookie", "rentalbook_token=")])).is_none());
        assert!(authorization(&headers(&[("cookie", "other_token=x")])).is_none());
    }

    #[test]
    fn sizes_are_checked_before_anything_is_passed_on() {
        let uri: Uri = "/v1/books?query=a".parse().unwrap();
        assert!(check_size(&uri, &headers(&[("a", "b")]), 100).is_ok());
        let e = check_size(&uri, &headers(&[("a", &"b".repeat(100))]), 100).unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(e.message.contains("101 bytes"), "{}", e.message);
        let long: Uri = format!("/v1/books?query={}", "q".repeat(MAX_URI_BYTES))
            .parse()
            .unwrap();
        let e = check_size(&long, &HeaderMap::new(), 100).unwrap_err();
        assert_eq!(e.status, StatusCode::URI_TOO_LONG);

        let big = "x".repeat(FORWARDED_BYTES);
        let h = headers(&[("authorization", "Bearer t"), ("x-request-id", &big)]);
        let c = credentials(&h).unwrap();
        let e = check_forwarded(c.as_ref(), &h).unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(
            e.message.starts_with("the x-request-id header"),
            "{}",
            e.message
        );
        let h = headers(&[("cookie", &format!("rentalbook_token={big}"))]);
        let c = credentials(&h).unwrap();
        let e = check_forwarded(c.as_ref(), &h).unwrap_err();
        assert!(e.message.contains("cookie"), "{}", e.message);
        let h = headers(&[("authorization", "Bearer t"), ("tracestate", "a=b")]);
        assert!(check_forwarded(credentials(&h).unwrap().as_ref(), &h).is_ok());
    }

    #[test]
    fn claims_are_read_from_unexpired_tokens_only() {
        use rentalbook_plumbing::auth::{Role, mint};
        use rentalbook_plumbing::ids::MemberId;
        let alice = MemberId::parse("alice").unwrap();
        let t = mint("k", &alice, Role::Member, Duration::from_secs(60)).unwrap();
        let c = claims(&t).unwrap();
        assert_eq!((c.member.as_str(), c.role.as_str()), ("alice", "member"));
        let expired = mint("k", &alice, Role::Member, Duration::ZERO).unwrap();
        assert!(claims(&expired).is_none());
        assert!(claims("not-a-jwt").is_none());
        assert!(claims("a.!!!.c").is_none());
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        const SOON: Duration = Duration::from_secs(5);
        let e = read_body(Body::from(vec![b'x'; 11]), &HeaderMap::new(), 10, SOON)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let ok = read_body(Body::from(vec![b'x'; 10]), &HeaderMap::new(), 10, SOON)
            .await
            .unwrap();
        assert_eq!(ok.len(), 10);
        let e = read_body(
            Body::empty(),
            &headers(&[("content-length", "1000")]),
            10,
            SOON,
        )
        .await
        .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_coming_is_refused_in_time() {
        let stalled =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let e = read_body(stalled, &HeaderMap::new(), 10, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(e.code, tonic::Code::DeadlineExceeded);
        assert!(e.message.contains("30s"), "{}", e.message);
    }
}
