//! `/openapi.json`: an OpenAPI 3 description generated from the same route
//! table and descriptors the edge serves with, so the document cannot drift
//! from what is actually routed. Messages and enums become component schemas
//! in their proto3 JSON shape; comments in the `.proto` files become
//! descriptions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use prost_reflect::{EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use rentalbook_proto::api::v1::{FieldRules, Refusals};

use crate::rules::of as rules;
use serde_json::{Value, json};

use crate::routes::{BodyRule, RouteTable};
use crate::transcode::query_params;

/// The OpenAPI document for every route of `table`.
pub fn document(table: &RouteTable) -> Value {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut operation_ids: BTreeSet<String> = BTreeSet::new();

    for route in table.routes() {
        let method = &route.rpc.method;
        let input = method.input();
        let mut id = format!("{}_{}", method.parent_service().name(), method.name());
        let mut n = 1;
        while operation_ids.contains(&id) {
            id = format!("{}_{}{n}", method.parent_service().name(), method.name());
            n += 1;
        }
        operation_ids.insert(id.clone());

        let mut parameters = Vec::new();
        for v in route.template.variables() {
            let leaf = crate::routes::resolve_field_path(&input, &v.field_path)
                .ok()
                .and_then(|f| f.last().cloned());
            let schema = leaf
                .as_ref()
                .map(|f| schemas.field(f))
                .unwrap_or_else(|| json!({"type": "string"}));
            parameters.push(json!({
                "name": v.field_path,
                "in": "path",
                "required": true,
                "schema": schema,
                "description": leaf.as_ref().and_then(field_comment).unwrap_or_default(),
            }));
        }
        for p in query_params(route) {
            parameters.push(json!({
                "name": json_path(&input, &p.name),
                "in": "query",
                "required": rules(&p.field).is_some_and(|r| r.required),
                "schema": schemas.field(&p.field),
                "description": field_comment(&p.field).unwrap_or_default(),
            }));
        }

        let mut op = serde_json::Map::new();
        op.insert("operationId".into(), id.into());
        op.insert("tags".into(), json!([method.parent_service().name()]));
        let doc = comment(&method.parent_file(), method.path());
        if let Some(doc) = &doc {
            op.insert(
                "summary".into(),
                doc.lines().next().unwrap_or_default().into(),
            );
            op.insert("description".into(), doc.clone().into());
        }
        if !parameters.is_empty() {
            op.insert("parameters".into(), parameters.into());
        }
        let body_schema = match &route.body {
            BodyRule::None => None,
            BodyRule::Whole => {
                // The fields the path binds are not sent again in the body,
                // nor the request id, which the Idempotency-Key header gives.
                let mut in_path: BTreeSet<String> = route
                    .template
                    .variables()
                    .iter()
                    .filter(|v| !v.field_path.contains('.'))
                    .map(|v| v.field_path.clone())
                    .collect();
                if input.get_field_by_name("request_id").is_some() {
                    in_path.insert("request_id".into());
                }
                Some(schemas.body_ref(&input, in_path))
            }
            BodyRule::Field(f) => Some(schemas.field(f)),
        };
        // A body with required fields must be sent; otherwise an empty
        // body stands for an empty message.
        let body_required = matches!(route.body, BodyRule::Whole)
            && input.fields().any(|f| {
                rules(&f).is_some_and(|r| r.required)
                    && !route
                        .template
                        .variables()
                        .iter()
                        .any(|v| v.field_path == f.name())
            });
        if let Some(schema) = body_schema {
            op.insert(
                "requestBody".into(),
                json!({
                    "required": body_required,
                    "content": {"application/json": {"schema": schema}},
                }),
            );
        }
        let output = match &route.response_body {
            Some(f) => schemas.field(f),
            None => schemas.message_ref(&method.output()),
        };
        let ok = if route.rpc.is_server_streaming() {
            json!({
                "description": "Server-Sent Events: one `data:` event with this JSON per message, keep-alive comments, an `error` event if the stream fails",
                "content": {"text/event-stream": {"schema": output}},
            })
        } else {
            json!({
                "description": "OK",
                "content": {"application/json": {"schema": output}},
            })
        };
        let mut responses = refusal_responses(&route.rpc.method);
        responses.insert("200".into(), ok);
        responses.insert(
            "default".into(),
            json!({
                    "description": "An error: 400 bad request, 401 no or bad credentials, 403 not allowed, 404 not found, 409 conflict, 429 too many, 503 unavailable (see Retry-After), 504 timeout",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }),
        );
        op.insert("responses".into(), responses.into());
        if !route.template.as_str().starts_with("/v1/") {
            op.insert("security".into(), json!([]));
        }
        if route
            .rpc
            .method
            .input()
            .get_field_by_name("request_id")
            .is_some()
        {
            let params = op
                .entry("parameters")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(params) = params {
                params.push(json!({
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": false,
                    "description": "Makes a retry safe: the same key with the same request gets the first answer (becomes requestId).",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$"},
                }));
            }
        }
        paths
            .entry(route.template.openapi_path())
            .or_default()
            .insert(route.http_method.as_str().to_ascii_lowercase(), op.into());
    }

    let mut components = schemas.finish();
    components.insert(
        "Error".into(),
        json!({
            "type": "object",
            "properties": {
                "code": {"type": "integer", "format": "int32", "description": "The gRPC status code"},
                "message": {"type": "string", "description": "A sentence for people, in English"},
                "details": {
                    "type": "array",
                    "description": "google.rpc details with their @type: every refusal has an ErrorInfo (see the ErrorInfo schema), an answer worth retrying a RetryInfo",
                    "items": {
                        "type": "object",
                        "properties": {"@type": {"type": "string"}},
                        "additionalProperties": true,
                    },
                },
            },
            "required": ["code", "message", "details"],
        }),
    );
    let reasons: Vec<&str> = (1..=i32::from(u8::MAX))
        .filter_map(|n| rentalbook_plumbing::error::Reason::try_from(n).ok())
        .map(|r| r.as_str_name())
        .collect();
    components.insert(
        "ErrorInfo".into(),
        json!({
            "type": "object",
            "description": "Why a request was refused, for programs: the reasons and their metadata keys are rentalbook.errors.v1.Reason in the contracts",
            "properties": {
                "@type": {"type": "string", "enum": ["type.googleapis.com/google.rpc.ErrorInfo"]},
                "reason": {"type": "string", "enum": reasons},
                "domain": {"type": "string", "enum": [rentalbook_plumbing::error::DOMAIN]},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["@type", "reason", "domain"],
        }),
    );

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "rentalbook",
            "description": "Book reservation and rental for libraries, over REST/JSON (proto3 JSON mapping).",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "cookieAuth": {"type": "apiKey", "in": "cookie", "name": crate::request::TOKEN_COOKIE},
            },
        },
        "security": [{"bearerAuth": []}, {"cookieAuth": []}],
    })
}

/// The refusals a method states (`rentalbook.api.v1.refusals`), by HTTP
/// status: the answers to requests the document allows that are expected
/// all the same.
fn refusal_responses(method: &prost_reflect::MethodDescriptor) -> serde_json::Map<String, Value> {
    let mut by_status: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    let pool = method.parent_pool();
    let refusals = pool
        .get_extension_by_name("rentalbook.api.v1.refusals")
        .filter(|ext| method.options().has_extension(ext))
        .and_then(|ext| {
            method
                .options()
                .get_extension(&ext)
                .as_message()?
                .transcode_to::<Refusals>()
                .ok()
        });
    for reason in refusals.iter().flat_map(|r| r.reasons()) {
        let code = rentalbook_plumbing::error::code_of(reason);
        by_status
            .entry(crate::errors::http_status(code).as_u16())
            .or_default()
            .push(reason.as_str_name());
    }
    by_status
        .into_iter()
        .map(|(status, reasons)| {
            (
                status.to_string(),
                json!({
                    "description": format!("Refused, with the ErrorInfo reason {}", reasons.join(", ")),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }),
            )
        })
        .collect()
}

/// A dotted proto field path in lowerCamelCase, as documented.
fn json_path(message: &MessageDescriptor, path: &str) -> String {
    crate::routes::resolve_field_path(message, path)
        .map(|fields| {
            fields
                .iter()
                .map(|f| f.json_name())
                .collect::<Vec<_>>()
                .join(".")
        })
        .unwrap_or_else(|_| path.to_owned())
}

/// The leading comment of the element at `path` in `file`, trimmed.
fn comment(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref()?;
    let text = text
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned();
    (!text.is_empty()).then_some(text)
}

fn field_comment(field: &FieldDescriptor) -> Option<String> {
    comment(&field.parent_file(), field.path())
}

/// A schema with a field's rules: bounds on the integer (and on the digits
/// proto3 JSON takes for it), lengths, pattern and format on strings, item
/// counts on lists.
fn constrained(mut schema: Value, field: &FieldDescriptor, rules: &FieldRules) -> Value {
    if field.is_list() {
        if let Some(n) = rules.min_length {
            schema["minItems"] = n.into();
        }
        if let Some(n) = rules.max_length {
            schema["maxItems"] = n.into();
        }
        let items = std::mem::take(&mut schema["items"]);
        schema["items"] = string_rules(items, rules, false);
        return schema;
    }
    if let (Some(lo), Some(hi)) = (rules.minimum, rules.maximum)
        && schema.get("oneOf").is_some()
    {
        let mut number =
            json!({"type": "integer", "format": "int32", "minimum": lo, "maximum": hi});
        if let Some(pattern) = digits_between(lo, hi) {
            return json!({"oneOf": [number, {"type": "string", "pattern": pattern}]});
        }
        number["description"] = "also taken as a string of its digits".into();
        return number;
    }
    string_rules(schema, rules, true)
}

fn string_rules(mut schema: Value, rules: &FieldRules, lengths: bool) -> Value {
    if schema["type"] != "string" {
        return schema;
    }
    if lengths {
        if let Some(n) = rules.min_length {
            schema["minLength"] = n.into();
        } else if rules.required {
            schema["minLength"] = 1.into();
        }
        if let Some(n) = rules.max_length {
            schema["maxLength"] = n.into();
        }
    }
    if !rules.pattern.is_empty() {
        schema["pattern"] = rules.pattern.clone().into();
    }
    // A format holds for a value given: an optional field may be empty
    // (ListDue's day: today), which no format admits, so its pattern says
    // what it takes.
    if !rules.format.is_empty() && (rules.required || !lengths) {
        schema["format"] = rules.format.clone().into();
    }
    schema
}

/// The strings of digits of the integers `lo..=hi`, as a pattern, for the
/// ranges the contracts use (from 0 or 1 up to a power of ten).
fn digits_between(lo: i64, hi: i64) -> Option<String> {
    let places = hi.checked_ilog10()?;
    if !(0..=1).contains(&lo) || hi != 10_i64.pow(places) || places == 0 {
        return None;
    }
    let zero = if lo == 0 { "0|" } else { "" };
    Some(format!("^({zero}[1-9][0-9]{{0,{}}}|{hi})$", places - 1))
}

/// An integer written as a string, as proto3 JSON takes it.
const SIGNED_DIGITS: &str = "^-?[0-9]+$";
const DIGITS: &str = "^[0-9]+$";

/// The component schemas referenced so far, and those still to write.
#[derive(Default)]
struct Schemas {
    done: BTreeMap<String, Value>,
    queued: BTreeSet<String>,
    pending_messages: VecDeque<MessageDescriptor>,
    pending_enums: VecDeque<EnumDescriptor>,
    /// Request bodies still to write: their names, messages and the fields
    /// their paths bind.
    pending_bodies: VecDeque<(String, MessageDescriptor, BTreeSet<String>)>,
}

impl Schemas {
    fn message_ref(&mut self, m: &MessageDescriptor) -> Value {
        if let Some(inline) = well_known(m) {
            return inline;
        }
        if self.queued.insert(m.full_name().to_owned()) {
            self.pending_messages.push_back(m.clone());
        }
        json!({"$ref": format!("#/components/schemas/{}", m.full_name())})
    }

    /// A request body: the message less the fields its path binds, with
    /// unknown fields refused and the required ones listed.
    fn body_ref(&mut self, m: &MessageDescriptor, in_path: BTreeSet<String>) -> Value {
        let name = if in_path.is_empty() {
            m.full_name().to_owned()
        } else {
            format!("{}.Body", m.full_name())
        };
        if self.queued.insert(name.clone()) {
            self.pending_bodies
                .push_back((name.clone(), m.clone(), in_path));
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn enum_ref(&mut self, e: &EnumDescriptor) -> Value {
        if self.queued.insert(e.full_name().to_owned()) {
            self.pending_enums.push_back(e.clone());
        }
        json!({"$ref": format!("#/components/schemas/{}", e.full_name())})
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({"type": "number", "format": "double"}),
            Kind::Float => json!({"type": "number", "format": "float"}),
            // proto3 JSON takes every integer as a number or as a string of
            // its digits (and writes 64-bit ones as strings).
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({"oneOf": [
                {"type": "integer", "format": "int32"},
                {"type": "string", "pattern": SIGNED_DIGITS},
            ]}),
            Kind::Uint32 | Kind::Fixed32 => json!({"oneOf": [
                {"type": "integer", "format": "int64", "minimum": 0},
                {"type": "string", "pattern": DIGITS},
            ]}),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"oneOf": [
                {"type": "string", "format": "int64", "pattern": SIGNED_DIGITS},
                {"type": "integer", "format": "int64"},
            ]}),
            Kind::Uint64 | Kind::Fixed64 => json!({"oneOf": [
                {"type": "string", "format": "uint64", "pattern": DIGITS},
                {"type": "integer", "minimum": 0},
            ]}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(e) => self.enum_ref(e),
            Kind::Message(m) => self.message_ref(m),
        }
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let value = match field.kind() {
                Kind::Message(entry) => entry
                    .get_field_by_name("value")
                    .map(|v| self.kind(&v.kind()))
                    .unwrap_or_else(|| json!({})),
                _ => json!({}),
            };
            return json!({"type": "object", "additionalProperties": value});
        }
        let base = self.kind(&field.kind());
        let schema = if field.is_list() {
            json!({"type": "array", "items": base})
        } else {
            base
        };
        match rules(field) {
            Some(rules) => constrained(schema, field, &rules),
            None => schema,
        }
    }

    /// A message's schema; as a request body (`in_path` given), without
    /// the fields its path binds, refusing unknown fields and listing the
    /// required ones.
    fn object(&mut self, m: &MessageDescriptor, in_path: Option<&BTreeSet<String>>) -> Value {
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        for field in m.fields() {
            if in_path.is_some_and(|p| p.contains(field.name())) {
                continue;
            }
            if rules(&field).is_some_and(|r| r.required) {
                required.push(field.json_name().to_owned());
            }
            let mut schema = self.field(&field);
            // proto3 JSON takes null for a field as its default: a body may
            // send it for any field it may leave out.
            if in_path.is_some()
                && !required.contains(&field.json_name().to_owned())
                && matches!(
                    schema["type"].as_str(),
                    Some("string" | "boolean" | "integer")
                )
            {
                schema["nullable"] = true.into();
            }
            if let (Some(doc), Value::Object(obj)) = (field_comment(&field), &mut schema) {
                if obj.contains_key("$ref") {
                    // A $ref takes no siblings in OpenAPI 3.0.
                    schema = json!({"allOf": [schema], "description": doc});
                } else {
                    obj.insert("description".into(), doc.into());
                }
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut schema = json!({"type": "object", "properties": properties});
        if in_path.is_some() {
            // The services refuse fields they do not know.
            schema["additionalProperties"] = false.into();
            if !required.is_empty() {
                schema["required"] = required.into();
            }
        }
        if let Some(doc) = comment(&m.parent_file(), m.path()) {
            schema["description"] = doc.into();
        }
        schema
    }

    fn finish(mut self) -> serde_json::Map<String, Value> {
        loop {
            if let Some((name, m, in_path)) = self.pending_bodies.pop_front() {
                let schema = self.object(&m, Some(&in_path));
                self.done.insert(name, schema);
            } else if let Some(m) = self.pending_messages.pop_front() {
                let schema = self.object(&m, None);
                self.done.insert(m.full_name().to_owned(), schema);
            } else if let Some(e) = self.pending_enums.pop_front() {
                let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
                let mut schema = json!({"type": "string", "enum": names});
                if let Some(doc) = comment(&e.parent_file(), e.path()) {
                    schema["description"] = doc.into();
                }
                self.done.insert(e.full_name().to_owned(), schema);
            } else {
                break;
            }
        }
        self.done.into_iter().collect()
    }
}

/// Inline schemas of the well-known types with a JSON form of their own.
fn well_known(m: &MessageDescriptor) -> Option<Value> {
    Some(match m.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
        }
        "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "additionalProperties": true,
        }),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
            json!({"type": "number", "nullable": true})
        }
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({"type": "integer", "nullable": true})
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": "string", "format": "int64", "nullable": true})
        }
        "google.protobuf.BoolValue" => json!({"type": "boolean", "nullable": true}),
        "google.protobuf.StringValue" => json!({"type": "string", "nullable": true}),
        "google.protobuf.BytesValue" => {
            json!({"type": "string", "format": "byte", "nullable": true})
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_route() {
        let pool = crate::descriptor_pool().unwrap();
        let table = RouteTable::from_pool(&pool, &["book", "reserve", "rental", "view"]).unwrap();
        let doc = document(&table);
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/books",
            "/v1/books/{book_id}",
            "/v1/books/{book_id}:addCopies",
            "/v1/reservations",
            "/v1/rentals/{rental_id}:return",
            "/v1/mypage",
            "/v1/mypage:watch",
            "/v1/members/{member_id}/mypage",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        let list = &doc["paths"]["/v1/books"]["get"];
        let names: Vec<&str> = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["query", "pageSize", "pageToken"]);
        assert_eq!(
            doc["paths"]["/v1/books"]["post"]["requestBody"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/rentalbook.book.v1.RegisterBookRequest.Body"
        );
        assert!(
            doc["paths"]["/v1/mypage:watch"]["get"]["responses"]["200"]["content"]
                .get("text/event-stream")
                .is_some()
        );
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let book = &schemas["rentalbook.book.v1.Book"];
        assert_eq!(book["properties"]["registeredAt"]["format"], "date-time");
        assert_eq!(
            schemas["rentalbook.book.v1.BookStatus"]["enum"][1],
            "BOOK_STATUS_AVAILABLE"
        );
        assert!(schemas.contains_key("rentalbook.view.v1.JourneyStep"));
        // Integers as numbers or as strings of digits, as proto3 JSON takes them.
        let copies = &schemas["rentalbook.book.v1.RegisterBookRequest.Body"]["properties"]["totalCopies"]
            ["oneOf"];
        assert_eq!(copies[0]["type"], "integer");
        assert_eq!(copies[1]["type"], "string");
        assert_eq!(copies[0]["maximum"], 1000);
        assert_eq!(copies[1]["pattern"], "^(0|[1-9][0-9]{0,2}|1000)$");
        let ids = &book["properties"]["freeCopies"]["oneOf"];
        assert_eq!(ids[1]["pattern"], SIGNED_DIGITS);
        assert!(schemas.contains_key("Error"));
        // The fields' rules, from the contracts.
        let register = &schemas["rentalbook.book.v1.RegisterBookRequest.Body"];
        assert_eq!(register["additionalProperties"], false);
        assert_eq!(register["required"], json!(["title", "author"]));
        assert!(
            register["properties"].get("requestId").is_none(),
            "the Idempotency-Key header gives it"
        );
        assert_eq!(register["properties"]["title"]["maxLength"], 300);
        assert_eq!(register["properties"]["title"]["minLength"], 1);
        assert_eq!(register["properties"]["barcodes"]["maxItems"], 1000);
        assert_eq!(
            register["properties"]["barcodes"]["items"]["pattern"],
            "^[!-~]{1,32}$"
        );
        let page_size = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "pageSize")
            .unwrap();
        assert_eq!(page_size["schema"]["oneOf"][0]["maximum"], 100);
        assert_eq!(
            page_size["schema"]["oneOf"][1]["pattern"],
            "^(0|[1-9][0-9]{0,1}|100)$"
        );
        let get = &doc["paths"]["/v1/books/{book_id}"]["get"]["parameters"][0];
        assert_eq!(get["schema"]["format"], "uuid");
        assert_eq!(
            doc["paths"]["/v1/books"]["post"]["requestBody"]["required"],
            true
        );
        assert_eq!(
            doc["paths"]["/v1/books/{book_id}"]["patch"]["requestBody"]["required"],
            false
        );
        // Each method's refusals of allowed requests, by status.
        let reserve = &doc["paths"]["/v1/reservations"]["post"]["responses"];
        assert!(
            reserve["409"]["description"]
                .as_str()
                .unwrap()
                .contains("ALREADY_RESERVED"),
            "{reserve}"
        );
        assert!(
            reserve["400"]["description"]
                .as_str()
                .unwrap()
                .contains("TOO_MANY_RESERVATIONS"),
            "{reserve}"
        );
        assert!(
            reserve["404"]["description"]
                .as_str()
                .unwrap()
                .contains("BOOK_NOT_FOUND")
        );
        // A body leaves out what its path binds.
        let add = &schemas["rentalbook.book.v1.AddCopiesRequest.Body"];
        assert!(add["properties"].get("bookId").is_none(), "{add}");
        assert_eq!(add["additionalProperties"], false);
        assert_eq!(
            doc["paths"]["/v1/books/{book_id}:addCopies"]["post"]["requestBody"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/rentalbook.book.v1.AddCopiesRequest.Body"
        );
        // Answers are not requests: no rules on them.
        assert!(book.get("additionalProperties").is_none());
        // Comments in the protos become descriptions.
        assert!(
            doc["paths"]["/v1/books"]["post"]["summary"]
                .as_str()
                .unwrap()
                .contains("Registers a book")
        );
        // Internal methods are not described.
        let text = doc.to_string();
        assert!(!text.contains("FulfillReservation"));
        assert!(!text.contains("RecordReturn"));
    }
}
