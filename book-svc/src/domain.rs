//! The catalogue's rules, free of transport and storage: what a valid book
//! is, and what its status is given its copies.

use rentalbook_proto::book::v1::BookStatus;

pub const MAX_COPIES: i32 = 1000;

/// An ISBN-10 or ISBN-13 with a correct checksum, kept without separators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isbn(String);

impl Isbn {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let digits: String = raw.chars().filter(|c| *c != '-' && *c != ' ').collect();
        let valid = match digits.len() {
            10 => isbn10_ok(&digits),
            13 => isbn13_ok(&digits),
            _ => false,
        };
        if valid {
            Ok(Self(digits.to_ascii_uppercase()))
        } else {
            Err(format!(
                "isbn `{}` is not a valid ISBN-10 or ISBN-13 (check the digits)",
                raw.chars().take(40).collect::<String>()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn isbn10_ok(s: &str) -> bool {
    let mut sum = 0;
    for (i, c) in s.chars().enumerate() {
        let v = match (i, c) {
            (_, '0'..='9') => c as u32 - '0' as u32,
            (9, 'X' | 'x') => 10,
            _ => return false,
        };
        sum += v * (10 - i as u32);
    }
    sum % 11 == 0
}

fn isbn13_ok(s: &str) -> bool {
    if !s.chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = s
        .chars()
        .enumerate()
        .map(|(i, c)| (c as u32 - '0' as u32) * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    sum.is_multiple_of(10)
}

/// Text of 1..=max characters, trimmed.
fn bounded_text(field: &str, raw: &str, max: usize) -> Result<String, String> {
    let text = raw.trim();
    let len = text.chars().count();
    if len == 0 {
        return Err(format!("{field} must not be empty"));
    }
    if len > max {
        return Err(format!(
            "{field} must be at most {max} characters (it has {len})"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(text.to_owned())
}

/// A book as a librarian registers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBook {
    pub isbn: Option<Isbn>,
    pub title: String,
    pub author: String,
    pub total_copies: i32,
}

impl NewBook {
    pub fn parse(isbn: &str, title: &str, author: &str, total_copies: i32) -> Result<Self, String> {
        let isbn = if isbn.trim().is_empty() {
            None
        } else {
            Some(Isbn::parse(isbn)?)
        };
        Ok(Self {
            isbn,
            title: bounded_text("title", title, 300)?,
            author: bounded_text("author", author, 200)?,
            total_copies: copies("total_copies", total_copies)?,
        })
    }
}

/// A number of copies: 1..=1000.
pub fn copies(field: &str, n: i32) -> Result<i32, String> {
    if (1..=MAX_COPIES).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{field} must be between 1 and {MAX_COPIES} (got {n})"
        ))
    }
}

/// The total after adding copies, if it stays within the limit.
pub fn add_copies(total: i32, added: i32) -> Result<i32, String> {
    let added = copies("copies", added)?;
    let new_total = total + added;
    if new_total > MAX_COPIES {
        return Err(format!(
            "a book has at most {MAX_COPIES} copies; it has {total}, so at most {} more",
            MAX_COPIES - total
        ));
    }
    Ok(new_total)
}

/// Copies by state, as last reported by the lending desk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Copies {
    pub total: i32,
    pub held: i32,
    pub on_loan: i32,
}

impl Copies {
    pub fn free(self) -> i32 {
        (self.total - self.held - self.on_loan).max(0)
    }

    pub fn status(self) -> BookStatus {
        if self.free() > 0 {
            BookStatus::Available
        } else if self.held > 0 {
            BookStatus::Reserved
        } else {
            BookStatus::OnLoan
        }
    }
}

/// What the text query of ListBooks matches against: lower-case title,
/// author and ISBN.
pub fn search_text(book: &NewBook) -> String {
    format!(
        "{}\n{}\n{}",
        book.title.to_lowercase(),
        book.author.to_lowercase(),
        book.isbn
            .as_ref()
            .map(Isbn::as_str)
            .unwrap_or_default()
            .to_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isbn_checksums_are_verified() {
        assert_eq!(
            Isbn::parse("978-0-306-40615-7").unwrap().as_str(),
            "9780306406157"
        );
        assert!(Isbn::parse("978-0-306-40615-8").is_err());
        assert_eq!(Isbn::parse("0-8044-2957-X").unwrap().as_str(), "080442957X");
        assert!(Isbn::parse("0-8044-2957-5").is_err());
        assert!(Isbn::parse("12345").is_err());
        assert!(Isbn::parse("97803064061X7").is_err());
    }

    #[test]
    fn books_are_validated_field_by_field() {
        let ok = NewBook::parse("", " Dune ", "Frank Herbert", 3).unwrap();
        assert_eq!(ok.title, "Dune");
        assert_eq!(ok.isbn, None);
        assert!(
            NewBook::parse("", "  ", "A", 1)
                .unwrap_err()
                .contains("title")
        );
        assert!(
            NewBook::parse("", &"t".repeat(301), "A", 1)
                .unwrap_err()
                .contains("300")
        );
        assert!(
            NewBook::parse("", "T", "", 1)
                .unwrap_err()
                .contains("author")
        );
        assert!(
            NewBook::parse("", "T", "A", 0)
                .unwrap_err()
                .contains("total_copies")
        );
        assert!(
            NewBook::parse("", "T", "A", 100_000)
                .unwrap_err()
                .contains("total_copies")
        );
        assert!(
            NewBook::parse("123", "T", "A", 1)
                .unwrap_err()
                .contains("isbn")
        );
    }

    #[test]
    fn copies_stay_within_the_limit() {
        assert_eq!(add_copies(10, 5), Ok(15));
        assert!(add_copies(999, 2).is_err());
        assert!(add_copies(1, 0).is_err());
    }

    #[test]
    fn status_follows_the_copies() {
        let c = |total, held, on_loan| Copies {
            total,
            held,
            on_loan,
        };
        assert_eq!(c(2, 0, 0).status(), BookStatus::Available);
        assert_eq!(c(2, 1, 0).status(), BookStatus::Available);
        assert_eq!(c(2, 1, 1).status(), BookStatus::Reserved);
        assert_eq!(c(2, 0, 2).status(), BookStatus::OnLoan);
        assert_eq!(c(1, 1, 1).free(), 0);
    }
}
