//! A seeded fuzz of the REST edge in front of the real services: random
//! methods, paths (real templates with odd values, and junk), query strings,
//! bodies (random JSON shaped like the requests with wrong types and unknown
//! fields, truncated JSON, raw bytes, deep nesting, oversized bodies) and
//! credentials. Every answer must come within a timeout, be a 2xx or 4xx
//! (overload is a 429; a 503 with Retry-After is allowed: a backend briefly
//! away), and carry JSON (but a 204 to OPTIONS, which says what a path takes
//! in `Allow`); the edge must stay up. The seed is printed, and
//! `REST_FUZZ_SEED` replays a run.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Mesh, librarian, member};

/// SplitMix64: small, seedable, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const TEMPLATES: &[&str] = &[
    "/v1/books",
    "/v1/books/{}",
    "/v1/books/{}:addCopies",
    "/v1/reservations",
    "/v1/reservations/{}",
    "/v1/reservations/{}:cancel",
    "/v1/rentals",
    "/v1/rentals/{}",
    "/v1/rentals/{}:return",
    "/v1/mypage",
    "/v1/mypage:watch",
    "/v1/members/{}/mypage",
    "/healthz",
    "/openapi.json",
    "/metrics",
    "/",
    "/v1",
    "/v1/",
    "/v2/books",
    "/rentalbook.reserve.v1.ReservationService/FulfillReservation",
];

/// The routed methods and paths, to aim most cases at the transcoding.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/books"),
    ("GET", "/v1/books"),
    ("GET", "/v1/books/{}"),
    ("POST", "/v1/books/{}:addCopies"),
    ("POST", "/v1/reservations"),
    ("GET", "/v1/reservations"),
    ("GET", "/v1/reservations/{}"),
    ("POST", "/v1/reservations/{}:cancel"),
    ("POST", "/v1/rentals"),
    ("GET", "/v1/rentals"),
    ("GET", "/v1/rentals/{}"),
    ("POST", "/v1/rentals/{}:return"),
    ("GET", "/v1/mypage"),
    ("GET", "/v1/members/{}/mypage"),
    ("GET", "/v1/mypage:watch"),
];

const FIELDS: &[&str] = &[
    "bookId",
    "book_id",
    "title",
    "author",
    "isbn",
    "totalCopies",
    "total_copies",
    "copies",
    "requestId",
    "request_id",
    "reservationId",
    "rentalId",
    "memberId",
    "member_id",
    "openOnly",
    "activeOnly",
    "pageSize",
    "page_size",
    "pageToken",
    "query",
    "status",
    "colour",
    "",
    "__proto__",
    "bookId.x",
];

fn odd_text(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => uuid::Uuid::now_v7().to_string(),
        1 => String::new(),
        2 => "x".repeat(rng.below(400)),
        3 => "%2F".into(),
        4 => "a%2Fb".into(),
        5 => "%FF%FE".into(),
        6 => "%zz".into(),
        7 => "héllo wörld ✓".into(),
        8 => "..".into(),
        9 => "a:b:c".into(),
        10 => (0..rng.below(20))
            .map(|_| char::from(32 + rng.below(95) as u8))
            .collect(),
        _ => "bob".into(),
    }
}

fn random_json(rng: &mut Rng, depth: usize) -> Value {
    let top = if depth > 3 { 7 } else { 10 };
    match rng.below(top) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(rng.next() as i64),
        3 => json!(rng.below(10) as i32 - 3),
        4 => json!((rng.next() as f64) / 7.0),
        5 => json!(odd_text(rng)),
        6 => json!(*rng.pick(&[
            "RESERVATION_STATUS_READY",
            "BOOK_STATUS_LOST",
            "1e400",
            "-0",
            "2024-05-01T10:00:00Z",
            "NaN",
        ])),
        7 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => random_object(rng, depth + 1),
    }
}

fn random_object(rng: &mut Rng, depth: usize) -> Value {
    let mut map = serde_json::Map::new();
    for _ in 0..rng.below(5) {
        let key = rng.pick(FIELDS).to_string();
        // Mostly plausible values, sometimes anything.
        let value = if rng.chance(40) {
            match key.as_str() {
                "totalCopies" | "total_copies" | "copies" | "pageSize" | "page_size" => {
                    json!(rng.below(5))
                }
                "openOnly" | "activeOnly" => json!(rng.chance(50)),
                _ => json!(odd_text(rng)),
            }
        } else {
            random_json(rng, depth)
        };
        map.insert(key, value);
    }
    Value::Object(map)
}

fn random_body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => Vec::new(),
        1 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        2 => {
            let text = random_object(rng, 0).to_string();
            let cut = rng.below(text.len().max(1));
            text.as_bytes()[..cut].to_vec()
        }
        3 => {
            let depth = 50 + rng.below(400);
            let mut s = "[".repeat(depth);
            s.push_str(&"]".repeat(depth));
            s.into_bytes()
        }
        4 => random_json(rng, 0).to_string().into_bytes(),
        5 if rng.chance(10) => vec![b' '; 1024 * 1024 + 1 + rng.below(100_000)],
        _ => random_object(rng, 0).to_string().into_bytes(),
    }
}

fn random_query(rng: &mut Rng) -> String {
    if rng.chance(50) {
        return String::new();
    }
    let pairs: Vec<String> = (0..1 + rng.below(3))
        .map(|_| {
            let key = rng.pick(FIELDS).to_string();
            let value = match rng.below(4) {
                0 => "true".to_owned(),
                1 => rng.below(200).to_string(),
                _ => odd_text(rng),
            };
            format!("{}={}", key, percent_encode(&value, rng.chance(80)))
        })
        .collect();
    format!("?{}", pairs.join("&"))
}

/// Percent-encodes what a URL cannot carry; with `all`, everything but
/// letters and digits.
fn percent_encode(s: &str, all: bool) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || (!all && b.is_ascii_graphic() && b != b'#' && b != b'?')
            {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn random_path(rng: &mut Rng) -> String {
    if rng.chance(15) {
        // Junk segments.
        let n = rng.below(5);
        let mut p = String::new();
        for _ in 0..n {
            p.push('/');
            p.push_str(&percent_encode(&odd_text(rng), false));
        }
        if p.is_empty() {
            p.push('/');
        }
        return p;
    }
    let template = rng.pick(TEMPLATES);
    let value = percent_encode(&odd_text(rng), rng.chance(50));
    template.replace("{}", &value)
}

#[derive(Clone)]
struct Case {
    method: Method,
    path: String,
    body: Vec<u8>,
    auth: Option<(bool, String)>,
    key: Option<String>,
}

fn random_case(rng: &mut Rng, tokens: &[String]) -> Case {
    let aimed = rng.chance(70).then(|| *rng.pick(ROUTES));
    let method = rng
        .pick(&[
            Method::GET,
            Method::GET,
            Method::POST,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
            Method::from_bytes(b"BREW").unwrap(),
        ])
        .clone();
    let (method, path) = match aimed {
        Some((m, template)) => {
            let value = percent_encode(&odd_text(rng), rng.chance(50));
            (
                Method::from_bytes(m.as_bytes()).unwrap(),
                format!("{}{}", template.replace("{}", &value), random_query(rng)),
            )
        }
        None => (method, format!("{}{}", random_path(rng), random_query(rng))),
    };
    let body = if method == Method::GET && rng.chance(80) {
        Vec::new()
    } else {
        random_body(rng)
    };
    let auth = match rng.below(10) {
        0 => None,
        1 => Some((true, "garbage".to_owned())),
        2 => Some((false, rng.pick(tokens).clone())),
        _ => Some((true, rng.pick(tokens).clone())),
    };
    let key = rng
        .chance(20)
        .then(|| percent_encode(&odd_text(rng), false));
    Case {
        method,
        path,
        body,
        auth,
        key,
    }
}

/// Sends one case; returns a description of what was wrong, if anything.
async fn check(http: &reqwest::Client, base: &str, case: Case) -> Result<StatusCode, String> {
    let what = format!(
        "{} {} (body {} bytes: {:?})",
        case.method,
        case.path,
        case.body.len(),
        String::from_utf8_lossy(&case.body[..case.body.len().min(120)])
    );
    let mut r = http
        .request(case.method.clone(), format!("{base}{}", case.path))
        .body(case.body);
    match &case.auth {
        Some((true, t)) => r = r.bearer_auth(t),
        Some((false, t)) => r = r.header("cookie", format!("rentalbook_token={t}")),
        None => {}
    }
    if let Some(k) = &case.key
        && let Ok(v) = reqwest::header::HeaderValue::from_str(k)
    {
        r = r.header("idempotency-key", v);
    }
    let res = tokio::time::timeout(Duration::from_secs(10), r.send())
        .await
        .map_err(|_| format!("no answer within 10 s: {what}"))?
        .map_err(|e| format!("transport error {e}: {what}"))?;
    let status = res.status();
    let served = res.url().path().to_owned();
    let has_allow = res.headers().contains_key("allow");
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if status.is_server_error() {
        let retry = res.headers().contains_key("retry-after");
        if !(status == StatusCode::SERVICE_UNAVAILABLE && retry) {
            let body = res.text().await.unwrap_or_default();
            return Err(format!("{status} for {what}: {body}"));
        }
    }
    if !(status.is_success() || status.is_client_error() || status.is_server_error()) {
        return Err(format!("{status} for {what}"));
    }
    if content_type.starts_with("text/event-stream") {
        // A live stream: the first event must come, then we hang up.
        let mut res = res;
        let first = tokio::time::timeout(Duration::from_secs(10), res.chunk())
            .await
            .map_err(|_| format!("no first event within 10 s: {what}"))?;
        if !matches!(first, Ok(Some(_))) {
            return Err(format!("an empty event stream: {what}"));
        }
        return Ok(status);
    }
    let bytes = tokio::time::timeout(Duration::from_secs(10), res.bytes())
        .await
        .map_err(|_| format!("no body within 10 s: {what}"))?
        .map_err(|e| format!("reading the body: {e}: {what}"))?;
    if case.path.starts_with("/metrics") && status.is_success() {
        return Ok(status);
    }
    // OPTIONS on a route's path says what it takes in `Allow`, with no body.
    if status == StatusCode::NO_CONTENT && case.method == Method::OPTIONS {
        if !bytes.is_empty() || !has_allow {
            return Err(format!("204 without Allow, or with a body: {what}"));
        }
        return Ok(status);
    }
    // The web pages (HTML, CSS, JavaScript) are the one other non-JSON
    // answer, at the path the client sent (after normalising `..`).
    if edge::web::find(&served).is_some() && status.is_success() {
        return Ok(status);
    }
    let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{status} with a body that is not JSON ({e}): {what}: {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    if !status.is_success() {
        let shaped = body["code"].is_i64()
            && body["message"].as_str().is_some_and(|m| !m.is_empty())
            && body["details"].is_array();
        if !shaped {
            return Err(format!(
                "{status} with an error body of another shape: {what}: {body}"
            ));
        }
    }
    Ok(status)
}

#[tokio::test]
async fn random_requests_get_json_answers_and_never_break_the_edge() {
    let mesh = Mesh::start().await;
    let (addr, stop) = mesh.start_edge().await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();

    // Some real ids so that cases reach the services' rules, not just parsing.
    let book = mesh.register_book("Fuzzed Book", 2).await;
    let tokens = vec![member("fuzz-a"), member("fuzz-b"), librarian()];

    let seed = std::env::var("REST_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("REST_FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let cases: Vec<Case> = (0..4000)
        .map(|_| {
            let mut c = random_case(&mut rng, &tokens);
            if rng.chance(10) {
                let template = rng.pick(&["/v1/books/{}", "/v1/books/{}:addCopies"]);
                c.path = format!(
                    "{}{}",
                    template.replace("{}", &book.book_id),
                    random_query(&mut rng)
                );
            }
            c
        })
        .collect();

    let started = Instant::now();
    let results: Vec<Result<StatusCode, String>> = futures::stream::iter(cases)
        .map(|case| check(&http, &base, case))
        .buffer_unordered(16)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut by_status = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(s) => *by_status.entry(s.as_u16()).or_insert(0) += 1,
            Err(e) => failures.push(e),
        }
    }
    eprintln!(
        "{} cases in {elapsed:?}: {by_status:?}",
        by_status.values().sum::<i32>()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} bad answers, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        by_status.keys().any(|s| (200..300).contains(s)),
        "no case succeeded: {by_status:?}"
    );

    // Still up and still right.
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let got = http
        .get(format!("{base}/v1/books/{}", book.book_id))
        .bearer_auth(member("fuzz-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    let got: Value = got.json().await.unwrap();
    assert_eq!(got["title"], "Fuzzed Book");
    stop.cancel();
}
