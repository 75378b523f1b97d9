//! How the harness talks to rentalbook: the [`Client`] trait, one method per
//! call a virtual member or reader makes, and its gRPC implementation. The
//! REST driver through the edge ([`crate::rest`]) implements the same trait
//! and a [`Transport`] that hands out its clients; the workload does not
//! change.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use rentalbook_proto::book::v1::book_service_client::BookServiceClient;
use rentalbook_proto::book::v1::{Book, GetBookRequest, RegisterBookRequest};
use rentalbook_proto::rental::v1::rental_service_client::RentalServiceClient;
use rentalbook_proto::rental::v1::{RentRequest, Rental, ReturnRentalRequest};
use rentalbook_proto::reserve::v1::reservation_service_client::ReservationServiceClient;
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, GetReservationRequest, Reservation, ReserveRequest,
};
use rentalbook_proto::view::v1::my_page_service_client::MyPageServiceClient;
use rentalbook_proto::view::v1::{GetMyPageRequest, MyPage, WatchMyPageRequest};
use tonic::transport::{Channel, Endpoint};

/// A failed call: its gRPC code (the REST driver maps the HTTP answer to the
/// code the edge translated it from) and message.
#[derive(Clone, Debug)]
pub struct CallError {
    pub code: tonic::Code,
    pub message: String,
}

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        Self {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for CallError {}

pub type CallResult<T> = Result<T, CallError>;

/// Pages as WatchMyPage sends them.
pub type PageStream = Pin<Box<dyn Stream<Item = CallResult<MyPage>> + Send>>;

/// The calls of the workload. `token` is the caller's bearer token.
#[async_trait]
pub trait Client: Send + Sync {
    async fn register_book(&self, token: &str, title: &str, copies: i32) -> CallResult<Book>;
    async fn get_book(&self, token: &str, book_id: &str) -> CallResult<Book>;
    async fn reserve(&self, token: &str, book_id: &str) -> CallResult<Reservation>;
    async fn get_reservation(&self, token: &str, reservation_id: &str) -> CallResult<Reservation>;
    async fn cancel_reservation(
        &self,
        token: &str,
        reservation_id: &str,
    ) -> CallResult<Reservation>;
    async fn rent(&self, token: &str, book_id: &str) -> CallResult<Rental>;
    async fn return_rental(&self, token: &str, rental_id: &str) -> CallResult<Rental>;
    /// `member_id` empty means the caller's own page.
    async fn get_my_page(&self, token: &str, member_id: &str) -> CallResult<MyPage>;
    /// The caller's page now, then each new page.
    async fn watch_my_page(&self, token: &str) -> CallResult<PageStream>;
}

/// Where the clients come from: a pool of connections, handed out by slot
/// (a worker's index), so workers share connections the same way in every
/// phase and in the echo baseline.
pub trait Transport: Send + Sync {
    /// `grpc`, or `rest` for the driver through the edge.
    fn name(&self) -> &'static str;
    fn client(&self, slot: usize) -> Arc<dyn Client>;
}

/// An endpoint as every client of the harness dials it.
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
}

/// A lazily connected channel to one address.
pub fn channel(addr: SocketAddr) -> Channel {
    endpoint(addr).connect_lazy()
}

/// A request with a bearer token.
pub fn with_token<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// The services' gRPC addresses and the edge's HTTP address.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Endpoints {
    pub book: SocketAddr,
    pub reserve: SocketAddr,
    pub rental: SocketAddr,
    pub view: SocketAddr,
    /// notice-svc (the all-in-one's; the mesh targets run without it).
    pub notice: SocketAddr,
    /// REST/JSON through the edge.
    pub edge: SocketAddr,
}

impl Endpoints {
    /// Free ports of 127.0.0.1, one for each.
    pub fn free() -> Self {
        let free = || SocketAddr::from(([127, 0, 0, 1], rentalbook_testkit::free_port()));
        Self {
            book: free(),
            reserve: free(),
            rental: free(),
            view: free(),
            notice: free(),
            edge: free(),
        }
    }
}

/// A signing secret of 64 random hex digits, new for each run.
pub fn fresh_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// One connection to each service.
#[derive(Clone)]
pub struct GrpcClient {
    book: BookServiceClient<Channel>,
    reserve: ReservationServiceClient<Channel>,
    rental: RentalServiceClient<Channel>,
    view: MyPageServiceClient<Channel>,
}

impl GrpcClient {
    pub fn new(e: &Endpoints) -> Self {
        Self {
            book: BookServiceClient::new(channel(e.book)),
            reserve: ReservationServiceClient::new(channel(e.reserve)),
            rental: RentalServiceClient::new(channel(e.rental)),
            view: MyPageServiceClient::new(channel(e.view)),
        }
    }
}

#[async_trait]
impl Client for GrpcClient {
    async fn register_book(&self, token: &str, title: &str, copies: i32) -> CallResult<Book> {
        let req = RegisterBookRequest {
            title: title.to_owned(),
            author: "Bench Author".into(),
            total_copies: copies,
            ..Default::default()
        };
        Ok(self
            .book
            .clone()
            .register_book(with_token(token, req))
            .await?
            .into_inner())
    }

    async fn get_book(&self, token: &str, book_id: &str) -> CallResult<Book> {
        let req = GetBookRequest {
            book_id: book_id.to_owned(),
        };
        Ok(self
            .book
            .clone()
            .get_book(with_token(token, req))
            .await?
            .into_inner())
    }

    async fn reserve(&self, token: &str, book_id: &str) -> CallResult<Reservation> {
        let req = ReserveRequest {
            book_id: book_id.to_owned(),
            request_id: String::new(),
        };
        Ok(self
            .reserve
            .clone()
            .reserve(with_token(token, req))
            .await?
            .into_inner())
    }

    async fn get_reservation(&self, token: &str, reservation_id: &str) -> CallResult<Reservation> {
        let req = GetReservationRequest {
            reservation_id: reservation_id.to_owned(),
        };
        Ok(self
            .reserve
            .clone()
            .get_reservation(with_token(token, req))
            .await?
            .into_inner())
    }

    async fn cancel_reservation(
        &self,
        token: &str,
        reservation_id: &str,
    ) -> CallResult<Reservation> {
        let req = CancelReservationRequest {
            reservation_id: reservation_id.to_owned(),
            request_id: String::new(),
        };
        Ok(self
            .reserve
            .clone()
            .cancel_reservation(with_token(token, req))
            .await?
            .into_inner())
    }

    async fn rent(&self, token: &str, book_id: &str) -> CallResult<Rental> {
        let req = RentRequest {
            book_id: book_id.to_owned(),
            request_id: String::new(),
        };
        Ok(self
            .rental
            .clone()
            .rent(with_token(token, req))
            .await?
            .into_inner())
    }

    async fn return_rental(&self, token: &str, rental_id: &str) -> CallResult<Rental> {
        let req = ReturnRentalRequest {
            rental_id: rental_id.to_owned(),
            request_id: String::new(),
        };
        Ok(self
            .rental
            .clone()
            .return_rental(with_token(token, req))
            .await?
            .into_inner())
    }

    async fn get_my_page(&self, token: &str, member_id: &str) -> CallResult<MyPage> {
        let req = GetMyPageRequest {
            member_id: member_id.to_owned(),
        };
        Ok(self
            .view
            .clone()
            .get_my_page(with_token(token, req))
            .await?
            .into_inner())
    }

    async fn watch_my_page(&self, token: &str) -> CallResult<PageStream> {
        let req = WatchMyPageRequest::default();
        let stream = self
            .view
            .clone()
            .watch_my_page(with_token(token, req))
            .await?
            .into_inner();
        Ok(Box::pin(stream.map(|r| r.map_err(CallError::from))))
    }
}

/// gRPC to the services over a fixed pool of connections per service.
pub struct GrpcTransport {
    pool: Vec<Arc<GrpcClient>>,
}

impl GrpcTransport {
    /// `connections` connections to each service (at least one).
    pub fn new(endpoints: &Endpoints, connections: usize) -> Self {
        Self {
            pool: (0..connections.max(1))
                .map(|_| Arc::new(GrpcClient::new(endpoints)))
                .collect(),
        }
    }
}

impl Transport for GrpcTransport {
    fn name(&self) -> &'static str {
        "grpc"
    }

    fn client(&self, slot: usize) -> Arc<dyn Client> {
        self.pool[slot % self.pool.len()].clone()
    }
}
