//! JSON to request messages and response messages to JSON, in the proto3
//! JSON mapping (lowerCamelCase or proto field names in, lowerCamelCase out,
//! 64-bit integers as strings, enums by name, RFC 3339 timestamps), plus the
//! binding of path variables and query parameters onto the request.
//!
//! Every value, wherever it comes from, is parsed by prost-reflect's proto3
//! JSON deserializer against the field's descriptor, so a path variable, a
//! query parameter and a body field accept exactly the same spellings and
//! fail with the same messages. Anything the message does not have (an
//! unknown field, an unknown query parameter, an unknown enum name) is a 400
//! naming it, never a silently dropped value.

use std::borrow::Cow;

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    Value,
};

use crate::errors::ApiError;
use crate::routes::{BodyRule, Captured, Route, resolve_field_path};

/// Message types whose JSON form is a single scalar, so a query parameter or
/// path variable can carry them.
pub fn is_scalar_message(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// What an HTTP request brings besides the route.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inputs<'a> {
    pub captured: &'a [Captured],
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<&'a str>,
}

/// The request message for `route` from the body, path and query.
pub fn request_message(route: &Route, inputs: Inputs<'_>) -> Result<DynamicMessage, ApiError> {
    let input = route.rpc.method.input();
    let body = inputs.body.trim_ascii();
    let mut msg = match &route.body {
        BodyRule::Whole if body.is_empty() => DynamicMessage::new(input.clone()),
        BodyRule::Whole => parse_message(&input, body)?,
        BodyRule::Field(field) => {
            let mut msg = DynamicMessage::new(input.clone());
            if !body.is_empty() {
                let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
                })?;
                let value = parse_field_value(field, json).map_err(|e| {
                    ApiError::bad_request(format!("the request body ({}): {e}", field.json_name()))
                })?;
                msg.set_field(field, value);
            }
            msg
        }
        BodyRule::None if body.is_empty() => DynamicMessage::new(input.clone()),
        BodyRule::None => {
            return Err(ApiError::bad_request(format!(
                "{} {} takes no request body; pass its fields in the query string",
                route.http_method,
                route.template.as_str()
            )));
        }
    };

    // Path variables.
    let mut bound: Vec<Vec<FieldDescriptor>> = Vec::new();
    for c in inputs.captured {
        let fields = resolve_field_path(&input, &c.field_path).map_err(ApiError::bad_request)?;
        let decoded = percent_encoding::percent_decode_str(&c.raw)
            .decode_utf8()
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "path variable `{}` is not valid UTF-8 once percent-decoded",
                    c.field_path
                ))
            })?;
        if c.single_segment && decoded.contains('/') {
            return Err(ApiError::bad_request(format!(
                "path variable `{}` must not contain `/`",
                c.field_path
            )));
        }
        let leaf = fields.last().expect("a resolved path has a field");
        let value = scalar_json(leaf, &decoded)
            .and_then(|json| parse_field_value(leaf, json))
            .map_err(|e| ApiError::bad_request(format!("path variable `{}`: {e}", c.field_path)))?;
        if let Some(existing) = get_path(&msg, &fields)
            && *existing != value
        {
            return Err(ApiError::bad_request(format!(
                "`{}` in the body differs from the one in the path",
                leaf.json_name()
            )));
        }
        set_path(&mut msg, &fields, value);
        bound.push(fields);
    }

    // Query parameters, grouped by the field they name.
    if let Some(query) = inputs.query.filter(|q| !q.is_empty()) {
        let mut groups: Vec<(String, Vec<FieldDescriptor>, Vec<String>)> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key.is_empty() && value.is_empty() {
                continue;
            }
            if matches!(route.body, BodyRule::Whole) {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{key}`: {} {} takes its fields in the JSON body",
                    route.http_method,
                    route.template.as_str()
                )));
            }
            let fields = resolve_field_path(&input, &key)
                .map_err(|_| ApiError::bad_request(format!("unknown query parameter `{key}`")))?;
            match groups.iter_mut().find(|(_, f, _)| *f == fields) {
                Some((_, _, values)) => values.push(value.into_owned()),
                None => groups.push((key.into_owned(), fields, vec![value.into_owned()])),
            }
        }
        for (key, fields, values) in groups {
            bind_query(route, &mut msg, &bound, &key, &fields, &values)?;
        }
    }

    // The client's request id, or a fresh one so that retries are safe.
    if let Some(field) = input
        .get_field_by_name("request_id")
        .filter(|f| f.kind() == Kind::String && !f.is_list())
    {
        let current = msg
            .get_field(&field)
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match inputs.idempotency_key {
            Some(key) => {
                if !current.is_empty() && current != key {
                    return Err(ApiError::bad_request(
                        "the Idempotency-Key header and requestId in the body differ",
                    ));
                }
                msg.set_field(&field, Value::String(key.to_owned()));
            }
            None if current.is_empty() => {
                msg.set_field(&field, Value::String(uuid::Uuid::new_v4().to_string()));
            }
            None => {}
        }
    }
    Ok(msg)
}

fn bind_query(
    route: &Route,
    msg: &mut DynamicMessage,
    bound: &[Vec<FieldDescriptor>],
    key: &str,
    fields: &[FieldDescriptor],
    values: &[String],
) -> Result<(), ApiError> {
    let overlaps = |b: &Vec<FieldDescriptor>| {
        let n = b.len().min(fields.len());
        b[..n] == fields[..n]
    };
    if bound.iter().any(overlaps) {
        return Err(ApiError::bad_request(format!(
            "query parameter `{key}` is already given by the path"
        )));
    }
    if let BodyRule::Field(body) = &route.body
        && fields[0] == *body
    {
        return Err(ApiError::bad_request(format!(
            "query parameter `{key}` is already given by the body"
        )));
    }
    let leaf = fields.last().expect("a resolved path has a field");
    if leaf.is_map() {
        return Err(ApiError::bad_request(format!(
            "query parameter `{key}` names a map, which only the JSON body can set"
        )));
    }
    if let Kind::Message(m) = leaf.kind()
        && !is_scalar_message(&m)
    {
        return Err(ApiError::bad_request(format!(
            "query parameter `{key}` names a message; set its fields as `{key}.<field>`"
        )));
    }
    let json = if leaf.is_list() {
        values
            .iter()
            .map(|v| scalar_json(leaf, v))
            .collect::<Result<Vec<_>, _>>()
            .map(serde_json::Value::Array)
    } else if values.len() > 1 {
        Err("given more than once".to_owned())
    } else {
        scalar_json(leaf, &values[0])
    };
    let value = json
        .and_then(|json| parse_field_value(leaf, json))
        .map_err(|e| ApiError::bad_request(format!("query parameter `{key}`: {e}")))?;
    set_path(msg, fields, value);
    Ok(())
}

/// The whole body as the message `input`, unknown fields refused.
fn parse_message(input: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, ApiError> {
    let describe = |e: serde_json::Error| {
        let what = match e.classify() {
            serde_json::error::Category::Data => {
                format!("the request body does not fit {}", input.name())
            }
            _ => "the request body is not valid JSON".to_owned(),
        };
        ApiError::bad_request(format!("{what}: {e}"))
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let msg = DynamicMessage::deserialize_with_options(
        input.clone(),
        &mut de,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(describe)?;
    de.end().map_err(describe)?;
    Ok(msg)
}

/// A field's value from its proto3 JSON form, checked by the field's type.
pub fn parse_field_value(
    field: &FieldDescriptor,
    json: serde_json::Value,
) -> Result<Value, String> {
    let mut holder = serde_json::Map::new();
    holder.insert(field.json_name().to_owned(), json);
    let mut msg = DynamicMessage::deserialize_with_options(
        field.parent_message().clone(),
        serde_json::Value::Object(holder),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| e.to_string())?;
    Ok(msg
        .take_field(field)
        .unwrap_or_else(|| Value::default_value_for_field(field)))
}

/// The JSON form of a text value (from a path or query) for a field: a bool
/// or an enum number become JSON literals, everything else stays a string,
/// which proto3 JSON accepts for numbers, enums by name, bytes and the
/// scalar well-known types.
fn scalar_json(field: &FieldDescriptor, text: &str) -> Result<serde_json::Value, String> {
    let is_bool = match field.kind() {
        Kind::Bool => true,
        Kind::Message(m) => m.full_name() == "google.protobuf.BoolValue",
        _ => false,
    };
    if is_bool {
        return match text {
            "true" | "True" | "TRUE" | "1" => Ok(true.into()),
            "false" | "False" | "FALSE" | "0" => Ok(false.into()),
            other => Err(format!("`{other}` is not true or false")),
        };
    }
    if let Kind::Enum(_) = field.kind()
        && let Ok(n) = text.parse::<i32>()
    {
        return Ok(n.into());
    }
    Ok(serde_json::Value::String(text.to_owned()))
}

fn get_path<'a>(msg: &'a DynamicMessage, fields: &[FieldDescriptor]) -> Option<Cow<'a, Value>> {
    match fields {
        [] => None,
        [leaf] => msg.has_field(leaf).then(|| msg.get_field(leaf)),
        [first, rest @ ..] => {
            if !msg.has_field(first) {
                return None;
            }
            match msg.get_field(first) {
                Cow::Borrowed(Value::Message(sub)) => get_path(sub, rest),
                _ => None,
            }
        }
    }
}

fn set_path(msg: &mut DynamicMessage, fields: &[FieldDescriptor], value: Value) {
    match fields {
        [] => {}
        [leaf] => msg.set_field(leaf, value),
        [first, rest @ ..] => {
            if let Some(sub) = msg.get_field_mut(first).as_message_mut() {
                set_path(sub, rest, value);
            }
        }
    }
}

/// The response body: the message (or its `response_body` field) as JSON.
pub fn response_json(
    response_body: Option<&FieldDescriptor>,
    msg: &DynamicMessage,
) -> Result<Vec<u8>, ApiError> {
    let failed = |e: serde_json::Error| {
        tracing::error!(error = %e, message = msg.descriptor().full_name(), "a response could not be written as JSON");
        ApiError::new(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            tonic::Code::Internal,
            "the answer could not be written as JSON",
        )
    };
    match response_body {
        None => serde_json::to_vec(msg).map_err(failed),
        Some(field) => {
            let mut only = DynamicMessage::new(msg.descriptor());
            only.set_field(field, msg.get_field(field).into_owned());
            let mut value = serde_json::to_value(&only).map_err(failed)?;
            let inner = value
                .get_mut(field.json_name())
                .map(serde_json::Value::take)
                .unwrap_or(serde_json::Value::Null);
            serde_json::to_vec(&inner).map_err(failed)
        }
    }
}

/// A query parameter a route accepts, by its proto field path.
#[derive(Clone, Debug)]
pub struct QueryParam {
    pub name: String,
    pub field: FieldDescriptor,
}

/// The query parameters of a route: every scalar field (nested ones by
/// dotted path) not taken by the path or the body.
pub fn query_params(route: &Route) -> Vec<QueryParam> {
    let input = route.rpc.method.input();
    let mut out = Vec::new();
    if matches!(route.body, BodyRule::Whole) {
        return out;
    }
    let bound: Vec<String> = route
        .template
        .variables()
        .iter()
        .filter_map(|v| resolve_field_path(&input, &v.field_path).ok())
        .map(|fields| {
            fields
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    let body = match &route.body {
        BodyRule::Field(f) => Some(f.name().to_owned()),
        _ => None,
    };
    collect_params(&input, "", &bound, body.as_deref(), 0, &mut out);
    out
}

fn collect_params(
    message: &MessageDescriptor,
    prefix: &str,
    bound: &[String],
    body: Option<&str>,
    depth: usize,
    out: &mut Vec<QueryParam>,
) {
    for field in message.fields() {
        let name = format!("{prefix}{}", field.name());
        if bound.contains(&name) || body == Some(name.as_str()) || field.is_map() {
            continue;
        }
        match field.kind() {
            Kind::Message(m) if !is_scalar_message(&m) => {
                if !field.is_list() && depth < 3 {
                    collect_params(&m, &format!("{name}."), bound, body, depth + 1, out);
                }
            }
            _ => out.push(QueryParam { name, field }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Lookup, RouteTable};
    use http::Method;

    fn table() -> RouteTable {
        let pool = crate::descriptor_pool().unwrap();
        RouteTable::from_pool(&pool, &["book", "reserve", "rental", "view"]).unwrap()
    }

    fn build(
        method: Method,
        path_and_query: &str,
        body: &str,
        key: Option<&str>,
    ) -> Result<DynamicMessage, ApiError> {
        let t = table();
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let Lookup::Found { route, captured } = t.lookup(&method, path) else {
            panic!("no route for {method} {path}");
        };
        request_message(
            route,
            Inputs {
                captured: &captured,
                query,
                body: body.as_bytes(),
                idempotency_key: key,
            },
        )
    }

    fn json(msg: &DynamicMessage) -> serde_json::Value {
        serde_json::to_value(msg).unwrap()
    }

    fn message_of(r: Result<DynamicMessage, ApiError>) -> String {
        let e = r.expect_err("a 400");
        assert_eq!(e.status.as_u16(), 400, "{}", e.message);
        e.message
    }

    #[test]
    fn bodies_accept_json_and_proto_names() {
        let m = build(
            Method::POST,
            "/v1/books",
            r#"{"title":"T","author":"A","totalCopies":2}"#,
            None,
        )
        .unwrap();
        let j = json(&m);
        assert_eq!(j["title"], "T");
        assert_eq!(j["totalCopies"], 2);
        // A fresh request id fills the gap.
        assert_eq!(j["requestId"].as_str().unwrap().len(), 36);

        let m = build(Method::POST, "/v1/books", r#"{"total_copies":"3"}"#, None).unwrap();
        assert_eq!(json(&m)["totalCopies"], 3);
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let e = message_of(build(
            Method::POST,
            "/v1/books",
            r#"{"title":"T","colour":1}"#,
            None,
        ));
        assert!(e.contains("colour"), "{e}");
        let e = message_of(build(
            Method::POST,
            "/v1/books",
            r#"{"totalCopies":"many"}"#,
            None,
        ));
        assert!(e.contains("does not fit"), "{e}");
        let e = message_of(build(Method::POST, "/v1/books", r#"{"title":"#, None));
        assert!(e.contains("not valid JSON"), "{e}");
        let e = message_of(build(Method::POST, "/v1/books", r#"{"title":1}"#, None));
        assert!(e.contains("title") || e.contains("string"), "{e}");
        let e = message_of(build(Method::POST, "/v1/books", r#"[1,2]"#, None));
        assert!(e.contains("does not fit"), "{e}");
        let e = message_of(build(Method::POST, "/v1/books", r#"{} {}"#, None));
        assert!(e.contains("trailing"), "{e}");
        let e = message_of(build(
            Method::POST,
            "/v1/books",
            r#"{"totalCopies":99999999999}"#,
            None,
        ));
        assert!(e.contains("does not fit"), "{e}");
        message_of(build(Method::POST, "/v1/books", "\u{0}\u{1}", None));
        message_of(build(Method::GET, "/v1/books", r#"{"query":"x"}"#, None));
    }

    #[test]
    fn empty_bodies_are_empty_messages() {
        let m = build(Method::POST, "/v1/reservations/r-1:cancel", "", None).unwrap();
        assert_eq!(json(&m)["reservationId"], "r-1");
    }

    #[test]
    fn path_variables_bind_and_conflicts_fail() {
        let m = build(
            Method::POST,
            "/v1/books/b%2D1:addCopies",
            r#"{"copies":2}"#,
            None,
        )
        .unwrap();
        assert_eq!(json(&m)["bookId"], "b-1");
        assert_eq!(json(&m)["copies"], 2);
        // The same value in the body is fine, another is not.
        build(
            Method::POST,
            "/v1/books/b1:addCopies",
            r#"{"bookId":"b1"}"#,
            None,
        )
        .unwrap();
        let e = message_of(build(
            Method::POST,
            "/v1/books/b1:addCopies",
            r#"{"bookId":"b2"}"#,
            None,
        ));
        assert!(e.contains("bookId"), "{e}");
        let e = message_of(build(Method::GET, "/v1/books/a%2Fb", "", None));
        assert!(e.contains("book_id") && e.contains('/'), "{e}");
        let e = message_of(build(Method::GET, "/v1/books/%FF", "", None));
        assert!(e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn query_parameters_bind_by_either_name() {
        let m = build(Method::GET, "/v1/books?query=le+guin&page_size=5", "", None).unwrap();
        assert_eq!(json(&m)["query"], "le guin");
        assert_eq!(json(&m)["pageSize"], 5);
        let m = build(
            Method::GET,
            "/v1/reservations?openOnly=true&memberId=bob",
            "",
            None,
        )
        .unwrap();
        assert_eq!(json(&m)["openOnly"], true);
        assert_eq!(json(&m)["memberId"], "bob");
        let m = build(Method::GET, "/v1/mypage:watch?memberId=bob", "", None).unwrap();
        assert_eq!(json(&m)["memberId"], "bob");
    }

    #[test]
    fn bad_query_parameters_name_the_problem() {
        let e = message_of(build(Method::GET, "/v1/books?colour=red", "", None));
        assert!(e.contains("colour"), "{e}");
        let e = message_of(build(Method::GET, "/v1/books?pageSize=many", "", None));
        assert!(e.contains("pageSize"), "{e}");
        let e = message_of(build(
            Method::GET,
            "/v1/reservations?openOnly=maybe",
            "",
            None,
        ));
        assert!(e.contains("openOnly") && e.contains("maybe"), "{e}");
        let e = message_of(build(Method::GET, "/v1/books?query=a&query=b", "", None));
        assert!(e.contains("more than once"), "{e}");
        let e = message_of(build(
            Method::GET,
            "/v1/members/bob/mypage?memberId=eve",
            "",
            None,
        ));
        assert!(e.contains("path"), "{e}");
        let e = message_of(build(Method::POST, "/v1/books?title=x", "{}", None));
        assert!(e.contains("JSON body"), "{e}");
    }

    #[test]
    fn enums_bind_by_name_or_number_and_unknown_names_fail() {
        let pool = crate::descriptor_pool().unwrap();
        let book = pool.get_message_by_name("rentalbook.book.v1.Book").unwrap();
        let status = book.get_field_by_name("status").unwrap();
        let v =
            scalar_json(&status, "BOOK_STATUS_ON_LOAN").and_then(|j| parse_field_value(&status, j));
        assert_eq!(v, Ok(Value::EnumNumber(3)));
        let v = scalar_json(&status, "2").and_then(|j| parse_field_value(&status, j));
        assert_eq!(v, Ok(Value::EnumNumber(2)));
        assert!(
            scalar_json(&status, "BOOK_STATUS_LOST")
                .and_then(|j| parse_field_value(&status, j))
                .is_err()
        );
        let at = book.get_field_by_name("registered_at").unwrap();
        assert!(parse_field_value(&at, "2024-05-01T10:00:00Z".into()).is_ok());
        assert!(parse_field_value(&at, "yesterday".into()).is_err());
    }

    #[test]
    fn idempotency_keys_become_request_ids() {
        let m = build(
            Method::POST,
            "/v1/reservations",
            r#"{"bookId":"b"}"#,
            Some("k-1"),
        )
        .unwrap();
        assert_eq!(json(&m)["requestId"], "k-1");
        let m = build(
            Method::POST,
            "/v1/reservations",
            r#"{"bookId":"b","requestId":"k-1"}"#,
            Some("k-1"),
        )
        .unwrap();
        assert_eq!(json(&m)["requestId"], "k-1");
        message_of(build(
            Method::POST,
            "/v1/reservations",
            r#"{"requestId":"k-2"}"#,
            Some("k-1"),
        ));
        let m = build(
            Method::POST,
            "/v1/reservations",
            r#"{"requestId":"mine"}"#,
            None,
        )
        .unwrap();
        assert_eq!(json(&m)["requestId"], "mine");
        // Messages without a request id are left alone.
        let m = build(Method::GET, "/v1/books/b", "", Some("k")).unwrap();
        assert!(json(&m).get("requestId").is_none());
    }

    #[test]
    fn responses_are_proto3_json() {
        let pool = crate::descriptor_pool().unwrap();
        let desc = pool
            .get_message_by_name("rentalbook.reserve.v1.Reservation")
            .unwrap();
        let mut m = DynamicMessage::new(desc);
        m.set_field_by_name("reservation_id", Value::String("r".into()));
        m.set_field_by_name("status", Value::EnumNumber(2));
        m.set_field_by_name("queue_position", Value::I32(0));
        let mut ts = DynamicMessage::new(
            pool.get_message_by_name("google.protobuf.Timestamp")
                .unwrap(),
        );
        ts.set_field_by_name("seconds", Value::I64(1_714_557_600));
        m.set_field_by_name("created_at", Value::Message(ts));
        let t = table();
        let route = t
            .routes()
            .iter()
            .find(|r| r.rpc.method.name() == "GetReservation")
            .unwrap();
        let out: serde_json::Value =
            serde_json::from_slice(&response_json(route.response_body.as_ref(), &m).unwrap())
                .unwrap();
        assert_eq!(
            out,
            serde_json::json!({
                "reservationId": "r",
                "status": "RESERVATION_STATUS_READY",
                "createdAt": "2024-05-01T10:00:00Z",
            })
        );
    }

    #[test]
    fn query_params_of_routes() {
        let t = table();
        let names = |name: &str| {
            let route = t
                .routes()
                .iter()
                .find(|r| r.rpc.method.name() == name && r.template.variables().is_empty())
                .unwrap();
            query_params(route)
                .into_iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("ListBooks"), ["query", "page_size", "page_token"]);
        assert_eq!(names("GetMyPage"), ["member_id"]);
        assert!(names("RegisterBook").is_empty());
        let route = t
            .routes()
            .iter()
            .find(|r| r.template.as_str() == "/v1/members/{member_id}/mypage")
            .unwrap();
        assert!(query_params(route).is_empty());
    }
}
