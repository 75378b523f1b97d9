//! Catalogue search, free of storage: what a book's title, author and ISBN
//! become for searching, what a member's query becomes, how the index is
//! used for it, and how matches rank.
//!
//! Text is normalised the same way on both sides (Unicode NFKC, then lower
//! case), so case and compatibility forms (full-width letters, ligatures) do
//! not matter. A query's words are what the spaces separate; a book matches
//! when every word occurs, in any order, within its title, author or ISBN.
//! An ISBN typed as a word, in either form and with or without hyphens, is
//! looked up as the ISBN-13 the catalogue keeps.
//!
//! The index holds, for every word of a book, its character trigrams, its
//! last two characters, and a two-character word whole ([`grams`]). A word
//! of the query can only occur in a book that has every trigram of it; a
//! two-character word (two-syllable Korean names such as 한강, which trigram
//! indexes miss) only in a book with a gram starting with it. The index
//! narrows the catalogue to candidates by the rarest of these ([`plan`],
//! from the number of books each gram is in), and the words themselves are
//! then looked for in the candidates' text. The grams are computed here,
//! not by the database, so they do not depend on its locale or extensions.
//! A one-character word narrows nothing and is looked for in the text alone.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use unicode_normalization::UnicodeNormalization;

use crate::domain::Isbn;

pub const MAX_QUERY_CHARS: usize = 300;
pub const MAX_QUERY_WORDS: usize = 12;

/// Punctuation that a query word may carry at its ends without meaning it,
/// as in `Butler,` or `(Dune)`. A word made of nothing else is kept whole.
const EDGE_PUNCTUATION: &[char] = &[
    ',', '.', ';', ':', '!', '?', '"', '\'', '(', ')', '[', ']', '{', '}', '“', '”', '‘', '’', '«',
    '»', '「', '」', '『', '』', '《', '》', '〈', '〉', '、', '。',
];

/// NFKC, then lower case.
pub fn normalise(text: &str) -> String {
    text.nfkc().flat_map(char::to_lowercase).collect()
}

/// What the index holds for one word: every three neighbouring characters
/// and the last two; a two-character word whole; nothing for one character.
/// So any two characters of the word begin a gram: a trigram, or the last
/// two.
pub fn grams(word: &str) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    match chars.len() {
        0 | 1 => Vec::new(),
        2 => vec![word.to_owned()],
        n => chars
            .windows(3)
            .map(|w| w.iter().collect())
            .chain([chars[n - 2..].iter().collect()])
            .collect(),
    }
}

/// How the index is asked for the books that may have a query word.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Probe {
    /// Books with this gram.
    Gram(String),
    /// Books with a gram starting with these two characters.
    Prefix(String),
}

impl Probe {
    /// The probes a word must pass, all of them: its trigrams, or for two
    /// characters the prefix.
    fn of_word(word: &str) -> Vec<Probe> {
        match word.chars().count() {
            0 | 1 => Vec::new(),
            2 => vec![Probe::Prefix(word.to_owned())],
            _ => grams(word)
                .into_iter()
                .filter(|g| g.chars().count() == 3)
                .map(Probe::Gram)
                .collect(),
        }
    }
}

/// The first string after every string starting with `prefix`, in code
/// point order: the end of a prefix's range of grams.
pub fn after_prefix(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            // Surrogates are not characters.
            '\u{D7FF}' => Some('\u{E000}'),
            _ => char::from_u32(last as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// How to find a query's candidates, given how many books each probe finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Some word cannot be in any book.
    Nothing,
    /// No word narrows anything: look through every book.
    Scan,
    /// The books every one of these probes finds, the rarest first.
    Probes(Vec<Probe>),
}

/// At most this many probes intersect.
const MAX_PROBES: usize = 3;

/// A probe joins the rarest one only if it finds at most this many times
/// as many books: reading a long list to intersect it with a short one
/// costs more than it saves.
const PROBE_SPREAD: i64 = 4;

/// The probes worth asking: each word's rarest, the rarest of all first,
/// then those of the other words that are not much commoner. `books` says
/// how many books a probe finds.
pub fn plan(query: &Query, books: impl Fn(&Probe) -> i64) -> Plan {
    let mut chosen: Vec<(i64, Probe)> = Vec::new();
    for word in &query.words {
        let probes = Probe::of_word(word);
        let counted = probes.into_iter().map(|p| (books(&p), p));
        let Some(rarest) = counted.min() else {
            continue;
        };
        if rarest.0 == 0 {
            return Plan::Nothing;
        }
        chosen.push(rarest);
    }
    chosen.sort();
    chosen.dedup();
    let Some(fewest) = chosen.first().map(|c| c.0) else {
        return Plan::Scan;
    };
    Plan::Probes(
        chosen
            .into_iter()
            .take_while(|(n, _)| *n <= fewest.saturating_mul(PROBE_SPREAD))
            .take(MAX_PROBES)
            .map(|(_, p)| p)
            .collect(),
    )
}

/// What the catalogue keeps of a book for searching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed {
    /// The normalised title: what ranking looks in and orders by.
    pub title_key: String,
    /// Normalised title, author and ISBN-13, one per line: what the words
    /// of a query are looked for in.
    pub search_text: String,
    /// The [`grams`] of every word of `search_text`.
    pub terms: BTreeSet<String>,
}

/// A book's search data; `isbn` is the ISBN-13 the catalogue keeps.
pub fn index(title: &str, author: &str, isbn: Option<&str>) -> Indexed {
    let title_key = normalise(title);
    let search_text = format!(
        "{title_key}\n{}\n{}",
        normalise(author),
        isbn.unwrap_or_default()
    );
    let terms = search_text.split_whitespace().flat_map(grams).collect();
    Indexed {
        title_key,
        search_text,
        terms,
    }
}

/// A member's query, parsed: its distinct words, normalised, and the ISBNs
/// among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    words: Vec<String>,
    isbns: Vec<String>,
}

impl Query {
    /// None when the query has no words (list everything).
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        let chars = raw.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(format!(
                "query must be at most {MAX_QUERY_CHARS} characters (it has {chars})"
            ));
        }
        let mut query = Self {
            words: Vec::new(),
            isbns: Vec::new(),
        };
        for word in normalise(raw).split_whitespace().map(query_word) {
            let (list, word) = match word {
                QueryWord::Isbn(isbn) => (&mut query.isbns, isbn),
                QueryWord::Text(text) => (&mut query.words, text),
            };
            if !list.contains(&word) {
                list.push(word);
            }
        }
        let count = query.words.len() + query.isbns.len();
        if count > MAX_QUERY_WORDS {
            return Err(format!(
                "query must have at most {MAX_QUERY_WORDS} different words (it has {count})"
            ));
        }
        Ok((count > 0).then_some(query))
    }

    /// The words other than ISBNs: looked for in title, author and ISBN.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// The ISBNs, as ISBN-13: the book's ISBN must be each of them.
    pub fn isbns(&self) -> &[String] {
        &self.isbns
    }

    /// Every probe the words may be looked up by.
    pub fn probes(&self) -> BTreeSet<Probe> {
        self.words.iter().flat_map(|w| Probe::of_word(w)).collect()
    }

    /// Whether a book (its `search_text` and ISBN-13) matches.
    pub fn matches(&self, search_text: &str, isbn: Option<&str>) -> bool {
        self.words.iter().all(|w| search_text.contains(w.as_str()))
            && self.isbns.iter().all(|i| isbn == Some(i.as_str()))
    }

    /// How many of the words (ISBNs aside) are in a book's title (its
    /// `title_key`).
    pub fn title_hits(&self, title_key: &str) -> i64 {
        self.words
            .iter()
            .filter(|w| title_key.contains(w.as_str()))
            .count() as i64
    }

    /// Where a book stands among the matches.
    pub fn position(&self, title_key: &str, book_id: &str) -> Position {
        Position {
            title_hits: self.title_hits(title_key),
            title_key: title_key.to_owned(),
            book_id: book_id.to_owned(),
        }
    }
}

enum QueryWord {
    Isbn(String),
    Text(String),
}

/// One whitespace-separated word of a normalised query.
fn query_word(word: &str) -> QueryWord {
    let trimmed = word.trim_matches(EDGE_PUNCTUATION);
    let word = if trimmed.is_empty() { word } else { trimmed };
    let isbn_shaped = word
        .chars()
        .all(|c| c.is_ascii_digit() || c == '-' || c == 'x');
    match Isbn::parse(word) {
        Ok(isbn) if isbn_shaped => QueryWord::Isbn(isbn.as_str().to_owned()),
        _ => QueryWord::Text(word.to_owned()),
    }
}

/// A match's place in the results: more of the query's words in the title
/// first, then by title (code point order of the normalised title, the
/// same on every database), then by id so that the order is total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub title_hits: i64,
    pub title_key: String,
    pub book_id: String,
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .title_hits
            .cmp(&self.title_hits)
            .then_with(|| self.title_key.cmp(&other.title_key))
            .then_with(|| self.book_id.cmp(&other.book_id))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> Query {
        Query::parse(raw).unwrap().expect("words")
    }

    fn book(title: &str, author: &str, isbn: &str) -> Indexed {
        let isbn = (!isbn.is_empty()).then(|| Isbn::parse(isbn).unwrap());
        index(title, author, isbn.as_ref().map(Isbn::as_str))
    }

    /// What the database does: candidates by the probes of the plan, then
    /// the words.
    fn found(query: &str, b: &Indexed) -> bool {
        let q = q(query);
        let isbn = b.search_text.lines().nth(2).filter(|i| !i.is_empty());
        let finds = |p: &Probe| match p {
            Probe::Gram(g) => b.terms.contains(g),
            Probe::Prefix(p) => b.terms.iter().any(|t| t.starts_with(p.as_str())),
        };
        let candidate = match plan(&q, |p| finds(p) as i64) {
            Plan::Nothing => false,
            Plan::Scan => true,
            Plan::Probes(probes) => probes.iter().all(finds),
        };
        let verdict = candidate && q.matches(&b.search_text, isbn);
        assert!(
            candidate || !q.matches(&b.search_text, isbn),
            "{query:?}: the index missed a match"
        );
        verdict
    }

    #[test]
    fn text_is_normalised_for_case_and_compatibility_forms() {
        assert_eq!(normalise("Octavia E. BUTLER"), "octavia e. butler");
        assert_eq!(normalise("STANISŁAW"), "stanisław");
        assert_eq!(normalise("Ｄｕｎｅ"), "dune", "full-width letters");
        assert_eq!(normalise("ﬁre"), "fire", "a ligature");
        // Hangul typed as separate jamo composes into syllables.
        assert_eq!(
            normalise("\u{1112}\u{1161}\u{11AB}\u{1100}\u{1161}\u{11BC}"),
            "한강"
        );
    }

    #[test]
    fn grams_are_trigrams_and_the_last_two_characters() {
        assert_eq!(grams("dune"), ["dun", "une", "ne"]);
        assert_eq!(grams("한강"), ["한강"]);
        assert_eq!(grams("소년이"), ["소년이", "년이"]);
        assert_eq!(grams("a"), Vec::<String>::new());
    }

    #[test]
    fn a_book_is_indexed_by_the_grams_of_its_words() {
        let b = book("Kindred", "Octavia E. Butler", "0807083690");
        assert_eq!(b.title_key, "kindred");
        assert_eq!(b.search_text, "kindred\noctavia e. butler\n9780807083697");
        for gram in ["kin", "ed", "but", "e.", "978", "97"] {
            assert!(b.terms.contains(gram), "{gram}");
        }
        assert!(!b.terms.contains("iae"), "no gram across words");
        assert!(!b.terms.contains("doc"), "no gram across fields");
    }

    #[test]
    fn the_rarest_probes_narrow_the_search() {
        let books = |p: &Probe| match p {
            Probe::Gram(g) if g == "ndr" => 3,
            Probe::Gram(g) if g == "ler" => 40,
            Probe::Gram(g) if g == "but" => 11,
            Probe::Gram(g) if g == "zzz" => 0,
            Probe::Prefix(p) if p == "le" => 9000,
            _ => 5000,
        };
        let gram = |g: &str| Probe::Gram(g.into());
        assert_eq!(
            plan(&q("kindred butler"), books),
            Plan::Probes(vec![gram("ndr"), gram("but")])
        );
        assert_eq!(
            plan(&q("dune kindred"), books),
            Plan::Probes(vec![gram("ndr")]),
            "a probe much commoner than the rarest is not worth reading"
        );
        assert_eq!(plan(&q("butler"), books), Plan::Probes(vec![gram("but")]));
        assert_eq!(
            plan(&q("dune kindred but"), books),
            Plan::Probes(vec![gram("ndr"), gram("but")])
        );
        assert_eq!(
            plan(&q("le"), books),
            Plan::Probes(vec![Probe::Prefix("le".into())])
        );
        assert_eq!(plan(&q("kindred zzz"), books), Plan::Nothing);
        assert_eq!(plan(&q("a b"), books), Plan::Scan);
        assert_eq!(
            plan(&q("9780807083697"), books),
            Plan::Scan,
            "an ISBN is looked up"
        );
    }

    #[test]
    fn prefix_ranges_end_at_the_next_code_point() {
        assert_eq!(after_prefix("du").as_deref(), Some("dv"));
        assert_eq!(after_prefix("한강").as_deref(), Some("한갖"));
        assert_eq!(after_prefix("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(after_prefix("\u{D7FF}").as_deref(), Some("\u{E000}"));
    }

    #[test]
    fn queries_are_words_in_any_order_and_case() {
        let kindred = book("Kindred", "Octavia E. Butler", "978-0-8070-8369-7");
        for query in [
            "Octavia Butler",
            "butler octavia",
            "BUTLER",
            "kin",
            "kindred butler",
            "Butler, Octavia",
            "(Kindred)",
        ] {
            assert!(found(query, &kindred), "{query:?} finds Kindred");
        }
        for query in ["octavia smith", "kindreds", "butler kindred 2"] {
            assert!(!found(query, &kindred), "{query:?} does not find Kindred");
        }
    }

    #[test]
    fn an_isbn_is_found_in_either_form_with_or_without_hyphens() {
        let kindred = book("Kindred", "Octavia E. Butler", "0807083690");
        for query in [
            "978-0-8070-8369-7",
            "9780807083697",
            "0807083690",
            "0-8070-8369-0",
            "80708369",
            "kindred 0807083690",
        ] {
            assert!(found(query, &kindred), "{query:?} finds Kindred");
        }
        assert_eq!(q("0-8044-2957-x").isbns(), ["9780804429573"]);
        assert_eq!(q("0-8044-2957-x").words(), Vec::<String>::new());
        // Not a valid ISBN: looked for as typed.
        assert_eq!(q("978-0-8070-8369-8").words(), ["978-0-8070-8369-8"]);
        assert!(!found("0-8044-2957-x", &kindred));
        assert!(!found("978-0-8070-8369-8", &kindred));
    }

    #[test]
    fn korean_two_syllable_names_and_words_inside_longer_ones_are_found() {
        let b = book("소년이 온다", "한강", "");
        for query in ["한강", "소년", "온다 한강", "소년이"] {
            assert!(found(query, &b), "{query:?}");
        }
        assert!(found("년이", &b), "the last two syllables of a word");
        assert!(found("ne", &book("Dune", "Frank Herbert", "")));
        let river = book("한강의 기적", "김철수", "");
        assert!(found("한강", &river), "a name followed by a particle");
        assert!(!found("강한", &b));
        assert!(!found("한국", &b));
    }

    #[test]
    fn one_character_words_and_punctuation_are_looked_for_literally() {
        let percent = book("100% Rust", "Someone", "");
        let snake = book("Snake_case Style", "Someone", "");
        assert!(found("%", &percent) && !found("%", &snake));
        assert!(found("_", &snake) && !found("_", &percent));
        assert!(!found("d%e", &book("Dune", "Frank Herbert", "")));
        assert!(found("100%", &percent));
    }

    #[test]
    fn queries_are_bounded_and_words_counted_once() {
        assert_eq!(Query::parse("   ").unwrap(), None);
        assert_eq!(Query::parse("").unwrap(), None);
        assert_eq!(q("dune DUNE Dune").words(), ["dune"]);
        assert!(Query::parse(&"q".repeat(300)).is_ok());
        assert!(
            Query::parse(&"q".repeat(301))
                .unwrap_err()
                .contains("300 characters")
        );
        let thirteen: Vec<String> = (0..13).map(|i| format!("w{i}")).collect();
        assert!(
            Query::parse(&thirteen.join(" "))
                .unwrap_err()
                .contains("12 different words")
        );
        assert!(Query::parse(&thirteen[..12].join(" ")).is_ok());
    }

    #[test]
    fn more_words_in_the_title_rank_first_then_title_order() {
        let query = q("dune herbert");
        let mut ranked = [
            ("b3", "Dune Messiah", "Frank Herbert"),
            ("b1", "Children of Dune", "Frank Herbert"),
            ("b4", "Herbert's Dune", "Brian Herbert"),
            ("b2", "Dune", "Frank Herbert"),
            ("b5", "Dune", "Frank Herbert"),
        ]
        .map(|(id, title, _)| query.position(&normalise(title), id));
        ranked.sort();
        let order: Vec<&str> = ranked.iter().map(|p| p.book_id.as_str()).collect();
        assert_eq!(order, ["b4", "b1", "b2", "b5", "b3"]);
        assert_eq!(ranked[0].title_hits, 2);
        assert_eq!(ranked[1].title_hits, 1);
    }
}
