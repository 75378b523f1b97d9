//! The lending desk: every decision about copies, taken in one transaction
//! under the book's lock (SPEC R5), written together with its event.
//!
//! Lock order: a member's lock before a book's lock, and never two books in
//! one transaction, so concurrent requests cannot deadlock.

use rentalbook_plumbing::auth::Caller;
use rentalbook_plumbing::db::{Db, WriteTx};
use rentalbook_plumbing::error::{self, Reason, ServiceResult};
use rentalbook_plumbing::idempotency::IdempotencyKey;
use rentalbook_plumbing::ids::{Id, MemberId};
use rentalbook_plumbing::outbox;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::{
    Availability, ReservationCancelled, ReservationExpired, ReservationFulfilled,
    ReservationPlaced, ReservationReady, ReturnRecorded, envelope::Body,
};
use rentalbook_proto::reserve::v1::{RecordReturnResponse, Reservation, ReservationStatus};
use sea_orm::sea_query::{Expr, Func, IntoCondition};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use crate::domain::{self, MemberStanding, Placement, Policy, Refusal, Stock};
use crate::store::{book_stock, reservations, status};

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
        .filter(reservations::Column::Status.is_in(LIVE))
        .into_tuple()
        .one(conn)
        .await?;
    Ok(counts.unwrap_or_default())
}

/// A member's standing for a book (R1, R2), in one query.
async fn standing<C: ConnectionTrait>(
    conn: &C,
    member: &str,
    book_id: &str,
) -> Result<MemberStanding, DbErr> {
    let this_book = || reservations::Column::BookId.eq(book_id);
    let (open_for_book, on_loan_here, open_total): (i64, i64, i64) = reservations::Entity::find()
        .select_only()
        .expr_as(count_where(open().add(this_book())), "open_for_book")
        .expr_as(count_where(on_loan().add(this_book())), "on_loan")
        .expr_as(count_where(open()), "open_total")
        .filter(reservations::Column::MemberId.eq(member))
        .filter(reservations::Column::Status.is_in(LIVE))
        .into_tuple()
        .one(conn)
        .await?
        .unwrap_or_default();
    Ok(MemberStanding {
        open_for_book: open_for_book > 0,
        has_on_loan: on_loan_here > 0,
        open_total: u32::try_from(open_total).unwrap_or(u32::MAX),
    })
}

/// A book's row and copies, read under its lock.
struct Book {
    row: book_stock::Model,
    stock: Stock,
}

impl Book {
    async fn load(tx: &WriteTx, book_id: &str) -> Result<Option<Book>, DbErr> {
        tx.lock("book", book_id).await?;
        let Some(row) = book_stock::Entity::find_by_id(book_id.to_owned())
            .one(&**tx)
            .await?
        else {
            return Ok(None);
        };
        let (held, on_loan, waiting) = stock_counts(&**tx, book_id).await?;
        let as_i32 = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
        let stock = Stock {
            total: row.total_copies,
            held: as_i32(held),
            on_loan: as_i32(on_loan),
            waiting: as_i32(waiting),
        };
        Ok(Some(Book { row, stock }))
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
    pub async fn reserve(
        &self,
        caller: &Caller,
        book_id: Id,
        key: Option<IdempotencyKey>,
    ) -> ServiceResult<Reservation> {
        let mut tx = self.db.begin().await?;
        if let Some(key) = &key
            && let Some(done) = key.recall::<Reservation>(&tx).await?
        {
            return Ok(done);
        }
        let member = caller.member.as_str();
        let book_key = book_id.to_string();
        tx.lock("member", member).await?;
        let mut book = Book::load(&tx, &book_key)
            .await?
            .ok_or_else(|| unknown_book(&book_id))?;

        let standing = standing(&*tx, member, &book_key).await?;
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
        let availability = book.advance(&tx).await?;
        let row = reservations::ActiveModel {
            reservation_id: Set(Id::new().to_string()),
            book_id: Set(book_key.clone()),
            member_id: Set(member.to_owned()),
            status: Set(state.to_owned()),
            queue_seq: Set(availability.book_seq),
            pickup_deadline: Set(deadline),
            rental_id: Set(None),
            returned_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&*tx)
        .await?;
        outbox::stage(
            &mut tx,
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
            }),
        )
        .await?;
        let answer = to_proto(row, position);
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
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
        let mut tx = self.db.begin().await?;
        if let Some(key) = &key
            && let Some(done) = key.recall::<Reservation>(&tx).await?
        {
            return Ok(done);
        }
        let found = self.find_visible(&*tx, caller, reservation_id).await?;
        let mut book = Book::load(&tx, &found.book_id)
            .await?
            .ok_or_else(|| unknown_book_row(&found.book_id))?;
        // Re-read under the book's lock: the status may have moved meanwhile.
        let r = reservations::Entity::find_by_id(found.reservation_id.clone())
            .one(&*tx)
            .await?
            .ok_or_else(|| no_reservation(&found.reservation_id))?;
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
                let availability = book.advance(&tx).await?;
                let r = set_status(&tx, r, status::CANCELLED, now, |_| {}).await?;
                outbox::stage(
                    &mut tx,
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
                self.promote(&mut tx, &mut book, now).await?;
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
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        Ok(answer)
    }

    /// R3: while a copy is free and somebody waits, the head of the queue
    /// becomes READY with a fresh pickup deadline.
    async fn promote(
        &self,
        tx: &mut WriteTx,
        book: &mut Book,
        now: Timestamp,
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
            let r = set_status(tx, head, status::READY, now, |am| {
                am.pickup_deadline = Set(Some(deadline));
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
                }),
            )
            .await?;
        }
        Ok(())
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
        let owner = MemberId::parse(&r.member_id).map_err(anyhow::Error::msg)?;
        if !caller.may_see(&owner) {
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
        let mut tx = self.db.begin().await?;
        let book_key = book_id.to_string();
        let mut book = Book::load(&tx, &book_key)
            .await?
            .ok_or_else(|| unknown_book(&book_id))?;
        if let Some(done) = reservations::Entity::find()
            .filter(reservations::Column::RentalId.eq(rental_id.to_string()))
            .one(&*tx)
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
            .one(&*tx)
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
        let availability = book.advance(&tx).await?;
        let r = set_status(&tx, ready, status::FULFILLED, now, |am| {
            am.rental_id = Set(Some(rental_id.to_string()));
        })
        .await?;
        outbox::stage(
            &mut tx,
            PRODUCER,
            now,
            Body::ReservationFulfilled(ReservationFulfilled {
                reservation_id: r.reservation_id.clone(),
                book_id: r.book_id.clone(),
                member_id: r.member_id.clone(),
                rental_id: rental_id.to_string(),
                availability: Some(availability),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(to_proto(r, 0))
    }

    /// R8 on the desk's side: the rental's copy is back and goes to the next
    /// in line. Deduplicated by rental id, whether it arrives by RPC or by the
    /// BookReturned event.
    pub async fn record_return(&self, rental_id: Id) -> ServiceResult<RecordReturnResponse> {
        let mut tx = self.db.begin().await?;
        let answer = self.record_return_in(&mut tx, rental_id).await?;
        tx.commit().await?;
        Ok(answer)
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
        let r = reservations::Entity::find_by_id(found.reservation_id.clone())
            .one(&**tx)
            .await?
            .ok_or_else(|| no_reservation(&found.reservation_id))?;
        if let Some(at) = r.returned_at {
            return Ok(RecordReturnResponse {
                reservation_id: r.reservation_id,
                recorded_at: Some(time::to_proto(at)),
                already_recorded: true,
            });
        }
        let now = time::now();
        book.stock.on_loan -= 1;
        let availability = book.advance(tx).await?;
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
            }),
        )
        .await?;
        self.promote(tx, &mut book, now).await?;
        Ok(RecordReturnResponse {
            reservation_id: r.reservation_id,
            recorded_at: Some(time::to_proto(now)),
            already_recorded: false,
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
            self.promote(&mut tx, &mut book, now).await?;
            tx.commit().await?;
            expired += 1;
        }
        Ok(expired)
    }

    /// A book registered in the catalogue: its copies join circulation.
    pub async fn book_registered(
        &self,
        tx: &mut WriteTx,
        book_id: &str,
        total: i32,
    ) -> Result<(), DbErr> {
        self.set_total(tx, book_id, total).await
    }

    /// Copies added: the total grows and waiting members get them (R3).
    /// Totals are absolute, so a replayed event cannot add twice.
    pub async fn set_total(
        &self,
        tx: &mut WriteTx,
        book_id: &str,
        total: i32,
    ) -> Result<(), DbErr> {
        match Book::load(tx, book_id).await? {
            None => {
                book_stock::ActiveModel {
                    book_id: Set(book_id.to_owned()),
                    total_copies: Set(total),
                    book_seq: Set(0),
                }
                .insert(&**tx)
                .await?;
            }
            Some(mut book) if total > book.row.total_copies => {
                let mut row = book.row.clone().into_active_model();
                row.total_copies = Set(total);
                book.row = row.update(&**tx).await?;
                book.stock.total = total;
                self.promote(tx, &mut book, time::now()).await?;
            }
            Some(_) => {}
        }
        Ok(())
    }
}
