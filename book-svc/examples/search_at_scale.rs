//! How catalogue search holds up in a large catalogue: fills a book-svc
//! database with generated books (titles and authors from English and
//! Korean words, half of them with an ISBN, plus a few known ones), then
//! times the search query of ListBooks for a set of queries.
//!
//! ```sh
//! cargo run --release -p book-svc --example search_at_scale -- \
//!   --database-url sqlite:///tmp/search-at-scale.db --books 100000
//! cargo run --release -p book-svc --example search_at_scale -- \
//!   --database-url postgres://postgres@127.0.0.1:5432/search_at_scale --books 100000
//! ```
//!
//! A database that already holds the books is only searched. The times are
//! of `store::search` (the database's part of a ListBooks, which is what
//! grows with the catalogue), first page of 20, after a warm-up. Beside
//! them, as a baseline in the same run, the query ListBooks had before the
//! index: the whole query as one substring of every book's text, in id
//! order, no ranking.

use std::time::{Duration, Instant};

use book_svc::search::{self, Query};
use book_svc::store::{self, books, terms};
use clap::Parser;
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::db::like_containing;
use rentalbook_plumbing::ids::Id;
use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use sea_orm_migration::MigratorTrait;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    database_url: String,
    /// Books the catalogue should hold.
    #[arg(long, default_value_t = 100_000)]
    books: u64,
    /// Timed runs of each query.
    #[arg(long, default_value_t = 50)]
    runs: usize,
}

#[rustfmt::skip]
const ENGLISH: &[&str] = &[
    "the", "of", "and", "a", "in", "night", "house", "war", "love", "river",
    "city", "light", "dark", "world", "time", "man", "woman", "children", "history", "art",
    "secret", "last", "first", "garden", "sea", "stone", "fire", "winter", "summer", "king",
    "queen", "road", "story", "life", "death", "dream", "shadow", "mountain", "island", "star",
    "song", "book", "letters", "journey", "memory", "empire", "silence", "water", "glass", "black",
    "white", "red", "blue", "golden", "little", "great", "new", "old", "lost", "hidden",
    "wild", "forest", "bridge", "door", "window", "country", "people", "science", "guide", "introduction",
    "handbook", "principles", "modern", "ancient", "practical", "complete", "theory", "music", "poems", "essays",
    "tales", "voyage", "stranger", "daughter", "brother", "mother", "father", "machine", "engine", "code",
    "algorithms", "systems", "design", "cooking", "kitchen", "travel", "atlas", "birds", "flowers", "wind",
    "rain", "snow", "moon", "sun", "ocean",
];

#[rustfmt::skip]
const KOREAN: &[&str] = &[
    "사랑", "바다", "나무", "하늘", "시간", "기억", "도시", "여름", "겨울", "밤", "별",
    "노래", "이야기", "꽃", "바람", "길", "집", "마음", "세계", "역사", "소년", "소녀",
    "어머니", "아버지", "강", "산", "섬", "편지", "여행", "그림자", "빛", "눈", "비",
];

#[rustfmt::skip]
const GIVEN: &[&str] = &[
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
    "William", "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica",
    "Thomas", "Sarah", "Charles", "Karen", "Anna", "Peter", "Maria", "Ursula",
    "Frank", "Toni", "Kazuo", "Haruki", "Chimamanda", "Orhan", "Gabriel", "Isabel",
    "Jorge", "Italo", "Wisława", "Stanisław",
];

#[rustfmt::skip]
const FAMILY: &[&str] = &[
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Thompson", "White", "Harris", "Clark", "Lewis",
    "Walker", "Young", "Morrison", "Ishiguro", "Murakami", "Adichie", "Pamuk", "Borges",
    "Calvino", "Allende",
];

#[rustfmt::skip]
const KOREAN_AUTHORS: &[&str] = &[
    "김영하", "신경숙", "공지영", "황석영", "이문열", "박완서", "조정래", "은희경",
    "김훈", "정유정", "천명관", "편혜영", "김애란", "손원평", "조남주", "최은영",
];

/// Books the queries below look for, among the generated ones.
const KNOWN: &[(&str, &str, &str)] = &[
    ("Kindred", "Octavia E. Butler", "0807083690"),
    ("Parable of the Sower", "Octavia E. Butler", "9780446675505"),
    ("소년이 온다", "한강", ""),
    ("채식주의자", "한강", ""),
];

/// xorshift64*: the same catalogue on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// An index below `n`, the small ones more often (as common words are).
    fn skewed(&mut self, n: usize) -> usize {
        let x = (self.next() % 10_000) as f64 / 10_000.0;
        ((x * x) * n as f64) as usize
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.skewed(words.len())]
    }
}

fn isbn13(rng: &mut Rng) -> String {
    let stem: String = format!("978{:09}", rng.next() % 1_000_000_000);
    let sum: u32 = stem
        .chars()
        .enumerate()
        .map(|(i, c)| c.to_digit(10).unwrap_or(0) * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    format!("{stem}{}", (10 - sum % 10) % 10)
}

fn generated(rng: &mut Rng) -> (String, String, Option<String>) {
    let korean = rng.next().is_multiple_of(5);
    let words = 1 + (rng.next() % 5) as usize;
    let (title, author) = if korean {
        let title: Vec<&str> = (0..words).map(|_| rng.pick(KOREAN)).collect();
        (title.join(" "), rng.pick(KOREAN_AUTHORS).to_owned())
    } else {
        let mut title: Vec<String> = (0..words).map(|_| rng.pick(ENGLISH).to_owned()).collect();
        if let Some(first) = title.first_mut() {
            *first = first[..1].to_uppercase() + &first[1..];
        }
        let author = format!("{} {}", rng.pick(GIVEN), rng.pick(FAMILY));
        (title.join(" "), author)
    };
    let isbn = rng.next().is_multiple_of(2).then(|| isbn13(rng));
    (title, author, isbn)
}

async fn fill(db: &Db, wanted: u64) -> anyhow::Result<()> {
    let mut have = books::Entity::find().count(db.conn()).await?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ have);
    let started = Instant::now();
    while have < wanted {
        let batch = (wanted - have).min(500);
        let tx = db.begin().await?;
        let mut rows = Vec::new();
        let mut index_rows = Vec::new();
        for i in 0..batch {
            let (title, author, isbn) = match KNOWN.get((have + i) as usize) {
                Some((t, a, i)) => (
                    t.to_string(),
                    a.to_string(),
                    book_svc::domain::Isbn::parse(i)
                        .ok()
                        .map(|i| i.as_str().to_owned()),
                ),
                None => generated(&mut rng),
            };
            let book_id = Id::new().to_string();
            let indexed = search::index(&title, &author, isbn.as_deref());
            index_rows.extend(indexed.terms.iter().map(|term| terms::ActiveModel {
                term: Set(term.clone()),
                book_id: Set(book_id.clone()),
            }));
            rows.push(books::ActiveModel {
                book_id: Set(book_id),
                isbn: Set(isbn),
                title: Set(title),
                author: Set(author),
                title_key: Set(indexed.title_key),
                search_text: Set(indexed.search_text),
                total_copies: Set(1),
                circulating_copies: Set(1),
                held_copies: Set(0),
                on_loan_copies: Set(0),
                waiting: Set(0),
                availability_seq: Set(0),
                registered_at: Set(rentalbook_plumbing::time::now()),
                revision: Set(0),
            });
        }
        books::Entity::insert_many(rows)
            .exec_without_returning(&*tx)
            .await?;
        for chunk in index_rows.chunks(5000) {
            terms::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&*tx)
                .await?;
        }
        have += batch;
        if have == wanted {
            store::recount_terms(&*tx).await?;
        }
        tx.commit().await?;
        if have % 10_000 == 0 || have == wanted {
            println!("{have} books ({:.0} s)", started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = Db::connect(&args.database_url, 4).await?;
    store::Migrator::up(db.conn(), None).await?;
    fill(&db, args.books).await?;
    if db.backend() == sea_orm::DbBackend::Postgres {
        use sea_orm::ConnectionTrait;
        db.conn().execute_unprepared("VACUUM ANALYZE").await?;
    }
    let total = books::Entity::find().count(db.conn()).await?;
    let index_rows = terms::Entity::find().count(db.conn()).await?;
    println!(
        "{total} books, {index_rows} search terms ({:.1} per book)",
        index_rows as f64 / total as f64
    );
    println!();
    println!("| query | first page | p50 ms | p95 ms | max ms | substring scan p50 ms |");
    println!("|---|---|---|---|---|---|");
    for raw in [
        "octavia butler",
        "kindred",
        "978-0-8070-8369-7",
        "0807083690",
        "한강",
        "바다 사랑",
        "the",
        "love war",
        "secret garden",
        "a",
        "zzqx",
    ] {
        let query = Query::parse(raw)
            .map_err(anyhow::Error::msg)?
            .ok_or_else(|| anyhow::anyhow!("no words in {raw:?}"))?;
        let mut found = 0;
        for _ in 0..3 {
            found = store::search(db.conn(), &query, None, 21).await?.len();
        }
        let mut times = Vec::with_capacity(args.runs);
        let mut scans = Vec::with_capacity(args.runs);
        let substring = like_containing(&search::normalise(raw));
        for _ in 0..args.runs {
            let started = Instant::now();
            store::search(db.conn(), &query, None, 21).await?;
            times.push(started.elapsed());
            let started = Instant::now();
            books::Entity::find()
                .filter(books::Column::SearchText.like(substring.clone()))
                .order_by_asc(books::Column::BookId)
                .limit(21)
                .all(db.conn())
                .await?;
            scans.push(started.elapsed());
        }
        times.sort();
        scans.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "| `{raw}` | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            if found > 20 {
                "20 (more)".to_owned()
            } else {
                found.to_string()
            },
            ms(at(0.5)),
            ms(at(0.95)),
            ms(at(1.0)),
            ms(scans[scans.len() / 2])
        );
    }
    Ok(())
}
