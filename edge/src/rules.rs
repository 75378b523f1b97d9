//! What request fields accept (`rentalbook.api.v1.field` in the contracts):
//! read for the OpenAPI document and checked on every REST request before it
//! is forwarded, so that what the document states and what the edge lets
//! through come from one source. The services check the same rules for
//! their gRPC callers.

use prost_reflect::{DynamicMessage, FieldDescriptor, MessageDescriptor, Value};
use regex::Regex;
use rentalbook_plumbing::error::{DOMAIN, Reason};
use rentalbook_proto::api::v1::FieldRules;

use crate::errors::ApiError;

/// A field's rules, if the contracts state any.
pub fn of(field: &FieldDescriptor) -> Option<FieldRules> {
    let ext = field
        .parent_pool()
        .get_extension_by_name("rentalbook.api.v1.field")?;
    let options = field.options();
    if !options.has_extension(&ext) {
        return None;
    }
    options
        .get_extension(&ext)
        .as_message()?
        .transcode_to()
        .ok()
}

/// A request field's rules, ready to check: its pattern compiled.
#[derive(Debug)]
pub struct FieldCheck {
    field: FieldDescriptor,
    rules: FieldRules,
    pattern: Option<Regex>,
}

/// The checks of a request message's fields, made once when the routes are
/// built. The request id is left to the services, which answer
/// INVALID_REQUEST_ID. A pattern that does not compile is an error.
pub fn of_message(message: &MessageDescriptor) -> anyhow::Result<Vec<FieldCheck>> {
    let mut checks = Vec::new();
    for field in message.fields().filter(|f| f.name() != "request_id") {
        let Some(rules) = of(&field) else {
            continue;
        };
        let pattern = match rules.pattern.as_str() {
            "" => None,
            p => Some(
                Regex::new(p)
                    .map_err(|e| anyhow::anyhow!("the pattern of {}: {e}", field.full_name()))?,
            ),
        };
        checks.push(FieldCheck {
            field,
            rules,
            pattern,
        });
    }
    Ok(checks)
}

/// Refuses a request whose fields break their rules: 400 INVALID_FIELD
/// naming the first such field.
pub fn check(msg: &DynamicMessage, checks: &[FieldCheck]) -> Result<(), ApiError> {
    for c in checks {
        if let Some(problem) = violation(c, &msg.get_field(&c.field)) {
            let mut e = ApiError::bad_request(problem).with_reason(Reason::InvalidField);
            e.details.push(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": Reason::InvalidField.as_str_name(),
                "domain": DOMAIN,
                "metadata": {"field": c.field.name()},
            }));
            return Err(e);
        }
    }
    Ok(())
}

fn violation(c: &FieldCheck, value: &Value) -> Option<String> {
    let (name, rules) = (c.field.name(), &c.rules);
    match value {
        Value::List(items) => {
            let n = items.len() as u64;
            if rules.required && n == 0 {
                return Some(format!("{name} is required"));
            }
            if let Some(min) = rules.min_length.filter(|m| n < u64::from(*m) && n > 0) {
                return Some(format!("{name} needs at least {min} items (got {n})"));
            }
            if let Some(max) = rules.max_length.filter(|m| n > u64::from(*m)) {
                return Some(format!("{name} takes at most {max} items (got {n})"));
            }
            items.iter().find_map(|item| match item {
                Value::String(s) => text_violation(c, s, false),
                _ => None,
            })
        }
        Value::String(s) => {
            if s.is_empty() {
                return rules.required.then(|| format!("{name} is required"));
            }
            text_violation(c, s, true)
        }
        Value::I32(n) => number_violation(name, rules, i64::from(*n)),
        Value::I64(n) => number_violation(name, rules, *n),
        Value::U32(n) => number_violation(name, rules, i64::from(*n)),
        _ => None,
    }
}

fn number_violation(name: &str, rules: &FieldRules, n: i64) -> Option<String> {
    let low = rules.minimum.is_some_and(|min| n < min);
    let high = rules.maximum.is_some_and(|max| n > max);
    (low || high).then(|| match (rules.minimum, rules.maximum) {
        (Some(min), Some(max)) => format!("{name} must be from {min} to {max} (got {n})"),
        (Some(min), None) => format!("{name} must be at least {min} (got {n})"),
        (None, _) => format!(
            "{name} must be at most {} (got {n})",
            rules.maximum.unwrap_or(n)
        ),
    })
}

fn text_violation(c: &FieldCheck, s: &str, lengths: bool) -> Option<String> {
    let (name, rules) = (c.field.name(), &c.rules);
    let shown: String = s.chars().take(40).collect();
    if lengths {
        let n = s.chars().count() as u64;
        if let Some(max) = rules.max_length.filter(|m| n > u64::from(*m)) {
            return Some(format!("{name} takes at most {max} characters (got {n})"));
        }
        if let Some(min) = rules.min_length.filter(|m| n < u64::from(*m)) {
            return Some(format!("{name} needs at least {min} characters (got {n})"));
        }
    }
    if rules.format == "uuid" && uuid::Uuid::try_parse(s).is_err() {
        return Some(format!("`{shown}` is not an id ({name})"));
    }
    if rules.format == "date" && !is_date(s) {
        return Some(format!("{name} `{shown}` is not a day written YYYY-MM-DD"));
    }
    if c.pattern.as_ref().is_some_and(|p| !p.is_match(s)) {
        return Some(format!("`{shown}` is not a valid {name}"));
    }
    None
}

/// A day of the calendar written YYYY-MM-DD.
fn is_date(s: &str) -> bool {
    let mut parts = s.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let number = |t: &str, len: usize| {
        (t.len() == len && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u32>().ok())
            .flatten()
    };
    let (Some(y), Some(m), Some(d)) = (number(y, 4), number(m, 2), number(d, 2)) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    use prost_reflect::ReflectMessage;

    fn request(name: &str, json: serde_json::Value) -> DynamicMessage {
        let pool = crate::descriptor_pool().unwrap();
        let desc = pool.get_message_by_name(name).unwrap();
        DynamicMessage::deserialize(desc, json).unwrap()
    }

    fn refused(name: &str, json: serde_json::Value) -> Option<String> {
        let msg = request(name, json);
        let checks = of_message(&msg.descriptor()).unwrap();
        check(&msg, &checks).err().map(|e| e.message)
    }

    #[test]
    fn every_pattern_of_the_contracts_compiles() {
        let pool = crate::descriptor_pool().unwrap();
        for m in pool.all_messages() {
            for f in m.fields() {
                if let Some(r) = of(&f).filter(|r| !r.pattern.is_empty()) {
                    assert!(
                        Regex::new(&r.pattern).is_ok(),
                        "{}: {}",
                        f.full_name(),
                        r.pattern
                    );
                }
            }
        }
    }

    #[test]
    fn requests_breaking_their_fields_rules_are_refused_naming_the_field() {
        let list = "rentalbook.book.v1.ListBooksRequest";
        assert_eq!(refused(list, serde_json::json!({"pageSize": 100})), None);
        assert_eq!(refused(list, serde_json::json!({})), None);
        let e = refused(list, serde_json::json!({"pageSize": 101})).unwrap();
        assert!(e.contains("page_size"), "{e}");
        let register = "rentalbook.book.v1.RegisterBookRequest";
        let ok = serde_json::json!({"title": "T", "author": "A", "totalCopies": 2});
        assert_eq!(refused(register, ok), None);
        let e = refused(register, serde_json::json!({"author": "A"})).unwrap();
        assert!(e.contains("title is required"), "{e}");
        let e = refused(
            register,
            serde_json::json!({"title": "t".repeat(301), "author": "A"}),
        )
        .unwrap();
        assert!(e.contains("at most 300 characters"), "{e}");
        let e = refused(
            register,
            serde_json::json!({"title": "T", "author": "A", "barcodes": ["has space"]}),
        )
        .unwrap();
        assert!(e.contains("barcodes"), "{e}");
        let merge = "rentalbook.book.v1.MergeBooksRequest";
        let id = "01890a5d-ac96-774b-bcce-b302099a8057";
        let e = refused(merge, serde_json::json!({"bookIds": [id]})).unwrap();
        assert!(e.contains("at least 2"), "{e}");
        let e = refused(merge, serde_json::json!({"bookIds": [id, "nope"]})).unwrap();
        assert!(e.contains("not an id"), "{e}");
        let get = "rentalbook.book.v1.GetBookRequest";
        assert_eq!(refused(get, serde_json::json!({"bookId": id})), None);
        let due = "rentalbook.view.v1.ListDueRequest";
        assert_eq!(refused(due, serde_json::json!({"day": "2028-02-29"})), None);
        assert_eq!(refused(due, serde_json::json!({"day": ""})), None);
        for day in ["9866-55-07", "2027-02-29", "2026-4-01"] {
            let e = refused(due, serde_json::json!({"day": day})).unwrap();
            assert!(e.contains("YYYY-MM-DD"), "{day}: {e}");
        }
        let checkout = "rentalbook.rental.v1.CheckOutRequest";
        let e = refused(
            checkout,
            serde_json::json!({"memberId": "al ice", "barcode": "B-1"}),
        )
        .unwrap();
        assert!(e.contains("member_id"), "{e}");
    }
}
