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

use std::time::Duration;

use prost::Message;
use rentalbook_proto::google::rpc;
use sea_orm::DbErr;
use tonic::{Code, Status};

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

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// UNAVAILABLE with a `google.rpc.RetryInfo` detail saying when to come back.
pub fn unavailable_retry_after(message: impl Into<String>, after: Duration) -> Status {
    with_retry_info(Code::Unavailable, message.into(), after)
}

/// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail: the answer of a
/// server that sheds load.
pub fn resource_exhausted_retry_after(message: impl Into<String>, after: Duration) -> Status {
    with_retry_info(Code::ResourceExhausted, message.into(), after)
}

fn with_retry_info(code: Code, message: String, after: Duration) -> Status {
    let info = rpc::RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: after.as_secs() as i64,
            nanos: after.subsec_nanos() as i32,
        }),
    };
    let details = rpc::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: RETRY_INFO_TYPE.to_owned(),
            value: info.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, details.encode_to_vec().into())
}

/// The retry hint of a status, if it carries one.
pub fn retry_after(status: &Status) -> Option<Duration> {
    let details = rpc::Status::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .filter(|any| any.type_url == RETRY_INFO_TYPE)
        .find_map(|any| rpc::RetryInfo::decode(any.value.as_slice()).ok())
        .and_then(|info| info.retry_delay)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
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
    }

    #[test]
    fn refusals_are_not_infrastructure() {
        assert!(!is_infrastructure(&Status::failed_precondition("no")));
        assert!(!is_infrastructure(&Status::not_found("no")));
        assert!(is_infrastructure(&Status::unavailable("down")));
        assert!(is_infrastructure(&Status::deadline_exceeded("slow")));
    }
}
