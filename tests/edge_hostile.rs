//! The REST edge against hostile clients, over real sockets in front of the
//! real services: oversized headers and URIs get the usual JSON error body
//! (never a 500 or an empty answer); connections that send nothing, half a
//! head or half a body, or stay idle, are closed, and those past the cap
//! wait; a member holds only so many live streams, and none outlives its
//! token.

mod support;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use rentalbook_proto::view::v1::WatchMyPageRequest;
use rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient;
use serde_json::Value;
use support::{Mesh, member};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codegen::http;
use tonic::codegen::{Body as _, Service};
use tonic::transport::Channel;

/// Tells an answer from a hang on a busy machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// An HTTP/1.1 answer as it came off the socket.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: the body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The usual error answer: `status`, JSON with the gRPC `code` and a
    /// message.
    fn assert_error(&self, status: u16, code: i64) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert!(body["details"].is_array(), "{body}");
        let message = body["message"].as_str().unwrap_or_default().to_owned();
        assert!(!message.is_empty(), "{body}");
        message
    }
}

/// Writes `request` as it is on a fresh connection and reads one answer
/// (to its Content-Length, or to the end of the connection).
async fn raw(edge: SocketAddr, request: &[u8]) -> Raw {
    tokio::time::timeout(ANSWER_WITHIN, async {
        let mut socket = TcpStream::connect(edge).await.expect("connecting");
        // The server may answer and close before it has read everything.
        let _ = socket.write_all(request).await;
        read_answer(&mut socket).await
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {ANSWER_WITHIN:?}"))
}

async fn read_answer(socket: &mut TcpStream) -> Raw {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => panic!(
                "the connection ended before an answer: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    loop {
        if length.is_some_and(|l| body.len() >= l) {
            break;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Raw {
        status,
        headers,
        body,
    }
}

/// A GET with these extra header lines.
fn get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\n");
    for (name, value) in headers {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_uris_get_the_usual_json_error_never_a_500() {
    let mesh = Mesh::start().await;
    let (edge, _stop) = mesh.start_edge().await;
    let alice = format!("Bearer {}", member("alice"));

    // The services' own limit is 16 KiB of metadata: what the edge passes
    // on must stay under it, or the answer was a 500 with no word of why.
    let huge_token = format!("Bearer {}", "a".repeat(16 * 1024));
    let a = raw(edge, &get("/v1/books", &[("Authorization", &huge_token)])).await;
    assert!([400, 401, 431].contains(&a.status), "a 16 KiB token: {a:?}");
    a.assert_error(a.status, if a.status == 401 { 16 } else { 3 });

    let big = "x".repeat(20 * 1024);
    for name in ["X-Request-Id", "tracestate"] {
        let a = raw(
            edge,
            &get("/v1/books", &[("Authorization", &alice), (name, &big)]),
        )
        .await;
        let message = a.assert_error(431, 3);
        assert!(message.contains("header"), "{name}: {message}");
    }
    // The same call with ordinary headers is answered.
    let a = raw(
        edge,
        &get(
            "/v1/books",
            &[("Authorization", &alice), ("X-Request-Id", "r-1")],
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");

    // Past what the HTTP parser takes: the answer is still JSON.
    let long_uri = format!("/v1/books?query={}", "q".repeat(70 * 1024));
    let a = raw(edge, &get(&long_uri, &[("Authorization", &alice)])).await;
    a.assert_error(414, 3);
    let many: Vec<(String, String)> = (0..150)
        .map(|i| (format!("X-Filler-{i}"), "1".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let a = raw(edge, &get("/v1/books", &many)).await;
    a.assert_error(431, 3);
    let enormous = "y".repeat(600 * 1024);
    let a = raw(edge, &get("/v1/books", &[("X-Enormous", &enormous)])).await;
    a.assert_error(431, 3);
    let a = raw(
        edge,
        b"GET /v1/books HTTP/1.1\r\nHost: edge.test\r\nBad Header\r\n\r\n",
    )
    .await;
    a.assert_error(400, 3);

    // Over HTTP/2 (h2c, as the ingress gateway connects) the same JSON.
    let h2 = h2_connection(edge).await;
    let res = h2_get(
        &h2,
        "/v1/books",
        &[("authorization", &alice), ("x-request-id", &big)],
    )
    .await;
    assert_eq!(res.status(), 431);
    let body = h2_json(res).await;
    assert_eq!(body["code"], 3, "{body}");

    // The edge still serves afterwards.
    let a = raw(edge, &get("/healthz", &[])).await;
    assert_eq!(a.status, 200, "{a:?}");
}

/// One HTTP/2 connection to the edge with prior knowledge, as a proxy set
/// to speak HTTP/2 upstream opens it (tonic's channel is a plain h2c client
/// underneath).
async fn h2_connection(edge: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{edge}"))
        .unwrap()
        .connect()
        .await
        .expect("an h2c connection to the edge")
}

/// A GET over that connection.
async fn h2_get(
    connection: &Channel,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Response<tonic::body::Body> {
    let mut connection = connection.clone();
    poll_fn(|cx| connection.poll_ready(cx))
        .await
        .expect("the connection is up");
    let mut request = http::Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let res = tokio::time::timeout(
        ANSWER_WITHIN,
        connection.call(request.body(tonic::body::Body::empty()).unwrap()),
    )
    .await
    .expect("an answer in time")
    .expect("an answer over h2c");
    assert_eq!(res.version(), http::Version::HTTP_2);
    res
}

async fn h2_json(res: http::Response<tonic::body::Body>) -> Value {
    let mut body = res.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame.expect("a body").into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    serde_json::from_slice(&bytes).expect("a JSON body")
}

/// Reads until the server closes the connection; what it sent before.
async fn until_closed(socket: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .map_err(|_| {
        format!(
            "still open after {within:?}, having sent {:?}",
            String::from_utf8_lossy(&got)
        )
    })?;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_silent_and_idle_connections_are_closed() {
    let mesh = Mesh::start().await;
    let (edge, _stop) = mesh
        .start_edge_with(
            mesh.view_addr(),
            &[
                "--header-read-timeout",
                "1s",
                "--body-read-timeout",
                "1s",
                "--idle-timeout",
                "3s",
                "--request-timeout",
                "2s",
                "--sse-keep-alive",
                "1s",
            ],
        )
        .await;
    let librarian = format!("Bearer {}", support::librarian());
    // Closed within the timeout, with room for a busy machine.
    let soon = Duration::from_secs(6);

    let mut silent = TcpStream::connect(edge).await.unwrap();
    let mut half_head = TcpStream::connect(edge).await.unwrap();
    half_head
        .write_all(b"GET /v1/books HTTP/1.1\r\nHost: edge.test\r\nAccept: app")
        .await
        .unwrap();
    let mut half_body = TcpStream::connect(edge).await.unwrap();
    half_body
        .write_all(
            format!(
                "POST /v1/books HTTP/1.1\r\nHost: edge.test\r\nAuthorization: {librarian}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"title\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut idle = TcpStream::connect(edge).await.unwrap();
    idle.write_all(&get("/healthz", &[])).await.unwrap();
    let first = read_answer(&mut idle).await;
    assert_eq!(first.status, 200, "{first:?}");

    for (what, socket) in [
        ("a connection that sends nothing", &mut silent),
        ("half a request head", &mut half_head),
        ("an idle keep-alive connection", &mut idle),
    ] {
        let sent = until_closed(socket, soon)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            sent.is_empty(),
            "{what}: {}",
            String::from_utf8_lossy(&sent)
        );
    }
    // A body that stops halfway is answered, in JSON, then closed.
    let sent = until_closed(&mut half_body, soon)
        .await
        .unwrap_or_else(|e| panic!("half a body: {e}"));
    let sent = String::from_utf8_lossy(&sent);
    assert!(sent.starts_with("HTTP/1.1 408 "), "half a body: {sent}");
    assert!(sent.contains("\"code\":4"), "half a body: {sent}");

    // Meanwhile the edge answered everyone else.
    let a = raw(edge, &get("/healthz", &[])).await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let mesh = Mesh::start().await;
    let (edge, _stop) = mesh
        .start_edge_with(mesh.view_addr(), &["--max-connections", "4"])
        .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut socket = TcpStream::connect(edge).await.unwrap();
        socket.write_all(&get("/healthz", &[])).await.unwrap();
        let a = read_answer(&mut socket).await;
        assert_eq!(a.status, 200, "{a:?}");
        held.push(socket);
    }
    // A fifth is not served while four are open...
    let fifth = tokio::spawn(async move { raw(edge, &get("/healthz", &[])).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !fifth.is_finished(),
        "a fifth connection was served at once"
    );
    // ...and is as soon as one of them goes.
    drop(held.pop());
    let a = tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("the fifth connection served once another closed")
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_holds_only_so_many_live_streams() {
    let mesh = Mesh::start().await;
    let (edge, _stop) = mesh
        .start_edge_with(
            mesh.view_addr(),
            &["--max-watchers-per-member", "2", "--sse-keep-alive", "1s"],
        )
        .await;
    let http = reqwest::Client::new();
    let watch = |token: String| {
        let http = http.clone();
        async move {
            http.get(format!("http://{edge}/v1/mypage:watch"))
                .bearer_auth(token)
                .header("accept", "text/event-stream")
                .send()
                .await
                .expect("an answer")
        }
    };
    let first = watch(member("alice")).await;
    let second = watch(member("alice")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    let third = watch(member("alice")).await;
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["code"], 8, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains('2'),
        "the message says how many: {body}"
    );
    // Another member is not held up by alice's streams.
    assert_eq!(watch(member("bob")).await.status(), 200);
    // Once one of alice's streams is closed she may open another.
    drop(first);
    support::eventually("alice to open a stream again", || {
        let watch = watch(member("alice"));
        async move { (watch.await.status() == 200).then_some(()) }
    })
    .await;
    drop(second);
}

/// A member's token that expires in `ttl` (whole seconds, so a little
/// sooner).
fn short_lived(sub: &str, ttl: Duration) -> String {
    rentalbook_plumbing::auth::mint(
        support::SECRET,
        &rentalbook_plumbing::ids::MemberId::parse(sub).unwrap(),
        rentalbook_plumbing::auth::Role::Member,
        ttl,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_ends_when_its_token_expires() {
    let mesh = Mesh::start().await;
    let (view, _stop_view) = mesh.start_view_instance_with(&["--jwt-leeway", "0s"]).await;
    let (edge, _stop) = mesh
        .start_edge_with(view, &["--sse-keep-alive", "1s"])
        .await;
    // Past the token's expiry, with room for a busy machine.
    let ends_within = Duration::from_secs(10);

    // gRPC: the stream ends with UNAUTHENTICATED.
    let token = short_lived("tara", Duration::from_secs(3));
    let mut views = MyPageServiceClient::new(support::channel(view).await);
    let mut pages = views
        .watch_my_page(support::req(&token, WatchMyPageRequest::default()))
        .await
        .expect("the stream opens")
        .into_inner();
    let first = pages.message().await.unwrap().expect("a first page");
    assert_eq!(first.member_id, "tara");
    let ended = tokio::time::timeout(ends_within, async {
        loop {
            match pages.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends once the token has expired");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("expired"), "{ended:?}");

    // Server-Sent Events: an `error` event, then the end of the stream.
    let token = short_lived("tara", Duration::from_secs(3));
    let mut res = reqwest::Client::new()
        .get(format!("http://{edge}/v1/mypage:watch"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = tokio::time::timeout(ends_within, async {
        let mut text = String::new();
        while let Some(chunk) = res.chunk().await.expect("the stream reads") {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    })
    .await
    .expect("the event stream ends once the token has expired");
    let error = text
        .split("\n\n")
        .find(|event| event.lines().any(|l| l == "event: error"))
        .unwrap_or_else(|| panic!("no error event: {text}"));
    let data: Value = serde_json::from_str(
        error
            .lines()
            .find_map(|l| l.strip_prefix("data:"))
            .expect("the error's data")
            .trim(),
    )
    .unwrap();
    assert_eq!(data["code"], 16, "{data}");
    assert!(
        text.contains("\"memberId\":\"tara\""),
        "a page first: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_signed_in_by_the_cookie_must_come_from_the_edges_own_pages() {
    let mesh = Mesh::start().await;
    let (edge, _stop) = mesh.start_edge().await;
    let book = mesh.register_book("Forgeries", 3).await;
    // Once reserve-svc knows the book, a forgery that got through would
    // reserve it.
    mesh.reserve(&member("dave"), &book.book_id).await.unwrap();
    let own = format!("http://{edge}");
    let http = reqwest::Client::new();
    let cookie = format!("rentalbook_token={}", member("alice"));
    let reserve = |headers: &[(&str, &str)], content_type: &str| {
        let mut r = http
            .post(format!("{own}/v1/reservations"))
            .header("content-type", content_type)
            .body(format!(r#"{{"bookId":"{}"}}"#, book.book_id));
        for (name, value) in headers {
            r = r.header(*name, *value);
        }
        r.send()
    };
    let json = "application/json";
    let elsewhere: [(&str, Vec<(&str, &str)>); 5] = [
        (
            "another site's page",
            vec![
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        ),
        (
            "a page on another port of this host",
            vec![
                ("origin", "http://127.0.0.1:1"),
                ("sec-fetch-site", "same-site"),
            ],
        ),
        (
            "a sibling site, by Sec-Fetch-Site alone",
            vec![("sec-fetch-site", "same-site")],
        ),
        (
            "another origin, by Origin alone",
            vec![("origin", "http://evil.example")],
        ),
        ("no word of where it comes from", vec![]),
    ];
    for (case, headers) in &elsewhere {
        let mut headers = headers.clone();
        headers.push(("cookie", &cookie));
        let res = reserve(&headers, json).await.unwrap();
        assert_eq!(res.status(), 403, "{case}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], 7, "{case}: {body}");
    }
    // What an HTML form or a `no-cors` fetch can send, from the page itself.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let headers = [
            ("cookie", cookie.as_str()),
            ("origin", own.as_str()),
            ("sec-fetch-site", "same-origin"),
        ];
        let res = reserve(&headers, content_type).await.unwrap();
        assert_eq!(res.status(), 415, "{content_type}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], 3, "{content_type}: {body}");
    }
    let alice_has = |token: String| {
        let http = http.clone();
        let own = own.clone();
        async move {
            let res = http
                .get(format!("{own}/v1/reservations"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let body: Value = res.json().await.unwrap();
            body["reservations"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(alice_has(member("alice")).await, 0, "nothing was reserved");

    // The page itself: its own origin, JSON.
    let res = reserve(
        &[
            ("cookie", &cookie),
            ("origin", &own),
            ("sec-fetch-site", "same-origin"),
        ],
        json,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(alice_has(member("alice")).await, 1);
    // Reads by the cookie are not refused: another site cannot read them.
    let res = http
        .get(format!("{own}/v1/mypage"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // A bearer header is no browser's doing: it is not asked where it
    // comes from.
    let res = http
        .post(format!("{own}/v1/reservations"))
        .bearer_auth(member("bob"))
        .header("origin", "https://app.elsewhere.example")
        .json(&serde_json::json!({"bookId": book.book_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());

    // Behind a gateway that rewrites Host, the pages' origin is PUBLIC_ORIGIN.
    let (gated, _stop) = mesh
        .start_edge_with(
            mesh.view_addr(),
            &["--public-origin", "https://library.example"],
        )
        .await;
    let carol = format!("rentalbook_token={}", member("carol"));
    let cancel = |origin: &'static str| {
        http.post(format!("http://{gated}/v1/reservations"))
            .header("cookie", &carol)
            .header("origin", origin)
            .header("content-type", json)
            .body(format!(r#"{{"bookId":"{}"}}"#, book.book_id))
            .send()
    };
    assert_eq!(
        cancel("http://edge.internal:8088").await.unwrap().status(),
        403
    );
    let res = cancel("https://library.example").await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}
