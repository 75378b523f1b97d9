//! MergeBooks: books registered twice become one. The oldest record stays;
//! the others' copies (items) join it and their records leave the catalogue
//! and its search index, their ids leading to it from then on. The lending
//! desk moves queues and loans when it applies the BooksMerged event.

use rentalbook_plumbing::auth::Caller;
use rentalbook_plumbing::error::{Reason, Refusal, ServiceResult};
use rentalbook_plumbing::idempotency::IdempotencyKey;
use rentalbook_plumbing::ids;
use rentalbook_plumbing::{merged, outbox, time};
use rentalbook_proto::book::v1::{Book, MergeBooksRequest};
use rentalbook_proto::events::v1::{BooksMerged, envelope::Body};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, ModelTrait, QueryFilter, Set,
};

use crate::domain::{self, CopiesRefusal};
use crate::grpc::{Catalogue, PRODUCER, invalid, not_found, to_proto, with_items};
use crate::items;
use crate::search;
use crate::store::{self, books, items as stored_items};

impl Catalogue {
    pub(crate) async fn merge(
        &self,
        caller: Caller,
        req: MergeBooksRequest,
    ) -> ServiceResult<Book> {
        caller.require_librarian("merge books")?;
        let given = domain::books_to_merge(&req.book_ids).map_err(invalid)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "MergeBooks",
            ids::request_id(&req.request_id)?,
            &req,
        );
        let mut tx = self.db.begin().await?;
        if let Some(key) = &key
            && let Some(done) = key.recall::<Book>(&tx).await?
        {
            return Ok(done);
        }
        // Ids merged before stand for the book they were merged into.
        let mut wanted: Vec<(String, ids::Id)> = Vec::with_capacity(given.len());
        for id in given {
            let resolved = merged::resolve(&*tx, &id.to_string()).await?;
            if !wanted.iter().any(|(w, _)| *w == resolved) {
                wanted.push((resolved, id));
            }
        }
        // Every book's lock, in one order, so two merges cannot deadlock.
        wanted.sort();
        for (id, _) in &wanted {
            tx.lock("book", id).await?;
        }
        let mut found = Vec::with_capacity(wanted.len());
        for (id, given) in &wanted {
            let book = books::Entity::find_by_id(id.clone())
                .one(&*tx)
                .await?
                .ok_or_else(|| not_found(given))?;
            found.push(book);
        }
        found.sort_by(|a, b| (a.registered_at, &a.book_id).cmp(&(b.registered_at, &b.book_id)));
        let mut found = found.into_iter();
        let Some(kept) = found.next() else {
            return Err(Refusal::invalid_field("book_ids", "no book to merge").into());
        };
        let others: Vec<books::Model> = found.collect();
        if others.is_empty() {
            // Every id given already leads to one book: merged before.
            let all = items::of_book(&*tx, &kept.book_id).await?;
            return Ok(with_items(to_proto(kept), &all));
        }
        let into = kept.book_id.clone();
        let now = time::now();
        let (mut total, mut circulating) = (kept.total_copies, kept.circulating_copies);
        let (mut held, mut on_loan, mut waiting) =
            (kept.held_copies, kept.on_loan_copies, kept.waiting);
        let mut moved = Vec::new();
        for other in &others {
            total = domain::add_copies(total, other.total_copies).map_err(|e| match e {
                CopiesRefusal::Invalid(e) => invalid(e),
                CopiesRefusal::TooMany { .. } => Refusal::failed_precondition(
                    Reason::TooManyCopies,
                    format!(
                        "together these books have more than {} copies, the most a book may have",
                        domain::MAX_COPIES
                    ),
                )
                .with("max", domain::MAX_COPIES),
            })?;
            circulating += other.circulating_copies;
            held += other.held_copies;
            on_loan += other.on_loan_copies;
            waiting += other.waiting;
            moved.extend(items::of_book(&*tx, &other.book_id).await?);
            stored_items::Entity::update_many()
                .col_expr(stored_items::Column::BookId, Expr::val(&into))
                .filter(stored_items::Column::BookId.eq(&other.book_id))
                .exec(&*tx)
                .await?;
            let indexed = search::index(&other.title, &other.author, other.isbn.as_deref());
            store::index_book(&*tx, &other.book_id, &indexed.terms, &Default::default()).await?;
            other.clone().delete(&*tx).await?;
        }
        let merged_ids: Vec<String> = others.iter().map(|b| b.book_id.clone()).collect();
        merged::record(&*tx, &into, &merged_ids).await?;
        // The desk's next snapshot of the merged book (at a book_seq above
        // every one of these books) replaces the sums counted here.
        let mut active = kept.into_active_model();
        active.total_copies = Set(total);
        active.circulating_copies = Set(circulating);
        active.held_copies = Set(held);
        active.on_loan_copies = Set(on_loan);
        active.waiting = Set(waiting);
        let row = active.update(&*tx).await?;
        outbox::stage(
            &mut tx,
            PRODUCER,
            now,
            Body::BooksMerged(BooksMerged {
                into_book_id: into.clone(),
                merged_book_ids: merged_ids.clone(),
                total_copies: total,
                items: items::to_event(&moved),
                merged_by: caller.member.to_string(),
            }),
        )
        .await?;
        let all = items::of_book(&*tx, &into).await?;
        let answer = with_items(to_proto(row), &all);
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        self.cache.forget(&into);
        for id in &merged_ids {
            self.cache.forget(id);
        }
        Ok(answer)
    }
}
