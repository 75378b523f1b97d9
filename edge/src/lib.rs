//! edge: REST/JSON in front of rentalbook's gRPC services (SPEC §6, §7).
//!
//! Browsers and plain HTTP clients cannot speak gRPC, and the services should
//! not each grow an HTTP layer, so the edge transcodes: its routes are read at
//! start-up from the `google.api.http` annotations in the contracts'
//! descriptor set, each request becomes the RPC's request message (body, path
//! variables, query parameters), and the answer or the status comes back as
//! proto3 JSON. No route is written by hand: annotating an RPC exposes it.
//! The edge keeps no state and verifies no tokens; it passes the caller's
//! identity on and every service checks it itself.
//!
//! - [`routes`]: the route table from the descriptors, template matching.
//! - [`transcode`]: JSON and query/path values to and from `DynamicMessage`s.
//! - [`codec`]: the tonic codec for `DynamicMessage`s.
//! - [`backends`]: one lazily connected channel per service, health.
//! - [`errors`]: gRPC statuses and the edge's own refusals as HTTP answers.
//! - [`openapi`]: `/openapi.json` from the same descriptors.
//! - `conn`: accepting and serving connections within their limits.
//! - [`request`]: credentials, sizes and bodies of requests; [`origin`]:
//!   whether a call signed in by the cookie comes from the edge's own pages.
//! - `handler`, `sse`: the HTTP side, server streams as Server-Sent Events;
//!   `watchers`: how many streams each caller holds.
//! - [`web`]: the web pages from `web/`, compiled in; [`session`]: who is
//!   signed in, and the all-in-one's dev sign-in (loopback only).

pub mod backends;
pub mod codec;
mod conn;
pub mod errors;
mod handler;
pub mod openapi;
pub mod origin;
pub mod request;
pub mod routes;
pub mod rules;
pub mod session;
mod sse;
pub mod transcode;
mod watchers;
pub mod web;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue, Method};
use prost_reflect::DescriptorPool;
use rentalbook_plumbing::auth::TokenScope;
use rentalbook_plumbing::config::PolicyDuration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use origin::PublicOrigin;
pub use request::TOKEN_COOKIE;
pub use session::DevSignInSecret;

pub const NAME: &str = "edge";

/// How long a graceful shutdown may take before connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[derive(Parser, Clone, Debug)]
#[command(
    name = "edge",
    version,
    about = "rentalbook's REST/JSON edge in front of the gRPC services"
)]
pub struct Config {
    /// HTTP address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8088")]
    pub listen_addr: SocketAddr,

    /// book-svc (catalogue).
    #[arg(long, env = "BOOK_SVC_URL", default_value = "http://127.0.0.1:8083")]
    pub book_svc_url: String,

    /// reserve-svc (reservations).
    #[arg(long, env = "RESERVE_SVC_URL", default_value = "http://127.0.0.1:8082")]
    pub reserve_svc_url: String,

    /// rental-svc (rentals).
    #[arg(long, env = "RENTAL_SVC_URL", default_value = "http://127.0.0.1:8081")]
    pub rental_svc_url: String,

    /// view-svc (My Page).
    #[arg(long, env = "VIEW_SVC_URL", default_value = "http://127.0.0.1:8084")]
    pub view_svc_url: String,

    /// notice-svc (notices and their settings, erasing one's history).
    #[arg(long, env = "NOTICE_SVC_URL", default_value = "http://127.0.0.1:8085")]
    pub notice_svc_url: String,

    /// Where browsers load the pages from (`https://library.example`), when
    /// a gateway in front rewrites the Host header: calls that change
    /// something and are signed in by the token cookie must come from it.
    /// Unset, they must come from the host they were sent to.
    #[arg(long, env = "PUBLIC_ORIGIN")]
    pub public_origin: Option<PublicOrigin>,

    /// Comma-separated origins allowed to call from a browser (`*` for any,
    /// without cookies); empty turns CORS off. Calls from them that change
    /// something send `Authorization: Bearer`: the token cookie is taken only
    /// from the edge's own pages (PUBLIC_ORIGIN).
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "")]
    pub cors_allowed_origins: String,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest request header section accepted, in bytes (names and values
    /// together); more is answered 431. Whatever it says, the token,
    /// `tracestate` and `x-request-id` that go on to the services may take
    /// 12 KiB together, and a URI 8 KiB.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,

    /// Deadline of each call to a service (the services propagate it).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s")]
    pub request_timeout: PolicyDuration,

    /// How often an open event stream (My Page, live) carries a keep-alive
    /// comment; keep it under the shortest idle timeout of any proxy between
    /// the edge and the browser.
    #[arg(long, env = "SSE_KEEP_ALIVE", default_value = "15s")]
    pub sse_keep_alive: PolicyDuration,

    /// How long a client may take to send a request's head: a new
    /// connection's first request, and an HTTP/1.1 connection's next one
    /// (so also how long such a connection stays open between requests).
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s")]
    pub header_read_timeout: PolicyDuration,

    /// How long a client may take to send a request's body; a body still
    /// incomplete then is answered 408.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "30s")]
    pub body_read_timeout: PolicyDuration,

    /// A connection on which nothing has moved either way for this long is
    /// closed (HTTP/2 with a GOAWAY first). Longer than REQUEST_TIMEOUT and
    /// SSE_KEEP_ALIVE, so that neither a slow answer nor a quiet event stream
    /// counts as idle.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s")]
    pub idle_timeout: PolicyDuration,

    /// Connections served at once; further ones wait in the listen backlog
    /// until one closes. Keep it under the process's open-file limit
    /// (`ulimit -n`), so that the edge itself never runs out.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: NonZeroUsize,

    /// Live My Page streams (`:watch`) one caller (the token's subject) may
    /// hold on this edge at once; one more is refused with 429.
    #[arg(long, env = "MAX_WATCHERS_PER_MEMBER", default_value = "16")]
    pub max_watchers_per_member: NonZeroUsize,

    /// Log format: `json` or `text`.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: String,

    /// Offer the web pages' "sign in as" form (`POST /session/dev`), which
    /// mints a token for any member id and role it is given: for a laptop
    /// only. Refused unless the edge listens on a loopback address; signs with
    /// RENTALBOOK_JWT_SECRET (the edge binary) or the secret the all-in-one
    /// hands over.
    #[arg(long, env = "EDGE_DEV_SIGN_IN", value_parser = clap::builder::BoolishValueParser::new())]
    pub dev_sign_in: bool,

    /// The audience and issuer the services require of tokens, which the
    /// dev sign-in's tokens carry (the edge itself verifies no token).
    #[command(flatten)]
    pub token_scope: TokenScope,

    /// The secret dev sign-in signs with; never a flag (it would show in
    /// `ps`): set by the program that builds the edge.
    #[arg(skip)]
    pub dev_sign_in_secret: Option<DevSignInSecret>,
}

impl Config {
    /// The backends by the name their package carries
    /// (`rentalbook.<name>.v1`).
    pub fn backend_urls(&self) -> [(&'static str, &str); 5] {
        [
            ("book", self.book_svc_url.as_str()),
            ("reserve", self.reserve_svc_url.as_str()),
            ("rental", self.rental_svc_url.as_str()),
            ("view", self.view_svc_url.as_str()),
            ("notice", self.notice_svc_url.as_str()),
        ]
    }
}

/// Everything the handler needs, built once at start-up.
pub(crate) struct Shared {
    pub table: routes::RouteTable,
    pub backends: backends::Backends,
    pub pool: DescriptorPool,
    pub openapi: Bytes,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub body_read_timeout: Duration,
    pub request_timeout: Duration,
    /// Cancelled when the edge shuts down, to end open event streams.
    pub streams_stop: CancellationToken,
    /// How often an event stream carries a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// The open event streams by caller, within their cap.
    pub watchers: Arc<watchers::Watchers>,
    /// The pages' origin when a gateway rewrites the host.
    pub public_origin: Option<PublicOrigin>,
    /// `/session`, and the dev sign-in when it is on.
    pub sessions: session::Sessions,
}

/// The edge's HTTP service, for serving on a listener of one's own (the
/// all-in-one). Event streams end when `streams_stop` is cancelled, so a
/// graceful shutdown does not wait on them. Must be called inside a tokio
/// runtime (the backend channels start their workers).
pub fn router(config: &Config, streams_stop: CancellationToken) -> anyhow::Result<Router> {
    let idle = config.idle_timeout.get();
    anyhow::ensure!(
        idle > config.request_timeout.get() && idle > config.sse_keep_alive.get(),
        "IDLE_TIMEOUT ({}) must be longer than REQUEST_TIMEOUT ({}) and SSE_KEEP_ALIVE ({}), \
         or answers still on their way and quiet event streams would be cut",
        config.idle_timeout,
        config.request_timeout,
        config.sse_keep_alive
    );
    let pool = descriptor_pool()?;
    let urls = config.backend_urls();
    let names: Vec<&str> = urls.iter().map(|(n, _)| *n).collect();
    let table = routes::RouteTable::from_pool(&pool, &names)?;
    anyhow::ensure!(
        !table.routes().is_empty(),
        "the contracts carry no google.api.http annotations: nothing to route"
    );
    for route in table.routes() {
        tracing::debug!(%route, "route");
    }
    tracing::info!(
        routes = table.routes().len(),
        "REST routes from the annotations"
    );
    let backends = backends::Backends::new(&urls)?;
    let openapi = serde_json::to_vec(&openapi::document(&table))?.into();
    let sessions = session::Sessions::new(
        config.dev_sign_in,
        config.dev_sign_in_secret.as_ref(),
        config.listen_addr,
    )?
    .with_token_scope(config.token_scope.clone())
    .with_public_origin(config.public_origin.clone());
    if sessions.dev_sign_in() {
        tracing::warn!(
            addr = %config.listen_addr,
            "dev sign-in is on: anyone who can reach this address may sign in as anyone"
        );
    }
    let shared = Arc::new(Shared {
        table,
        backends,
        pool,
        openapi,
        max_body_bytes: config.max_body_bytes,
        max_header_bytes: config.max_header_bytes,
        body_read_timeout: config.body_read_timeout.get(),
        request_timeout: config.request_timeout.get(),
        streams_stop,
        sse_keep_alive: config.sse_keep_alive.get(),
        watchers: watchers::Watchers::new(config.max_watchers_per_member),
        public_origin: config.public_origin.clone(),
        sessions,
    });
    let mut router = Router::new().fallback(handler::handle).with_state(shared);
    if let Some(cors) = cors_layer(&config.cors_allowed_origins)? {
        router = router.layer(cors);
    }
    Ok(router)
}

/// The contracts' descriptors, with their `google.api.http` annotations.
pub fn descriptor_pool() -> anyhow::Result<DescriptorPool> {
    DescriptorPool::decode(rentalbook_proto::FILE_DESCRIPTOR_SET)
        .context("decoding the contracts' descriptor set")
}

fn cors_layer(origins: &str) -> anyhow::Result<Option<CorsLayer>> {
    let origins: Vec<&str> = origins
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() {
        return Ok(None);
    }
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            http::header::AUTHORIZATION,
            http::header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([http::header::RETRY_AFTER])
        .max_age(Duration::from_secs(600));
    if origins.contains(&"*") {
        return Ok(Some(layer.allow_origin(AllowOrigin::any())));
    }
    let list = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).with_context(|| format!("CORS_ALLOWED_ORIGINS: `{o}`")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(
        layer
            .allow_origin(AllowOrigin::list(list))
            .allow_credentials(true),
    ))
}

/// The edge as a process of its own: flags and environment from `argv`,
/// logging, then serve until SIGTERM or Ctrl-C. With dev sign-in on, the
/// tokens it mints are signed with `RENTALBOOK_JWT_SECRET`, from the
/// environment only.
pub async fn run_process(argv: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let mut config = Config::parse_from(argv);
    rentalbook_plumbing::telemetry::init_logging(&config.log_format);
    if config.dev_sign_in {
        config.dev_sign_in_secret = std::env::var("RENTALBOOK_JWT_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .map(DevSignInSecret::new);
    }
    App::build(config)
        .await?
        .run(rentalbook_plumbing::serve::shutdown_on_signal())
        .await
}

/// An edge ready to serve on its bound port.
pub struct App {
    listener: TcpListener,
    router: Router,
    connections: conn::Settings,
    streams_stop: CancellationToken,
}

impl App {
    /// Binds the configured address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding {}", config.listen_addr))?;
        Self::build_with(config, listener).await
    }

    /// With an already bound listener.
    pub async fn build_with(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        let bound = listener.local_addr()?;
        anyhow::ensure!(
            !config.dev_sign_in || bound.ip().is_loopback(),
            "dev sign-in is only for loopback addresses; the edge's listener is on {bound}"
        );
        rentalbook_plumbing::telemetry::init_metrics(None)?;
        let streams_stop = CancellationToken::new();
        let router = router(&config, streams_stop.clone())?;
        Ok(Self {
            listener,
            router,
            connections: conn::Settings {
                max_header_bytes: config.max_header_bytes,
                header_read_timeout: config.header_read_timeout.get(),
                idle_timeout: config.idle_timeout.get(),
                max_connections: config.max_connections,
            },
            streams_stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, ends the
    /// event streams and lets in-flight requests finish (for up to 20 s).
    ///
    /// The one port answers HTTP/1.1 and HTTP/2 over cleartext (h2c, prior
    /// knowledge), told apart by the connection's first bytes. Over HTTP/1.1
    /// an open event stream holds a whole connection; over HTTP/2 a proxy in
    /// front (the ingress gateway) carries many streams and the REST calls on
    /// a few connections, up to hyper's 200 concurrent streams on each.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let streams_stop = self.streams_stop.clone();
        let end_streams = shutdown.clone();
        tokio::spawn(async move {
            end_streams.cancelled().await;
            streams_stop.cancel();
        });
        tracing::info!(service = NAME, %addr, "serving REST");
        let mut server = tokio::spawn(conn::serve(
            self.listener,
            self.router,
            self.connections,
            shutdown.clone(),
        ));
        let result = tokio::select! {
            r = &mut server => r,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!(service = NAME, "connections still open after the grace period; dropping them");
                server.abort();
                server.await
            }
        };
        self.streams_stop.cancel();
        match result {
            Ok(()) => {}
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(e).context("the HTTP server task"),
        }
        tracing::info!(service = NAME, "stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_defaults_and_help_lists_them() {
        let c = Config::try_parse_from(["edge"]).unwrap();
        assert_eq!(c.listen_addr.port(), 8088);
        assert_eq!(c.request_timeout.get(), Duration::from_secs(10));
        assert_eq!(c.sse_keep_alive.get(), Duration::from_secs(15));
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert!(c.cors_allowed_origins.is_empty());
        assert!(!c.dev_sign_in && c.dev_sign_in_secret.is_none());
        let mut help = Vec::new();
        <Config as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .unwrap();
        let help = String::from_utf8(help).unwrap();
        for env in [
            "LISTEN_ADDR",
            "BOOK_SVC_URL",
            "RESERVE_SVC_URL",
            "RENTAL_SVC_URL",
            "VIEW_SVC_URL",
            "CORS_ALLOWED_ORIGINS",
            "MAX_BODY_BYTES",
            "REQUEST_TIMEOUT",
            "SSE_KEEP_ALIVE",
            "LOG_FORMAT",
            "EDGE_DEV_SIGN_IN",
            "MAX_HEADER_BYTES",
            "HEADER_READ_TIMEOUT",
            "BODY_READ_TIMEOUT",
            "IDLE_TIMEOUT",
            "MAX_CONNECTIONS",
            "MAX_WATCHERS_PER_MEMBER",
            "PUBLIC_ORIGIN",
            "RENTALBOOK_JWT_AUDIENCE",
            "RENTALBOOK_JWT_ISSUER",
        ] {
            assert!(help.contains(env), "{env} missing from --help");
        }
    }

    #[test]
    fn limits_have_sane_defaults_and_refuse_nonsense() {
        let c = Config::try_parse_from(["edge"]).unwrap();
        assert_eq!(c.max_header_bytes, 32 * 1024);
        assert_eq!(c.header_read_timeout.get(), Duration::from_secs(10));
        assert_eq!(c.body_read_timeout.get(), Duration::from_secs(30));
        assert_eq!(c.idle_timeout.get(), Duration::from_secs(60));
        assert_eq!(c.max_connections.get(), 4096);
        assert_eq!(c.max_watchers_per_member.get(), 16);
        assert!(c.public_origin.is_none());
        for bad in [
            ["--max-connections", "0"],
            ["--max-watchers-per-member", "0"],
            ["--idle-timeout", "0s"],
            ["--public-origin", "library.example"],
        ] {
            let mut args = vec!["edge"];
            args.extend(bad);
            assert!(Config::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_idle_timeout_shorter_than_what_it_must_outlast_is_refused() {
        let short = config(&["--idle-timeout", "5s"]);
        let e = router(&short, CancellationToken::new()).err().unwrap();
        assert!(e.to_string().contains("IDLE_TIMEOUT"), "{e}");
    }

    /// One request through the router, without any backend behind it.
    async fn send(
        router: &Router,
        req: http::Request<axum::body::Body>,
    ) -> axum::response::Response {
        tower::ServiceExt::oneshot(router.clone(), req)
            .await
            .unwrap()
    }

    fn config(extra: &[&str]) -> Config {
        let mut args = vec!["edge"];
        args.extend_from_slice(extra);
        // Closed ports: nothing here may reach a backend.
        args.extend_from_slice(&[
            "--book-svc-url",
            "http://127.0.0.1:9",
            "--reserve-svc-url",
            "http://127.0.0.1:9",
            "--rental-svc-url",
            "http://127.0.0.1:9",
            "--view-svc-url",
            "http://127.0.0.1:9",
        ]);
        Config::try_parse_from(args).unwrap()
    }

    async fn json_of(res: axum::response::Response) -> serde_json::Value {
        use http_body_util::BodyExt;
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn the_router_answers_its_own_refusals_in_json() {
        let router = router(&config(&[]), CancellationToken::new()).unwrap();
        let get = |uri: &str| {
            http::Request::get(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };

        let res = send(&router, get("/v1/books")).await;
        assert_eq!(res.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(json_of(res).await["code"], 16);

        let res = send(&router, get("/nowhere")).await;
        assert_eq!(res.status(), http::StatusCode::NOT_FOUND);
        assert_eq!(json_of(res).await["code"], 5);

        let res = send(
            &router,
            http::Request::put("/v1/books")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), http::StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[http::header::ALLOW], "GET, POST, OPTIONS");

        let res = send(&router, get("/openapi.json")).await;
        assert_eq!(res.status(), http::StatusCode::OK);
        assert!(json_of(res).await["paths"]["/v1/books"].is_object());

        // A backend that is down answers 503 at once, with a retry hint.
        let res = send(
            &router,
            http::Request::get("/v1/books/01890a5d-ac96-774b-bcce-b302099a8057")
                .header("authorization", "Bearer t")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[http::header::RETRY_AFTER], "1");
        assert_eq!(json_of(res).await["code"], 14);
    }

    /// The value of one series on the metrics page, `0` when absent.
    fn series(metrics: &str, name_and_labels: &str) -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn requests_are_counted_by_method_route_template_and_status() {
        rentalbook_plumbing::telemetry::init_metrics(None).unwrap();
        let router = router(&config(&[]), CancellationToken::new()).unwrap();
        let request = |method: &str, uri: &str| {
            http::Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", "Bearer t")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let metrics = |router: Router| async move {
            let res = send(&router, request("GET", "/metrics")).await;
            assert_eq!(res.status(), http::StatusCode::OK);
            use http_body_util::BodyExt;
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let book = r#"http_requests_total{method="GET",route="/v1/books/{book_id}",status="503"}"#;
        let unmatched = r#"http_requests_total{method="other",route="unmatched",status="405"}"#;
        let timed =
            r#"http_request_duration_seconds_count{method="GET",route="/v1/books/{book_id}"}"#;
        let before = metrics(router.clone()).await;

        // Two books (the backend is down: 503), and a method of one's own.
        for uri in [
            "/v1/books/01890a5d-ac96-774b-bcce-b302099a8057",
            "/v1/books/01890a5d-ac96-774b-bcce-b302099a8058",
        ] {
            let res = send(&router, request("GET", uri)).await;
            assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        }
        let res = send(&router, request("BREW", "/v1/books/third-raw-id")).await;
        assert_eq!(res.status(), http::StatusCode::METHOD_NOT_ALLOWED);

        let after = metrics(router).await;
        assert_eq!(series(&after, book) - series(&before, book), 2.0, "{after}");
        assert_eq!(
            series(&after, timed) - series(&before, timed),
            2.0,
            "{after}"
        );
        assert_eq!(
            series(&after, unmatched) - series(&before, unmatched),
            1.0,
            "{after}"
        );
        assert!(!after.contains("raw-id"), "no raw path in a label: {after}");
        assert!(
            !after.contains("BREW"),
            "no method of a client's own: {after}"
        );
    }

    #[tokio::test]
    async fn the_pages_are_open_and_dev_sign_in_is_off_unless_asked_for() {
        let router = router(&config(&[]), CancellationToken::new()).unwrap();
        let get = |uri: &str| {
            http::Request::get(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        for path in ["/", "/app.js", "/style.css", "/i18n/ko.json"] {
            let res = send(&router, get(path)).await;
            assert_eq!(res.status(), http::StatusCode::OK, "{path}");
            assert!(
                res.headers()
                    .contains_key(http::header::CONTENT_SECURITY_POLICY)
            );
        }
        let res = send(&router, get("/session")).await;
        assert_eq!(
            json_of(res).await,
            serde_json::json!({"devSignIn": false, "member": null})
        );
        let res = send(
            &router,
            http::Request::post("/session/dev")
                .header("host", "127.0.0.1")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(r#"{"memberId":"a"}"#))
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), http::StatusCode::NOT_FOUND);

        // On when asked for, with a secret, on loopback.
        let mut on = config(&["--listen-addr", "127.0.0.1:0", "--dev-sign-in"]);
        on.dev_sign_in_secret = Some(DevSignInSecret::new("k"));
        let router = super::router(&on, CancellationToken::new()).unwrap();
        let res = send(&router, get("/session")).await;
        assert_eq!(json_of(res).await["devSignIn"], true);

        // Refused on any other address, and without a secret.
        let mut wide = config(&["--listen-addr", "0.0.0.0:8088", "--dev-sign-in"]);
        wide.dev_sign_in_secret = Some(DevSignInSecret::new("k"));
        assert!(super::router(&wide, CancellationToken::new()).is_err());
        let no_secret = config(&["--listen-addr", "127.0.0.1:0", "--dev-sign-in"]);
        assert!(super::router(&no_secret, CancellationToken::new()).is_err());
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        assert!(App::build_with(on, listener).await.is_err());
    }

    #[tokio::test]
    async fn cors_preflights_are_answered_when_origins_are_set() {
        let router = router(
            &config(&["--cors-allowed-origins", "https://app.example"]),
            CancellationToken::new(),
        )
        .unwrap();
        let preflight = |origin: &str| {
            http::Request::builder()
                .method(Method::OPTIONS)
                .uri("/v1/reservations")
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,idempotency-key",
                )
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let res = send(&router, preflight("https://app.example")).await;
        assert!(res.status().is_success());
        assert_eq!(
            res.headers()[http::header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(
            res.headers()[http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS],
            "true"
        );
        let res = send(&router, preflight("https://evil.example")).await;
        assert!(
            !res.headers()
                .contains_key(http::header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );

        // Off by default: no CORS headers at all.
        let plain = super::router(&config(&[]), CancellationToken::new()).unwrap();
        let res = send(&plain, preflight("https://app.example")).await;
        assert!(
            !res.headers()
                .contains_key(http::header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
    }

    #[test]
    fn cors_is_off_unless_origins_are_given() {
        assert!(cors_layer("").unwrap().is_none());
        assert!(cors_layer(" , ").unwrap().is_none());
        assert!(cors_layer("https://app.example").unwrap().is_some());
        assert!(cors_layer("*").unwrap().is_some());
        assert!(cors_layer("bad\norigin").is_err());
    }
}
