//! rental-svc's calls to the lending desk (reserve-svc), as one visible stack:
//! a service token, a per-call deadline (the caller's, capped by ours), and a
//! failsafe circuit breaker that counts only failures of the desk itself,
//! never business answers and never a deadline the caller made too short
//! (SPEC §5).

use std::sync::Arc;
use std::time::Duration;

use failsafe::backoff::Constant;
use failsafe::failure_policy::ConsecutiveFailures;
use failsafe::{Instrument, StateMachine};
use rentalbook_plumbing::auth::ServiceToken;
use rentalbook_plumbing::error::{is_infrastructure, unavailable_retry_after};
use rentalbook_plumbing::ids::{Id, MemberId};
use rentalbook_proto::reserve::v1::reservation_service_client::ReservationServiceClient;
use rentalbook_proto::reserve::v1::{
    CheckInItemRequest, CheckInItemResponse, CheckOutItemRequest, FulfillReservationRequest,
    GetItemRequest, Item, MayRenewRequest, RecordReturnRequest, RecordReturnResponse, Reservation,
};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

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
    /// Consecutive failures of the desk ([`counts_against_the_desk`]) that
    /// open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe call is let through.
    pub breaker_open_for: Duration,
    /// A call that timed out counts against the desk only if it had at least
    /// this long (or the whole call timeout, if that is shorter).
    pub breaker_min_budget: Duration,
}

/// Leave from the breaker for one call to the desk. Taken before anything is
/// committed, so a caller turned away leaves nothing behind.
pub struct Admitted(());

/// Whether a failed call counts against the desk (SPEC §5): it was
/// unreachable, said it is unavailable or overloaded, or had time enough to
/// answer and did not. A call whose caller left it less than `floor` says
/// nothing about the desk, and neither do its other answers.
pub fn counts_against_the_desk(status: &Status, budget: Duration, floor: Duration) -> bool {
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted => true,
        // The desk's server ends a call at its deadline with CANCELLED.
        Code::DeadlineExceeded | Code::Cancelled => budget >= floor,
        _ => false,
    }
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

    /// Asks the breaker for one call: refused with [`DeskClient::busy`]
    /// while it is open.
    pub fn admit(&self) -> Result<Admitted, Status> {
        if self.breaker.is_call_permitted() {
            Ok(Admitted(()))
        } else {
            Err(self.busy())
        }
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

    /// The time a call may take: the caller's deadline, capped by ours.
    fn budget(&self, deadline: Option<Instant>) -> Duration {
        let call_timeout = self.settings.call_timeout;
        deadline.map_or(call_timeout, |d| {
            d.saturating_duration_since(Instant::now())
                .min(call_timeout)
        })
    }

    /// Makes an admitted call and tells the breaker what it says about the
    /// desk. A call dropped half-way (its caller went away) tells it nothing.
    async fn call<T, Fut>(
        &self,
        _: Admitted,
        deadline: Option<Instant>,
        f: impl FnOnce(ReservationServiceClient<Channel>, Duration) -> Fut,
    ) -> Result<T, CallError>
    where
        Fut: Future<Output = Result<T, Status>>,
    {
        let budget = self.budget(deadline);
        let answer = tokio::time::timeout(budget, f(self.client.clone(), budget))
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(
                    "the lending desk did not answer in time",
                ))
            });
        let s = match answer {
            Ok(v) => {
                self.breaker.on_success();
                return Ok(v);
            }
            Err(s) => s,
        };
        let floor = self
            .settings
            .breaker_min_budget
            .min(self.settings.call_timeout);
        if counts_against_the_desk(&s, budget, floor) {
            tracing::warn!(code = ?s.code(), message = s.message(), budget_ms = budget.as_millis() as u64, "call to the lending desk failed");
            self.breaker.on_error();
            Err(CallError::Unavailable(s))
        } else if is_infrastructure(&s) {
            tracing::info!(code = ?s.code(), message = s.message(), budget_ms = budget.as_millis() as u64, "call to the lending desk failed, not counted by the breaker");
            Err(CallError::Unavailable(s))
        } else {
            // A business answer: the desk is up and deciding.
            self.breaker.on_success();
            Err(CallError::Refused(s))
        }
    }

    pub async fn fulfill(
        &self,
        admitted: Admitted,
        member: &MemberId,
        book_id: &str,
        rental_id: Id,
        deadline: Option<Instant>,
    ) -> Result<Reservation, CallError> {
        let msg = FulfillReservationRequest {
            member_id: member.to_string(),
            book_id: book_id.to_owned(),
            rental_id: rental_id.to_string(),
        };
        self.call(admitted, deadline, |mut client, timeout| async move {
            let req = self.request(msg, timeout)?;
            let res = client.fulfill_reservation(req).await?.into_inner();
            res.reservation.ok_or_else(|| {
                Status::internal("FulfillReservation answered without a reservation")
            })
        })
        .await
    }

    /// R10: the desk lends the scanned item with this rental.
    pub async fn check_out_item(
        &self,
        admitted: Admitted,
        member: &MemberId,
        barcode: &str,
        rental_id: Id,
        deadline: Option<Instant>,
    ) -> Result<Reservation, CallError> {
        let msg = CheckOutItemRequest {
            member_id: member.to_string(),
            barcode: barcode.to_owned(),
            rental_id: rental_id.to_string(),
        };
        self.call(admitted, deadline, |mut client, timeout| async move {
            let req = self.request(msg, timeout)?;
            let res = client.check_out_item(req).await?.into_inner();
            res.reservation
                .ok_or_else(|| Status::internal("CheckOutItem answered without a reservation"))
        })
        .await
    }

    /// The item with a barcode (which book it is a copy of).
    pub async fn get_item(
        &self,
        barcode: &str,
        deadline: Option<Instant>,
    ) -> Result<Item, CallError> {
        let admitted = self.admit().map_err(CallError::Unavailable)?;
        let msg = GetItemRequest {
            barcode: barcode.to_owned(),
        };
        self.call(admitted, deadline, |mut client, timeout| async move {
            let req = self.request(msg, timeout)?;
            Ok(client.get_item(req).await?.into_inner())
        })
        .await
    }

    /// R12: may a loan of this book be renewed?
    pub async fn may_renew(
        &self,
        rental_id: Id,
        book_id: &str,
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        let admitted = self.admit().map_err(CallError::Unavailable)?;
        let msg = MayRenewRequest {
            rental_id: rental_id.to_string(),
            book_id: book_id.to_owned(),
        };
        self.call(admitted, deadline, |mut client, timeout| async move {
            let req = self.request(msg, timeout)?;
            client.may_renew(req).await?;
            Ok(())
        })
        .await
    }

    /// R11 for a copy with no ACTIVE rental here.
    pub async fn check_in_item(
        &self,
        barcode: &str,
        deadline: Option<Instant>,
    ) -> Result<CheckInItemResponse, CallError> {
        let admitted = self.admit().map_err(CallError::Unavailable)?;
        let msg = CheckInItemRequest {
            barcode: barcode.to_owned(),
        };
        self.call(admitted, deadline, |mut client, timeout| async move {
            let req = self.request(msg, timeout)?;
            Ok(client.check_in_item(req).await?.into_inner())
        })
        .await
    }

    pub async fn record_return(
        &self,
        rental_id: Id,
        book_id: &str,
        member_id: &str,
        deadline: Option<Instant>,
    ) -> Result<RecordReturnResponse, CallError> {
        let admitted = self.admit().map_err(CallError::Unavailable)?;
        let msg = RecordReturnRequest {
            rental_id: rental_id.to_string(),
            book_id: book_id.to_owned(),
            member_id: member_id.to_owned(),
        };
        self.call(admitted, deadline, |mut client, timeout| async move {
            let req = self.request(msg, timeout)?;
            Ok(client.record_return(req).await?.into_inner())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(200);

    #[test]
    fn an_unreachable_or_overloaded_desk_counts_whatever_the_budget() {
        for s in [
            Status::unavailable("tcp connect error"),
            Status::resource_exhausted("busy"),
        ] {
            assert!(counts_against_the_desk(&s, Duration::ZERO, FLOOR));
        }
    }

    #[test]
    fn a_timeout_counts_only_with_budget_above_the_floor() {
        let late = Status::deadline_exceeded("the lending desk did not answer in time");
        let cut = Status::cancelled("Timeout expired");
        for s in [&late, &cut] {
            assert!(counts_against_the_desk(s, FLOOR, FLOOR));
            assert!(counts_against_the_desk(s, Duration::from_secs(2), FLOOR));
            assert!(!counts_against_the_desk(
                s,
                Duration::from_millis(199),
                FLOOR
            ));
            assert!(!counts_against_the_desk(s, Duration::ZERO, FLOOR));
        }
    }

    #[test]
    fn business_answers_and_odd_errors_never_count() {
        for s in [
            Status::failed_precondition("no reservation ready for you"),
            Status::not_found("no such book"),
            Status::invalid_argument("bad id"),
            Status::permission_denied("service only"),
            Status::internal("oops"),
        ] {
            assert!(!counts_against_the_desk(&s, Duration::from_secs(2), FLOOR));
        }
    }
}
