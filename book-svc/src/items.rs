//! Items: the copies of a book, each with a barcode unique in the library.
//!
//! Every item is made under one lock (`barcodes`), so that a given barcode
//! is checked and a generated one drawn from the sequence without a race
//! between replicas; the unique index on `items.barcode` is the last line of
//! defence. Generated barcodes are eight digits from the `barcode` sequence,
//! skipping any a librarian gave by hand.

use std::time::Duration;

use rentalbook_plumbing::db::{Db, WriteTx};
use rentalbook_plumbing::error::{Reason, Refusal, ServiceResult};
use rentalbook_plumbing::ids::Id;
use rentalbook_plumbing::outbox;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::{self as events, ItemsRegistered, envelope::Body};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use tokio_util::sync::CancellationToken;

use crate::domain::{Barcode, NewItems};
use crate::grpc::PRODUCER;
use crate::store::{books, items, sequences};

const BARCODE_SEQUENCE: &str = "barcode";

/// Makes the items of `plan` for a book, in the caller's transaction.
/// ALREADY_EXISTS (BARCODE_TAKEN) when a given barcode is in use.
pub async fn create(
    tx: &WriteTx,
    book_id: &str,
    plan: &NewItems,
    now: Timestamp,
) -> ServiceResult<Vec<items::Model>> {
    tx.lock("barcodes", "").await?;
    let barcodes = if plan.given.is_empty() {
        generate(tx, plan.count).await?
    } else {
        let wanted: Vec<&str> = plan.given.iter().map(Barcode::as_str).collect();
        if let Some(taken) = items::Entity::find()
            .filter(items::Column::Barcode.is_in(wanted))
            .order_by_asc(items::Column::Barcode)
            .one(&**tx)
            .await?
        {
            return Err(Refusal::already_exists(
                Reason::BarcodeTaken,
                format!(
                    "barcode {} is already on another copy (of book {})",
                    taken.barcode, taken.book_id
                ),
            )
            .with("barcode", &taken.barcode)
            .with("bookId", &taken.book_id)
            .into());
        }
        plan.given.clone()
    };
    let rows: Vec<items::ActiveModel> = barcodes
        .iter()
        .map(|b| items::ActiveModel {
            item_id: Set(Id::new().to_string()),
            book_id: Set(book_id.to_owned()),
            barcode: Set(b.as_str().to_owned()),
            registered_at: Set(now),
        })
        .collect();
    let made: Vec<items::Model> = rows
        .iter()
        .map(|am| items::Model {
            item_id: am.item_id.clone().unwrap(),
            book_id: am.book_id.clone().unwrap(),
            barcode: am.barcode.clone().unwrap(),
            registered_at: now,
        })
        .collect();
    // A few hundred rows per statement keeps within SQLite's limit of
    // bound values.
    for chunk in rows.chunks(200) {
        items::Entity::insert_many(chunk.to_vec())
            .exec(&**tx)
            .await?;
    }
    Ok(made)
}

/// `count` barcodes from the sequence, skipping those in use.
async fn generate(tx: &WriteTx, count: i32) -> Result<Vec<Barcode>, DbErr> {
    let start = sequences::Entity::find_by_id(BARCODE_SEQUENCE.to_owned())
        .one(&**tx)
        .await?;
    let mut next = start.as_ref().map_or(1, |s| s.next);
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while out.len() < usize::try_from(count).unwrap_or(0) {
        let wanted = usize::try_from(count).unwrap_or(0) - out.len();
        let candidates: Vec<Barcode> = (next..next + wanted as i64)
            .map(Barcode::generated)
            .collect();
        next += wanted as i64;
        let taken: Vec<String> = items::Entity::find()
            .select_only()
            .column(items::Column::Barcode)
            .filter(items::Column::Barcode.is_in(candidates.iter().map(Barcode::as_str)))
            .into_tuple()
            .all(&**tx)
            .await?;
        out.extend(
            candidates
                .into_iter()
                .filter(|b| !taken.iter().any(|t| t == b.as_str())),
        );
    }
    match start {
        Some(_) => {
            sequences::Entity::update_many()
                .col_expr(sequences::Column::Next, Expr::val(next))
                .filter(sequences::Column::Name.eq(BARCODE_SEQUENCE))
                .exec(&**tx)
                .await?;
        }
        None => {
            sequences::ActiveModel {
                name: Set(BARCODE_SEQUENCE.to_owned()),
                next: Set(next),
            }
            .insert(&**tx)
            .await?;
        }
    }
    Ok(out)
}

/// A book's items in barcode order.
pub async fn of_book<C: ConnectionTrait>(
    db: &C,
    book_id: &str,
) -> Result<Vec<items::Model>, DbErr> {
    items::Entity::find()
        .filter(items::Column::BookId.eq(book_id))
        .order_by_asc(items::Column::Barcode)
        .all(db)
        .await
}

pub fn to_event(items: &[items::Model]) -> Vec<events::Item> {
    items
        .iter()
        .map(|i| events::Item {
            item_id: i.item_id.clone(),
            barcode: i.barcode.clone(),
        })
        .collect()
}

/// Gives the copies of books registered before items existed their items,
/// each book in a transaction of its own with an ItemsRegistered event;
/// books in registration order, so generated barcodes follow it. Returns
/// how many books it gave items to.
pub async fn backfill(db: &Db) -> ServiceResult<usize> {
    let mut done = 0;
    loop {
        let short: Vec<(String, i32)> = books::Entity::find()
            .select_only()
            .columns([books::Column::BookId, books::Column::TotalCopies])
            .filter(Expr::cust(
                "books.total_copies > (SELECT COUNT(*) FROM items WHERE items.book_id = books.book_id)",
            ))
            .order_by_asc(books::Column::BookId)
            .limit(100)
            .into_tuple()
            .all(db.conn())
            .await?;
        if short.is_empty() {
            return Ok(done);
        }
        for (book_id, _) in short {
            let mut tx = db.begin().await?;
            tx.lock("book", &book_id).await?;
            let total: i32 = books::Entity::find_by_id(book_id.clone())
                .select_only()
                .column(books::Column::TotalCopies)
                .into_tuple()
                .one(&*tx)
                .await?
                .unwrap_or(0);
            let have = i32::try_from(of_book(&*tx, &book_id).await?.len()).unwrap_or(i32::MAX);
            if total <= have {
                continue;
            }
            let plan = NewItems {
                count: total - have,
                given: Vec::new(),
            };
            let now = time::now();
            let made = create(&tx, &book_id, &plan, now).await?;
            outbox::stage(
                &mut tx,
                PRODUCER,
                now,
                Body::ItemsRegistered(ItemsRegistered {
                    book_id: book_id.clone(),
                    items: to_event(&made),
                }),
            )
            .await?;
            tx.commit().await?;
            done += 1;
        }
    }
}

/// [`backfill`] at start, tried again while the database is away.
pub async fn backfill_at_start(db: Db, stop: CancellationToken) {
    let mut wait = Duration::from_millis(200);
    loop {
        match backfill(&db).await {
            Ok(0) => return,
            Ok(n) => {
                tracing::info!(
                    books = n,
                    "gave items with barcodes to the copies of older books"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "giving older books' copies items failed; trying again");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use rentalbook_plumbing::schema::outbox;
    use rentalbook_proto::events::v1::Envelope;
    use sea_orm_migration::MigratorTrait;

    use crate::store::Migrator;

    /// A catalogue as today's code before items made it: three books, one
    /// of them with three copies, and a given barcode that the generated
    /// ones must skip.
    #[tokio::test]
    async fn older_books_get_items_in_registration_order_with_an_event_each() {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        Migrator::up(db.conn(), Some(4)).await.unwrap();
        db.conn()
            .execute_unprepared("ALTER TABLE books DROP COLUMN circulating_copies")
            .await
            .unwrap();
        for (id, copies) in [("b2", 3), ("b1", 1), ("b3", 2)] {
            db.conn()
                .execute_unprepared(&format!(
                    "INSERT INTO books (book_id, isbn, title, author, title_key, search_text, \
                     total_copies, held_copies, on_loan_copies, waiting, availability_seq, \
                     registered_at, revision) VALUES ('{id}', NULL, 'T {id}', 'A', 't {id}', \
                     't {id}', {copies}, 0, 0, 0, 0, '2026-01-01 00:00:00+00:00', 0)"
                ))
                .await
                .unwrap();
        }
        Migrator::up(db.conn(), None).await.unwrap();
        // b3 already had one copy with a barcode of the library's own.
        let tx = db.begin().await.unwrap();
        let plan = NewItems {
            count: 1,
            given: vec![Barcode::parse("00000002").unwrap()],
        };
        create(&tx, "b3", &plan, time::now()).await.unwrap();
        tx.commit().await.unwrap();

        assert_eq!(backfill(&db).await.unwrap(), 3);
        assert_eq!(
            backfill(&db).await.unwrap(),
            0,
            "a second start adds nothing"
        );
        let barcodes = |book: &'static str| {
            let db = db.clone();
            async move {
                of_book(db.conn(), book)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|i| i.barcode)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(barcodes("b1").await, ["00000001"]);
        assert_eq!(barcodes("b2").await, ["00000003", "00000004", "00000005"]);
        assert_eq!(barcodes("b3").await, ["00000002", "00000006"]);

        let events: Vec<ItemsRegistered> = outbox::Entity::find()
            .order_by_asc(outbox::Column::Id)
            .all(db.conn())
            .await
            .unwrap()
            .into_iter()
            .map(|row| {
                assert_eq!(row.subject, "book.items_registered");
                match Envelope::decode(row.payload.as_slice()).unwrap().body {
                    Some(Body::ItemsRegistered(e)) => e,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        let told: Vec<(&str, usize)> = events
            .iter()
            .map(|e| (e.book_id.as_str(), e.items.len()))
            .collect();
        assert_eq!(told, [("b1", 1), ("b2", 3), ("b3", 1)]);
    }
}
