//! MyPageService and StaffService over gRPC.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use rentalbook_plumbing::auth::Caller;
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::error::{Refusal, ServiceError};
use rentalbook_plumbing::ids::{self, Id, MemberId};
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::view::v1::{
    BookQueue, GetBookQueueRequest, GetMyPageRequest, History, HoldShelf, ListDueRequest,
    ListHistoryRequest, ListHoldShelfRequest, ListMembersRequest, ListMembersResponse,
    ListOverdueRequest, Loans, MyPage, WatchMyPageRequest, my_page_service_server::MyPageService,
    staff_service_server::StaffService,
};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::domain::Library;
use crate::watch::{self, StreamSettings, Watchers};
use crate::{pages, staff};

/// What both services share.
#[derive(Clone)]
pub struct Shared {
    pub watchers: Arc<Watchers>,
    pub library: Library,
    /// Ends the open watch streams when the service shuts down.
    pub shutdown: CancellationToken,
    /// How long a watch stream may stay silent before what it last sent is
    /// sent again: proxies on the way (Envoy's stream idle timeout) reset
    /// a stream on which nothing moves.
    pub heartbeat: Duration,
}

impl Shared {
    fn settings(&self, caller: &Caller, settle: Duration, gauge: &'static str) -> StreamSettings {
        StreamSettings {
            shutdown: self.shutdown.clone(),
            heartbeat: self.heartbeat,
            // The stream lives as long as the token it was opened with
            // would be taken: a watcher whose sign-in has expired must sign
            // in again.
            expires: Instant::now().checked_add(caller.valid_for()),
            settle,
            gauge,
        }
    }
}

pub struct MyPages {
    pub shared: Shared,
}

fn db_error(e: sea_orm::DbErr) -> Status {
    ServiceError::from(e).into()
}

#[tonic::async_trait]
impl MyPageService for MyPages {
    async fn get_my_page(
        &self,
        request: Request<GetMyPageRequest>,
    ) -> Result<Response<MyPage>, Status> {
        let caller = Caller::of(&request)?;
        let member = caller.subject(&request.get_ref().member_id)?;
        let (page, _) = pages::build(
            self.shared.watchers.db.conn(),
            member.as_str(),
            time::now(),
            &self.shared.library,
        )
        .await
        .map_err(db_error)?;
        Ok(Response::new(page))
    }

    type WatchMyPageStream = ReceiverStream<Result<MyPage, Status>>;

    async fn watch_my_page(
        &self,
        request: Request<WatchMyPageRequest>,
    ) -> Result<Response<Self::WatchMyPageStream>, Status> {
        let caller = Caller::of(&request)?;
        let member = caller.subject(&request.get_ref().member_id)?.to_string();
        let changes = self.shared.watchers.subscribe(&member);
        let (db, library) = (self.shared.watchers.db.clone(), self.shared.library);
        let read = move |now: Timestamp| {
            let (db, member) = (db.clone(), member.clone());
            async move {
                pages::build(db.conn(), &member, now, &library)
                    .await
                    .map_err(db_error)
            }
        };
        let settings = self
            .shared
            .settings(&caller, Duration::ZERO, "mypage_watch_streams");
        Ok(Response::new(watch::stream(
            changes,
            read,
            pages::same,
            settings,
        )))
    }

    async fn list_history(
        &self,
        request: Request<ListHistoryRequest>,
    ) -> Result<Response<History>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let member = caller.subject(&r.member_id)?;
        let limit = ids::page_size(r.page_size)?;
        let after = ids::page_token(&r.page_token)?.map(|id| id.to_string());
        let mut journeys = pages::history(
            self.shared.watchers.db.conn(),
            member.as_str(),
            after.as_deref(),
            limit + 1,
            time::now(),
            &self.shared.library,
        )
        .await
        .map_err(db_error)?;
        let next_page_token = if journeys.len() as u64 > limit {
            journeys.truncate(limit as usize);
            journeys
                .last()
                .map(|j| j.reservation_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(History {
            member_id: member.to_string(),
            journeys,
            next_page_token,
        }))
    }
}

pub struct Staff {
    pub shared: Shared,
}

/// How long a desk list lets a burst of changes gather before it is read
/// again: a busy desk changes the hold shelf many times a second.
const LIST_SETTLE: Duration = Duration::from_millis(100);

fn shelf_query(r: &ListHoldShelfRequest) -> Result<staff::ShelfQuery, Status> {
    let trapped_since = match &r.trapped_since {
        None => None,
        Some(t) => Some(time::from_proto(t).ok_or_else(|| {
            Status::from(Refusal::invalid_field(
                "trapped_since",
                "trapped_since is not a moment this service can read",
            ))
        })?),
    };
    Ok(staff::ShelfQuery {
        to_pull_only: r.to_pull_only,
        trapped_since,
        after: staff::parse_token(&r.page_token)?,
        limit: ids::page_size(r.page_size)?,
    })
}

fn same_shelf(a: &HoldShelf, b: &HoldShelf) -> bool {
    (&a.holds, &a.next_page_token, a.total, a.to_pull)
        == (&b.holds, &b.next_page_token, b.total, b.to_pull)
}

fn same_loans(a: &Loans, b: &Loans) -> bool {
    (&a.loans, &a.next_page_token, a.total) == (&b.loans, &b.next_page_token, b.total)
}

fn same_queue(a: &BookQueue, b: &BookQueue) -> bool {
    (
        &a.waiting,
        &a.ready,
        &a.next_page_token,
        a.total_waiting,
        &a.next_due_at,
    ) == (
        &b.waiting,
        &b.ready,
        &b.next_page_token,
        b.total_waiting,
        &b.next_due_at,
    )
}

/// A ListDue request, parsed: the day and a page of it.
struct DueQuery {
    day: NaiveDate,
    after: Option<(i64, String)>,
    limit: u64,
}

fn due_query(library: &Library, r: &ListDueRequest, now: Timestamp) -> Result<DueQuery, Status> {
    Ok(DueQuery {
        day: day_of(library, &r.day, now)?,
        after: staff::parse_token(&r.page_token)?,
        limit: ids::page_size(r.page_size)?,
    })
}

/// The loans due on the query's day in the library's time zone.
async fn due_loans(
    db: &Db,
    library: &Library,
    q: &DueQuery,
    now: Timestamp,
) -> Result<Loans, Status> {
    let (start, end) = library.day_bounds(q.day).ok_or_else(|| {
        Status::from(Refusal::invalid_field(
            "day",
            format!("day {} is beyond the dates this library can count", q.day),
        ))
    })?;
    let tx = staff::snapshot(db.conn()).await.map_err(db_error)?;
    let mut loans = staff::loans(
        &tx,
        &staff::LoanFilter::DueWithin(start, end),
        q.after.as_ref(),
        q.limit,
        now,
    )
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    loans.day = q.day.format("%Y-%m-%d").to_string();
    loans.time_zone = library.time_zone.name().to_owned();
    Ok(loans)
}

/// A GetBookQueue request, parsed.
struct QueueQuery {
    book_id: String,
    after: Option<(i64, String)>,
    limit: u64,
}

fn queue_query(r: &GetBookQueueRequest) -> Result<QueueQuery, Status> {
    Ok(QueueQuery {
        book_id: Id::parse_field("book_id", &r.book_id)?.to_string(),
        after: staff::parse_token(&r.page_token)?,
        limit: ids::page_size(r.page_size)?,
    })
}

/// A book's queue, or NOT_FOUND for a book no event has told of.
async fn book_queue(db: &Db, q: &QueueQuery, now: Timestamp) -> Result<BookQueue, Status> {
    let tx = staff::snapshot(db.conn()).await.map_err(db_error)?;
    let queue = staff::book_queue(&tx, &q.book_id, q.after.as_ref(), q.limit, now)
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    queue.ok_or_else(|| {
        Status::from(
            Refusal::not_found(
                rentalbook_plumbing::error::Reason::BookNotFound,
                format!("no book {} is known here yet", q.book_id),
            )
            .with("bookId", &q.book_id),
        )
    })
}

/// A book's queue as the caller may see it: all of it for a librarian; for
/// anyone else only how many wait and when the next copy is expected back,
/// not who waits nor for whom a copy is held.
fn queue_seen_by(librarian: bool, queue: BookQueue) -> BookQueue {
    if librarian {
        return queue;
    }
    BookQueue {
        waiting: Vec::new(),
        ready: Vec::new(),
        next_page_token: String::new(),
        ..queue
    }
}

/// The day of a ListDue request: YYYY-MM-DD, or today in the library.
fn day_of(library: &Library, day: &str, now: Timestamp) -> Result<NaiveDate, Status> {
    if day.is_empty() {
        return Ok(library.day_of(now));
    }
    NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| {
        Refusal::invalid_field(
            "day",
            format!(
                "day `{}` is not a date written YYYY-MM-DD",
                day.chars().take(40).collect::<String>()
            ),
        )
        .into()
    })
}

#[tonic::async_trait]
impl StaffService for Staff {
    async fn list_hold_shelf(
        &self,
        request: Request<ListHoldShelfRequest>,
    ) -> Result<Response<HoldShelf>, Status> {
        Caller::of(&request)?.require_librarian("see the hold shelf")?;
        let q = shelf_query(request.get_ref())?;
        let tx = staff::snapshot(self.shared.watchers.db.conn())
            .await
            .map_err(db_error)?;
        let shelf = staff::hold_shelf(&tx, &q, time::now())
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Response::new(shelf))
    }

    type WatchHoldShelfStream = ReceiverStream<Result<HoldShelf, Status>>;

    async fn watch_hold_shelf(
        &self,
        request: Request<ListHoldShelfRequest>,
    ) -> Result<Response<Self::WatchHoldShelfStream>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_librarian("see the hold shelf")?;
        let q = Arc::new(shelf_query(request.get_ref())?);
        let changes = self.shared.watchers.subscribe(staff::HOLD_SHELF);
        let db = self.shared.watchers.db.clone();
        let read = move |now: Timestamp| {
            let (db, q) = (db.clone(), q.clone());
            async move {
                let tx = staff::snapshot(db.conn()).await.map_err(db_error)?;
                let shelf = staff::hold_shelf(&tx, &q, now).await.map_err(db_error)?;
                tx.commit().await.map_err(db_error)?;
                Ok((shelf, None))
            }
        };
        let settings = self
            .shared
            .settings(&caller, LIST_SETTLE, "staff_watch_streams");
        Ok(Response::new(watch::stream(
            changes, read, same_shelf, settings,
        )))
    }

    async fn list_overdue(
        &self,
        request: Request<ListOverdueRequest>,
    ) -> Result<Response<Loans>, Status> {
        Caller::of(&request)?.require_librarian("see the overdue loans")?;
        let r = request.get_ref();
        let after = staff::parse_token(&r.page_token)?;
        let limit = ids::page_size(r.page_size)?;
        let now = time::now();
        let tx = staff::snapshot(self.shared.watchers.db.conn())
            .await
            .map_err(db_error)?;
        let loans = staff::loans(
            &tx,
            &staff::LoanFilter::DueBefore(now),
            after.as_ref(),
            limit,
            now,
        )
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Response::new(loans))
    }

    type WatchOverdueStream = ReceiverStream<Result<Loans, Status>>;

    async fn watch_overdue(
        &self,
        request: Request<ListOverdueRequest>,
    ) -> Result<Response<Self::WatchOverdueStream>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_librarian("see the overdue loans")?;
        let r = request.get_ref();
        let after = Arc::new(staff::parse_token(&r.page_token)?);
        let limit = ids::page_size(r.page_size)?;
        let changes = self.shared.watchers.subscribe(staff::LOANS);
        let db = self.shared.watchers.db.clone();
        let read = move |now: Timestamp| {
            let (db, after) = (db.clone(), after.clone());
            async move {
                let tx = staff::snapshot(db.conn()).await.map_err(db_error)?;
                let loans = staff::loans(
                    &tx,
                    &staff::LoanFilter::DueBefore(now),
                    after.as_ref().as_ref(),
                    limit,
                    now,
                )
                .await
                .map_err(db_error)?;
                // A loan falling due joins the list by the clock alone.
                let next = staff::next_due(&tx, now).await.map_err(db_error)?;
                tx.commit().await.map_err(db_error)?;
                Ok((loans, next))
            }
        };
        let settings = self
            .shared
            .settings(&caller, LIST_SETTLE, "staff_watch_streams");
        Ok(Response::new(watch::stream(
            changes, read, same_loans, settings,
        )))
    }

    async fn list_due(&self, request: Request<ListDueRequest>) -> Result<Response<Loans>, Status> {
        Caller::of(&request)?.require_librarian("see the loans due")?;
        let q = due_query(&self.shared.library, request.get_ref(), time::now())?;
        let loans = due_loans(
            &self.shared.watchers.db,
            &self.shared.library,
            &q,
            time::now(),
        )
        .await?;
        Ok(Response::new(loans))
    }

    type WatchDueStream = ReceiverStream<Result<Loans, Status>>;

    async fn watch_due(
        &self,
        request: Request<ListDueRequest>,
    ) -> Result<Response<Self::WatchDueStream>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_librarian("see the loans due")?;
        let q = Arc::new(due_query(
            &self.shared.library,
            request.get_ref(),
            time::now(),
        )?);
        let changes = self.shared.watchers.subscribe(staff::LOANS);
        let (db, library) = (self.shared.watchers.db.clone(), self.shared.library);
        let read = move |now: Timestamp| {
            let (db, library, q) = (db.clone(), library, q.clone());
            async move { Ok((due_loans(&db, &library, &q, now).await?, None)) }
        };
        let settings = self
            .shared
            .settings(&caller, LIST_SETTLE, "staff_watch_streams");
        Ok(Response::new(watch::stream(
            changes, read, same_loans, settings,
        )))
    }

    async fn get_book_queue(
        &self,
        request: Request<GetBookQueueRequest>,
    ) -> Result<Response<BookQueue>, Status> {
        let caller = Caller::of(&request)?;
        let q = queue_query(request.get_ref())?;
        let queue = book_queue(&self.shared.watchers.db, &q, time::now()).await?;
        Ok(Response::new(queue_seen_by(caller.is_librarian(), queue)))
    }

    type WatchBookQueueStream = ReceiverStream<Result<BookQueue, Status>>;

    async fn watch_book_queue(
        &self,
        request: Request<GetBookQueueRequest>,
    ) -> Result<Response<Self::WatchBookQueueStream>, Status> {
        let caller = Caller::of(&request)?;
        let librarian = caller.is_librarian();
        let q = Arc::new(queue_query(request.get_ref())?);
        // Refused at once when the book is unknown, like GetBookQueue.
        book_queue(&self.shared.watchers.db, &q, time::now()).await?;
        // Every change of a journey wakes the hold shelf's watchers; a
        // book's queue is read again then, and sent when it changed.
        let changes = self.shared.watchers.subscribe(staff::HOLD_SHELF);
        let db = self.shared.watchers.db.clone();
        let read = move |now: Timestamp| {
            let (db, q) = (db.clone(), q.clone());
            async move {
                let queue = book_queue(&db, &q, now).await?;
                Ok((queue_seen_by(librarian, queue), None))
            }
        };
        let settings = self
            .shared
            .settings(&caller, LIST_SETTLE, "staff_watch_streams");
        Ok(Response::new(watch::stream(
            changes, read, same_queue, settings,
        )))
    }

    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        Caller::of(&request)?.require_librarian("look members up")?;
        let r = request.get_ref();
        if !r.prefix.is_empty() {
            MemberId::parse(&r.prefix).map_err(|e| {
                Status::from(Refusal::invalid_field("prefix", format!("prefix: {e}")))
            })?;
        }
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(MemberId::parse(&r.page_token).map_err(|_| {
                Status::from(Refusal::invalid_argument(
                    rentalbook_plumbing::error::Reason::InvalidPageToken,
                    "page_token is not one this service gave out",
                ))
            })?)
        };
        let limit = ids::page_size(r.page_size)?;
        let tx = staff::snapshot(self.shared.watchers.db.conn())
            .await
            .map_err(db_error)?;
        let found = staff::list_members(&tx, &r.prefix, after.as_ref(), limit, time::now())
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Response::new(found))
    }
}
