//! rental-svc's calls to the lending desk (reserve-svc), as one visible stack:
//! a service token, a per-call deadline (the caller's, capped by ours), and a
//! failsafe circuit breaker that counts only infrastructure failures, never
//! business answers (SPEC §5).

use std::sync::Arc;
use std::time::Duration;

use failsafe::backoff::Constant;
use failsafe::failure_policy::ConsecutiveFailures;
use failsafe::futures::CircuitBreaker;
use failsafe::{Instrument, StateMachine};
use rentalbook_plumbing::auth::ServiceToken;
use rentalbook_plumbing::error::{is_infrastructure, unavailable_retry_after};
use rentalbook_plumbing::ids::{Id, MemberId};
use rentalbook_proto::reserve::v1::reservation_service_client::ReservationServiceClient;
use rentalbook_proto::reserve::v1::{
    FulfillReservationRequest, RecordReturnRequest, RecordReturnResponse, Reservation,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Breaker state as a gauge: 0 closed, 1 half-open, 2 open.
struct BreakerMetrics;

impl Instrument for BreakerMetrics {
    fn on_call_rejected(&self) {
        metrics::counter!("circuit_breaker_rejected_total", "peer" => "reserve-svc").increment(1);
    }
    fn on_open(&self) {
        tracing::warn!(peer = "reserve-svc", "circuit breaker opened");
        metrics::gauge!("circuit_breaker_state", "peer" => "reserve-svc").set(2.0);
    }
    fn on_half_open(&self) {
        metrics::gauge!("circuit_breaker_state", "peer" => "reserve-svc").set(1.0);
    }
    fn on_closed(&self) {
        tracing::info!(peer = "reserve-svc", "circuit breaker closed");
        metrics::gauge!("circuit_breaker_state", "peer" => "reserve-svc").set(0.0);
    }
}

/// How a call to the desk can fail.
#[derive(Debug)]
pub enum CallError {
    /// A business answer (FAILED_PRECONDITION, NOT_FOUND, ...), to pass on.
    Refused(Status),
    /// The desk could not answer: down, slow, or the breaker is open.
    Unavailable(Status),
}

#[derive(Clone, Debug)]
pub struct DeskSettings {
    pub url: String,
    pub call_timeout: Duration,
    /// Consecutive infrastructure failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe call is let through.
    pub breaker_open_for: Duration,
}

pub struct DeskClient {
    client: ReservationServiceClient<Channel>,
    token: Arc<ServiceToken>,
    breaker: StateMachine<ConsecutiveFailures<Constant>, BreakerMetrics>,
    settings: DeskSettings,
}

impl DeskClient {
    /// Connects lazily: rental-svc starts while reserve-svc is away.
    pub fn new(settings: DeskSettings, token: Arc<ServiceToken>) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(settings.url.clone())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .connect_lazy();
        let breaker = failsafe::Config::new()
            .failure_policy(failsafe::failure_policy::consecutive_failures(
                settings.breaker_failures.max(1),
                failsafe::backoff::constant(settings.breaker_open_for),
            ))
            .instrument(BreakerMetrics)
            .build();
        metrics::gauge!("circuit_breaker_state", "peer" => "reserve-svc").set(0.0);
        Ok(Self {
            client: ReservationServiceClient::new(channel),
            token,
            breaker,
            settings,
        })
    }

    /// The answer given while the desk cannot be reached.
    pub fn busy(&self) -> Status {
        let secs = self.settings.breaker_open_for.as_secs().max(1);
        unavailable_retry_after(
            format!("the lending desk is busy, try again in {secs} s"),
            Duration::from_secs(secs),
        )
    }

    fn request<T>(&self, msg: T, timeout: Duration) -> Result<Request<T>, Status> {
        let mut req = Request::new(msg);
        req.set_timeout(timeout);
        let bearer = self
            .token
            .bearer()
            .parse()
            .map_err(|_| Status::internal("service token is not a header value"))?;
        req.metadata_mut().insert("authorization", bearer);
        if let Some(tp) =
            rentalbook_plumbing::propagation::current_traceparent().and_then(|tp| tp.parse().ok())
        {
            req.metadata_mut().insert("traceparent", tp);
        }
        Ok(req)
    }

    async fn call<T, Fut>(
        &self,
        deadline: Option<Duration>,
        f: impl FnOnce(ReservationServiceClient<Channel>, Duration) -> Fut,
    ) -> Result<T, CallError>
    where
        Fut: Future<Output = Result<T, Status>>,
    {
        let timeout = deadline.map_or(self.settings.call_timeout, |d| {
            d.min(self.settings.call_timeout)
        });
        let call = f(self.client.clone(), timeout);
        let bounded = async move {
            tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(
                        "the lending desk did not answer in time",
                    ))
                })
        };
        match self.breaker.call_with(is_infrastructure, bounded).await {
            Ok(v) => Ok(v),
            Err(failsafe::Error::Inner(s)) if is_infrastructure(&s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "call to the lending desk failed");
                Err(CallError::Unavailable(s))
            }
            Err(failsafe::Error::Inner(s)) => Err(CallError::Refused(s)),
            Err(failsafe::Error::Rejected) => Err(CallError::Unavailable(self.busy())),
        }
    }

    pub async fn fulfill(
        &self,
        member: &MemberId,
        book_id: &str,
        rental_id: Id,
        deadline: Option<Duration>,
    ) -> Result<Reservation, CallError> {
        let msg = FulfillReservationRequest {
            member_id: member.to_string(),
            book_id: book_id.to_owned(),
            rental_id: rental_id.to_string(),
        };
        self.call(deadline, |mut client, timeout| async move {
            let req = self.request(msg, timeout)?;
            let res = client.fulfill_reservation(req).await?.into_inner();
            res.reservation.ok_or_else(|| {
                Status::internal("FulfillReservation answered without a reservation")
            })
        })
        .await
    }

    pub async fn record_return(
        &self,
        rental_id: Id,
        book_id: &str,
        member_id: &str,
        deadline: Option<Duration>,
    ) -> Result<RecordReturnResponse, CallError> {
        let msg = RecordReturnRequest {
            rental_id: rental_id.to_string(),
            book_id: book_id.to_owned(),
            member_id: member_id.to_owned(),
        };
        self.call(deadline, |mut client, timeout| async move {
            let req = self.request(msg, timeout)?;
            Ok(client.record_return(req).await?.into_inner())
        })
        .await
    }
}
