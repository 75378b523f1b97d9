//! The pages' session endpoints.
//!
//! - `GET /session`: whether the "sign in as" form is offered, and who the
//!   caller's token says they are (`{"devSignIn", "member": {"id", "role",
//!   "expiresAt"} | null}`). The claims are read, not verified: they only
//!   tell the page what to show; every service verifies the token itself on
//!   every call, so a forged token fools nothing but its own page.
//! - `POST /session/logout`: clears the token cookie.
//! - `POST /session/dev` (dev sign-in, the all-in-one only): mints a
//!   short-lived token for `{"memberId", "role"}` and sets it as the HttpOnly,
//!   SameSite=Strict token cookie (Secure behind https). It exists only when
//!   the edge was given a signing secret and listens on a loopback address,
//!   and answers only requests addressed to a loopback host, so a web page
//!   elsewhere cannot reach it through DNS rebinding.
//!
//! The token travels in an HttpOnly cookie so that the browser's
//! EventSource, which cannot send an `Authorization` header, carries it to
//! `/v1/mypage:watch` by itself, and no script (nor URL) ever holds it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use rentalbook_plumbing::auth::{Role, TokenScope, mint_for};
use rentalbook_plumbing::error::Reason;
use rentalbook_plumbing::ids::MemberId;
use serde_json::{Value, json};

use crate::errors::{ApiError, json_response};
use crate::origin::{Evidence, PublicOrigin, from_own_pages, request_authority};
use crate::request::{Claimed, TOKEN_COOKIE, claims, read_body, token_of};

/// How long a sign-in's body (a member id and a role) may take to arrive.
const SIGN_IN_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a dev sign-in lasts.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

/// The secret the dev sign-in signs tokens with. Its `Debug` does not show
/// it, so a logged configuration does not leak it.
#[derive(Clone)]
pub struct DevSignInSecret(String);

impl DevSignInSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }
}

impl std::fmt::Debug for DevSignInSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevSignInSecret(..)")
    }
}

/// The session endpoints' state: the dev sign-in's secret when it is on,
/// and what its tokens carry.
pub struct Sessions {
    dev: Option<DevSignInSecret>,
    scope: TokenScope,
    public_origin: Option<PublicOrigin>,
}

impl Sessions {
    /// Dev sign-in on `listen` when `enabled`: refused without a secret and
    /// on any address that is not loopback.
    pub fn new(
        enabled: bool,
        secret: Option<&DevSignInSecret>,
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        if !enabled {
            return Ok(Self {
                dev: None,
                scope: TokenScope::default(),
                public_origin: None,
            });
        }
        anyhow::ensure!(
            listen.ip().is_loopback(),
            "dev sign-in lets anyone sign in as anyone, so it is only for loopback addresses; \
             the edge listens on {listen}: turn it off (EDGE_DEV_SIGN_IN) or listen on 127.0.0.1"
        );
        let secret = secret.filter(|s| !s.0.is_empty()).cloned().ok_or_else(|| {
            anyhow::anyhow!("dev sign-in needs the services' token secret (RENTALBOOK_JWT_SECRET)")
        })?;
        Ok(Self {
            dev: Some(secret),
            scope: TokenScope::default(),
            public_origin: None,
        })
    }

    /// Sign-in and sign-out must come from `origin` (see [`crate::origin`]).
    pub fn with_public_origin(mut self, origin: Option<PublicOrigin>) -> Self {
        self.public_origin = origin;
        self
    }

    /// The dev sign-in's tokens carry the audience and issuer of `scope`.
    pub fn with_token_scope(mut self, scope: TokenScope) -> Self {
        self.scope = scope;
        self
    }

    pub fn dev_sign_in(&self) -> bool {
        self.dev.is_some()
    }
}

/// The paths this module answers.
pub fn is_session_path(path: &str) -> bool {
    matches!(path, "/session" | "/session/dev" | "/session/logout")
}

pub async fn handle(sessions: &Sessions, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let res = match (path.as_str(), req.method()) {
        ("/session", &Method::GET | &Method::HEAD) => Ok(current(sessions, req.headers())),
        ("/session", m) => Err(ApiError::method_not_allowed(
            m,
            &path,
            vec![Method::GET, Method::HEAD],
        )),
        ("/session/dev", _) if sessions.dev.is_none() => {
            Err(ApiError::not_found(format!("there is nothing at {path}")))
        }
        (_, m) if m != Method::POST => {
            Err(ApiError::method_not_allowed(m, &path, vec![Method::POST]))
        }
        ("/session/dev", _) => dev_sign_in(sessions, req).await,
        _ => logout(sessions, &req),
    };
    let mut res = res.unwrap_or_else(IntoResponse::into_response);
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    crate::web::page_security_headers(h);
    res
}

fn session_json(sessions: &Sessions, claimed: Option<&Claimed>) -> Value {
    json!({
        "devSignIn": sessions.dev_sign_in(),
        "member": claimed.map(|c| json!({
            "id": c.member,
            "role": c.role,
            "expiresAt": c.expires_at,
        })),
    })
}

fn current(sessions: &Sessions, headers: &HeaderMap) -> Response {
    let claimed = token_of(headers).as_deref().and_then(claims);
    let body = session_json(sessions, claimed.as_ref());
    json_response(StatusCode::OK, body.to_string().into())
}

/// Refuses a state-changing request sent by a page of another origin.
fn same_origin(sessions: &Sessions, req: &Request) -> Result<(), ApiError> {
    from_own_pages(
        req.uri(),
        req.headers(),
        sessions.public_origin.as_ref(),
        Evidence::WhenPresent,
    )
}

/// Whether `authority` names this machine: `localhost` or a loopback IP.
fn is_loopback_authority(authority: &str) -> bool {
    let Ok(a) = authority.parse::<http::uri::Authority>() else {
        return false;
    };
    let host = a.host();
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the page was fetched over https (directly or through a proxy).
fn over_https(req: &Request) -> bool {
    req.uri().scheme_str() == Some("https")
        || req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
        || req
            .headers()
            .get(header::FORWARDED)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"))
}

fn cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{TOKEN_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("a JWT is a valid cookie value")
}

async fn dev_sign_in(sessions: &Sessions, req: Request) -> Result<Response, ApiError> {
    let Some(secret) = &sessions.dev else {
        return Err(ApiError::not_found("there is nothing at /session/dev"));
    };
    if !request_authority(req.uri(), req.headers()).is_some_and(|h| is_loopback_authority(&h)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            tonic::Code::PermissionDenied,
            "dev sign-in answers only at a loopback address such as http://127.0.0.1",
        )
        .with_reason(Reason::CrossSiteRequest));
    }
    same_origin(sessions, &req)?;
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return Err(ApiError::bad_request(
            "send the sign-in as JSON (Content-Type: application/json)",
        ));
    }
    let secure = over_https(&req);
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, 4096, SIGN_IN_BODY_TIMEOUT).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the sign-in is not valid JSON: {e}")))?;
    let member = v["memberId"].as_str().unwrap_or_default().trim();
    let member = MemberId::parse(member).map_err(ApiError::bad_request)?;
    let role = match v["role"].as_str().unwrap_or("member") {
        "member" => Role::Member,
        "librarian" => Role::Librarian,
        other => {
            return Err(ApiError::bad_request(format!(
                "`{other}` is not a role one may sign in as (member or librarian)"
            )));
        }
    };
    let token =
        mint_for(&secret.0, &member, role, DEV_TOKEN_TTL, &sessions.scope).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                tonic::Code::Internal,
                format!("could not mint a token: {e}"),
            )
        })?;
    tracing::info!(member = member.as_str(), ?role, "dev sign-in");
    let claimed = claims(&token);
    let body = session_json(sessions, claimed.as_ref());
    let mut res = json_response(StatusCode::OK, body.to_string().into());
    res.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&token, DEV_TOKEN_TTL.as_secs(), secure),
    );
    Ok(res)
}

fn logout(sessions: &Sessions, req: &Request) -> Result<Response, ApiError> {
    same_origin(sessions, req)?;
    let body = session_json(sessions, None);
    let mut res = json_response(StatusCode::OK, body.to_string().into());
    res.headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, over_https(req)));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;

    fn loopback() -> SocketAddr {
        "127.0.0.1:8088".parse().unwrap()
    }

    fn on() -> Sessions {
        Sessions::new(true, Some(&DevSignInSecret::new("s3cret")), loopback()).unwrap()
    }

    async fn json_of(res: Response) -> Value {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn sign_in(host: &str, origin: Option<&str>, body: &str) -> Request {
        let mut r = http::Request::post("/session/dev")
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(o) = origin {
            r = r.header(header::ORIGIN, o);
        }
        r.body(Body::from(body.to_owned())).unwrap()
    }

    #[test]
    fn dev_sign_in_is_only_for_loopback_and_needs_a_secret() {
        let secret = DevSignInSecret::new("s");
        assert!(
            !Sessions::new(false, None, loopback())
                .unwrap()
                .dev_sign_in()
        );
        assert!(
            Sessions::new(true, Some(&secret), loopback())
                .unwrap()
                .dev_sign_in()
        );
        assert!(Sessions::new(true, Some(&secret), "[::1]:1".parse().unwrap()).is_ok());
        let e = Sessions::new(true, Some(&secret), "0.0.0.0:8088".parse().unwrap())
            .err()
            .unwrap();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(Sessions::new(true, Some(&secret), "10.1.2.3:8088".parse().unwrap()).is_err());
        assert!(Sessions::new(true, None, loopback()).is_err());
        assert_eq!(format!("{secret:?}"), "DevSignInSecret(..)");
    }

    #[tokio::test]
    async fn signing_in_sets_an_http_only_strict_cookie_with_a_short_lived_token() {
        let s = on();
        let res = handle(
            &s,
            sign_in(
                "127.0.0.1:8088",
                Some("http://127.0.0.1:8088"),
                r#"{"memberId":"alice","role":"librarian"}"#,
            ),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let set = res.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(set.starts_with("rentalbook_token=ey"), "{set}");
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"] {
            assert!(set.contains(attr), "{attr} missing: {set}");
        }
        assert!(!set.contains("Secure"));
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        let body = json_of(res).await;
        assert_eq!(body["devSignIn"], true);
        assert_eq!(body["member"]["id"], "alice");
        assert_eq!(body["member"]["role"], "librarian");

        // The token is one the services accept.
        let token = set
            .trim_start_matches("rentalbook_token=")
            .split(';')
            .next()
            .unwrap();
        let caller = rentalbook_plumbing::auth::Verifier::with_secret("s3cret")
            .verify(token)
            .unwrap();
        assert_eq!(caller.member.as_str(), "alice");
        assert!(caller.is_librarian());

        // GET /session reads it back from the cookie.
        let res = handle(
            &s,
            http::Request::get("/session")
                .header(header::COOKIE, format!("rentalbook_token={token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let body = json_of(res).await;
        assert_eq!(body["member"]["id"], "alice");

        // Behind an https proxy the cookie is Secure.
        let mut req = sign_in("localhost:8088", None, r#"{"memberId":"bob"}"#);
        req.headers_mut()
            .insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let res = handle(&s, req).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
    }

    #[tokio::test]
    async fn dev_sign_in_refuses_strangers_and_bad_input() {
        let s = on();
        let status = |res: Response| res.status();
        // Another origin's page.
        let res = handle(
            &s,
            sign_in(
                "127.0.0.1:8088",
                Some("http://evil.example"),
                r#"{"memberId":"a"}"#,
            ),
        )
        .await;
        assert_eq!(status(res), StatusCode::FORBIDDEN);
        // A name that resolved to loopback (DNS rebinding).
        let res = handle(
            &s,
            sign_in("evil.example:8088", None, r#"{"memberId":"a"}"#),
        )
        .await;
        assert_eq!(status(res), StatusCode::FORBIDDEN);
        let res = handle(&s, sign_in("[::1]:8088", None, r#"{"memberId":"a"}"#)).await;
        assert_eq!(status(res), StatusCode::OK);
        // The service role, a bad member id, a form post.
        let res = handle(
            &s,
            sign_in("127.0.0.1:1", None, r#"{"memberId":"a","role":"service"}"#),
        )
        .await;
        assert_eq!(status(res), StatusCode::BAD_REQUEST);
        let res = handle(&s, sign_in("127.0.0.1:1", None, r#"{"memberId":"a b"}"#)).await;
        let body = json_of(res).await;
        assert!(body["message"].as_str().unwrap().contains("member id"));
        let res = handle(
            &s,
            http::Request::post("/session/dev")
                .header(header::HOST, "127.0.0.1:1")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("memberId=a"))
                .unwrap(),
        )
        .await;
        assert_eq!(status(res), StatusCode::BAD_REQUEST);
        let res = handle(
            &s,
            http::Request::get("/session/dev")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status(res), StatusCode::METHOD_NOT_ALLOWED);

        // Off: not there at all.
        let off = Sessions::new(false, None, loopback()).unwrap();
        let res = handle(&off, sign_in("127.0.0.1:1", None, r#"{"memberId":"a"}"#)).await;
        assert_eq!(status(res), StatusCode::NOT_FOUND);
        let res = handle(
            &off,
            http::Request::get("/session").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(
            json_of(res).await,
            json!({"devSignIn": false, "member": null})
        );
    }

    #[tokio::test]
    async fn logout_clears_the_cookie() {
        let res = handle(
            &on(),
            http::Request::post("/session/logout")
                .header(header::HOST, "127.0.0.1:1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(set.starts_with("rentalbook_token=;") && set.contains("Max-Age=0"));
    }
}
