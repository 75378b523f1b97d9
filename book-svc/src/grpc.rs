//! BookService over gRPC: parse the request, check the caller, run the change
//! in one transaction with its event.

use std::sync::Arc;

use rentalbook_plumbing::auth::Caller;
use rentalbook_plumbing::db::{Db, WriteTx};
use rentalbook_plumbing::error::{Reason, Refusal, ServiceResult};
use rentalbook_plumbing::idempotency::IdempotencyKey;
use rentalbook_plumbing::ids::{self, Id};
use rentalbook_plumbing::{merged, outbox, time};
use rentalbook_proto::book::v1::{
    AddCopiesRequest, Book, GetBookRequest, Item, ListBooksRequest, ListBooksResponse,
    MergeBooksRequest, RegisterBookRequest, UpdateBookRequest, book_service_server::BookService,
};
use rentalbook_proto::events::v1::{BookRegistered, BookUpdated, CopiesAdded, envelope::Body};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use tonic::{Request, Response, Status};

use crate::cache::BookCache;
use crate::domain::{self, Copies, CopiesRefusal, Correction, Invalid, Isbn, NewBook, NewItems};
use crate::items;
use crate::search::{self, Query};
use crate::store::{self, books};

pub const PRODUCER: &str = "book-svc";

pub struct Catalogue {
    pub db: Db,
    pub cache: Arc<BookCache>,
}

pub(crate) fn to_proto(b: books::Model) -> Book {
    let copies = Copies {
        total: b.circulating_copies,
        held: b.held_copies,
        on_loan: b.on_loan_copies,
    };
    Book {
        book_id: b.book_id,
        isbn: b.isbn.unwrap_or_default(),
        title: b.title,
        author: b.author,
        total_copies: b.circulating_copies,
        status: copies.status() as i32,
        free_copies: copies.free(),
        held_copies: b.held_copies,
        on_loan_copies: b.on_loan_copies,
        waiting: b.waiting,
        registered_at: Some(time::to_proto(b.registered_at)),
        items: Vec::new(),
    }
}

pub(crate) fn not_found(book_id: &Id) -> Refusal {
    Refusal::not_found(
        Reason::BookNotFound,
        format!("no book with id {book_id} in the catalogue"),
    )
    .with("bookId", book_id)
}

/// The book with its items, as RegisterBook and AddCopies answer it.
pub(crate) fn with_items(mut book: Book, items: &[store::items::Model]) -> Book {
    book.items = items
        .iter()
        .map(|i| Item {
            item_id: i.item_id.clone(),
            barcode: i.barcode.clone(),
        })
        .collect();
    book.items.sort_by(|a, b| a.barcode.cmp(&b.barcode));
    book
}

pub(crate) fn invalid(e: Invalid) -> Refusal {
    Refusal::invalid_field(e.field, e.message)
}

/// A book under its lock, for a change; a merged book's id leads to the
/// book it was merged into.
async fn locked_book(tx: &WriteTx, book_id: &Id) -> ServiceResult<books::Model> {
    let id = merged::resolve(&**tx, &book_id.to_string()).await?;
    tx.lock("book", &id).await?;
    Ok(books::Entity::find_by_id(id)
        .one(&**tx)
        .await?
        .ok_or_else(|| not_found(book_id))?)
}

/// ALREADY_EXISTS naming the book that has the ISBN, if one has; the oldest
/// when books registered before ISBNs were checked share it.
async fn refuse_a_second_isbn<C: ConnectionTrait>(db: &C, isbn: &Isbn) -> ServiceResult<()> {
    let holder = books::Entity::find()
        .filter(books::Column::Isbn.eq(isbn.as_str()))
        .order_by_asc(books::Column::BookId)
        .one(db)
        .await?;
    match holder {
        None => Ok(()),
        Some(b) => Err(Refusal::already_exists(
            Reason::DuplicateIsbn,
            format!(
                "ISBN {isbn} is already in the catalogue: \"{}\" by {} (book {}); add copies to it instead",
                b.title, b.author, b.book_id
            ),
        )
        .with("isbn", isbn.as_str())
        .with("bookId", &b.book_id)
        .with("title", &b.title)
        .into()),
    }
}

impl Catalogue {
    async fn register(&self, caller: Caller, req: RegisterBookRequest) -> ServiceResult<Book> {
        caller.require_librarian("register books")?;
        let new_items =
            NewItems::parse("total_copies", req.total_copies, &req.barcodes).map_err(invalid)?;
        let book =
            NewBook::parse(&req.isbn, &req.title, &req.author, new_items.count).map_err(invalid)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "RegisterBook",
            ids::request_id(&req.request_id)?,
            &req,
        );
        let mut tx = self.db.begin().await?;
        if let Some(key) = &key
            && let Some(done) = key.recall::<Book>(&tx).await?
        {
            return Ok(done);
        }
        if let Some(isbn) = &book.isbn {
            // Two librarians registering one ISBN at once: the second waits
            // for the first to commit, then finds its book.
            tx.lock("isbn", isbn.as_str()).await?;
            refuse_a_second_isbn(&*tx, isbn).await?;
        }
        let now = time::now();
        let book_id = Id::new().to_string();
        let isbn = book.isbn.as_ref().map(Isbn::as_str);
        let indexed = search::index(book.title.as_str(), book.author.as_str(), isbn);
        let row = books::ActiveModel {
            book_id: Set(book_id.clone()),
            isbn: Set(isbn.map(str::to_owned)),
            title: Set(book.title.as_str().to_owned()),
            author: Set(book.author.as_str().to_owned()),
            title_key: Set(indexed.title_key),
            search_text: Set(indexed.search_text),
            total_copies: Set(book.total_copies),
            circulating_copies: Set(book.total_copies),
            held_copies: Set(0),
            on_loan_copies: Set(0),
            waiting: Set(0),
            availability_seq: Set(0),
            registered_at: Set(now),
            revision: Set(0),
        }
        .insert(&*tx)
        .await?;
        store::index_book(&*tx, &book_id, &Default::default(), &indexed.terms).await?;
        let made = items::create(&tx, &book_id, &new_items, now).await?;
        outbox::stage(
            &mut tx,
            PRODUCER,
            now,
            Body::BookRegistered(BookRegistered {
                book_id,
                isbn: row.isbn.clone().unwrap_or_default(),
                title: row.title.clone(),
                author: row.author.clone(),
                total_copies: row.total_copies,
                items: items::to_event(&made),
            }),
        )
        .await?;
        let answer = with_items(to_proto(row), &made);
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        Ok(answer)
    }

    async fn add_copies(&self, caller: Caller, req: AddCopiesRequest) -> ServiceResult<Book> {
        caller.require_librarian("add copies")?;
        let book_id = Id::parse_field("book_id", &req.book_id)?;
        let new_items = NewItems::parse("copies", req.copies, &req.barcodes).map_err(invalid)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "AddCopies",
            ids::request_id(&req.request_id)?,
            &req,
        );
        let mut tx = self.db.begin().await?;
        if let Some(key) = &key
            && let Some(done) = key.recall::<Book>(&tx).await?
        {
            return Ok(done);
        }
        let book = locked_book(&tx, &book_id).await?;
        let total =
            domain::add_copies(book.total_copies, new_items.count).map_err(|e| match e {
                CopiesRefusal::Invalid(e) => invalid(e),
                CopiesRefusal::TooMany { .. } => {
                    Refusal::failed_precondition(Reason::TooManyCopies, e.to_string())
                        .with("max", domain::MAX_COPIES)
                }
            })?;
        let circulating = book.circulating_copies + new_items.count;
        let mut active = book.into_active_model();
        active.total_copies = Set(total);
        active.circulating_copies = Set(circulating);
        let row = active.update(&*tx).await?;
        let now = time::now();
        let made = items::create(&tx, &row.book_id, &new_items, now).await?;
        outbox::stage(
            &mut tx,
            PRODUCER,
            now,
            Body::CopiesAdded(CopiesAdded {
                book_id: row.book_id.clone(),
                added: new_items.count,
                total_copies: total,
                items: items::to_event(&made),
            }),
        )
        .await?;
        let all = items::of_book(&*tx, &row.book_id).await?;
        let answer = with_items(to_proto(row), &all);
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        self.cache.forget(&answer.book_id);
        Ok(answer)
    }

    async fn get(&self, req: GetBookRequest) -> ServiceResult<Book> {
        let book_id = Id::parse_field("book_id", &req.book_id)?;
        let key = book_id.to_string();
        if let Some(book) = self.cache.get(&key) {
            return Ok(to_proto(book));
        }
        let generation = self.cache.generation();
        let found = match books::Entity::find_by_id(key.clone())
            .one(self.db.conn())
            .await?
        {
            Some(book) => Some(book),
            // A merged book's id leads to the book it was merged into.
            None => {
                let into = merged::resolve(self.db.conn(), &key).await?;
                books::Entity::find_by_id(into).one(self.db.conn()).await?
            }
        };
        let book = found.ok_or_else(|| not_found(&book_id))?;
        self.cache.put(generation, book.clone());
        Ok(to_proto(book))
    }

    async fn update(&self, caller: Caller, req: UpdateBookRequest) -> ServiceResult<Book> {
        caller.require_librarian("correct books")?;
        let book_id = Id::parse_field("book_id", &req.book_id)?;
        let correction = Correction::parse(&req.title, &req.author).map_err(invalid)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "UpdateBook",
            ids::request_id(&req.request_id)?,
            &req,
        );
        let mut tx = self.db.begin().await?;
        if let Some(key) = &key
            && let Some(done) = key.recall::<Book>(&tx).await?
        {
            return Ok(done);
        }
        let book = locked_book(&tx, &book_id).await?;
        let row = match correction.applied_to(&book.title, &book.author) {
            // Already so: nothing to record, nothing to tell.
            None => book,
            Some((title, author)) => {
                let before = search::index(&book.title, &book.author, book.isbn.as_deref());
                let indexed = search::index(&title, &author, book.isbn.as_deref());
                let revision = book.revision + 1;
                let mut active = book.into_active_model();
                active.title = Set(title);
                active.author = Set(author);
                active.title_key = Set(indexed.title_key);
                active.search_text = Set(indexed.search_text);
                active.revision = Set(revision);
                let row = active.update(&*tx).await?;
                store::index_book(&*tx, &row.book_id, &before.terms, &indexed.terms).await?;
                outbox::stage(
                    &mut tx,
                    PRODUCER,
                    time::now(),
                    Body::BookUpdated(BookUpdated {
                        book_id: row.book_id.clone(),
                        title: row.title.clone(),
                        author: row.author.clone(),
                        revision,
                    }),
                )
                .await?;
                row
            }
        };
        let answer = to_proto(row);
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        self.cache.forget(&answer.book_id);
        Ok(answer)
    }

    async fn list(&self, req: ListBooksRequest) -> ServiceResult<ListBooksResponse> {
        let page_size = ids::page_size(req.page_size)?;
        let query = Query::parse(&req.query).map_err(|e| Refusal::invalid_field("query", e))?;
        let after = ids::page_token(&req.page_token)?;
        let mut rows = match &query {
            None => {
                // The whole catalogue, in registration order (ids are UUIDv7).
                let mut select = books::Entity::find().order_by_asc(books::Column::BookId);
                if let Some(after) = after {
                    select = select.filter(books::Column::BookId.gt(after.to_string()));
                }
                select.limit(page_size + 1).all(self.db.conn()).await?
            }
            Some(query) => {
                // The token is the last book of the previous page; where it
                // stands for this query is worked out again from its title.
                let after = match after {
                    None => None,
                    Some(id) => {
                        let book = books::Entity::find_by_id(id.to_string())
                            .one(self.db.conn())
                            .await?
                            .ok_or_else(|| {
                                Refusal::invalid_argument(
                                    Reason::InvalidPageToken,
                                    "page_token is not one this service gave out",
                                )
                            })?;
                        Some(query.position(&book.title_key, &book.book_id))
                    }
                };
                store::search(self.db.conn(), query, after.as_ref(), page_size + 1).await?
            }
        };
        let next_page_token = if rows.len() as u64 > page_size {
            rows.truncate(page_size as usize);
            rows.last().map(|b| b.book_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListBooksResponse {
            books: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl BookService for Catalogue {
    async fn register_book(
        &self,
        request: Request<RegisterBookRequest>,
    ) -> Result<Response<Book>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.register(caller, request.into_inner()).await?,
        ))
    }

    async fn add_copies(
        &self,
        request: Request<AddCopiesRequest>,
    ) -> Result<Response<Book>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            Catalogue::add_copies(self, caller, request.into_inner()).await?,
        ))
    }

    async fn get_book(&self, request: Request<GetBookRequest>) -> Result<Response<Book>, Status> {
        Caller::of(&request)?;
        Ok(Response::new(self.get(request.into_inner()).await?))
    }

    async fn list_books(
        &self,
        request: Request<ListBooksRequest>,
    ) -> Result<Response<ListBooksResponse>, Status> {
        Caller::of(&request)?;
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn update_book(
        &self,
        request: Request<UpdateBookRequest>,
    ) -> Result<Response<Book>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.update(caller, request.into_inner()).await?,
        ))
    }

    async fn merge_books(
        &self,
        request: Request<MergeBooksRequest>,
    ) -> Result<Response<Book>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.merge(caller, request.into_inner()).await?,
        ))
    }
}
