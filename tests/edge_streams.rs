//! The edge with many My Page event streams open, as the ingress gateway
//! holds them: REST calls still answer at once, over HTTP/1.1 connections of
//! their own and over one HTTP/2 (h2c) connection shared with streams, and
//! the edge's /metrics counts them by route template; and view-svc's
//! heartbeat, which sends an idle watcher its page again so that
//! proxies on the way (Envoy's stream idle timeout) do not reset the stream.

mod support;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use rentalbook_proto::view::v1::WatchMyPageRequest;
use rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient;
use serde_json::{Value, json};
use support::{Mesh, member, req};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::{self, Version};
use tonic::codegen::{Body as _, Bytes, Service};
use tonic::transport::Channel;

/// Watchers on HTTP/1.1, a connection each: three times the 100 connections
/// that stalled the gateway.
const HTTP1_WATCHERS: usize = 300;
/// Watchers multiplexed on one HTTP/2 connection, which REST calls share.
const HTTP2_WATCHERS: usize = 50;
/// Watchers opening their streams at once, as browsers arrive a few dozen
/// at a time: the test is about streams held open, not a burst of connects
/// (view-svc also counts a watch call against MAX_CONCURRENT_REQUESTS until
/// its stream is open).
const OPENING_AT_ONCE: usize = 50;
/// Members watched; each has watchers on both protocols, 14 in all: within
/// the edge's default of 16 streams per member (MAX_WATCHERS_PER_MEMBER).
const MEMBERS: usize = 25;
/// Tells a call stuck behind the streams from one slowed by a busy machine.
const FAST: Duration = Duration::from_secs(2);

/// What arrives on an event stream.
#[derive(Debug)]
enum Sse {
    Data(Value),
    Comment,
}

/// Server-Sent Events from a response body, over either protocol.
struct EventStream {
    chunks: BoxStream<'static, Bytes>,
    buffer: Vec<u8>,
}

impl EventStream {
    fn http1(res: reqwest::Response) -> Self {
        assert_eq!(res.version(), reqwest::Version::HTTP_11);
        let chunks = futures::stream::unfold(res, |mut res| async move {
            res.chunk().await.ok().flatten().map(|b| (b, res))
        });
        Self {
            chunks: chunks.boxed(),
            buffer: Vec::new(),
        }
    }

    fn http2(res: http::Response<tonic::body::Body>) -> Self {
        Self {
            chunks: body_chunks(res.into_body()),
            buffer: Vec::new(),
        }
    }

    /// The next event or comment; None when the stream ends.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("UTF-8 events");
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    return Some(Sse::Comment);
                }
                return Some(Sse::Data(
                    serde_json::from_str(&data.join("\n")).expect("JSON data"),
                ));
            }
            let chunk = self.chunks.next().await?;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next `data:` event, past any comments.
    async fn next_page(&mut self) -> Option<Value> {
        loop {
            if let Sse::Data(page) = self.next().await? {
                return Some(page);
            }
        }
    }
}

fn body_chunks(body: tonic::body::Body) -> BoxStream<'static, Bytes> {
    futures::stream::unfold(body, |mut body| async move {
        loop {
            let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await?
                .ok()?;
            if let Ok(data) = frame.into_data() {
                return Some((data, body));
            }
        }
    })
    .boxed()
}

/// One HTTP/2 connection to the edge, opened with prior knowledge as a
/// proxy set to speak HTTP/2 upstream opens it (tonic's channel is a plain
/// h2c client underneath).
async fn h2_connection(edge: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{edge}"))
        .unwrap()
        .connect()
        .await
        .expect("an h2c connection to the edge")
}

/// A GET on that connection; the error if it was not answered over HTTP/2.
async fn h2_get(
    connection: &Channel,
    path: &str,
    token: &str,
) -> Result<http::Response<tonic::body::Body>, String> {
    let mut connection = connection.clone();
    poll_fn(|cx| connection.poll_ready(cx))
        .await
        .map_err(|e| format!("the connection is down: {e:?}"))?;
    let request = http::Request::get(path)
        .header("authorization", format!("Bearer {token}"))
        .body(tonic::body::Body::empty())
        .unwrap();
    let res = connection
        .call(request)
        .await
        .map_err(|e| format!("no answer over h2c: {e:?}"))?;
    assert_eq!(res.version(), Version::HTTP_2);
    Ok(res)
}

/// How the watchers fared.
#[derive(Default)]
struct Tally {
    /// Got their first page.
    opened: AtomicUsize,
    /// Got the page with the reservation on it.
    changed: AtomicUsize,
    /// Refused, ended, or never opened, before the test was over.
    lost: AtomicUsize,
    /// Why, for the first few of them.
    why: Mutex<Vec<String>>,
}

impl Tally {
    /// Waits until `count` of the watchers have reached `what`; fails at
    /// once if any stream is lost.
    async fn wait_for(&self, count: &AtomicUsize, all: usize, limit: Duration, what: &str) {
        let started = Instant::now();
        loop {
            self.assert_none_lost();
            let reached = count.load(Ordering::SeqCst);
            if reached == all {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "only {reached} of {all} watchers had {what} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn lose(&self, why: String) {
        self.lost.fetch_add(1, Ordering::SeqCst);
        let mut reasons = self.why.lock().unwrap_or_else(|e| e.into_inner());
        if reasons.len() < 5 {
            reasons.push(why);
        }
    }

    fn assert_none_lost(&self) {
        let lost = self.lost.load(Ordering::SeqCst);
        let reasons = self.why.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(
            lost, 0,
            "{lost} watchers' streams were refused or ended: {reasons:?}"
        );
    }
}

/// Reads a watcher's stream until `stop`, counting what it sees; `opening`
/// is held until the first page is in.
async fn hold(
    events: Result<EventStream, String>,
    who: String,
    opening: OwnedSemaphorePermit,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut events = match events {
        Ok(events) => events,
        Err(why) => return tally.lose(why),
    };
    match events.next_page().await {
        Some(page) if page["memberId"] == who.as_str() => {
            tally.opened.fetch_add(1, Ordering::SeqCst);
        }
        other => return tally.lose(format!("{who}'s first event: {other:?}")),
    }
    drop(opening);
    let mut changed = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Sse::Data(page)) => {
                    if !changed && page["journeys"].as_array().is_some_and(|j| !j.is_empty()) {
                        changed = true;
                        tally.changed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Some(Sse::Comment) => {}
                None => return tally.lose(format!("{who}'s stream ended")),
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// `call` must answer within [`FAST`]; returns its answer and how long it took.
async fn fast<T>(what: &str, call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let answer = tokio::time::timeout(FAST, call)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {FAST:?} with the streams open"));
    (answer, started.elapsed())
}

fn watcher(i: usize) -> String {
    format!("watcher-{}", i % MEMBERS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_answer_at_once_while_hundreds_of_event_streams_are_open() {
    let mesh = Mesh::start().await;
    let (edge, stop_edge) = mesh.start_edge().await;
    let base = format!("http://{edge}");
    let book = mesh.register_book("The Dispossessed", MEMBERS as i32).await;
    // No total timeout: it would cut the streams.
    let http1 = reqwest::Client::builder()
        .connect_timeout(FAST)
        .build()
        .unwrap();
    let h2 = h2_connection(edge).await;

    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let started = Instant::now();
    let mut watchers = tokio::task::JoinSet::new();
    for i in 0..HTTP1_WATCHERS {
        let (http1, url, who) = (http1.clone(), format!("{base}/v1/mypage:watch"), watcher(i));
        let (tally, stop, opening) = (tally.clone(), stop.clone(), opening.clone());
        watchers.spawn(async move {
            let opening = opening.acquire_owned().await.unwrap();
            let res = http1
                .get(url)
                .bearer_auth(member(&who))
                .header("accept", "text/event-stream")
                .send()
                .await;
            let events = match res {
                Ok(res) if res.status() == reqwest::StatusCode::OK => Ok(EventStream::http1(res)),
                Ok(res) => Err(format!("{who} on HTTP/1.1: {}", res.status())),
                Err(e) => Err(format!("{who} on HTTP/1.1: {e:?}")),
            };
            hold(events, who, opening, tally, stop).await;
        });
    }
    for i in 0..HTTP2_WATCHERS {
        let (h2, who) = (h2.clone(), watcher(i));
        let (tally, stop, opening) = (tally.clone(), stop.clone(), opening.clone());
        watchers.spawn(async move {
            let opening = opening.acquire_owned().await.unwrap();
            let events = match h2_get(&h2, "/v1/mypage:watch", &member(&who)).await {
                Ok(res) if res.status() == http::StatusCode::OK => Ok(EventStream::http2(res)),
                Ok(res) => Err(format!("{who} on HTTP/2: {}", res.status())),
                Err(e) => Err(format!("{who} on HTTP/2: {e}")),
            };
            hold(events, who, opening, tally, stop).await;
        });
    }
    let all = HTTP1_WATCHERS + HTTP2_WATCHERS;
    tally
        .wait_for(
            &tally.opened,
            all,
            Duration::from_secs(20),
            "their first page",
        )
        .await;
    println!("{all} watchers open in {:?}", started.elapsed());

    // REST calls with every stream open: catalogue and My Page (the latter
    // shares the edge's connection to view-svc with all the streams), on
    // fresh HTTP/1.1 connections and on the HTTP/2 connection of 50 streams.
    let reader = member("watcher-0");
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        for path in ["/v1/books?pageSize=5", "/v1/mypage", "/healthz"] {
            let (res, took) = fast(&format!("GET {path} on HTTP/1.1"), async {
                http1
                    .get(format!("{base}{path}"))
                    .bearer_auth(&reader)
                    .send()
                    .await
                    .expect("an answer")
            })
            .await;
            assert_eq!(res.status(), reqwest::StatusCode::OK, "{path}");
            assert_eq!(res.version(), reqwest::Version::HTTP_11);
            slowest = slowest.max(took);

            let (res, took) = fast(&format!("GET {path} on HTTP/2"), async {
                let res = h2_get(&h2, path, &reader).await.expect("an answer");
                let status = res.status();
                let body: Vec<Bytes> = body_chunks(res.into_body()).collect().await;
                (status, body.concat())
            })
            .await;
            assert_eq!(res.0, http::StatusCode::OK, "{path}");
            serde_json::from_slice::<Value>(&res.1).expect("a JSON answer");
            slowest = slowest.max(took);
        }
    }
    println!("slowest REST call with {all} streams open: {slowest:?}");

    // The edge counted all of it by route template, never by raw path.
    let (metrics, _) = fast("GET /metrics", async {
        http1
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("an answer")
            .text()
            .await
            .expect("the metrics")
    })
    .await;
    let series = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the edge's metrics:\n{metrics}"))
    };
    assert_eq!(
        series(r#"http_requests_total{method="GET",route="/v1/mypage:watch",status="200"}"#),
        all as f64,
        "every stream opened is counted"
    );
    for route in ["/v1/books", "/v1/mypage", "/healthz"] {
        let counted =
            format!(r#"http_requests_total{{method="GET",route="{route}",status="200"}}"#);
        let timed =
            format!(r#"http_request_duration_seconds_count{{method="GET",route="{route}"}}"#);
        assert!(series(&counted) >= 6.0, "{route}: 3 calls on each protocol");
        assert_eq!(series(&counted), series(&timed), "{route}: each call timed");
    }
    assert!(!metrics.contains("pageSize"), "no query in a route label");

    // Every member reserves through the edge; every watcher sees it.
    for m in 0..MEMBERS {
        let who = member(&watcher(m));
        let reserve_started = Instant::now();
        loop {
            let (res, took) = fast("POST /v1/reservations", async {
                http1
                    .post(format!("{base}/v1/reservations"))
                    .bearer_auth(&who)
                    .json(&json!({ "bookId": book.book_id }))
                    .send()
                    .await
                    .expect("an answer")
            })
            .await;
            slowest = slowest.max(took);
            // reserve-svc may not have seen the book's registration yet.
            if res.status() == reqwest::StatusCode::NOT_FOUND
                && reserve_started.elapsed() < Duration::from_secs(10)
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            assert_eq!(res.status(), reqwest::StatusCode::OK);
            break;
        }
    }
    let changed_at = Instant::now();
    tally
        .wait_for(&tally.changed, all, Duration::from_secs(20), "the new page")
        .await;
    println!(
        "{all} watchers had the new page {:?} after the last reservation",
        changed_at.elapsed()
    );
    tally.assert_none_lost();

    stop.cancel();
    while let Some(done) = watchers.join_next().await {
        done.expect("a watcher");
    }
    stop_edge.cancel();
}

/// view-svc's heartbeat in the test: short, so that the test is quick.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// The heartbeat plus what a loaded machine may add.
const HEARTBEAT_BOUND: Duration = Duration::from_millis(1500);

fn without_clock(mut page: Value) -> Value {
    page.as_object_mut().unwrap().remove("generatedAt");
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watcher_gets_its_page_again_within_the_heartbeat() {
    let mesh = Mesh::start().await;
    let (view, stop_view) = mesh
        .start_view_instance_with(&["--watch-heartbeat", "500ms"])
        .await;

    // gRPC, straight from view-svc: nothing changes, yet the page comes again.
    let mut views = MyPageServiceClient::new(support::channel(view).await);
    let mut watch = views
        .watch_my_page(req(&member("ivy"), WatchMyPageRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the page at once")
        .unwrap()
        .expect("a page");
    let mut last = Instant::now();
    for beat in 1..=3 {
        let again = tokio::time::timeout(HEARTBEAT_BOUND, watch.message())
            .await
            .unwrap_or_else(|_| panic!("no page within {HEARTBEAT_BOUND:?} (beat {beat})"))
            .unwrap()
            .expect("the stream stays open");
        let gap = last.elapsed();
        last = Instant::now();
        println!("gRPC: the page again after {gap:?}");
        assert!(view_svc::pages::same(&again, &first), "the same page");
        assert!(gap >= HEARTBEAT / 2, "not before the heartbeat: {gap:?}");
    }

    // Server-Sent Events through the edge: the page again, and keep-alive
    // comments in between.
    let (edge, stop_edge) = mesh
        .start_edge_with(view, &["--sse-keep-alive", "150ms"])
        .await;
    let res = reqwest::Client::new()
        .get(format!("http://{edge}/v1/mypage:watch"))
        .bearer_auth(member("ivy"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let mut events = EventStream::http1(res);
    let first = tokio::time::timeout(Duration::from_secs(10), events.next_page())
        .await
        .expect("the page at once")
        .expect("a page");
    assert_eq!(first["memberId"], "ivy");
    let mut last = Instant::now();
    for beat in 1..=2 {
        let mut comments = 0;
        let again = tokio::time::timeout(HEARTBEAT_BOUND, async {
            loop {
                match events.next().await.expect("the stream stays open") {
                    Sse::Data(page) => return page,
                    Sse::Comment => comments += 1,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no event within {HEARTBEAT_BOUND:?} (beat {beat})"));
        let gap = last.elapsed();
        last = Instant::now();
        println!("SSE: the page again after {gap:?}, {comments} keep-alive comments before it");
        assert_eq!(without_clock(again), without_clock(first.clone()));
        assert!(gap >= HEARTBEAT / 2, "not before the heartbeat: {gap:?}");
        assert!(comments >= 1, "keep-alive comments between the pages");
    }
    stop_edge.cancel();
    stop_view.cancel();
}
