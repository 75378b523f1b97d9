//! The lending desk: every decision about copies, taken in one transaction
//! under the book's lock (SPEC R5), written together with its event.
//!
//! Lock order: a request id's lock, then a member's, then a book's, and
//! never two books in one request's work, so concurrent requests cannot
//! deadlock. Reserve, Cancel, Fulfil and RecordReturn name their locks up
//! front and go through group commit ([`Db::grouped`]): requests queued for
//! the same book's group share one transaction, each in a savepoint, and a
//! request joining an open transaction only tries its locks (when one is
//! taken, the open transaction commits first). The event consumers take
//! every lock of a batch up front, sorted (a merge of books is one such
//! event).

use rentalbook_plumbing::auth::{Caller, Role};
use rentalbook_plumbing::db::{Db, WriteTx};
use rentalbook_plumbing::error::{self, Reason, ServiceResult};
use rentalbook_plumbing::idempotency::IdempotencyKey;
use rentalbook_plumbing::ids::{Id, MemberId};
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_plumbing::{merged, outbox};
use rentalbook_proto::events::v1::{
    self as events, Availability, ItemFound, ItemLost, ItemWithdrawn, ReservationCancelled,
    ReservationExpired, ReservationFulfilled, ReservationPlaced, ReservationReady,
    ReservationRequeued, ReservationRetrapped, ReturnRecorded, envelope::Body,
};
use rentalbook_proto::reserve::v1::{
    CheckInItemResponse, Item, ItemState, RecordReturnResponse, Reservation, ReservationStatus,
};
use sea_orm::sea_query::{Expr, Func, IntoCondition};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use crate::domain::{self, MemberStanding, Placement, Policy, Refusal, Stock};

mod circulation;
mod merge;
use crate::items;
use crate::store::{book_stock, item_state, items as stored_items, reservations, status};

pub const PRODUCER: &str = "reserve-svc";

#[derive(Clone)]
pub struct Desk {
    pub db: Db,
    pub policy: Policy,
}

fn proto_status(s: &str) -> ReservationStatus {
    match s {
        status::WAITING => ReservationStatus::Waiting,
        status::READY => ReservationStatus::Ready,
        status::FULFILLED => ReservationStatus::Fulfilled,
        status::CANCELLED => ReservationStatus::Cancelled,
        status::EXPIRED => ReservationStatus::Expired,
        _ => ReservationStatus::Unspecified,
    }
}

fn to_proto(r: reservations::Model, queue_position: i32) -> Reservation {
    Reservation {
        status: proto_status(&r.status) as i32,
        reservation_id: r.reservation_id,
        book_id: r.book_id,
        member_id: r.member_id,
        queue_position,
        pickup_deadline: time::opt_to_proto(r.pickup_deadline),
        rental_id: r.rental_id.unwrap_or_default(),
        created_at: Some(time::to_proto(r.created_at)),
        updated_at: Some(time::to_proto(r.updated_at)),
        barcode: r.barcode.unwrap_or_default(),
    }
}

fn item_to_proto(i: stored_items::Model, served: Option<&reservations::Model>) -> Item {
    let state = match i.state.as_str() {
        item_state::IN_SERVICE => ItemState::InService,
        item_state::WITHDRAWN => ItemState::Withdrawn,
        item_state::LOST => ItemState::Lost,
        _ => ItemState::Unspecified,
    };
    Item {
        item_id: i.item_id,
        book_id: i.book_id,
        barcode: i.barcode,
        state: state as i32,
        reservation_id: served.map(|r| r.reservation_id.clone()).unwrap_or_default(),
        member_id: served.map(|r| r.member_id.clone()).unwrap_or_default(),
        reservation_status: served
            .map_or(ReservationStatus::Unspecified, |r| proto_status(&r.status))
            as i32,
    }
}

fn refusal(r: Refusal, book_id: &Id) -> error::Refusal {
    let message = r.to_string();
    match r {
        Refusal::AlreadyReserved => {
            error::Refusal::already_exists(Reason::AlreadyReserved, message).with("bookId", book_id)
        }
        Refusal::OnLoan => error::Refusal::failed_precondition(Reason::AlreadyOnLoan, message)
            .with("bookId", book_id),
        Refusal::TooManyOpen(limit) => {
            error::Refusal::failed_precondition(Reason::TooManyReservations, message)
                .with("limit", limit)
        }
    }
}

fn unknown_book(book_id: &Id) -> error::Refusal {
    error::Refusal::not_found(
        Reason::BookNotFound,
        format!(
            "book {book_id} is not known to the lending desk; if it was registered a moment ago, try again in a second"
        ),
    )
    .with("bookId", book_id)
}

/// A stored book id that has no stock row: the catalogue and the desk disagree.
fn unknown_book_row(book_id: &str) -> error::Refusal {
    error::Refusal::not_found(Reason::BookNotFound, "the reservation's book is gone")
        .with("bookId", book_id)
}

fn no_reservation(reservation_id: impl std::fmt::Display) -> error::Refusal {
    error::Refusal::not_found(
        Reason::ReservationNotFound,
        format!("no reservation with id {reservation_id}"),
    )
    .with("reservationId", reservation_id)
}

/// 1-based place of a WAITING reservation in its book's queue; 0 otherwise.
pub async fn queue_position<C: ConnectionTrait>(
    conn: &C,
    r: &reservations::Model,
) -> Result<i32, DbErr> {
    if r.status != status::WAITING {
        return Ok(0);
    }
    let ahead = reservations::Entity::find()
        .filter(reservations::Column::BookId.eq(&r.book_id))
        .filter(reservations::Column::Status.eq(status::WAITING))
        .filter(reservations::Column::QueueSeq.lt(r.queue_seq))
        .count(conn)
        .await?;
    Ok(ahead as i32 + 1)
}

/// `COALESCE(SUM(CASE WHEN cond THEN 1 ELSE 0 END), 0)`: how many rows meet
/// `cond`, so that one query counts several things.
fn count_where(cond: impl IntoCondition) -> Expr {
    Func::coalesce([
        Func::sum(Expr::case(cond, 1).finally(0)).into(),
        Expr::val(0),
    ])
    .into()
}

/// The rows that hold a copy on loan: rented and not yet returned.
fn on_loan() -> Condition {
    Condition::all()
        .add(reservations::Column::Status.eq(status::FULFILLED))
        .add(reservations::Column::ReturnedAt.is_null())
}

fn open() -> Condition {
    reservations::Column::Status
        .is_in([status::WAITING, status::READY])
        .into_condition()
}

/// The states a count may look at: the index on (book_id, status) then
/// skips a book's cancelled and expired history.
const LIVE: [&str; 3] = [status::WAITING, status::READY, status::FULFILLED];

/// The rows a count may look at: live states, not returned. Only a
/// FULFILLED row is ever returned, and a returned one counts for nothing,
/// so the filter changes no count; it lets the partial indexes on rows
/// not returned (`idx_reservations_live_*`) skip the returned history.
fn countable() -> Condition {
    Condition::all()
        .add(reservations::Column::Status.is_in(LIVE))
        .add(reservations::Column::ReturnedAt.is_null())
}

/// A book's copies held for pickup, on loan and waited for, in one query.
async fn stock_counts<C: ConnectionTrait>(
    conn: &C,
    book_id: &str,
) -> Result<(i64, i64, i64), DbErr> {
    let counts = reservations::Entity::find()
        .select_only()
        .expr_as(
            count_where(reservations::Column::Status.eq(status::READY)),
            "held",
        )
        .expr_as(count_where(on_loan()), "on_loan")
        .expr_as(
            count_where(reservations::Column::Status.eq(status::WAITING)),
            "waiting",
        )
        .filter(reservations::Column::BookId.eq(book_id))
        .filter(countable())
        .into_tuple()
        .one(conn)
        .await?;
    Ok(counts.unwrap_or_default())
}

/// A book's copies held for pickup, on loan and waited for, and with
/// `member` that member's standing for the book (R1, R2), in one query:
/// the rows of the book or of the member, live states only.
async fn counts<C: ConnectionTrait>(
    conn: &C,
    book_id: &str,
    member: Option<&str>,
) -> Result<(Stock, Option<MemberStanding>), DbErr> {
    let Some(member) = member else {
        let (held, on_loan, waiting) = stock_counts(conn, book_id).await?;
        return Ok((stock_of(held, on_loan, waiting), None));
    };
    let this_book = || reservations::Column::BookId.eq(book_id);
    let by_member = || reservations::Column::MemberId.eq(member);
    type Counts = (i64, i64, i64, i64, i64, i64);
    let (held, on_loan, waiting, open_for_book, on_loan_here, open_total): Counts =
        reservations::Entity::find()
            .select_only()
            .expr_as(
                count_where(
                    Condition::all()
                        .add(this_book())
                        .add(reservations::Column::Status.eq(status::READY)),
                ),
                "held",
            )
            .expr_as(count_where(on_loan().add(this_book())), "on_loan")
            .expr_as(
                count_where(
                    Condition::all()
                        .add(this_book())
                        .add(reservations::Column::Status.eq(status::WAITING)),
                ),
                "waiting",
            )
            .expr_as(
                count_where(open().add(this_book()).add(by_member())),
                "open_for_book",
            )
            .expr_as(
                count_where(on_loan().add(this_book()).add(by_member())),
                "on_loan_here",
            )
            .expr_as(count_where(open().add(by_member())), "open_total")
            .filter(Condition::any().add(this_book()).add(by_member()))
            .filter(countable())
            .into_tuple()
            .one(conn)
            .await?
            .unwrap_or_default();
    let standing = MemberStanding {
        open_for_book: open_for_book > 0,
        has_on_loan: on_loan_here > 0,
        open_total: u32::try_from(open_total).unwrap_or(u32::MAX),
    };
    Ok((stock_of(held, on_loan, waiting), Some(standing)))
}

/// A member's standing for a book (R1, R2).
async fn standing<C: ConnectionTrait>(
    conn: &C,
    member: &str,
    book_id: &str,
) -> Result<MemberStanding, DbErr> {
    Ok(counts(conn, book_id, Some(member))
        .await?
        .1
        .unwrap_or_default())
}

/// The counts as a [`Stock`]; `total` is the book row's, filled in by the caller.
fn stock_of(held: i64, on_loan: i64, waiting: i64) -> Stock {
    let as_i32 = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    Stock {
        total: 0,
        held: as_i32(held),
        on_loan: as_i32(on_loan),
        waiting: as_i32(waiting),
    }
}

/// A book's row and copies, read under its lock.
struct Book {
    row: book_stock::Model,
    stock: Stock,
}

impl Book {
    /// A merged book's id loads the book it was merged into: the row's
    /// book_id is the one to write.
    async fn load(tx: &WriteTx, book_id: &str) -> Result<Option<Book>, DbErr> {
        Ok(Self::load_with(tx, book_id, None)
            .await?
            .map(|(book, _)| book))
    }

    /// [`Book::load`], and with `member` that member's standing for the
    /// book, counted in the same query.
    async fn load_with(
        tx: &WriteTx,
        book_id: &str,
        member: Option<&str>,
    ) -> Result<Option<(Book, Option<MemberStanding>)>, DbErr> {
        tx.lock("book", book_id).await?;
        let mut found = book_stock::Entity::find_by_id(book_id.to_owned())
            .one(&**tx)
            .await?;
        if found.is_none() {
            let into = merged::resolve(&**tx, book_id).await?;
            if into != book_id {
                tx.lock("book", &into).await?;
                found = book_stock::Entity::find_by_id(into).one(&**tx).await?;
            }
        }
        let Some(row) = found else {
            return Ok(None);
        };
        let (mut stock, standing) = counts(&**tx, &row.book_id, member).await?;
        stock.total = row.total_copies;
        Ok(Some((Book { row, stock }, standing)))
    }

    /// Records one change of the book: the next book_seq and the snapshot
    /// after the change.
    async fn advance(&mut self, tx: &WriteTx) -> Result<Availability, DbErr> {
        let seq = self.row.book_seq + 1;
        let mut row = self.row.clone().into_active_model();
        row.book_seq = Set(seq);
        self.row = row.update(&**tx).await?;
        let s = self.stock;
        Ok(Availability {
            book_seq: seq,
            total: s.total,
            free: s.free(),
            held: s.held,
            on_loan: s.on_loan,
            waiting: s.waiting,
        })
    }
}

/// A request's locks in the lock order: its request id's, its member's,
/// then its book's.
fn request_locks(
    key: Option<&IdempotencyKey>,
    member: Option<&str>,
    book: Option<&str>,
) -> Vec<(&'static str, String)> {
    let member = member.map(|m| ("member", m.to_owned()));
    let book = book.map(|b| ("book", b.to_owned()));
    key.map(IdempotencyKey::lock)
        .into_iter()
        .chain(member)
        .chain(book)
        .collect()
}

/// A reservation read before its book's lock was taken, as it is now. A
/// transaction that shut every other writer out from its start (SQLite)
/// read it as it is; otherwise it is read again.
async fn reread(tx: &WriteTx, found: reservations::Model) -> ServiceResult<reservations::Model> {
    if tx.is_exclusive() {
        return Ok(found);
    }
    Ok(
        reservations::Entity::find_by_id(found.reservation_id.clone())
            .one(&**tx)
            .await?
            .ok_or_else(|| no_reservation(&found.reservation_id))?,
    )
}

async fn set_status(
    tx: &WriteTx,
    r: reservations::Model,
    new_status: &str,
    now: Timestamp,
    edit: impl FnOnce(&mut reservations::ActiveModel),
) -> Result<reservations::Model, DbErr> {
    let mut am = r.into_active_model();
    am.status = Set(new_status.to_owned());
    am.updated_at = Set(now);
    edit(&mut am);
    am.update(&**tx).await
}

impl Desk {
    /// R1, R2: places a reservation for the caller.
    ///
    /// Requests for the same book that queue together share a transaction
    /// (group commit, [`Db::grouped`]).
    pub async fn reserve(
        &self,
        caller: &Caller,
        book_id: Id,
        key: Option<IdempotencyKey>,
    ) -> ServiceResult<Reservation> {
        let book = book_id.to_string();
        let member = caller.member.as_str();
        // The request id's, the member's, then the book's (the lock order).
        let locks = request_locks(key.as_ref(), Some(member), Some(&book));
        self.db
            .grouped(&book, &locks, async |tx| {
                self.reserve_in(tx, member, book_id, key.as_ref()).await
            })
            .await
    }

    async fn reserve_in(
        &self,
        tx: &mut WriteTx,
        member: &str,
        book_id: Id,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Reservation> {
        if let Some(key) = key
            && let Some(done) = key.recall::<Reservation>(tx).await?
        {
            return Ok(done);
        }
        let (mut book, standing) = Book::load_with(tx, &book_id.to_string(), Some(member))
            .await?
            .ok_or_else(|| unknown_book(&book_id))?;
        let book_key = book.row.book_id.clone();
        let standing = standing.unwrap_or_default();
        let now = time::now();
        let placement = domain::place(book.stock, standing, &self.policy, now)
            .map_err(|r| refusal(r, &book_id))?;
        let (state, deadline, position) = match placement {
            Placement::Ready { pickup_deadline } => {
                book.stock.held += 1;
                (status::READY, Some(pickup_deadline), 0)
            }
            Placement::Waiting { position } => {
                book.stock.waiting += 1;
                (status::WAITING, None, position)
            }
        };
        let availability = book.advance(tx).await?;
        let reservation_id = Id::new().to_string();
        let barcode = if state == status::READY {
            items::trap(&**tx, &book_key, &reservation_id, None, now).await?
        } else {
            None
        };
        let row = reservations::ActiveModel {
            reservation_id: Set(reservation_id),
            book_id: Set(book_key.clone()),
            member_id: Set(member.to_owned()),
            status: Set(state.to_owned()),
            queue_seq: Set(availability.book_seq),
            pickup_deadline: Set(deadline),
            rental_id: Set(None),
            returned_at: Set(None),
            barcode: Set(barcode.clone()),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&**tx)
        .await?;
        outbox::stage(
            tx,
            PRODUCER,
            now,
            Body::ReservationPlaced(ReservationPlaced {
                reservation_id: row.reservation_id.clone(),
                book_id: book_key,
                member_id: member.to_owned(),
                status: proto_status(state) as i32,
                queue_position: position,
                pickup_deadline: time::opt_to_proto(deadline),
                availability: Some(availability),
                barcode: barcode.unwrap_or_default(),
                rental_id: String::new(),
            }),
        )
        .await?;
        let answer = to_proto(row, position);
        if let Some(key) = key {
            key.remember(tx, &answer).await?;
        }
        Ok(answer)
    }

    /// Cancels a WAITING or READY reservation; a READY one's copy goes to the
    /// next in line (R3). Cancelling a cancelled reservation changes nothing.
    pub async fn cancel(
        &self,
        caller: &Caller,
        reservation_id: Id,
        key: Option<IdempotencyKey>,
    ) -> ServiceResult<Reservation> {
        let book = self
            .group_of(reservations::Column::ReservationId.eq(reservation_id.to_string()))
            .await?;
        let locks = request_locks(key.as_ref(), None, book.as_deref());
        self.db
            .grouped(book.as_deref().unwrap_or_default(), &locks, async |tx| {
                self.cancel_in(tx, caller, reservation_id, key.as_ref())
                    .await
            })
            .await
    }

    async fn cancel_in(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        reservation_id: Id,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Reservation> {
        if let Some(key) = key
            && let Some(done) = key.recall::<Reservation>(tx).await?
        {
            return Ok(done);
        }
        let found = self.find_visible(&**tx, caller, reservation_id).await?;
        let mut book = Book::load(tx, &found.book_id)
            .await?
            .ok_or_else(|| unknown_book_row(&found.book_id))?;
        // Under the book's lock: the status may have moved meanwhile.
        let r = reread(tx, found).await?;
        let previous = r.status.clone();
        let answer = match previous.as_str() {
            status::CANCELLED => to_proto(r, 0),
            status::WAITING | status::READY => {
                let now = time::now();
                if previous == status::READY {
                    book.stock.held -= 1;
                } else {
                    book.stock.waiting -= 1;
                }
                let availability = book.advance(tx).await?;
                let freed = items::release(&**tx, &r.reservation_id, now).await?;
                let r = set_status(tx, r, status::CANCELLED, now, |_| {}).await?;
                outbox::stage(
                    tx,
                    PRODUCER,
                    now,
                    Body::ReservationCancelled(ReservationCancelled {
                        reservation_id: r.reservation_id.clone(),
                        book_id: r.book_id.clone(),
                        member_id: r.member_id.clone(),
                        previous_status: proto_status(&previous) as i32,
                        cancelled_by: caller.member.to_string(),
                        availability: Some(availability),
                    }),
                )
                .await?;
                self.promote(tx, &mut book, now, freed.as_deref()).await?;
                to_proto(r, 0)
            }
            other => {
                return Err(error::Refusal::failed_precondition(
                    Reason::ReservationClosed,
                    format!(
                        "this reservation is {} and can no longer be cancelled",
                        other.to_lowercase()
                    ),
                )
                .with("status", other)
                .into());
            }
        };
        if let Some(key) = key {
            key.remember(tx, &answer).await?;
        }
        Ok(answer)
    }

    /// R3: while a copy is free and somebody waits, the head of the queue
    /// becomes READY with a fresh pickup deadline, and a free item is held
    /// for it (R9): `prefer` first, the copy that just came back.
    async fn promote(
        &self,
        tx: &mut WriteTx,
        book: &mut Book,
        now: Timestamp,
        prefer: Option<&str>,
    ) -> Result<(), DbErr> {
        for _ in 0..book.stock.promotions() {
            let Some(head) = reservations::Entity::find()
                .filter(reservations::Column::BookId.eq(&book.row.book_id))
                .filter(reservations::Column::Status.eq(status::WAITING))
                .order_by_asc(reservations::Column::QueueSeq)
                .one(&**tx)
                .await?
            else {
                break;
            };
            let deadline = now + self.policy.pickup_window;
            book.stock.waiting -= 1;
            book.stock.held += 1;
            let availability = book.advance(tx).await?;
            let barcode =
                items::trap(&**tx, &book.row.book_id, &head.reservation_id, prefer, now).await?;
            let r = set_status(tx, head, status::READY, now, |am| {
                am.pickup_deadline = Set(Some(deadline));
                am.barcode = Set(barcode.clone());
            })
            .await?;
            outbox::stage(
                tx,
                PRODUCER,
                now,
                Body::ReservationReady(ReservationReady {
                    reservation_id: r.reservation_id,
                    book_id: r.book_id,
                    member_id: r.member_id,
                    pickup_deadline: Some(time::to_proto(deadline)),
                    availability: Some(availability),
                    barcode: barcode.unwrap_or_default(),
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// The book of the reservation `which` finds, to choose the group of a
    /// request that names no book, where the database has groups by key
    /// (PostgreSQL): read outside any transaction, so the request reads it
    /// again under the book's lock. None on SQLite, whose one group takes
    /// every request.
    async fn group_of(&self, which: impl IntoCondition) -> ServiceResult<Option<String>> {
        if !self.db.groups_by_key() {
            return Ok(None);
        }
        let book = reservations::Entity::find()
            .select_only()
            .column(reservations::Column::BookId)
            .filter(which)
            .into_tuple::<String>()
            .one(self.db.conn())
            .await?;
        Ok(book)
    }

    /// A reservation the caller may see: their own, or any for a librarian.
    /// Another member's is, to a member, no reservation at all (SPEC §6):
    /// the same NOT_FOUND as an unknown id, so that ids cannot be probed.
    async fn find_visible<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        reservation_id: Id,
    ) -> ServiceResult<reservations::Model> {
        let not_found = || no_reservation(reservation_id);
        let r = reservations::Entity::find_by_id(reservation_id.to_string())
            .one(conn)
            .await?
            .ok_or_else(not_found)?;
        let visible = match MemberId::parse(&r.member_id) {
            Ok(owner) => caller.may_see(&owner),
            // A finished reservation whose member erased it, or outlived
            // the retention (ids::ERASED_MEMBER): a librarian's only.
            Err(_) => caller.role != Role::Member,
        };
        if !visible {
            return Err(not_found().into());
        }
        Ok(r)
    }

    pub async fn get(&self, caller: &Caller, reservation_id: Id) -> ServiceResult<Reservation> {
        let conn = self.db.conn();
        let r = self.find_visible(conn, caller, reservation_id).await?;
        let position = queue_position(conn, &r).await?;
        Ok(to_proto(r, position))
    }

    /// A member's reservations, oldest first, a page at a time.
    pub async fn list(
        &self,
        member: &MemberId,
        open_only: bool,
        page_size: u64,
        after: Option<Id>,
    ) -> ServiceResult<(Vec<Reservation>, String)> {
        let conn = self.db.conn();
        let mut q = reservations::Entity::find()
            .filter(reservations::Column::MemberId.eq(member.as_str()))
            .order_by_asc(reservations::Column::ReservationId);
        if open_only {
            q = q.filter(reservations::Column::Status.is_in([status::WAITING, status::READY]));
        }
        if let Some(after) = after {
            q = q.filter(reservations::Column::ReservationId.gt(after.to_string()));
        }
        let mut rows = q.limit(page_size + 1).all(conn).await?;
        let next = if rows.len() as u64 > page_size {
            rows.truncate(page_size as usize);
            rows.last()
                .map(|r| r.reservation_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let position = queue_position(conn, &r).await?;
            out.push(to_proto(r, position));
        }
        Ok((out, next))
    }

    /// R6 on the desk's side: the member's READY reservation for the book
    /// becomes FULFILLED by `rental_id`. Repeating it with the same rental
    /// returns the same answer.
    pub async fn fulfill(
        &self,
        member: &MemberId,
        book_id: Id,
        rental_id: Id,
    ) -> ServiceResult<Reservation> {
        let book = book_id.to_string();
        self.db
            .grouped(&book, &request_locks(None, None, Some(&book)), async |tx| {
                self.fulfill_in(tx, member, book_id, rental_id).await
            })
            .await
    }

    async fn fulfill_in(
        &self,
        tx: &mut WriteTx,
        member: &MemberId,
        book_id: Id,
        rental_id: Id,
    ) -> ServiceResult<Reservation> {
        let mut book = Book::load(tx, &book_id.to_string())
            .await?
            .ok_or_else(|| unknown_book(&book_id))?;
        let book_key = book.row.book_id.clone();
        if let Some(done) = reservations::Entity::find()
            .filter(reservations::Column::RentalId.eq(rental_id.to_string()))
            .one(&**tx)
            .await?
        {
            if done.member_id != member.as_str() || done.book_id != book_key {
                return Err(error::Refusal::invalid_argument(
                    Reason::RequestIdReused,
                    "this rental_id already fulfilled another reservation",
                )
                .into());
            }
            return Ok(to_proto(done, 0));
        }
        let now = time::now();
        let ready = reservations::Entity::find()
            .filter(reservations::Column::MemberId.eq(member.as_str()))
            .filter(reservations::Column::BookId.eq(&book_key))
            .filter(reservations::Column::Status.eq(status::READY))
            .one(&**tx)
            .await?
            .filter(|r| !domain::pickup_expired(r.pickup_deadline, now))
            .ok_or_else(|| {
                error::Refusal::failed_precondition(
                    Reason::NoReadyReservation,
                    "no reservation ready for you: reserve the book and wait until it is READY",
                )
                .with("bookId", &book_key)
            })?;
        book.stock.held -= 1;
        book.stock.on_loan += 1;
        let availability = book.advance(tx).await?;
        // A hold made before its book's copies had barcodes gets one now.
        let barcode = match &ready.barcode {
            Some(b) => Some(b.clone()),
            None => items::trap(&**tx, &book_key, &ready.reservation_id, None, now).await?,
        };
        let r = set_status(tx, ready, status::FULFILLED, now, |am| {
            am.rental_id = Set(Some(rental_id.to_string()));
            am.barcode = Set(barcode.clone());
        })
        .await?;
        outbox::stage(
            tx,
            PRODUCER,
            now,
            Body::ReservationFulfilled(ReservationFulfilled {
                reservation_id: r.reservation_id.clone(),
                book_id: r.book_id.clone(),
                member_id: r.member_id.clone(),
                rental_id: rental_id.to_string(),
                availability: Some(availability),
                barcode: barcode.unwrap_or_default(),
            }),
        )
        .await?;
        Ok(to_proto(r, 0))
    }

    /// R8 on the desk's side: the rental's copy is back and goes to the next
    /// in line. Deduplicated by rental id, whether it arrives by RPC or by the
    /// BookReturned event.
    pub async fn record_return(&self, rental_id: Id) -> ServiceResult<RecordReturnResponse> {
        let book = self
            .group_of(reservations::Column::RentalId.eq(rental_id.to_string()))
            .await?;
        let locks = request_locks(None, None, book.as_deref());
        self.db
            .grouped(book.as_deref().unwrap_or_default(), &locks, async |tx| {
                self.record_return_in(tx, rental_id).await
            })
            .await
    }

    /// [`Desk::record_return`] inside a given transaction.
    pub async fn record_return_in(
        &self,
        tx: &mut WriteTx,
        rental_id: Id,
    ) -> ServiceResult<RecordReturnResponse> {
        let found = reservations::Entity::find()
            .filter(reservations::Column::RentalId.eq(rental_id.to_string()))
            .one(&**tx)
            .await?
            .ok_or_else(|| {
                error::Refusal::not_found(
                    Reason::RentalNotFound,
                    format!("no fulfilled reservation for rental {rental_id}"),
                )
                .with("rentalId", rental_id)
            })?;
        let mut book = Book::load(tx, &found.book_id)
            .await?
            .ok_or_else(|| unknown_book_row(&found.book_id))?;
        let r = reread(tx, found).await?;
        if let Some(at) = r.returned_at {
            let item = match &r.barcode {
                Some(b) => items::by_barcode(&**tx, b).await?,
                None => None,
            };
            let holder = match &item {
                Some(i) => circulation::held_by(&**tx, &i.item_id).await?,
                None => None,
            };
            return Ok(RecordReturnResponse {
                reservation_id: r.reservation_id,
                recorded_at: Some(time::to_proto(at)),
                already_recorded: true,
                barcode: r.barcode.unwrap_or_default(),
                held_for_member_id: holder
                    .as_ref()
                    .map(|h| h.member_id.clone())
                    .unwrap_or_default(),
                held_for_reservation_id: holder.map(|h| h.reservation_id).unwrap_or_default(),
            });
        }
        let now = time::now();
        book.stock.on_loan -= 1;
        let availability = book.advance(tx).await?;
        let back = items::release(&**tx, &r.reservation_id, now).await?;
        let mut am = r.into_active_model();
        am.returned_at = Set(Some(now));
        am.updated_at = Set(now);
        let r = am.update(&**tx).await?;
        outbox::stage(
            tx,
            PRODUCER,
            now,
            Body::ReturnRecorded(ReturnRecorded {
                reservation_id: r.reservation_id.clone(),
                book_id: r.book_id.clone(),
                member_id: r.member_id.clone(),
                rental_id: rental_id.to_string(),
                availability: Some(availability),
                barcode: r.barcode.clone().unwrap_or_default(),
            }),
        )
        .await?;
        self.promote(tx, &mut book, now, back.as_deref()).await?;
        let holder = match &back {
            Some(item_id) => circulation::held_by(&**tx, item_id).await?,
            None => None,
        };
        Ok(RecordReturnResponse {
            reservation_id: r.reservation_id,
            recorded_at: Some(time::to_proto(now)),
            already_recorded: false,
            barcode: r.barcode.unwrap_or_default(),
            held_for_member_id: holder
                .as_ref()
                .map(|h| h.member_id.clone())
                .unwrap_or_default(),
            held_for_reservation_id: holder.map(|h| h.reservation_id).unwrap_or_default(),
        })
    }

    /// R4: expires READY reservations whose pickup deadline has passed, and
    /// hands their copies on. Returns how many expired.
    pub async fn expire_due(&self) -> ServiceResult<usize> {
        // One sweep at a time across replicas; each expiry re-checks under
        // the book's lock anyway, so a second sweep could do no harm.
        let Some(_sweep) = self.db.exclusive("expiry-sweep").await? else {
            return Ok(0);
        };
        let now = time::now();
        let due = reservations::Entity::find()
            .filter(reservations::Column::Status.eq(status::READY))
            .filter(reservations::Column::PickupDeadline.lt(now))
            .order_by_asc(reservations::Column::PickupDeadline)
            .limit(500)
            .all(self.db.conn())
            .await?;
        let mut expired = 0;
        for candidate in due {
            let mut tx = self.db.begin().await?;
            let Some(mut book) = Book::load(&tx, &candidate.book_id).await? else {
                continue;
            };
            let Some(r) = reservations::Entity::find_by_id(candidate.reservation_id)
                .one(&*tx)
                .await?
            else {
                continue;
            };
            if r.status != status::READY || !domain::pickup_expired(r.pickup_deadline, now) {
                continue;
            }
            book.stock.held -= 1;
            let availability = book.advance(&tx).await?;
            let freed = items::release(&*tx, &r.reservation_id, now).await?;
            let r = set_status(&tx, r, status::EXPIRED, now, |_| {}).await?;
            outbox::stage(
                &mut tx,
                PRODUCER,
                now,
                Body::ReservationExpired(ReservationExpired {
                    reservation_id: r.reservation_id,
                    book_id: r.book_id,
                    member_id: r.member_id,
                    availability: Some(availability),
                }),
            )
            .await?;
            self.promote(&mut tx, &mut book, now, freed.as_deref())
                .await?;
            tx.commit().await?;
            expired += 1;
        }
        Ok(expired)
    }

    /// The catalogue's copies of a book (BookRegistered, CopiesAdded,
    /// ItemsRegistered): the registered total, absolute so that a replayed
    /// event cannot add twice, and the items with their barcodes. Waiting
    /// members get new copies (R3); loans and holds made before the book's
    /// copies had barcodes get items, loans first, in order (R9).
    pub async fn catalogue_copies(
        &self,
        tx: &mut WriteTx,
        book_id: &str,
        registered: Option<i32>,
        new_items: &[events::Item],
    ) -> Result<(), DbErr> {
        let now = time::now();
        let mut book = match Book::load(tx, book_id).await? {
            Some(book) => book,
            None => {
                book_stock::ActiveModel {
                    book_id: Set(book_id.to_owned()),
                    total_copies: Set(0),
                    registered_copies: Set(0),
                    book_seq: Set(0),
                }
                .insert(&**tx)
                .await?;
                Book::load(tx, book_id)
                    .await?
                    .ok_or_else(|| DbErr::RecordNotFound(format!("book_stock {book_id}")))?
            }
        };
        items::register(&**tx, book_id, new_items, now).await?;
        if let Some(total) = registered
            && total > book.row.registered_copies
        {
            let out_of_service = book.row.registered_copies - book.row.total_copies;
            let mut row = book.row.clone().into_active_model();
            row.registered_copies = Set(total);
            row.total_copies = Set(total - out_of_service);
            book.row = row.update(&**tx).await?;
            book.stock.total = book.row.total_copies;
        }
        self.give_items_to_older_ones(tx, &mut book, now).await?;
        self.promote(tx, &mut book, now, None).await
    }

    /// Loans, then READY holds, of a book that have no item yet get free
    /// ones: loans in the order they were made, holds in queue order. A
    /// hold's new item is announced like any move of its trap.
    async fn give_items_to_older_ones(
        &self,
        tx: &mut WriteTx,
        book: &mut Book,
        now: Timestamp,
    ) -> Result<(), DbErr> {
        let without = |c: Condition| {
            reservations::Entity::find()
                .filter(reservations::Column::BookId.eq(&book.row.book_id))
                .filter(reservations::Column::Barcode.is_null())
                .filter(c)
        };
        let loans = without(on_loan())
            .order_by_asc(reservations::Column::UpdatedAt)
            .order_by_asc(reservations::Column::ReservationId)
            .all(&**tx)
            .await?;
        for loan in loans {
            let Some(barcode) =
                items::trap(&**tx, &book.row.book_id, &loan.reservation_id, None, now).await?
            else {
                return Ok(());
            };
            let mut am = loan.into_active_model();
            am.barcode = Set(Some(barcode));
            am.update(&**tx).await?;
        }
        let holds = without(
            reservations::Column::Status
                .eq(status::READY)
                .into_condition(),
        )
        .order_by_asc(reservations::Column::QueueSeq)
        .all(&**tx)
        .await?;
        for hold in holds {
            let Some(barcode) =
                items::trap(&**tx, &book.row.book_id, &hold.reservation_id, None, now).await?
            else {
                return Ok(());
            };
            self.announce_trap(tx, book, hold, barcode, now).await?;
        }
        Ok(())
    }

    /// A READY reservation is held by another item now.
    async fn announce_trap(
        &self,
        tx: &mut WriteTx,
        book: &mut Book,
        hold: reservations::Model,
        barcode: String,
        now: Timestamp,
    ) -> Result<(), DbErr> {
        let previous = hold.barcode.clone().unwrap_or_default();
        let mut am = hold.into_active_model();
        am.barcode = Set(Some(barcode.clone()));
        am.updated_at = Set(now);
        let hold = am.update(&**tx).await?;
        let availability = book.advance(tx).await?;
        outbox::stage(
            tx,
            PRODUCER,
            now,
            Body::ReservationRetrapped(ReservationRetrapped {
                reservation_id: hold.reservation_id,
                book_id: hold.book_id,
                member_id: hold.member_id,
                barcode,
                previous_barcode: previous,
                availability: Some(availability),
            }),
        )
        .await?;
        Ok(())
    }

    /// The items of a book with what each serves. Librarians only.
    pub async fn list_items(&self, caller: &Caller, book_id: Id) -> ServiceResult<Vec<Item>> {
        caller.require_librarian("see a book's items")?;
        let conn = self.db.conn();
        let book_key = merged::resolve(conn, &book_id.to_string()).await?;
        if book_stock::Entity::find_by_id(book_key.clone())
            .one(conn)
            .await?
            .is_none()
        {
            return Err(unknown_book(&book_id).into());
        }
        let rows = items::of_book(conn, &book_key).await?;
        let served: Vec<String> = rows
            .iter()
            .filter_map(|i| i.reservation_id.clone())
            .collect();
        let reservations = reservations::Entity::find()
            .filter(reservations::Column::ReservationId.is_in(served))
            .all(conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|i| {
                let r = i
                    .reservation_id
                    .as_ref()
                    .and_then(|id| reservations.iter().find(|r| &r.reservation_id == id));
                item_to_proto(i, r)
            })
            .collect())
    }

    /// WithdrawItem and MarkItemLost (R9, R13): the item leaves circulation.
    /// A hold it served gets another free item, or goes back to the head of
    /// the queue; a lost item's loan ends (its rental closes as lost on
    /// rental-svc's side). A withdrawn item on loan must be checked in first.
    pub async fn take_out_of_service(
        &self,
        caller: &Caller,
        barcode: &str,
        target: &'static str,
        key: Option<IdempotencyKey>,
    ) -> ServiceResult<Item> {
        caller.require_librarian(if target == item_state::LOST {
            "mark copies lost"
        } else {
            "withdraw copies"
        })?;
        let mut tx = self.db.begin().await?;
        if let Some(key) = &key
            && let Some(done) = key.recall::<Item>(&tx).await?
        {
            return Ok(done);
        }
        let unknown = || circulation::unknown_item(barcode);
        let found = items::by_barcode(&*tx, barcode)
            .await?
            .ok_or_else(unknown)?;
        let mut book = Book::load(&tx, &found.book_id)
            .await?
            .ok_or_else(|| unknown_book_row(&found.book_id))?;
        // Read again under the book's lock.
        let item = items::by_barcode(&*tx, barcode)
            .await?
            .ok_or_else(unknown)?;
        let now = time::now();
        let answer = match (item.state.as_str(), target) {
            (state, target) if state == target => {
                let r = match &item.reservation_id {
                    Some(id) => {
                        reservations::Entity::find_by_id(id.clone())
                            .one(&*tx)
                            .await?
                    }
                    None => None,
                };
                item_to_proto(item, r.as_ref())
            }
            (item_state::LOST, item_state::WITHDRAWN) => {
                // A lost copy written off: it was out of circulation already.
                items::set_state(&*tx, &item.item_id, target, now).await?;
                self.stage_item_event(&mut tx, &mut book, &item, target, caller, None, now)
                    .await?;
                item_to_proto(
                    items::by_barcode(&*tx, barcode)
                        .await?
                        .ok_or_else(unknown)?,
                    None,
                )
            }
            (item_state::IN_SERVICE, _) => {
                let served = match &item.reservation_id {
                    Some(id) => {
                        reservations::Entity::find_by_id(id.clone())
                            .one(&*tx)
                            .await?
                    }
                    None => None,
                };
                let loan = served.as_ref().filter(|r| r.status == status::FULFILLED);
                if loan.is_some() && target == item_state::WITHDRAWN {
                    return Err(error::Refusal::failed_precondition(
                        Reason::ItemOnLoan,
                        format!("copy {barcode} is on loan; check it in before withdrawing it"),
                    )
                    .with("barcode", barcode)
                    .into());
                }
                items::set_state(&*tx, &item.item_id, target, now).await?;
                if let Some(served) = &item.reservation_id {
                    items::release(&*tx, served, now).await?;
                }
                let mut row = book.row.clone().into_active_model();
                row.total_copies = Set(book.row.total_copies - 1);
                book.row = row.update(&*tx).await?;
                book.stock.total -= 1;
                let ended = match &served {
                    Some(r) if r.status == status::FULFILLED => {
                        let mut am = r.clone().into_active_model();
                        am.returned_at = Set(Some(now));
                        am.updated_at = Set(now);
                        book.stock.on_loan -= 1;
                        Some(am.update(&*tx).await?)
                    }
                    _ => None,
                };
                self.stage_item_event(
                    &mut tx,
                    &mut book,
                    &item,
                    target,
                    caller,
                    ended.as_ref(),
                    now,
                )
                .await?;
                if let Some(hold) = served.filter(|r| r.status == status::READY) {
                    self.rehold(&mut tx, &mut book, hold, now).await?;
                }
                item_to_proto(
                    items::by_barcode(&*tx, barcode)
                        .await?
                        .ok_or_else(unknown)?,
                    None,
                )
            }
            (state, _) => {
                return Err(error::Refusal::failed_precondition(
                    Reason::ItemNotInService,
                    format!(
                        "copy {barcode} is {}; only a copy in service can be marked lost",
                        state.to_lowercase()
                    ),
                )
                .with("barcode", barcode)
                .with("state", state)
                .into());
            }
        };
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        Ok(answer)
    }

    #[allow(clippy::too_many_arguments)]
    async fn stage_item_event(
        &self,
        tx: &mut WriteTx,
        book: &mut Book,
        item: &stored_items::Model,
        target: &str,
        caller: &Caller,
        loan: Option<&reservations::Model>,
        now: Timestamp,
    ) -> Result<(), DbErr> {
        let availability = book.advance(tx).await?;
        let body = if target == item_state::LOST {
            Body::ItemLost(ItemLost {
                item_id: item.item_id.clone(),
                book_id: item.book_id.clone(),
                barcode: item.barcode.clone(),
                rental_id: loan.and_then(|r| r.rental_id.clone()).unwrap_or_default(),
                member_id: loan.map(|r| r.member_id.clone()).unwrap_or_default(),
                marked_by: caller.member.to_string(),
                availability: Some(availability),
            })
        } else {
            Body::ItemWithdrawn(ItemWithdrawn {
                item_id: item.item_id.clone(),
                book_id: item.book_id.clone(),
                barcode: item.barcode.clone(),
                withdrawn_by: caller.member.to_string(),
                availability: Some(availability),
            })
        };
        outbox::stage(tx, PRODUCER, now, body).await?;
        Ok(())
    }

    /// A READY hold whose item left: another free item, or back to the
    /// head of the queue as WAITING (its queue_seq is older than everyone
    /// waiting behind it).
    async fn rehold(
        &self,
        tx: &mut WriteTx,
        book: &mut Book,
        hold: reservations::Model,
        now: Timestamp,
    ) -> Result<(), DbErr> {
        if let Some(barcode) =
            items::trap(&**tx, &book.row.book_id, &hold.reservation_id, None, now).await?
        {
            return self.announce_trap(tx, book, hold, barcode, now).await;
        }
        book.stock.held -= 1;
        book.stock.waiting += 1;
        let previous = hold.barcode.clone().unwrap_or_default();
        let hold = set_status(tx, hold, status::WAITING, now, |am| {
            am.pickup_deadline = Set(None);
            am.barcode = Set(None);
        })
        .await?;
        let availability = book.advance(tx).await?;
        outbox::stage(
            tx,
            PRODUCER,
            now,
            Body::ReservationRequeued(ReservationRequeued {
                reservation_id: hold.reservation_id,
                book_id: hold.book_id,
                member_id: hold.member_id,
                barcode: previous,
                availability: Some(availability),
            }),
        )
        .await?;
        Ok(())
    }
}
