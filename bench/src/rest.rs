//! The REST driver: the same calls as [`crate::client::GrpcClient`], as a
//! browser or a plain HTTP client makes them, through the edge: HTTP/1.1
//! with keep-alive, the bearer token in `Authorization`, bodies and answers
//! in proto3 JSON (the paths and bodies of the README's curl walkthrough).
//! Answers become the generated messages through the contracts' descriptors
//! (JSON into a `DynamicMessage`, transcoded to the prost type), errors
//! (`{code, message, details}`) become the gRPC code the edge translated
//! them from, and My Page's watch is read as Server-Sent Events.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};
use rentalbook_proto::book::v1::Book;
use rentalbook_proto::rental::v1::Rental;
use rentalbook_proto::reserve::v1::Reservation;
use rentalbook_proto::view::v1::MyPage;
use serde_json::json;
use tonic::Code;

use crate::client::{CallError, CallResult, Client, PageStream, Transport};

/// The descriptors of the messages the edge answers with.
struct Messages {
    book: MessageDescriptor,
    reservation: MessageDescriptor,
    rental: MessageDescriptor,
    my_page: MessageDescriptor,
}

impl Messages {
    fn load() -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(rentalbook_proto::FILE_DESCRIPTOR_SET)?;
        let get = |name: &str| {
            pool.get_message_by_name(name)
                .ok_or_else(|| anyhow::anyhow!("the contracts have no message {name}"))
        };
        Ok(Self {
            book: get("rentalbook.book.v1.Book")?,
            reservation: get("rentalbook.reserve.v1.Reservation")?,
            rental: get("rentalbook.rental.v1.Rental")?,
            my_page: get("rentalbook.view.v1.MyPage")?,
        })
    }
}

/// A proto3 JSON answer as the generated message `T` of `desc`.
fn decode<T: prost::Message + Default>(desc: &MessageDescriptor, body: &[u8]) -> CallResult<T> {
    let malformed = |e: &dyn std::fmt::Display| CallError {
        code: Code::Internal,
        message: format!("the edge answered with no valid {}: {e}", desc.full_name()),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let msg = DynamicMessage::deserialize_with_options(
        desc.clone(),
        &mut de,
        &DeserializeOptions::new().deny_unknown_fields(false),
    )
    .map_err(|e| malformed(&e))?;
    de.end().map_err(|e| malformed(&e))?;
    msg.transcode_to::<T>().map_err(|e| malformed(&e))
}

/// The gRPC code an HTTP status stands for, when the body does not say
/// (the edge's table read backwards).
fn code_of_status(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        502 | 503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        500..=599 => Code::Internal,
        _ => Code::Unknown,
    }
}

/// An error answer (`{"code", "message", "details"}`) as the call's error.
fn api_error(status: StatusCode, body: &[u8]) -> CallError {
    #[derive(serde::Deserialize)]
    struct Body {
        code: i32,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => CallError {
            code: Code::from(b.code),
            message: b.message,
        },
        Err(_) => CallError {
            code: code_of_status(status),
            message: format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    }
}

/// A request that did not get an answer.
fn transport_error(e: &reqwest::Error) -> CallError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    CallError {
        code: if e.is_timeout() {
            Code::DeadlineExceeded
        } else {
            Code::Unavailable
        },
        message,
    }
}

/// What a path segment escapes: everything but RFC 3986's unreserved
/// characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment, escaped.
fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// One Server-Sent Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when there was none.
    pub event: String,
    pub data: String,
}

/// Server-Sent Events out of a byte stream, as the HTML standard reads
/// them: lines end in LF, CR LF or CR (also across chunks); `data:` lines
/// join with LF; comments (keep-alives) and `id:`/`retry:` are skipped; a
/// blank line ends an event, and an event without data is none.
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds a chunk; the events it completed are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        for &b in chunk {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' => self.end_line(out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(out);
                }
                _ => self.line.push(b),
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if std::mem::take(&mut self.has_data) {
                out.push(SseEvent {
                    event: if self.event.is_empty() {
                        "message".into()
                    } else {
                        std::mem::take(&mut self.event)
                    },
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event.clear();
            self.data.clear();
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_owned(),
            _ => {}
        }
    }
}

/// The HTTP/1.1 client to the edge; one pool of keep-alive connections,
/// one connection for each request in flight and each open watch.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    messages: Arc<Messages>,
}

impl RestClient {
    pub fn new(edge: SocketAddr) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Self {
            http,
            base: format!("http://{edge}"),
            messages: Arc::new(Messages::load()?),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(body) = body {
            req = req
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        req
    }

    /// Sends the request and reads the answer as `T` (of `desc`).
    async fn call<T: prost::Message + Default>(
        &self,
        req: reqwest::RequestBuilder,
        desc: &MessageDescriptor,
    ) -> CallResult<T> {
        let res = req.send().await.map_err(|e| transport_error(&e))?;
        let status = res.status();
        let body = res.bytes().await.map_err(|e| transport_error(&e))?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        decode(desc, &body)
    }
}

/// What the watch stream still has to hand out.
struct Watch {
    res: Option<reqwest::Response>,
    parser: SseParser,
    ready: VecDeque<CallResult<MyPage>>,
    my_page: MessageDescriptor,
}

impl Watch {
    fn take(&mut self, chunk: &[u8]) {
        let mut events = Vec::new();
        self.parser.feed(chunk, &mut events);
        for e in events {
            let page = if e.event == "error" {
                Err(api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.data.as_bytes(),
                ))
            } else {
                decode(&self.my_page, e.data.as_bytes())
            };
            self.ready.push_back(page);
        }
    }

    async fn next(mut self) -> Option<(CallResult<MyPage>, Self)> {
        loop {
            if let Some(page) = self.ready.pop_front() {
                return Some((page, self));
            }
            let res = self.res.as_mut()?;
            match res.chunk().await {
                Ok(Some(chunk)) => self.take(&chunk),
                Ok(None) => self.res = None,
                Err(e) => {
                    self.res = None;
                    self.ready.push_back(Err(transport_error(&e)));
                }
            }
        }
    }
}

#[async_trait]
impl Client for RestClient {
    async fn register_book(&self, token: &str, title: &str, copies: i32) -> CallResult<Book> {
        let body = json!({"title": title, "author": "Bench Author", "totalCopies": copies});
        let req = self.request(Method::POST, "/v1/books", token, Some(body));
        self.call(req, &self.messages.book).await
    }

    async fn get_book(&self, token: &str, book_id: &str) -> CallResult<Book> {
        let path = format!("/v1/books/{}", segment(book_id));
        let req = self.request(Method::GET, &path, token, None);
        self.call(req, &self.messages.book).await
    }

    async fn reserve(&self, token: &str, book_id: &str) -> CallResult<Reservation> {
        let body = json!({ "bookId": book_id });
        let req = self.request(Method::POST, "/v1/reservations", token, Some(body));
        self.call(req, &self.messages.reservation).await
    }

    async fn get_reservation(&self, token: &str, reservation_id: &str) -> CallResult<Reservation> {
        let path = format!("/v1/reservations/{}", segment(reservation_id));
        let req = self.request(Method::GET, &path, token, None);
        self.call(req, &self.messages.reservation).await
    }

    async fn cancel_reservation(
        &self,
        token: &str,
        reservation_id: &str,
    ) -> CallResult<Reservation> {
        let path = format!("/v1/reservations/{}:cancel", segment(reservation_id));
        let req = self.request(Method::POST, &path, token, Some(json!({})));
        self.call(req, &self.messages.reservation).await
    }

    async fn rent(&self, token: &str, book_id: &str) -> CallResult<Rental> {
        let body = json!({ "bookId": book_id });
        let req = self.request(Method::POST, "/v1/rentals", token, Some(body));
        self.call(req, &self.messages.rental).await
    }

    async fn return_rental(&self, token: &str, rental_id: &str) -> CallResult<Rental> {
        let path = format!("/v1/rentals/{}:return", segment(rental_id));
        let req = self.request(Method::POST, &path, token, Some(json!({})));
        self.call(req, &self.messages.rental).await
    }

    async fn get_my_page(&self, token: &str, member_id: &str) -> CallResult<MyPage> {
        let path = if member_id.is_empty() {
            "/v1/mypage".to_owned()
        } else {
            format!("/v1/members/{}/mypage", segment(member_id))
        };
        let req = self.request(Method::GET, &path, token, None);
        self.call(req, &self.messages.my_page).await
    }

    async fn watch_my_page(&self, token: &str) -> CallResult<PageStream> {
        let res = self
            .request(Method::GET, "/v1/mypage:watch", token, None)
            .header(header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = res.status();
        if !status.is_success() {
            let body = res.bytes().await.unwrap_or_default();
            return Err(api_error(status, &body));
        }
        let watch = Watch {
            res: Some(res),
            parser: SseParser::default(),
            ready: VecDeque::new(),
            my_page: self.messages.my_page.clone(),
        };
        Ok(Box::pin(futures::stream::unfold(watch, Watch::next)))
    }
}

/// REST through the edge. HTTP/1.1 carries one request at a time on a
/// connection, so the clients share one pool that opens a connection for
/// each request in flight and keeps it for the next.
pub struct RestTransport {
    client: Arc<RestClient>,
}

impl RestTransport {
    pub fn new(edge: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            client: Arc::new(RestClient::new(edge)?),
        })
    }
}

impl Transport for RestTransport {
    fn name(&self) -> &'static str {
        "rest"
    }

    fn client(&self, _slot: usize) -> Arc<dyn Client> {
        self.client.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        out
    }

    fn message(data: &str) -> SseEvent {
        SseEvent {
            event: "message".into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_end_at_a_blank_line_and_skip_comments() {
        let events = parse(&[b": keep-alive\n\ndata: {\"a\":1}\n\n:\n\ndata:x\ndata: y\n\n"]);
        assert_eq!(events, vec![message("{\"a\":1}"), message("x\ny")]);
    }

    #[test]
    fn lines_and_fields_may_be_split_across_chunks_and_line_ends_vary() {
        let events = parse(&[
            b"da",
            b"ta: one\r",
            b"\n\r",
            b"\n",
            b"event: error\r\ndata: {}\r\r",
            b"data: \xC3",
            b"\xA9\n\n",
        ]);
        assert_eq!(
            events,
            vec![
                message("one"),
                SseEvent {
                    event: "error".into(),
                    data: "{}".into()
                },
                message("é"),
            ]
        );
    }

    #[test]
    fn an_event_without_data_is_none_and_an_unfinished_one_waits() {
        assert!(parse(&[b"event: x\nid: 3\nretry: 10\n\n", b"data: half"]).is_empty());
        assert_eq!(parse(&[b"data\n\n"]), vec![message("")]);
    }

    #[test]
    fn errors_carry_the_edges_code_or_one_read_from_the_status() {
        let e = api_error(
            StatusCode::CONFLICT,
            br#"{"code":6,"message":"already reserved","details":[]}"#,
        );
        assert_eq!(e.code, Code::AlreadyExists);
        assert_eq!(e.message, "already reserved");
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(e.code, Code::Unavailable);
        assert!(e.message.contains("502"), "{}", e.message);
    }

    #[test]
    fn proto3_json_becomes_the_generated_message() {
        let m = Messages::load().unwrap();
        let book: Book = decode(
            &m.book,
            br#"{"bookId":"b1","title":"Kindred","totalCopies":2,"somethingNew":true}"#,
        )
        .unwrap();
        assert_eq!(book.book_id, "b1");
        assert_eq!(book.total_copies, 2);
        let r: Reservation = decode(
            &m.reservation,
            br#"{"reservationId":"r1","status":"RESERVATION_STATUS_READY"}"#,
        )
        .unwrap();
        assert_eq!(
            r.status,
            rentalbook_proto::reserve::v1::ReservationStatus::Ready as i32
        );
        let e = decode::<Book>(&m.book, b"{\"bookId\":").unwrap_err();
        assert_eq!(e.code, Code::Internal);
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(segment("bench-ab12-m0-g1"), "bench-ab12-m0-g1");
        assert_eq!(segment("a/b c:d"), "a%2Fb%20c%3Ad");
    }
}
