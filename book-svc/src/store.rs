//! book-svc's tables, their migrations, and the catalogue search over them.

use std::collections::{BTreeMap, BTreeSet};

use rentalbook_plumbing::db::like_containing;
use rentalbook_plumbing::schema::{OutboxTraceparent, PlumbingTables, create_entity_table};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Order, SelectStatement, UnionType};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use sea_orm_migration::prelude::*;

use crate::domain::Isbn;
use crate::search::{self, Plan, Position, Probe};

pub mod books {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "books")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub book_id: String,
        /// ISBN-13 digits (looked up before registering another book).
        pub isbn: Option<String>,
        pub title: String,
        pub author: String,
        /// The normalised title ([`crate::search::Indexed`]): ranking looks
        /// in it and orders by it. On PostgreSQL its collation is "C", so
        /// that titles sort by code point as on SQLite.
        pub title_key: String,
        /// Normalised title, author and ISBN, for the text query.
        pub search_text: String,
        /// Copies registered (RegisterBook and AddCopies).
        pub total_copies: i32,
        /// Copies in circulation: those registered less the ones the desk
        /// withdrew or lost, from its latest snapshot (and counted up at
        /// once by AddCopies). What Book.total_copies shows.
        pub circulating_copies: i32,
        /// From the latest availability snapshot of the lending desk.
        pub held_copies: i32,
        pub on_loan_copies: i32,
        pub waiting: i32,
        /// book_seq of that snapshot; older ones are ignored.
        pub availability_seq: i64,
        pub registered_at: DateTimeUtc,
        /// Corrections of title or author so far (BookUpdated's revision).
        pub revision: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod items {
    use sea_orm::entity::prelude::*;

    /// A copy of a book with its barcode. Its circulation state (in
    /// service, withdrawn, lost; held, on loan) is reserve-svc's.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "items")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub item_id: String,
        #[sea_orm(indexed)]
        pub book_id: String,
        #[sea_orm(unique)]
        pub barcode: String,
        pub registered_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod sequences {
    use sea_orm::entity::prelude::*;

    /// Named counters: `barcode` numbers the generated barcodes.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sequences")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub next: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod terms {
    use sea_orm::entity::prelude::*;

    /// The search index: one row per gram of a book's words
    /// ([`crate::search::grams`]), kept by whatever writes the book.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "book_terms")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub term: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub book_id: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod term_counts {
    use sea_orm::entity::prelude::*;

    /// How many books each gram of the index is in, so that a search reads
    /// the shortest lists ([`crate::search::plan`]).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "book_term_counts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub term: String,
        pub books: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Adds a book's grams to the index, without counting them.
pub async fn insert_terms<C: ConnectionTrait>(
    db: &C,
    book_id: &str,
    grams: impl IntoIterator<Item = &String>,
) -> Result<(), DbErr> {
    let rows: Vec<terms::ActiveModel> = grams
        .into_iter()
        .map(|term| terms::ActiveModel {
            term: Set(term.clone()),
            book_id: Set(book_id.to_owned()),
        })
        .collect();
    if !rows.is_empty() {
        terms::Entity::insert_many(rows)
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// Brings a book's grams in the index, and the counts of books per gram,
/// from `old` (empty for a new book) to `new`. `old` is what
/// [`search::index`] made of the book before the change: every change of
/// how it makes grams comes with a migration that indexes every book again.
pub async fn index_book<C: ConnectionTrait>(
    db: &C,
    book_id: &str,
    old: &BTreeSet<String>,
    new: &BTreeSet<String>,
) -> Result<(), DbErr> {
    let gone: Vec<&String> = old.difference(new).collect();
    let added: Vec<&String> = new.difference(old).collect();
    if !gone.is_empty() {
        terms::Entity::delete_many()
            .filter(terms::Column::BookId.eq(book_id))
            .filter(terms::Column::Term.is_in(gone.iter().copied()))
            .exec(db)
            .await?;
    }
    insert_terms(db, book_id, added.iter().copied()).await?;
    // One statement for every count, in the order of the grams, so that two
    // writers lock the rows they share in the same order.
    let deltas: BTreeMap<&String, i64> = gone
        .into_iter()
        .map(|g| (g, -1))
        .chain(added.into_iter().map(|g| (g, 1)))
        .collect();
    if deltas.is_empty() {
        return Ok(());
    }
    term_counts::Entity::insert_many(deltas.into_iter().map(|(term, delta)| {
        term_counts::ActiveModel {
            term: Set(term.clone()),
            books: Set(delta),
        }
    }))
    .on_conflict(
        OnConflict::column(term_counts::Column::Term)
            .value(
                term_counts::Column::Books,
                Expr::col((term_counts::Entity, term_counts::Column::Books)).add(Expr::col((
                    Alias::new("excluded"),
                    term_counts::Column::Books,
                ))),
            )
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Counts the books of every gram again from the index.
pub async fn recount_terms<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    db.execute_unprepared("DELETE FROM book_term_counts")
        .await?;
    db.execute_unprepared(
        "INSERT INTO book_term_counts (term, books) \
         SELECT term, COUNT(*) FROM book_terms GROUP BY term",
    )
    .await?;
    Ok(())
}

/// The books with a gram the probe asks for.
fn found_by(probe: &Probe) -> SelectStatement {
    let mut select = Query::select();
    select.column(terms::Column::BookId).from(terms::Entity);
    match probe {
        Probe::Gram(gram) => select.and_where(terms::Column::Term.eq(gram)),
        Probe::Prefix(prefix) => {
            select.distinct().and_where(terms::Column::Term.gte(prefix));
            match search::after_prefix(prefix) {
                Some(end) => select.and_where(terms::Column::Term.lt(end)),
                None => &mut select,
            }
        }
    };
    select
}

/// At most this many candidates are read first and then looked up by id.
/// Given more, the books are searched in one query, and the database may
/// rather read through them all.
const FEW_CANDIDATES: i64 = 500;

/// The plan for a query's words, from the counts of books per gram, and the
/// count of its rarest probe.
async fn plan<C: ConnectionTrait>(db: &C, query: &search::Query) -> Result<(Plan, i64), DbErr> {
    let probes = query.probes();
    let grams: Vec<&String> = probes
        .iter()
        .filter_map(|p| match p {
            Probe::Gram(g) => Some(g),
            Probe::Prefix(_) => None,
        })
        .collect();
    let mut books: BTreeMap<Probe, i64> = BTreeMap::new();
    if !grams.is_empty() {
        let counted: Vec<(String, i64)> = term_counts::Entity::find()
            .select_only()
            .columns([term_counts::Column::Term, term_counts::Column::Books])
            .filter(term_counts::Column::Term.is_in(grams))
            .into_tuple()
            .all(db)
            .await?;
        books.extend(counted.into_iter().map(|(g, n)| (Probe::Gram(g), n)));
    }
    for probe in &probes {
        if let Probe::Prefix(prefix) = probe {
            let mut range = term_counts::Entity::find()
                .select_only()
                .column(term_counts::Column::Books)
                .filter(term_counts::Column::Term.gte(prefix));
            if let Some(end) = search::after_prefix(prefix) {
                range = range.filter(term_counts::Column::Term.lt(end));
            }
            let counts: Vec<i64> = range.into_tuple().all(db).await?;
            books.insert(probe.clone(), counts.iter().sum());
        }
    }
    let count = |p: &Probe| books.get(p).copied().unwrap_or(0);
    let plan = search::plan(query, count);
    let fewest = match &plan {
        Plan::Probes(probes) => probes.first().map_or(0, count),
        Plan::Nothing | Plan::Scan => 0,
    };
    Ok((plan, fewest))
}

/// The books matching `query`, in [`Position`] order, from just after
/// `after`: the candidates the index gives (by ISBN, or by the plan's
/// probes), whose text has every word. A few candidates are read first and
/// the books then looked up by id, so that the database cannot take a
/// misjudged scan of every book instead (PostgreSQL's planner cannot know
/// how rare a gram is).
pub async fn search<C: ConnectionTrait>(
    db: &C,
    query: &search::Query,
    after: Option<&Position>,
    limit: u64,
) -> Result<Vec<books::Model>, DbErr> {
    let mut select = books::Entity::find();
    for isbn in query.isbns() {
        select = select.filter(books::Column::Isbn.eq(isbn));
    }
    if query.isbns().is_empty() {
        match plan(db, query).await? {
            (Plan::Nothing, _) => return Ok(Vec::new()),
            (Plan::Scan, _) => {}
            (Plan::Probes(probes), fewest) if fewest <= FEW_CANDIDATES => {
                let mut every = found_by(&probes[0]);
                for probe in &probes[1..] {
                    every.union(UnionType::Intersect, found_by(probe));
                }
                let mut ids = Vec::new();
                for row in db.query_all(&every).await? {
                    ids.push(row.try_get_by_index::<String>(0)?);
                }
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                select = select.filter(books::Column::BookId.is_in(ids));
            }
            (Plan::Probes(probes), _) => {
                for probe in &probes {
                    select = select.filter(books::Column::BookId.in_subquery(found_by(probe)));
                }
            }
        }
    }
    for word in query.words() {
        select = select.filter(books::Column::SearchText.like(like_containing(word)));
    }
    let title = || Expr::col((books::Entity, books::Column::TitleKey));
    let title_hits = query
        .words()
        .iter()
        .map(|w| -> Expr {
            Expr::case(title().like(like_containing(w)), 1)
                .finally(0)
                .into()
        })
        .reduce(|a, b| a.add(b))
        .unwrap_or_else(|| Expr::val(0));
    if let Some(p) = after {
        let later_in_title_order = Condition::any().add(title().gt(&p.title_key)).add(
            Condition::all()
                .add(title().eq(&p.title_key))
                .add(books::Column::BookId.gt(&p.book_id)),
        );
        select = select.filter(
            Condition::any()
                .add(title_hits.clone().lt(p.title_hits))
                .add(
                    Condition::all()
                        .add(title_hits.clone().eq(p.title_hits))
                        .add(later_in_title_order),
                ),
        );
    }
    select
        .order_by(title_hits, Order::Desc)
        .order_by(title(), Order::Asc)
        .order_by_asc(books::Column::BookId)
        .limit(limit)
        .all(db)
        .await
}

struct CreateBooks;

impl MigrationName for CreateBooks {
    fn name(&self) -> &str {
        "m0001_create_books"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateBooks {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, books::Entity).await
    }
}

/// Catalogue search and ISBN-13: the title key, the revision and the search
/// terms, with every book indexed again and its ISBN normalised.
struct CatalogueSearch;

impl MigrationName for CatalogueSearch {
    fn name(&self) -> &str {
        "m0003_catalogue_search"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CatalogueSearch {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        // Tables made by m0001 before these columns were in the entity.
        for (column, kind, default) in [("title_key", "TEXT", "''"), ("revision", "BIGINT", "0")] {
            if !manager.has_column("books", column).await? {
                db.execute_unprepared(&format!(
                    "ALTER TABLE books ADD COLUMN {column} {kind} NOT NULL DEFAULT {default}"
                ))
                .await?;
            }
        }
        if postgres {
            db.execute_unprepared(
                r#"ALTER TABLE books ALTER COLUMN title_key TYPE TEXT COLLATE "C""#,
            )
            .await?;
            db.execute_unprepared(
                r#"CREATE TABLE IF NOT EXISTS book_terms (
                     term TEXT COLLATE "C" NOT NULL,
                     book_id TEXT NOT NULL,
                     PRIMARY KEY (term, book_id))"#,
            )
            .await?;
        } else {
            db.execute_unprepared(
                "CREATE TABLE IF NOT EXISTS book_terms (
                   term TEXT NOT NULL,
                   book_id TEXT NOT NULL,
                   PRIMARY KEY (term, book_id)) WITHOUT ROWID",
            )
            .await?;
        }
        db.execute_unprepared(if postgres {
            r#"CREATE TABLE IF NOT EXISTS book_term_counts (
                 term TEXT COLLATE "C" PRIMARY KEY,
                 books BIGINT NOT NULL)"#
        } else {
            "CREATE TABLE IF NOT EXISTS book_term_counts (
               term TEXT PRIMARY KEY,
               books BIGINT NOT NULL) WITHOUT ROWID"
        })
        .await?;
        db.execute_unprepared("CREATE INDEX IF NOT EXISTS idx_books_isbn ON books (isbn)")
            .await?;
        index_every_book(db).await
    }
}

/// Normalises every book's ISBN to ISBN-13 and indexes the book again: its
/// title key, search text and grams, then the counts. Reads only the
/// columns of m0001, so that later columns cannot break it.
async fn index_every_book<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    db.execute_unprepared("DELETE FROM book_terms").await?;
    let rows: Vec<(String, Option<String>, String, String)> = books::Entity::find()
        .select_only()
        .columns([
            books::Column::BookId,
            books::Column::Isbn,
            books::Column::Title,
            books::Column::Author,
        ])
        .into_tuple()
        .all(db)
        .await?;
    for (book_id, isbn, title, author) in rows {
        // Every stored ISBN passed the same checksum when it was registered.
        let isbn = isbn.map(|i| Isbn::parse(&i).map_or(i, |i| i.as_str().to_owned()));
        let indexed = search::index(&title, &author, isbn.as_deref());
        books::Entity::update_many()
            .col_expr(books::Column::Isbn, Expr::val(isbn))
            .col_expr(books::Column::TitleKey, Expr::val(indexed.title_key))
            .col_expr(books::Column::SearchText, Expr::val(indexed.search_text))
            .filter(books::Column::BookId.eq(&book_id))
            .exec(db)
            .await?;
        insert_terms(db, &book_id, &indexed.terms).await?;
    }
    recount_terms(db).await
}

/// Items: a copy with a barcode, and the barcode sequence. Books
/// registered before get their items from [`crate::items::backfill`] at
/// start, with an event, so that the lending desk learns them too.
struct Items;

impl MigrationName for Items {
    fn name(&self) -> &str {
        "m0004_items"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Items {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, items::Entity).await?;
        create_entity_table(manager, sequences::Entity).await?;
        if !manager.has_column("books", "circulating_copies").await? {
            let db = manager.get_connection();
            db.execute_unprepared(
                "ALTER TABLE books ADD COLUMN circulating_copies INTEGER NOT NULL DEFAULT 0",
            )
            .await?;
            db.execute_unprepared("UPDATE books SET circulating_copies = total_copies")
                .await?;
        }
        Ok(())
    }
}

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(PlumbingTables),
            Box::new(CreateBooks),
            Box::new(OutboxTraceparent),
            Box::new(CatalogueSearch),
            Box::new(Items),
            Box::new(rentalbook_plumbing::merged::MergedBooks),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rentalbook_plumbing::db::Db;

    /// A catalogue as it was before ISBN-13 and search terms: ISBNs as
    /// typed (less the hyphens), no title key, no revision, no terms.
    async fn old_catalogue() -> Db {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        Migrator::up(db.conn(), Some(3)).await.unwrap();
        let conn = db.conn();
        for ddl in [
            "ALTER TABLE books DROP COLUMN title_key",
            "ALTER TABLE books DROP COLUMN revision",
            "ALTER TABLE books DROP COLUMN circulating_copies",
        ] {
            conn.execute_unprepared(ddl).await.unwrap();
        }
        for (id, isbn, title, author) in [
            ("b1", "'080442957X'", "Physics Handbook", "Anonymous"),
            (
                "b2",
                "'9780804429573'",
                "Physics Handbook (2nd)",
                "Anonymous",
            ),
            ("b3", "NULL", "소년이 온다", "한강"),
            ("b4", "'0807083690'", "Kindred", "Octavia E. Butler"),
        ] {
            conn.execute_unprepared(&format!(
                "INSERT INTO books (book_id, isbn, title, author, search_text, total_copies, \
                 held_copies, on_loan_copies, waiting, availability_seq, registered_at) \
                 VALUES ('{id}', {isbn}, '{title}', '{author}', lower('{title}'), 1, 0, 0, 0, 0, \
                 '2026-01-01 00:00:00+00:00')"
            ))
            .await
            .unwrap();
        }
        db
    }

    async fn found(db: &Db, query: &str) -> Vec<String> {
        let query = search::Query::parse(query).unwrap().unwrap();
        search(db.conn(), &query, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.book_id)
            .collect()
    }

    #[tokio::test]
    async fn migrating_normalises_every_isbn_and_indexes_every_book() {
        let db = old_catalogue().await;
        Migrator::up(db.conn(), None).await.unwrap();
        let isbns: Vec<(String, Option<String>)> = books::Entity::find()
            .select_only()
            .columns([books::Column::BookId, books::Column::Isbn])
            .order_by_asc(books::Column::BookId)
            .into_tuple()
            .all(db.conn())
            .await
            .unwrap();
        let isbn = |i: &str| Some(i.to_owned());
        assert_eq!(
            isbns,
            [
                ("b1".into(), isbn("9780804429573")),
                ("b2".into(), isbn("9780804429573")),
                ("b3".into(), None),
                ("b4".into(), isbn("9780807083697")),
            ],
            "ISBN-10s converted; the two records of one ISBN both stay"
        );
        assert_eq!(found(&db, "978-0-8070-8369-7").await, ["b4"]);
        assert_eq!(found(&db, "octavia butler").await, ["b4"]);
        assert_eq!(found(&db, "한강").await, ["b3"]);
        assert_eq!(found(&db, "physics 0-8044-2957-X").await, ["b1", "b2"]);
        let b4 = books::Entity::find_by_id("b4")
            .one(db.conn())
            .await
            .unwrap();
        assert_eq!(
            b4.map(|b| (b.title_key, b.revision)),
            Some(("kindred".into(), 0))
        );
    }

    /// A fresh catalogue with these books (title, author, ISBN-13), indexed
    /// as RegisterBook indexes them.
    async fn catalogue(books: &[(String, String, Option<String>)]) -> Db {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        Migrator::up(db.conn(), None).await.unwrap();
        for (n, (title, author, isbn)) in books.iter().enumerate() {
            let book_id = format!("b{n:04}");
            let indexed = search::index(title, author, isbn.as_deref());
            books::Entity::insert(books::ActiveModel {
                book_id: Set(book_id.clone()),
                isbn: Set(isbn.clone()),
                title: Set(title.clone()),
                author: Set(author.clone()),
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
            })
            .exec_without_returning(db.conn())
            .await
            .unwrap();
            index_book(db.conn(), &book_id, &BTreeSet::new(), &indexed.terms)
                .await
                .unwrap();
        }
        db
    }

    /// The counts of books per gram, those at zero left out.
    async fn counts(db: &Db) -> Vec<(String, i64)> {
        term_counts::Entity::find()
            .filter(term_counts::Column::Books.gt(0))
            .order_by_asc(term_counts::Column::Term)
            .all(db.conn())
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.term, c.books))
            .collect()
    }

    /// The database's answer, page by page, is what the rules of
    /// [`search`] say: every match once, in [`Position`] order, whether the
    /// index gives few candidates, many, or none to narrow by.
    #[tokio::test]
    async fn pages_of_matches_follow_the_ranking_with_few_or_many_candidates() {
        let books: Vec<(String, String, Option<String>)> = (0..900)
            .map(|i| {
                let author = if i % 2 == 0 {
                    "J. R. R. Tolkien"
                } else {
                    "Saga Writer"
                };
                let title = match i % 3 {
                    0 => format!("Saga {i} of the Ring"),
                    1 => format!("The Ring, part {i}"),
                    _ => format!("Volume {i}"),
                };
                (title, author.to_owned(), None)
            })
            .collect();
        let db = catalogue(&books).await;
        let indexed: Vec<(String, search::Indexed)> = books
            .iter()
            .enumerate()
            .map(|(n, (t, a, i))| (format!("b{n:04}"), search::index(t, a, i.as_deref())))
            .collect();
        for raw in [
            "saga",         // in 600 books: one query
            "saga ring",    // two probes of 600: one query
            "ring tolkien", // the rarest probe finds 450: read first
            "volume 12",
            "1", // one character: every book looked through
            "12",
            "zzz",
        ] {
            let query = search::Query::parse(raw).unwrap().unwrap();
            let mut expected: Vec<Position> = indexed
                .iter()
                .filter(|(_, b)| query.matches(&b.search_text, None))
                .map(|(id, b)| query.position(&b.title_key, id))
                .collect();
            expected.sort();
            let mut got = Vec::new();
            let mut after: Option<Position> = None;
            loop {
                let page = search(db.conn(), &query, after.as_ref(), 37).await.unwrap();
                let Some(last) = page.last() else { break };
                after = Some(query.position(&last.title_key, &last.book_id));
                got.extend(
                    page.iter()
                        .map(|b| query.position(&b.title_key, &b.book_id)),
                );
            }
            assert_eq!(got.len(), expected.len(), "{raw:?}: how many");
            assert!(got == expected, "{raw:?}: the order");
        }
    }

    #[tokio::test]
    async fn a_correction_moves_the_book_in_the_index_and_its_counts() {
        let db = catalogue(&[
            ("Kindrid".into(), "Octavia Butler".into(), None),
            ("Dune".into(), "Frank Herbert".into(), None),
        ])
        .await;
        let before = search::index("Kindrid", "Octavia Butler", None);
        let after = search::index("Kindred", "Octavia E. Butler", None);
        index_book(db.conn(), "b0000", &before.terms, &after.terms)
            .await
            .unwrap();
        let maintained = counts(&db).await;
        recount_terms(db.conn()).await.unwrap();
        assert_eq!(
            maintained,
            counts(&db).await,
            "counts kept right one by one"
        );
        let grams: Vec<String> = terms::Entity::find()
            .filter(terms::Column::BookId.eq("b0000"))
            .all(db.conn())
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.term)
            .collect();
        assert_eq!(grams, after.terms.into_iter().collect::<Vec<_>>());
    }
}
