//! The REST edge over real HTTP in front of the real services: a whole
//! lending journey in JSON, the JSON shapes, error mapping, identity by
//! header or cookie, idempotency keys, My Page as Server-Sent Events, the
//! edge's own endpoints, and a fast 503 when a backend is down.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Mesh, librarian, member};
use tokio_util::sync::CancellationToken;

struct Edge {
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Edge {
    async fn start(mesh: &Mesh) -> Edge {
        let (addr, stop) = mesh.start_edge().await;
        Self::at(addr, stop)
    }

    fn at(addr: SocketAddr, stop: CancellationToken) -> Edge {
        Edge {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            stop,
        }
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Answer {
        let res = r.send().await.expect("the edge answers");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("a body");
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(self.request(Method::GET, path, Some(token)))
            .await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(self.request(Method::POST, path, Some(token)).json(&body))
            .await
    }

    /// Reserves, waiting out the moment in which reserve-svc has not yet seen
    /// the book's registration event.
    async fn reserve(&self, token: &str, book_id: &str, key: Option<&str>) -> Answer {
        let started = Instant::now();
        loop {
            let mut r = self
                .request(Method::POST, "/v1/reservations", Some(token))
                .json(&json!({ "bookId": book_id }));
            if let Some(k) = key {
                r = r.header("Idempotency-Key", k);
            }
            let a = self.send(r).await;
            if a.status == StatusCode::NOT_FOUND && started.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            return a;
        }
    }

    async fn register(&self, title: &str, copies: i32) -> Value {
        let a = self
            .post(
                "/v1/books",
                &librarian(),
                json!({"title": title, "author": "Ursula K. Le Guin", "totalCopies": copies}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        a.body
    }
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

/// An error answer in the one JSON shape, with `reason` as the reason of its
/// `google.rpc.ErrorInfo` detail (none when `reason` is empty).
fn assert_error(a: &Answer, status: StatusCode, code: i64, reason: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["code"], code, "{}", a.body);
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.body
    );
    let details = a.body["details"].as_array().expect("details");
    let reasons: Vec<&str> = details
        .iter()
        .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .map(|d| {
            assert_eq!(d["domain"], "rentalbook", "{}", a.body);
            d["reason"].as_str().unwrap_or_default()
        })
        .collect();
    let expected: Vec<&str> = Some(reason).filter(|r| !r.is_empty()).into_iter().collect();
    assert_eq!(reasons, expected, "{}", a.body);
    assert_eq!(
        a.headers.get("content-type").unwrap(),
        "application/json",
        "{}",
        a.body
    );
}

#[tokio::test]
async fn a_whole_journey_over_rest() {
    let mesh = Mesh::start().await;
    let edge = Edge::start(&mesh).await;
    let alice = member("alice");

    // A librarian registers a book.
    let title = format!("The Dispossessed {}", uuid::Uuid::new_v4().simple());
    let book = edge.register(&title, 1).await;
    let book_id = book["bookId"].as_str().expect("bookId").to_owned();
    assert_eq!(book["title"], title.as_str());
    assert_eq!(book["totalCopies"], 1);
    assert!(is_rfc3339(&book["registeredAt"]), "{book}");
    assert!(book.get("book_id").is_none(), "lowerCamelCase only: {book}");

    // The catalogue finds it by text and by id.
    let found = edge
        .get(
            &format!("/v1/books?query={}&pageSize=5", title.replace(' ', "+")),
            &alice,
        )
        .await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    assert_eq!(found.body["books"][0]["bookId"], book_id.as_str());
    let one = edge.get(&format!("/v1/books/{book_id}"), &alice).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["author"], "Ursula K. Le Guin");

    // Alice reserves: READY at once, with a pickup deadline.
    let reservation = edge.reserve(&alice, &book_id, None).await;
    assert_eq!(reservation.status, StatusCode::OK, "{}", reservation.body);
    let reservation = reservation.body;
    assert_eq!(reservation["status"], "RESERVATION_STATUS_READY");
    assert_eq!(reservation["memberId"], "alice");
    assert!(is_rfc3339(&reservation["pickupDeadline"]), "{reservation}");
    let reservation_id = reservation["reservationId"].as_str().unwrap().to_owned();
    let listed = edge.get("/v1/reservations?openOnly=true", &alice).await;
    assert_eq!(
        listed.body["reservations"][0]["reservationId"],
        reservation_id.as_str()
    );

    // She rents it and returns it.
    let rental = edge
        .post("/v1/rentals", &alice, json!({"bookId": book_id}))
        .await;
    assert_eq!(rental.status, StatusCode::OK, "{}", rental.body);
    assert_eq!(rental.body["status"], "RENTAL_STATUS_ACTIVE");
    assert!(is_rfc3339(&rental.body["dueAt"]));
    let rental_id = rental.body["rentalId"].as_str().unwrap().to_owned();
    let returned = edge
        .send(edge.request(
            Method::POST,
            &format!("/v1/rentals/{rental_id}:return"),
            Some(&alice),
        ))
        .await;
    assert_eq!(returned.status, StatusCode::OK, "{}", returned.body);
    assert_eq!(returned.body["status"], "RENTAL_STATUS_RETURNED");
    assert!(is_rfc3339(&returned.body["returnedAt"]));

    // My Page shows the journey RETURNED.
    let page = support::eventually("the journey to be RETURNED on My Page", || {
        let edge = &edge;
        let alice = &alice;
        let reservation_id = &reservation_id;
        async move {
            let page = edge.get("/v1/mypage", alice).await;
            let journey = page.body["journeys"]
                .as_array()?
                .iter()
                .find(|j| j["reservationId"] == reservation_id.as_str())?
                .clone();
            (journey["stage"] == "JOURNEY_STAGE_RETURNED").then_some(page.body)
        }
    })
    .await;
    assert_eq!(page["memberId"], "alice");
    assert!(is_rfc3339(&page["generatedAt"]));
    let journey = &page["journeys"][0];
    assert_eq!(journey["bookTitle"], title.as_str());
    assert_eq!(journey["rentalId"], rental_id.as_str());
    let steps: Vec<&str> = journey["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert!(steps.contains(&"STEP_KIND_RETURNED"), "{steps:?}");

    // The same page through the cookie a browser carries, and through the
    // librarian's binding.
    let by_cookie = edge
        .send(
            edge.request(Method::GET, "/v1/mypage", None)
                .header("Cookie", format!("theme=dark; rentalbook_token={alice}")),
        )
        .await;
    assert_eq!(by_cookie.status, StatusCode::OK, "{}", by_cookie.body);
    assert_eq!(by_cookie.body["memberId"], "alice");
    let by_librarian = edge.get("/v1/members/alice/mypage", &librarian()).await;
    assert_eq!(by_librarian.status, StatusCode::OK);
    assert_eq!(by_librarian.body["memberId"], "alice");
}

#[tokio::test]
async fn errors_have_http_statuses_and_one_json_shape() {
    let mesh = Mesh::start().await;
    let edge = Edge::start(&mesh).await;
    let alice = member("alice");
    let book = edge.register("A Wizard of Earthsea", 1).await;
    let book_id = book["bookId"].as_str().unwrap().to_owned();

    // No credentials: 401 at the edge.
    let a = edge
        .send(edge.request(Method::GET, "/v1/books", None))
        .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, 16, "SIGN_IN_REQUIRED");
    assert!(a.headers.contains_key("www-authenticate"));
    // A bad token: 401 from the service.
    let a = edge.get("/v1/books", "not-a-token").await;
    assert_error(&a, StatusCode::UNAUTHORIZED, 16, "SIGN_IN_REQUIRED");

    // A member may not register books: 403.
    let a = edge
        .post(
            "/v1/books",
            &alice,
            json!({"title": "Mine", "author": "Alice", "totalCopies": 1}),
        )
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, 7, "LIBRARIANS_ONLY");

    // No such book: 404; a malformed id: 400.
    let a = edge
        .get(&format!("/v1/books/{}", uuid::Uuid::now_v7()), &alice)
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, 5, "BOOK_NOT_FOUND");
    let a = edge.get("/v1/books/not-an-id", &alice).await;
    assert_error(&a, StatusCode::BAD_REQUEST, 3, "INVALID_FIELD");

    // Reserving twice: 409.
    let first = edge.reserve(&alice, &book_id, None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let a = edge.reserve(&alice, &book_id, None).await;
    assert_error(&a, StatusCode::CONFLICT, 6, "ALREADY_RESERVED");
    assert_eq!(a.body["details"][0]["metadata"]["bookId"], book_id.as_str());

    // Another member's reservation is, to bob, no reservation at all: 404,
    // as for an unknown id, so that ids cannot be probed.
    let theirs = first.body["reservationId"].as_str().unwrap();
    for path in [
        format!("/v1/reservations/{theirs}"),
        format!("/v1/reservations/{}", uuid::Uuid::now_v7()),
    ] {
        let a = edge.get(&path, &member("bob")).await;
        assert_error(&a, StatusCode::NOT_FOUND, 5, "RESERVATION_NOT_FOUND");
    }
    let a = edge
        .post(
            &format!("/v1/reservations/{theirs}:cancel"),
            &member("bob"),
            json!({}),
        )
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, 5, "RESERVATION_NOT_FOUND");

    // Renting without a READY reservation: 400 (FAILED_PRECONDITION).
    let a = edge
        .post("/v1/rentals", &member("bob"), json!({"bookId": book_id}))
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, 9, "NO_READY_RESERVATION");

    // Bodies the edge refuses, each naming the problem.
    let raw = |body: &'static str| {
        edge.request(Method::POST, "/v1/reservations", Some(&alice))
            .header("content-type", "application/json")
            .body(body)
    };
    let a = edge.send(raw("{\"bookId\":")).await;
    assert_error(&a, StatusCode::BAD_REQUEST, 3, "MALFORMED_REQUEST");
    assert!(a.body["message"].as_str().unwrap().contains("JSON"));
    let a = edge
        .send(raw("{\"bookId\":\"x\",\"colour\":\"red\"}"))
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, 3, "MALFORMED_REQUEST");
    assert!(a.body["message"].as_str().unwrap().contains("colour"));
    let a = edge.send(raw("{\"bookId\":42}")).await;
    assert_error(&a, StatusCode::BAD_REQUEST, 3, "MALFORMED_REQUEST");
    let a = edge.get("/v1/reservations?openOnly=perhaps", &alice).await;
    assert_error(&a, StatusCode::BAD_REQUEST, 3, "MALFORMED_REQUEST");
    assert!(a.body["message"].as_str().unwrap().contains("openOnly"));
    let a = edge.get("/v1/books?colour=red", &alice).await;
    assert_error(&a, StatusCode::BAD_REQUEST, 3, "MALFORMED_REQUEST");
    let a = edge
        .send(
            edge.request(Method::POST, "/v1/books", Some(&librarian()))
                .body(vec![b' '; 2 * 1024 * 1024]),
        )
        .await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, 3, "MALFORMED_REQUEST");

    // Unknown paths and wrong methods.
    let a = edge.get("/v1/nothing/here", &alice).await;
    assert_error(&a, StatusCode::NOT_FOUND, 5, "");
    let a = edge.get("/v1/books/a/b", &alice).await;
    assert_error(&a, StatusCode::NOT_FOUND, 5, "");
    let a = edge
        .send(edge.request(Method::DELETE, "/v1/books", Some(&alice)))
        .await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, 12, "");
    assert_eq!(a.headers.get("allow").unwrap(), "GET, POST, OPTIONS");
    // Internal RPCs have no route.
    let a = edge
        .send(edge.request(
            Method::POST,
            "/rentalbook.reserve.v1.ReservationService/FulfillReservation",
            Some(&alice),
        ))
        .await;
    assert_error(&a, StatusCode::NOT_FOUND, 5, "");
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_safe() {
    let mesh = Mesh::start().await;
    let edge = Edge::start(&mesh).await;
    let carol = member("carol");
    let book = edge.register("The Lathe of Heaven", 2).await;
    let book_id = book["bookId"].as_str().unwrap();

    let first = edge.reserve(&carol, book_id, Some("retry-me-1")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let again = edge.reserve(&carol, book_id, Some("retry-me-1")).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["reservationId"], first.body["reservationId"]);
    // Without the key it is a second attempt, which the rules refuse.
    let other = edge.reserve(&carol, book_id, None).await;
    assert_error(&other, StatusCode::CONFLICT, 6, "ALREADY_RESERVED");
    // The key and a different request id in the body contradict each other.
    let a = edge
        .send(
            edge.request(Method::POST, "/v1/reservations", Some(&carol))
                .header("Idempotency-Key", "k-1")
                .json(&json!({"bookId": book_id, "requestId": "k-2"})),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, 3, "MALFORMED_REQUEST");
}

/// Reads SSE `data:` payloads from a streaming response.
struct Events {
    res: reqwest::Response,
    buffer: String,
}

impl Events {
    /// The next `data:` event, or None when the stream ends; fails after 15 s.
    async fn next(&mut self) -> Option<Value> {
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let event: String = self.buffer.drain(..end + 2).collect();
                    let data: Vec<&str> = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    if data.is_empty() {
                        continue; // a keep-alive comment
                    }
                    return Some(serde_json::from_str(&data.join("\n")).expect("JSON data"));
                }
                match self.res.chunk().await.expect("the stream") {
                    Some(chunk) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                    None => return None,
                }
            }
        })
        .await
        .expect("an event within 15 s")
    }
}

#[tokio::test]
async fn my_page_streams_as_server_sent_events() {
    let mesh = Mesh::start().await;
    let edge = Edge::start(&mesh).await;
    let dave = member("dave");
    let book = edge.register("The Word for World Is Forest", 1).await;
    let book_id = book["bookId"].as_str().unwrap();

    let res = edge
        .request(Method::GET, "/v1/mypage:watch", Some(&dave))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = Events {
        res,
        buffer: String::new(),
    };
    let first = events.next().await.expect("the page at once");
    assert_eq!(first["memberId"], "dave");
    assert!(first.get("journeys").is_none(), "{first}");

    let reservation = edge.reserve(&dave, book_id, None).await;
    assert_eq!(reservation.status, StatusCode::OK, "{}", reservation.body);
    let changed = loop {
        let page = events.next().await.expect("a new page after the change");
        if page["journeys"].as_array().is_some_and(|j| !j.is_empty()) {
            break page;
        }
    };
    assert_eq!(
        changed["journeys"][0]["reservationId"],
        reservation.body["reservationId"]
    );
    assert_eq!(changed["openReservations"], 1);

    // A librarian watches Dave's page; a member may not.
    let res = edge
        .request(
            Method::GET,
            "/v1/mypage:watch?memberId=dave",
            Some(&librarian()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut theirs = Events {
        res,
        buffer: String::new(),
    };
    assert_eq!(theirs.next().await.unwrap()["memberId"], "dave");
    drop(theirs);
    let a = edge
        .send(edge.request(
            Method::GET,
            "/v1/mypage:watch?memberId=dave",
            Some(&member("eve")),
        ))
        .await;
    assert_error(&a, StatusCode::FORBIDDEN, 7, "OTHER_MEMBER");
    let a = edge
        .send(edge.request(Method::GET, "/v1/mypage:watch", None))
        .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, 16, "SIGN_IN_REQUIRED");

    // Shutting the edge down ends the open stream cleanly.
    // (A page still on its way, such as one with the hold-ready notice,
    // may come first.)
    edge.stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ends at shutdown");
}

#[tokio::test]
async fn the_edge_describes_and_reports_itself() {
    let mesh = Mesh::start().await;
    let edge = Edge::start(&mesh).await;

    let doc = edge
        .send(edge.request(Method::GET, "/openapi.json", None))
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/books",
        "/v1/books/{book_id}",
        "/v1/books/{book_id}:addCopies",
        "/v1/reservations",
        "/v1/reservations/{reservation_id}:cancel",
        "/v1/rentals",
        "/v1/rentals/{rental_id}:return",
        "/v1/mypage",
        "/v1/mypage:watch",
    ] {
        assert!(doc.body["paths"].get(path).is_some(), "{path} is described");
    }
    assert_eq!(
        doc.body["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    // The refusals' reasons are listed, so that clients can act on them.
    let reasons = doc.body["components"]["schemas"]["ErrorInfo"]["properties"]["reason"]["enum"]
        .as_array()
        .expect("ErrorInfo reasons")
        .clone();
    for reason in ["ALREADY_RESERVED", "NO_READY_RESERVATION", "DUPLICATE_ISBN"] {
        assert!(reasons.contains(&json!(reason)), "{reason} in {reasons:?}");
    }
    // proto3 JSON takes integers as numbers or as strings of digits, and
    // the document says so.
    let copies = &doc.body["components"]["schemas"]["rentalbook.book.v1.RegisterBookRequest.Body"]
        ["properties"]["totalCopies"]["oneOf"];
    let types: Vec<&str> = copies
        .as_array()
        .unwrap_or_else(|| panic!("totalCopies is a oneOf: {copies}"))
        .iter()
        .filter_map(|s| s["type"].as_str())
        .collect();
    assert_eq!(types, ["integer", "string"], "{copies}");
    let a = edge
        .post(
            "/v1/books",
            &librarian(),
            json!({"title": "Numbers as strings", "author": "N. Umber", "totalCopies": "2"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["totalCopies"], 2);

    let health = edge.send(edge.request(Method::GET, "/healthz", None)).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    for backend in ["book", "reserve", "rental", "view"] {
        assert_eq!(
            health.body["backends"][backend], "SERVING",
            "{}",
            health.body
        );
    }

    // Requests are counted by method, route template and status.
    let _ = edge.get("/v1/books", &member("frank")).await;
    let metrics = edge
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/v1/books",status="200"}"#),
        "{text}"
    );
    assert!(text.contains("http_request_duration_seconds"), "{text}");
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

#[tokio::test]
async fn a_backend_that_is_down_is_a_quick_503_with_retry_after() {
    let mesh = Mesh::start().await;
    let down = closed_port().await;
    let config = <edge::Config as clap::Parser>::try_parse_from([
        "edge".to_owned(),
        "--book-svc-url".into(),
        format!("http://{}", mesh.book_addr()),
        "--reserve-svc-url".into(),
        format!("http://{down}"),
        "--rental-svc-url".into(),
        format!("http://{}", mesh.rental_addr()),
        "--view-svc-url".into(),
        format!("http://{}", mesh.view_addr()),
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = edge::App::build_with(config, listener).await.unwrap();
    let addr = app.local_addr();
    let stop = CancellationToken::new();
    tokio::spawn(app.run(stop.clone()));
    let edge = Edge::at(addr, stop);

    for _ in 0..3 {
        let started = Instant::now();
        let a = edge
            .post(
                "/v1/reservations",
                &member("gina"),
                json!({"bookId": uuid::Uuid::now_v7().to_string()}),
            )
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        assert_error(
            &a,
            StatusCode::SERVICE_UNAVAILABLE,
            14,
            "TEMPORARILY_UNAVAILABLE",
        );
        assert_eq!(a.headers.get("retry-after").unwrap(), "1");
    }
    // The other services are still served.
    let a = edge.get("/v1/books", &member("gina")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let health = edge.send(edge.request(Method::GET, "/healthz", None)).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["backends"]["reserve"], "UNREACHABLE");
    assert_eq!(health.body["backends"]["book"], "SERVING");
}

#[tokio::test]
async fn allow_names_the_methods_each_path_answers() {
    let mesh = Mesh::start().await;
    let edge = Edge::start(&mesh).await;
    let book = edge.register("Allowances", 1).await;
    let id = book["bookId"].as_str().unwrap().to_owned();
    let alice = member("alice");

    // OPTIONS says what a path answers, custom verbs included: the GET
    // route's `{book_id}` does not swallow `:addCopies`.
    for (path, allow) in [
        (format!("/v1/books/{id}:addCopies"), "POST, OPTIONS"),
        (format!("/v1/reservations/{id}"), "GET, OPTIONS"),
        ("/v1/reservations".to_owned(), "GET, POST, OPTIONS"),
        ("/v1/mypage:watch".to_owned(), "GET, OPTIONS"),
        (format!("/v1/reservations/{id}:cancel"), "POST, OPTIONS"),
    ] {
        let res = edge
            .request(Method::OPTIONS, &path, Some(&alice))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "OPTIONS {path}");
        assert_eq!(res.headers()["allow"], allow, "OPTIONS {path}");
    }
    // A method the path does not answer: 405 with the same Allow.
    for (method, path, allow) in [
        (
            Method::GET,
            format!("/v1/books/{id}:addCopies"),
            "POST, OPTIONS",
        ),
        (
            Method::DELETE,
            "/v1/reservations".to_owned(),
            "GET, POST, OPTIONS",
        ),
        (Method::POST, "/v1/mypage:watch".to_owned(), "GET, OPTIONS"),
    ] {
        let a = edge
            .send(edge.request(method.clone(), &path, Some(&alice)))
            .await;
        assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, 12, "");
        assert_eq!(a.headers["allow"], allow, "{method} {path}");
    }
    // An unknown verb is no path at all; the book itself is still there.
    let a = edge.get(&format!("/v1/books/{id}:burn"), &alice).await;
    assert_error(&a, StatusCode::BAD_REQUEST, 3, "INVALID_FIELD");
    let a = edge.get(&format!("/v1/books/{id}"), &alice).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}
