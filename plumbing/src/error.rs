//! How answers that are not OK reach the caller.
//!
//! Business refusals are `tonic::Status` values with precise codes
//! (FAILED_PRECONDITION, ALREADY_EXISTS, NOT_FOUND, PERMISSION_DENIED,
//! INVALID_ARGUMENT) built where the rule lives. Infrastructure failures (the
//! database, the event bus, a peer service) are faults: they are logged and
//! answered UNAVAILABLE with a retry hint, because a retry may well succeed and
//! a 5xx-looking INTERNAL would get a healthy pod ejected by the mesh. A
//! server over its concurrency limit answers RESOURCE_EXHAUSTED with a retry
//! hint instead (SPEC §5): the mesh treats UNAVAILABLE as a gateway error and
//! would retry it at once, adding load where there is too much.

use std::collections::HashMap;
use std::time::Duration;

pub use rentalbook_proto::errors::v1::Reason;
use sea_orm::DbErr;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `google.rpc.ErrorInfo` rentalbook sends.
pub const DOMAIN: &str = "rentalbook";

/// What a handler's inner steps return.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A refusal or any answer already in gRPC terms.
    #[error("{0}")]
    Status(#[from] Status),
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::Status(s) => s,
            ServiceError::Db(e) => {
                tracing::error!(error = %e, "database failure");
                unavailable_retry_after(
                    "the lending desk cannot reach its records right now, try again in 1 s",
                    Duration::from_secs(1),
                )
            }
            ServiceError::Other(e) => {
                tracing::error!(error = format!("{e:#}"), "internal failure");
                Status::internal("something went wrong on our side; it has been logged")
            }
        }
    }
}

/// The gRPC code a refusal with this reason answers (and so its HTTP status
/// at the edge); the OpenAPI document lists each method's refusals by it.
pub fn code_of(reason: Reason) -> Code {
    use Reason::*;
    match reason {
        Unspecified => Code::Unknown,
        InvalidField | InvalidPageToken | InvalidRequestId | RequestIdReused | MalformedRequest => {
            Code::InvalidArgument
        }
        SignInRequired => Code::Unauthenticated,
        LibrariansOnly | ServicesOnly | OtherMember | CrossSiteRequest => Code::PermissionDenied,
        BookNotFound | ReservationNotFound | RentalNotFound | ItemNotFound | NoticeNotFound => {
            Code::NotFound
        }
        DuplicateIsbn | AlreadyReserved | BarcodeTaken => Code::AlreadyExists,
        TooManyCopies | AlreadyOnLoan | TooManyReservations | ReservationClosed
        | NoReadyReservation | TooManyRentals | RentalNotActive | ItemHeldForAnother
        | ItemOnLoan | ItemNotInService | RenewalWaitedFor | RenewalsUsedUp => {
            Code::FailedPrecondition
        }
        TemporarilyUnavailable => Code::Unavailable,
        Overloaded | TooManyStreams => Code::ResourceExhausted,
    }
}

/// A refusal: a precise gRPC code, an English sentence for people, and the
/// [`Reason`] with its metadata for programs (a `google.rpc.ErrorInfo` in
/// the status details), so that pages can say it in the member's language.
#[derive(Clone, Debug)]
#[must_use]
pub struct Refusal {
    code: Code,
    reason: Reason,
    message: String,
    metadata: HashMap<String, String>,
}

impl Refusal {
    pub fn new(code: Code, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            metadata: HashMap::new(),
        }
    }

    pub fn invalid_argument(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, reason, message)
    }

    pub fn failed_precondition(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, reason, message)
    }

    pub fn not_found(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, reason, message)
    }

    pub fn already_exists(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(Code::AlreadyExists, reason, message)
    }

    pub fn permission_denied(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, reason, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, Reason::SignInRequired, message)
    }

    /// INVALID_ARGUMENT about one field of the request.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::invalid_argument(Reason::InvalidField, message).with("field", field)
    }

    /// Adds a metadata value (keys in lowerCamelCase, like the JSON fields).
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.metadata.insert(key.to_owned(), value.to_string());
        self
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        let details = ErrorDetails::with_error_info(r.reason.as_str_name(), DOMAIN, r.metadata);
        Status::with_error_details(r.code, r.message, details)
    }
}

impl From<Refusal> for ServiceError {
    fn from(r: Refusal) -> ServiceError {
        ServiceError::Status(r.into())
    }
}

/// UNAUTHENTICATED: no token, or one that is not good here.
pub fn unauthenticated(message: impl Into<String>) -> Status {
    Refusal::unauthenticated(message).into()
}

/// UNAVAILABLE with a `google.rpc.RetryInfo` detail saying when to come back.
pub fn unavailable_retry_after(message: impl Into<String>, after: Duration) -> Status {
    with_retry_info(
        Code::Unavailable,
        Reason::TemporarilyUnavailable,
        message.into(),
        after,
    )
}

/// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail: the answer of a
/// server that sheds load.
pub fn resource_exhausted_retry_after(message: impl Into<String>, after: Duration) -> Status {
    with_retry_info(
        Code::ResourceExhausted,
        Reason::Overloaded,
        message.into(),
        after,
    )
}

fn with_retry_info(code: Code, reason: Reason, message: String, after: Duration) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(after));
    details.set_error_info(reason.as_str_name(), DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

/// The retry hint of a status, if it carries one.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}

/// The reason of a refusal, as its `google.rpc.ErrorInfo` names it.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The metadata value `key` of a refusal's `google.rpc.ErrorInfo`.
pub fn reason_metadata(status: &Status, key: &str) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|mut info| info.metadata.remove(key))
}

/// Whether a status from a peer is an infrastructure failure (worth a retry,
/// counted by circuit breakers) rather than a business answer.
pub fn is_infrastructure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_hint_round_trips() {
        let s = unavailable_retry_after("busy, try again in 5 s", Duration::from_secs(5));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(retry_after(&s), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(&Status::unavailable("x")), None);
        let s = resource_exhausted_retry_after("busy, try again in 1 s", Duration::from_secs(1));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(retry_after(&s), Some(Duration::from_secs(1)));
        assert!(is_infrastructure(&s), "a peer's shedding is not a refusal");
        assert_eq!(reason(&s).as_deref(), Some("OVERLOADED"));
    }

    #[test]
    fn refusals_carry_their_reason_and_metadata() {
        let s: Status = Refusal::already_exists(
            Reason::AlreadyReserved,
            "you already have an open reservation for this book",
        )
        .with("bookId", "b-1")
        .into();
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(
            s.message(),
            "you already have an open reservation for this book"
        );
        assert_eq!(reason(&s).as_deref(), Some("ALREADY_RESERVED"));
        assert_eq!(reason_metadata(&s, "bookId").as_deref(), Some("b-1"));
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.domain, DOMAIN);
        assert_eq!(retry_after(&s), None);
        assert_eq!(reason(&Status::not_found("x")), None);
    }

    #[test]
    fn refusals_are_not_infrastructure() {
        assert!(!is_infrastructure(&Status::failed_precondition("no")));
        assert!(!is_infrastructure(&Status::not_found("no")));
        assert!(is_infrastructure(&Status::unavailable("down")));
        assert!(is_infrastructure(&Status::deadline_exceeded("slow")));
    }
}
