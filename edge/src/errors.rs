//! How a failure becomes an HTTP answer. Every error the edge sends, from a
//! backend or its own, has the same JSON body, `{"code", "message",
//! "details"}` with the gRPC code as a number, so clients parse one shape;
//! the HTTP status follows the gRPC code the way the contract documents.
//! Every refusal carries a `google.rpc.ErrorInfo` among its details: the
//! backend's, or one the edge adds for its own refusals.
//! [`json_response`] is every JSON answer's envelope, errors or not.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use rentalbook_plumbing::error::{DOMAIN, Reason};
use rentalbook_proto::google::rpc;
use tonic::{Code, Status};

/// HTTP 499, "client closed request".
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled => {
            StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::GATEWAY_TIMEOUT)
        }
        Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// An error answer.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    /// Decoded `google.rpc` details, each with its `@type`.
    pub details: Vec<serde_json::Value>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Methods for `Allow` (405).
    pub allow: Vec<Method>,
    /// The reason the edge gives when the details carry none.
    pub reason: Option<Reason>,
}

const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";

/// The reason of an answer that has none of its own, by its code.
fn default_reason(code: Code) -> Option<Reason> {
    match code {
        Code::InvalidArgument | Code::OutOfRange => Some(Reason::MalformedRequest),
        Code::Unauthenticated => Some(Reason::SignInRequired),
        Code::Unavailable | Code::DeadlineExceeded => Some(Reason::TemporarilyUnavailable),
        Code::ResourceExhausted => Some(Reason::Overloaded),
        _ => None,
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
            allow: Vec::new(),
            reason: default_reason(code),
        }
    }

    /// The same, with this reason.
    pub fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, Code::NotFound, message)
    }

    pub fn method_not_allowed(method: &Method, path: &str, allow: Vec<Method>) -> Self {
        let list = method_list(&allow);
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unimplemented,
            format!("{method} is not allowed on {path}; use {list}"),
        );
        e.allow = allow;
        e
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::InvalidArgument,
            format!("the request body is larger than {limit} bytes"),
        )
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, Code::Unauthenticated, message)
    }

    /// 503 with a retry hint.
    pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, message);
        e.retry_after = Some(whole_seconds(retry_after));
        e
    }

    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded, message)
    }

    /// A backend's status, with the details that `pool` can decode.
    pub fn from_status(status: &Status, pool: &DescriptorPool) -> Self {
        let mut e = Self::new(
            http_status(status.code()),
            status.code(),
            status.message().to_owned(),
        );
        e.details = details_of(status, pool);
        // A backend's refusal names its own reason; the edge only fills in
        // one for answers made on the way (an unreachable backend, a
        // deadline), never a guess for a business code.
        if !matches!(
            status.code(),
            Code::Unauthenticated
                | Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
        ) {
            e.reason = None;
        }
        let hint = rentalbook_plumbing::error::retry_after(status).map(whole_seconds);
        // A peer that is down or shedding load always says when to come back.
        e.retry_after = match status.code() {
            Code::Unavailable | Code::ResourceExhausted => Some(hint.unwrap_or(1)),
            _ => hint,
        };
        e
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let has_reason = self
            .details
            .iter()
            .any(|d| d["@type"].as_str() == Some(ERROR_INFO_TYPE));
        let mut details = self.details.clone();
        if let Some(reason) = self.reason.filter(|_| !has_reason) {
            details.push(serde_json::json!({
                "@type": ERROR_INFO_TYPE,
                "reason": reason.as_str_name(),
                "domain": DOMAIN,
                "metadata": {},
            }));
        }
        serde_json::json!({
            "code": self.code as i32,
            "message": self.message,
            "details": details,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut res = json_response(self.status, body.into());
        let headers = res.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if !self.allow.is_empty()
            && let Ok(v) = HeaderValue::from_str(&method_list(&self.allow))
        {
            headers.insert(header::ALLOW, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rentalbook\""),
            );
        }
        res
    }
}

/// Methods as `Allow` lists them: `GET, POST`.
pub fn method_list(methods: &[Method]) -> String {
    methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// Whole seconds, rounded up, at least 1.
fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// The status's `google.rpc.Status` details as proto3 JSON objects with an
/// `@type`, for those types the descriptor pool knows; others are left out.
fn details_of(status: &Status, pool: &DescriptorPool) -> Vec<serde_json::Value> {
    if status.details().is_empty() {
        return Vec::new();
    }
    let Ok(decoded) = rpc::Status::decode(status.details()) else {
        return Vec::new();
    };
    decoded
        .details
        .iter()
        .filter_map(|any| {
            let name = any.type_url.rsplit('/').next()?;
            let desc = pool.get_message_by_name(name)?;
            let msg = DynamicMessage::decode(desc, any.value.as_slice()).ok()?;
            let value = serde_json::to_value(&msg).ok()?;
            let mut out = serde_json::Map::new();
            out.insert("@type".into(), any.type_url.clone().into());
            match value {
                serde_json::Value::Object(fields) => out.extend(fields),
                other => {
                    out.insert("value".into(), other);
                }
            }
            Some(serde_json::Value::Object(out))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        crate::descriptor_pool().unwrap()
    }

    #[test]
    fn grpc_codes_map_to_http() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Cancelled, 499),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
            (Code::Unimplemented, 500),
        ];
        for (code, http) in cases {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn retry_info_becomes_retry_after_and_a_detail() {
        let s = rentalbook_plumbing::error::unavailable_retry_after(
            "busy",
            Duration::from_millis(2500),
        );
        let e = ApiError::from_status(&s, &pool());
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(3));
        let body = e.body();
        assert_eq!(body["code"], 14);
        assert_eq!(body["message"], "busy");
        assert_eq!(
            body["details"][0]["@type"],
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        assert_eq!(body["details"][0]["retryDelay"], "2.500s");

        let res = e.into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "3");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn a_refusal_keeps_its_reason_and_the_edge_adds_its_own() {
        let s: Status = rentalbook_plumbing::error::Refusal::already_exists(
            Reason::AlreadyReserved,
            "you already have an open reservation for this book",
        )
        .with("bookId", "b-1")
        .into();
        let body = ApiError::from_status(&s, &pool()).body();
        assert_eq!(body["code"], 6);
        assert_eq!(body["details"].as_array().unwrap().len(), 1, "{body}");
        let info = &body["details"][0];
        assert_eq!(info["@type"], ERROR_INFO_TYPE);
        assert_eq!(info["reason"], "ALREADY_RESERVED");
        assert_eq!(info["domain"], "rentalbook");
        assert_eq!(info["metadata"]["bookId"], "b-1");

        let body = ApiError::bad_request("the request body is not valid JSON").body();
        assert_eq!(body["details"][0]["reason"], "MALFORMED_REQUEST");
        let body = ApiError::from_status(&Status::unavailable("down"), &pool()).body();
        assert_eq!(body["details"][0]["reason"], "TEMPORARILY_UNAVAILABLE");
    }

    #[test]
    fn unavailable_without_a_hint_says_one_second() {
        let e = ApiError::from_status(&Status::unavailable("down"), &pool());
        assert_eq!(e.retry_after, Some(1));
        assert!(e.details.is_empty());
        let e = ApiError::from_status(&Status::not_found("no such book"), &pool());
        assert_eq!(e.retry_after, None);
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(
            e.body(),
            serde_json::json!({"code": 5, "message": "no such book", "details": []})
        );
    }

    #[test]
    fn shedding_becomes_429_with_retry_after() {
        let s = rentalbook_plumbing::error::resource_exhausted_retry_after(
            "busy",
            Duration::from_secs(2),
        );
        let e = ApiError::from_status(&s, &pool());
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.body()["code"], 8);
        assert_eq!(
            e.body()["details"][0]["@type"],
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        let res = e.into_response();
        assert_eq!(res.status().as_u16(), 429);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        // Without a hint the caller is still told when to come back.
        let e = ApiError::from_status(&Status::resource_exhausted("busy"), &pool());
        assert_eq!(e.status.as_u16(), 429);
        assert_eq!(e.retry_after, Some(1));
    }

    #[test]
    fn edge_errors_carry_their_headers() {
        let res = ApiError::method_not_allowed(
            &Method::DELETE,
            "/v1/books",
            vec![Method::GET, Method::POST],
        )
        .into_response();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[header::ALLOW], "GET, POST");
        let res = ApiError::unauthenticated("sign in").into_response();
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(ApiError::too_large(10).status.as_u16(), 413);
    }
}
