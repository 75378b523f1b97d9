//! Values that cross the boundary, parsed once: a request with a malformed id
//! is refused with INVALID_ARGUMENT naming the field, and past this point an id
//! is known to be well formed.

use std::fmt;

use tonic::Status;
use uuid::Uuid;

use crate::error::{Reason, Refusal};

/// A member's id: 1..64 characters of `[A-Za-z0-9._-]` (the token's `sub`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(String);

impl MemberId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if s.is_empty() || s.len() > 64 || !s.chars().all(ok_char) {
            return Err(format!(
                "`{}` is not a member id (1 to 64 letters, digits, '.', '_' or '-')",
                s.chars().take(80).collect::<String>()
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What stands for the member on a finished row whose member erased their
/// history or outlived `HISTORY_RETENTION` (SPEC §10): the row still counts
/// and keeps the item's history, but names nobody. It is not a member id
/// (`~` is never in one), so no caller and no request can be it.
pub const ERASED_MEMBER: &str = "~erased";

/// A server-made id (UUIDv7), kept in its canonical hyphenated text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Uuid);

impl Id {
    /// A new id; v7 so ids sort by creation time.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(s: &str) -> Option<Self> {
        Uuid::try_parse(s).ok().map(Self)
    }

    /// Parses a request field, naming it in the refusal.
    pub fn parse_field(field: &str, value: &str) -> Result<Self, Status> {
        if value.is_empty() {
            return Err(Refusal::invalid_field(field, format!("{field} is required")).into());
        }
        Self::parse(value).ok_or_else(|| {
            Refusal::invalid_field(
                field,
                format!(
                    "{field} `{}` is not a valid id",
                    value.chars().take(80).collect::<String>()
                ),
            )
            .into()
        })
    }
}

impl Default for Id {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Parses an optional client request id: empty means none; otherwise 1..128
/// printable ASCII characters.
pub fn request_id(value: &str) -> Result<Option<String>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > 128 || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Refusal::invalid_argument(
            Reason::InvalidRequestId,
            "request_id must be 1 to 128 printable characters without spaces",
        )
        .into());
    }
    Ok(Some(value.to_owned()))
}

/// A scanned barcode: 1 to 32 printable ASCII characters; the spaces a
/// scanner may add around it are dropped.
pub fn barcode(value: &str) -> Result<String, Status> {
    let b = value.trim();
    if b.is_empty() {
        return Err(Refusal::invalid_field("barcode", "barcode is required").into());
    }
    if b.len() > 32 || !b.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Refusal::invalid_field(
            "barcode",
            "barcode must be 1 to 32 printable ASCII characters without spaces",
        )
        .into());
    }
    Ok(b.to_owned())
}

/// A list request's page token: empty for the first page, else the last id
/// of the previous page.
pub fn page_token(value: &str) -> Result<Option<Id>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    Id::parse(value).map(Some).ok_or_else(|| {
        Refusal::invalid_argument(
            Reason::InvalidPageToken,
            "page_token is not one this service gave out",
        )
        .into()
    })
}

/// Page size of a list request: 0 means the default of 20; at most 100.
pub fn page_size(value: i32) -> Result<u64, Status> {
    match value {
        0 => Ok(20),
        1..=100 => Ok(value as u64),
        _ => Err(Refusal::invalid_field("page_size", "page_size must be between 1 and 100").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_follow_the_token_rules() {
        assert!(MemberId::parse("alice").is_ok());
        assert!(MemberId::parse("a.b_c-9").is_ok());
        assert!(MemberId::parse(&"x".repeat(64)).is_ok());
        assert!(MemberId::parse(&"x".repeat(65)).is_err());
        assert!(MemberId::parse("").is_err());
        assert!(MemberId::parse("al ice").is_err());
        assert!(MemberId::parse("ålice").is_err());
        assert!(MemberId::parse(ERASED_MEMBER).is_err());
    }

    #[test]
    fn ids_are_uuids_and_refusals_name_the_field() {
        let id = Id::new();
        assert_eq!(Id::parse(&id.to_string()), Some(id));
        let err = Id::parse_field("book_id", "nope").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("book_id"));
        assert!(
            Id::parse_field("book_id", "")
                .unwrap_err()
                .message()
                .contains("required")
        );
    }

    #[test]
    fn page_sizes_and_request_ids_are_bounded() {
        assert_eq!(page_size(0).unwrap(), 20);
        assert_eq!(page_size(100).unwrap(), 100);
        assert!(page_size(101).is_err());
        assert!(page_size(-1).is_err());
        assert_eq!(request_id("").unwrap(), None);
        assert!(request_id("a b").is_err());
        assert!(request_id(&"k".repeat(129)).is_err());
    }
}
