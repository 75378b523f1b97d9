//! `rentalbook items export`: every copy's barcode, book by book, as CSV,
//! so that a library can print labels (for the copies given barcodes when
//! items came, too). Reads book-svc's database; changes nothing.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use book_svc::store::{books, items};
use clap::{Args, Subcommand};
use rentalbook_plumbing::db::Db;
use sea_orm::EntityTrait;

#[derive(Args)]
pub struct ItemsArgs {
    #[command(subcommand)]
    command: ItemsCommand,
}

#[derive(Subcommand)]
enum ItemsCommand {
    /// Writes `book_id,isbn,title,author,barcode` for every copy, by title
    /// then barcode, to standard output.
    Export {
        /// The all-in-one's data directory, for its default book.db.
        #[arg(long, env = "RENTALBOOK_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// book-svc's database (default: book.db in the data directory).
        #[arg(long, env = "BOOK_DATABASE_URL")]
        book_database_url: Option<String>,
    },
}

pub async fn run(args: ItemsArgs) -> anyhow::Result<()> {
    let ItemsCommand::Export {
        data_dir,
        book_database_url,
    } = args.command;
    let url = book_database_url
        .unwrap_or_else(|| format!("sqlite://{}?mode=ro", data_dir.join("book.db").display()));
    let db = Db::connect(&url, 2)
        .await
        .with_context(|| format!("opening {url}"))?;
    let stdout = std::io::stdout();
    export(&db, stdout.lock()).await
}

/// Writes the CSV of every item to `out`.
pub async fn export(db: &Db, out: impl Write) -> anyhow::Result<()> {
    let books: HashMap<String, books::Model> = books::Entity::find()
        .all(db.conn())
        .await?
        .into_iter()
        .map(|b| (b.book_id.clone(), b))
        .collect();
    let mut rows = items::Entity::find().all(db.conn()).await?;
    let key = |i: &items::Model| {
        let title = books.get(&i.book_id).map_or("", |b| b.title_key.as_str());
        (title.to_owned(), i.book_id.clone(), i.barcode.clone())
    };
    rows.sort_by_cached_key(key);
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(["book_id", "isbn", "title", "author", "barcode"])?;
    for item in rows {
        let book = books.get(&item.book_id);
        csv.write_record([
            item.book_id.as_str(),
            book.and_then(|b| b.isbn.as_deref()).unwrap_or_default(),
            book.map_or("", |b| b.title.as_str()),
            book.map_or("", |b| b.author.as_str()),
            item.barcode.as_str(),
        ])?;
    }
    csv.flush()?;
    Ok(())
}
