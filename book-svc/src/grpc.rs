//! BookService over gRPC: parse the request, check the caller, run the change
//! in one transaction with its event.

use std::sync::Arc;

use rentalbook_plumbing::auth::Caller;
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::error::ServiceResult;
use rentalbook_plumbing::idempotency::IdempotencyKey;
use rentalbook_plumbing::ids::{self, Id};
use rentalbook_plumbing::{outbox, time};
use rentalbook_proto::book::v1::{
    AddCopiesRequest, Book, GetBookRequest, ListBooksRequest, ListBooksResponse,
    RegisterBookRequest, book_service_server::BookService,
};
use rentalbook_proto::events::v1::{BookRegistered, CopiesAdded, envelope::Body};
use sea_orm::sea_query::ExprTrait;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use tonic::{Request, Response, Status};

use crate::cache::BookCache;
use crate::domain::{self, Copies, NewBook};
use crate::store::books;

pub const PRODUCER: &str = "book-svc";

pub struct Catalogue {
    pub db: Db,
    pub cache: Arc<BookCache>,
}

fn to_proto(b: books::Model) -> Book {
    let copies = Copies {
        total: b.total_copies,
        held: b.held_copies,
        on_loan: b.on_loan_copies,
    };
    Book {
        book_id: b.book_id,
        isbn: b.isbn.unwrap_or_default(),
        title: b.title,
        author: b.author,
        total_copies: b.total_copies,
        status: copies.status() as i32,
        free_copies: copies.free(),
        held_copies: b.held_copies,
        on_loan_copies: b.on_loan_copies,
        waiting: b.waiting,
        registered_at: Some(time::to_proto(b.registered_at)),
    }
}

fn not_found(book_id: &Id) -> Status {
    Status::not_found(format!("no book with id {book_id} in the catalogue"))
}

impl Catalogue {
    async fn register(&self, caller: Caller, req: RegisterBookRequest) -> ServiceResult<Book> {
        caller.require_librarian("register books")?;
        let book = NewBook::parse(&req.isbn, &req.title, &req.author, req.total_copies)
            .map_err(Status::invalid_argument)?;
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
        let now = time::now();
        let book_id = Id::new().to_string();
        let row = books::ActiveModel {
            book_id: Set(book_id.clone()),
            isbn: Set(book.isbn.as_ref().map(|i| i.as_str().to_owned())),
            title: Set(book.title.clone()),
            author: Set(book.author.clone()),
            search_text: Set(domain::search_text(&book)),
            total_copies: Set(book.total_copies),
            held_copies: Set(0),
            on_loan_copies: Set(0),
            waiting: Set(0),
            availability_seq: Set(0),
            registered_at: Set(now),
        }
        .insert(&*tx)
        .await?;
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
            }),
        )
        .await?;
        let answer = to_proto(row);
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        Ok(answer)
    }

    async fn add_copies(&self, caller: Caller, req: AddCopiesRequest) -> ServiceResult<Book> {
        caller.require_librarian("add copies")?;
        let book_id = Id::parse_field("book_id", &req.book_id)?;
        domain::copies("copies", req.copies).map_err(Status::invalid_argument)?;
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
        tx.lock("book", &book_id.to_string()).await?;
        let book = books::Entity::find_by_id(book_id.to_string())
            .one(&*tx)
            .await?
            .ok_or_else(|| not_found(&book_id))?;
        let total = domain::add_copies(book.total_copies, req.copies)
            .map_err(Status::failed_precondition)?;
        let mut active = book.into_active_model();
        active.total_copies = Set(total);
        let row = active.update(&*tx).await?;
        outbox::stage(
            &mut tx,
            PRODUCER,
            time::now(),
            Body::CopiesAdded(CopiesAdded {
                book_id: row.book_id.clone(),
                added: req.copies,
                total_copies: total,
            }),
        )
        .await?;
        let answer = to_proto(row);
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
        let book = books::Entity::find_by_id(key)
            .one(self.db.conn())
            .await?
            .ok_or_else(|| not_found(&book_id))?;
        self.cache.put(generation, book.clone());
        Ok(to_proto(book))
    }

    async fn list(&self, req: ListBooksRequest) -> ServiceResult<ListBooksResponse> {
        let page_size = ids::page_size(req.page_size)?;
        let query = req.query.trim().to_lowercase();
        if query.chars().count() > 300 {
            return Err(Status::invalid_argument("query must be at most 300 characters").into());
        }
        let mut select = books::Entity::find().order_by_asc(books::Column::BookId);
        if let Some(after) = ids::page_token(&req.page_token)? {
            select = select.filter(books::Column::BookId.gt(after.to_string()));
        }
        if !query.is_empty() {
            // The member's text, matched literally.
            select = select.filter(
                sea_orm::sea_query::Expr::col(books::Column::SearchText)
                    .like(rentalbook_plumbing::db::like_containing(&query)),
            );
        }
        let mut rows = select.limit(page_size + 1).all(self.db.conn()).await?;
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
}
