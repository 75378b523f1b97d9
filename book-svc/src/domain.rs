//! The catalogue's rules, free of transport and storage: what a valid book
//! is, and what its status is given its copies.

use rentalbook_proto::book::v1::BookStatus;

pub const MAX_COPIES: i32 = 1000;

/// A request value the catalogue does not take, naming its field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

impl Invalid {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Why copies cannot be added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopiesRefusal {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The book would have more than [`MAX_COPIES`].
    #[error("a book has at most {MAX_COPIES} copies; it has {total}, so at most {} more", MAX_COPIES - .total)]
    TooMany { total: i32 },
}

/// An ISBN with a correct checksum, kept as ISBN-13 digits: an ISBN-10 is
/// converted (978 and its first nine digits, with the ISBN-13 check digit),
/// so one book has one ISBN however it was typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isbn(String);

impl Isbn {
    /// Accepts an ISBN-10 or ISBN-13 with or without hyphens and spaces.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let digits: String = raw
            .chars()
            .filter(|c| *c != '-' && *c != ' ')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let normalised = match digits.len() {
            10 if isbn10_ok(&digits) => Some(isbn13_of_isbn10(&digits)),
            13 if isbn13_ok(&digits) => Some(digits),
            _ => None,
        };
        normalised.map(Self).ok_or_else(|| {
            Invalid::new(
                "isbn",
                format!(
                    "isbn `{}` is not a valid ISBN-10 or ISBN-13 (check the digits)",
                    raw.chars().take(40).collect::<String>()
                ),
            )
        })
    }

    /// The 13 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Isbn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn digit(c: char) -> u32 {
    c as u32 - '0' as u32
}

fn isbn10_ok(s: &str) -> bool {
    let mut sum = 0;
    for (i, c) in s.chars().enumerate() {
        let v = match (i, c) {
            (_, '0'..='9') => digit(c),
            (9, 'X') => 10,
            _ => return false,
        };
        sum += v * (10 - i as u32);
    }
    sum % 11 == 0
}

/// The ISBN-13 weighted sum of the digits: 1, 3, 1, 3, ...
fn isbn13_sum(s: &str) -> u32 {
    s.chars()
        .enumerate()
        .map(|(i, c)| digit(c) * if i % 2 == 0 { 1 } else { 3 })
        .sum()
}

fn isbn13_ok(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_digit()) && isbn13_sum(s).is_multiple_of(10)
}

/// `s` is a valid ISBN-10.
fn isbn13_of_isbn10(s: &str) -> String {
    let stem = format!("978{}", &s[..9]);
    let check = (10 - isbn13_sum(&stem) % 10) % 10;
    format!("{stem}{check}")
}

/// Text of 1..=max characters, trimmed.
fn bounded_text(field: &'static str, raw: &str, max: usize) -> Result<String, Invalid> {
    let text = raw.trim();
    let len = text.chars().count();
    if len == 0 {
        return Err(Invalid::new(field, format!("{field} must not be empty")));
    }
    if len > max {
        return Err(Invalid::new(
            field,
            format!("{field} must be at most {max} characters (it has {len})"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(text.to_owned())
}

/// A book's title: 1..=300 characters, trimmed, no control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        bounded_text("title", raw, 300).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A book's author: 1..=200 characters, trimmed, no control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Author(String);

impl Author {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        bounded_text("author", raw, 200).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An item's barcode: 1..=32 printable ASCII characters without spaces,
/// unique in the library.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Barcode(String);

impl Barcode {
    pub const MAX_LEN: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let ok =
            (1..=Self::MAX_LEN).contains(&raw.len()) && raw.chars().all(|c| c.is_ascii_graphic());
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Invalid::new(
                "barcodes",
                format!(
                    "barcode `{}` must be 1 to {} printable ASCII characters without spaces",
                    raw.chars().take(40).collect::<String>(),
                    Self::MAX_LEN
                ),
            ))
        }
    }

    /// The barcode generated from a number of the library's sequence: eight
    /// digits (more past 99,999,999).
    pub fn generated(n: i64) -> Self {
        Self(format!("{n:08}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The items a registration or AddCopies makes: `count` copies, with the
/// librarian's barcodes (`given`, one per copy) or generated ones (`given`
/// empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewItems {
    pub count: i32,
    pub given: Vec<Barcode>,
}

impl NewItems {
    /// `copies` may be left 0 when barcodes are given; when both are given
    /// they must agree. Barcodes in one request are distinct.
    pub fn parse(field: &'static str, copies: i32, barcodes: &[String]) -> Result<Self, Invalid> {
        if barcodes.is_empty() {
            return Ok(Self {
                count: self::copies(field, copies)?,
                given: Vec::new(),
            });
        }
        let given = barcodes
            .iter()
            .map(|b| Barcode::parse(b))
            .collect::<Result<Vec<_>, _>>()?;
        let count = self::copies("barcodes", i32::try_from(given.len()).unwrap_or(i32::MAX))?;
        if copies != 0 && copies != count {
            return Err(Invalid::new(
                field,
                format!(
                    "{field} is {copies} but {count} barcodes are given; give one barcode per copy"
                ),
            ));
        }
        let mut sorted: Vec<&Barcode> = given.iter().collect();
        sorted.sort();
        if let Some(twice) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Invalid::new(
                "barcodes",
                format!("barcode `{}` is given twice", twice[0].as_str()),
            ));
        }
        Ok(Self { count, given })
    }
}

/// The books of a MergeBooks request: two to ten distinct ids.
pub const MAX_MERGED: usize = 10;

pub fn books_to_merge(ids: &[String]) -> Result<Vec<rentalbook_plumbing::ids::Id>, Invalid> {
    use rentalbook_plumbing::ids::Id;
    if !(2..=MAX_MERGED).contains(&ids.len()) {
        return Err(Invalid::new(
            "book_ids",
            format!(
                "give two to {MAX_MERGED} books to merge (got {})",
                ids.len()
            ),
        ));
    }
    let mut parsed = Vec::with_capacity(ids.len());
    for raw in ids {
        let id = Id::parse(raw).ok_or_else(|| {
            Invalid::new(
                "book_ids",
                format!(
                    "`{}` is not a book id",
                    raw.chars().take(80).collect::<String>()
                ),
            )
        })?;
        if parsed.contains(&id) {
            return Err(Invalid::new(
                "book_ids",
                format!("book {id} is given twice"),
            ));
        }
        parsed.push(id);
    }
    Ok(parsed)
}

/// A book as a librarian registers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBook {
    pub isbn: Option<Isbn>,
    pub title: Title,
    pub author: Author,
    pub total_copies: i32,
}

impl NewBook {
    pub fn parse(
        isbn: &str,
        title: &str,
        author: &str,
        total_copies: i32,
    ) -> Result<Self, Invalid> {
        let isbn = if isbn.trim().is_empty() {
            None
        } else {
            Some(Isbn::parse(isbn)?)
        };
        Ok(Self {
            isbn,
            title: Title::parse(title)?,
            author: Author::parse(author)?,
            total_copies: copies("total_copies", total_copies)?,
        })
    }
}

/// A librarian's correction of a book: a new title, a new author, or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Correction {
    pub title: Option<Title>,
    pub author: Option<Author>,
}

impl Correction {
    /// Empty (or blank) fields are kept as they are; at least one is given.
    pub fn parse(title: &str, author: &str) -> Result<Self, Invalid> {
        let given = |s: &str| !s.trim().is_empty();
        let correction = Self {
            title: given(title).then(|| Title::parse(title)).transpose()?,
            author: given(author).then(|| Author::parse(author)).transpose()?,
        };
        if correction.title.is_none() && correction.author.is_none() {
            return Err(Invalid::new(
                "title",
                "give a corrected title or author (or both)",
            ));
        }
        Ok(correction)
    }

    /// The title and author after the correction, or None when it changes
    /// nothing.
    pub fn applied_to(&self, title: &str, author: &str) -> Option<(String, String)> {
        let new_title = self.title.as_ref().map_or(title, Title::as_str);
        let new_author = self.author.as_ref().map_or(author, Author::as_str);
        (new_title != title || new_author != author)
            .then(|| (new_title.to_owned(), new_author.to_owned()))
    }
}

/// A number of copies: 1..=1000.
pub fn copies(field: &'static str, n: i32) -> Result<i32, Invalid> {
    if (1..=MAX_COPIES).contains(&n) {
        Ok(n)
    } else {
        Err(Invalid::new(
            field,
            format!("{field} must be between 1 and {MAX_COPIES} (got {n})"),
        ))
    }
}

/// The total after adding copies, if it stays within the limit.
pub fn add_copies(total: i32, added: i32) -> Result<i32, CopiesRefusal> {
    let added = copies("copies", added)?;
    let new_total = total + added;
    if new_total > MAX_COPIES {
        return Err(CopiesRefusal::TooMany { total });
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
        assert!(Isbn::parse("0-8044-2957-5").is_err());
        assert!(Isbn::parse("12345").is_err());
        assert!(Isbn::parse("97803064061X7").is_err());
        assert!(Isbn::parse("080442957X0").is_err());
        assert!(
            Isbn::parse("X804429575").is_err(),
            "X only as the last digit"
        );
    }

    #[test]
    fn isbns_are_kept_as_isbn_13_however_they_are_typed() {
        let kindred = "9780807083697";
        for typed in [
            "978-0-8070-8369-7",
            "978 0 8070 8369 7",
            "9780807083697",
            "0807083690",
            "0-8070-8369-0",
        ] {
            assert_eq!(Isbn::parse(typed).unwrap().as_str(), kindred, "{typed}");
        }
        // An ISBN-10 ending in X, in either case.
        assert_eq!(
            Isbn::parse("0-8044-2957-X").unwrap().as_str(),
            "9780804429573"
        );
        assert_eq!(
            Isbn::parse("080442957x").unwrap(),
            Isbn::parse("978-0-8044-2957-3").unwrap()
        );
        assert_eq!(
            Isbn::parse("0-306-40615-2").unwrap().as_str(),
            "9780306406157"
        );
        // The ISBN-13 check digit of a converted ISBN-10 may come out as 0.
        assert_eq!(
            Isbn::parse("3-06-406104-6").unwrap().as_str(),
            "9783064061040"
        );
    }

    #[test]
    fn corrections_keep_what_is_not_given() {
        let both = Correction::parse(" Kindred ", "Octavia E. Butler").unwrap();
        assert_eq!(
            both.applied_to("Kindrid", "Octavia Butler"),
            Some(("Kindred".into(), "Octavia E. Butler".into()))
        );
        let title = Correction::parse("Kindred", "  ").unwrap();
        assert_eq!(title.author, None);
        assert_eq!(
            title.applied_to("Kindrid", "Octavia E. Butler"),
            Some(("Kindred".into(), "Octavia E. Butler".into()))
        );
        assert_eq!(
            title.applied_to("Kindred", "Anyone"),
            None,
            "no change, nothing to do"
        );
        assert!(
            Correction::parse("", "")
                .unwrap_err()
                .to_string()
                .contains("title or author")
        );
        assert!(
            Correction::parse(&"t".repeat(301), "")
                .unwrap_err()
                .to_string()
                .contains("300")
        );
        assert!(
            Correction::parse("", &"a".repeat(201))
                .unwrap_err()
                .to_string()
                .contains("author")
        );
        assert!(
            Correction::parse("a\u{7}b", "")
                .unwrap_err()
                .to_string()
                .contains("control")
        );
    }

    #[test]
    fn barcodes_are_printable_ascii_and_one_per_copy() {
        assert_eq!(Barcode::parse("0001234").unwrap().as_str(), "0001234");
        assert!(Barcode::parse("LIB-2026/17").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(33), "a\tb"] {
            assert!(Barcode::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Barcode::generated(42).as_str(), "00000042");
        assert_eq!(Barcode::generated(123_456_789).as_str(), "123456789");

        let generated = NewItems::parse("copies", 3, &[]).unwrap();
        assert_eq!((generated.count, generated.given.len()), (3, 0));
        let given = NewItems::parse("copies", 0, &["A1".into(), "A2".into()]).unwrap();
        assert_eq!(given.count, 2);
        assert!(NewItems::parse("copies", 2, &["A1".into(), "A2".into()]).is_ok());
        let disagree = NewItems::parse("copies", 3, &["A1".into(), "A2".into()]).unwrap_err();
        assert_eq!(disagree.field, "copies");
        let twice = NewItems::parse("copies", 0, &["A1".into(), "A1".into()]).unwrap_err();
        assert!(twice.message.contains("twice"), "{twice}");
        assert!(NewItems::parse("copies", 0, &[]).is_err());
        assert_eq!(
            NewItems::parse("copies", 0, &["a b".into()])
                .unwrap_err()
                .field,
            "barcodes"
        );
    }

    #[test]
    fn books_are_validated_field_by_field() {
        let ok = NewBook::parse("", " Dune ", "Frank Herbert", 3).unwrap();
        assert_eq!(ok.title.as_str(), "Dune");
        assert_eq!(ok.isbn, None);
        assert!(
            NewBook::parse("", "  ", "A", 1)
                .unwrap_err()
                .to_string()
                .contains("title")
        );
        assert!(
            NewBook::parse("", &"t".repeat(301), "A", 1)
                .unwrap_err()
                .to_string()
                .contains("300")
        );
        assert!(
            NewBook::parse("", "T", "", 1)
                .unwrap_err()
                .to_string()
                .contains("author")
        );
        assert!(
            NewBook::parse("", "T", "A", 0)
                .unwrap_err()
                .to_string()
                .contains("total_copies")
        );
        assert!(
            NewBook::parse("", "T", "A", 100_000)
                .unwrap_err()
                .to_string()
                .contains("total_copies")
        );
        assert!(
            NewBook::parse("123", "T", "A", 1)
                .unwrap_err()
                .to_string()
                .contains("isbn")
        );
    }

    #[test]
    fn merges_take_two_to_ten_distinct_book_ids() {
        let id = || rentalbook_plumbing::ids::Id::new().to_string();
        let (a, b) = (id(), id());
        assert_eq!(books_to_merge(&[a.clone(), b.clone()]).unwrap().len(), 2);
        for bad in [
            vec![a.clone()],
            vec![a.clone(), a.clone()],
            vec![a.clone(), "not-an-id".to_owned()],
            (0..11).map(|_| id()).collect(),
        ] {
            let e = books_to_merge(&bad).unwrap_err();
            assert_eq!(e.field, "book_ids", "{bad:?}");
        }
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
