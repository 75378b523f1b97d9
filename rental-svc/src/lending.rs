//! Renting and returning, as a saga across two services (SPEC R6–R8).
//!
//! Rent: (1) a PENDING rental is committed, with the request id, once the
//! circuit breaker lets the desk be asked; (2) reserve-svc fulfils the
//! member's READY reservation, idempotently on the rental id; (3) the rental
//! becomes ACTIVE (or REJECTED on a refusal). If (2) gets no answer the rental
//! stays PENDING, the caller gets UNAVAILABLE, and the recovery sweep repeats
//! (2) until it gets one, so no FULFILLED reservation is left without an
//! ACTIVE rental or the other way round. An OK from the desk always makes the
//! rental ACTIVE, even after a racing refusal.
//!
//! Return: reserve-svc is told first (so the copy goes to the next in line at
//! once), then the rental is RETURNED with the confirmation. If the desk cannot
//! be reached the return still succeeds, PENDING, and reserve-svc completes it
//! from the BookReturned event; its ReturnRecorded event confirms it here.

use std::sync::Arc;
use std::time::Duration;

use rentalbook_plumbing::auth::{Caller, Role};
use rentalbook_plumbing::db::{Db, WriteTx};
use rentalbook_plumbing::error::{self, Reason, ServiceResult};
use rentalbook_plumbing::idempotency::IdempotencyKey;
use rentalbook_plumbing::ids::{Id, MemberId};
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_plumbing::{merged, outbox};
use rentalbook_proto::events::v1::{BookRented, BookReturned, envelope::Body};
use rentalbook_proto::rental::v1::{Rental, RentalStatus, ReturnConfirmation};
use rentalbook_proto::reserve::v1::RecordReturnResponse;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use tokio::time::Instant;

use crate::desk_client::{Admitted, CallError, DeskClient};
use crate::domain::{self, Policy, Refusal, confirmation, status};
use crate::store::rentals;

mod desk;

pub const PRODUCER: &str = "rental-svc";

#[derive(Clone)]
pub struct Lending {
    pub db: Db,
    pub desk: Arc<DeskClient>,
    pub policy: Policy,
}

pub fn to_proto(r: rentals::Model, now: Timestamp) -> Rental {
    let rental_status = match r.status.as_str() {
        status::PENDING => RentalStatus::Pending,
        status::ACTIVE => RentalStatus::Active,
        status::RETURNED => RentalStatus::Returned,
        status::REJECTED => RentalStatus::Rejected,
        status::LOST => RentalStatus::Lost,
        _ => RentalStatus::Unspecified,
    };
    let return_confirmation = match r.return_confirmation.as_deref() {
        Some(confirmation::PENDING) => ReturnConfirmation::Pending,
        Some(confirmation::CONFIRMED) => ReturnConfirmation::Confirmed,
        _ => ReturnConfirmation::Unspecified,
    };
    Rental {
        overdue: domain::overdue(&r.status, r.due_at, now),
        rental_id: r.rental_id,
        reservation_id: r.reservation_id.unwrap_or_default(),
        book_id: r.book_id,
        member_id: r.member_id,
        status: rental_status as i32,
        rented_at: time::opt_to_proto(r.rented_at),
        due_at: time::opt_to_proto(r.due_at),
        returned_at: time::opt_to_proto(r.returned_at),
        return_confirmation: return_confirmation as i32,
        barcode: r.barcode.unwrap_or_default(),
        renewals: r.renewals,
        renewals_left: 0,
    }
}

fn refusal(r: Refusal) -> error::Refusal {
    let message = r.to_string();
    match r {
        Refusal::TooManyActive(limit) => {
            error::Refusal::failed_precondition(Reason::TooManyRentals, message)
                .with("limit", limit)
        }
        Refusal::NotActive | Refusal::NotRenewable => {
            error::Refusal::failed_precondition(Reason::RentalNotActive, message)
        }
        Refusal::RenewalsUsedUp(max) => {
            error::Refusal::failed_precondition(Reason::RenewalsUsedUp, message).with("max", max)
        }
    }
}

fn no_rental(rental_id: impl std::fmt::Display) -> error::Refusal {
    error::Refusal::not_found(
        Reason::RentalNotFound,
        format!("no rental with id {rental_id}"),
    )
    .with("rentalId", rental_id)
}

async fn find<C: ConnectionTrait>(
    conn: &C,
    rental_id: &str,
) -> Result<Option<rentals::Model>, DbErr> {
    rentals::Entity::find_by_id(rental_id.to_owned())
        .one(conn)
        .await
}

/// What step (1) of Rent found or made.
enum Opened {
    /// Nothing left to ask the desk: the answer.
    Answer(Rental),
    /// A rental waiting for the desk (new, or left by an earlier attempt),
    /// with the breaker's leave to ask it.
    Pending(rentals::Model, Admitted),
}

impl Lending {
    /// A rental as answered, with the renewals it has left (R12).
    fn rental(&self, r: rentals::Model, now: Timestamp) -> Rental {
        let mut rental = to_proto(r, now);
        if rental.status() == RentalStatus::Active {
            rental.renewals_left =
                domain::renewals_left(u32::try_from(rental.renewals).unwrap_or(0), &self.policy)
                    as i32;
        }
        rental
    }

    /// R6: the caller takes home the book they have a READY reservation for.
    pub async fn rent(
        &self,
        caller: &Caller,
        book_id: Id,
        key: Option<IdempotencyKey>,
        deadline: Option<Instant>,
    ) -> ServiceResult<Rental> {
        match self
            .open(&caller.member, &book_id.to_string(), None, key.as_ref())
            .await?
        {
            Opened::Answer(rental) => Ok(rental),
            Opened::Pending(pending, admitted) => self.settle(pending, admitted, deadline).await,
        }
    }

    /// Step (1): the member's open rental of the book, or a new PENDING one.
    /// The request id is recalled and remembered in the same transaction, so
    /// it is taken exactly when a rental is, and a different request with it
    /// is refused before anything changes. The breaker is asked before the
    /// commit: while it is open nothing is written. A loan made at the desk
    /// (`barcode`) records the scanned item from the start, and a member
    /// may not take a second copy of a book they have.
    async fn open(
        &self,
        member: &MemberId,
        book_id: &str,
        barcode: Option<&str>,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Opened> {
        let tx = self.db.begin().await?;
        if let Some(key) = key
            && let Some(first) = key.recall::<Rental>(&tx).await?
        {
            // Release the transaction (SQLite's one writer) before going on.
            drop(tx);
            return self.resume(first).await;
        }
        tx.lock("member", member.as_str()).await?;
        // A merged book's id stands for the book it was merged into.
        let book_id = merged::resolve(&*tx, book_id).await?;
        let book_id = book_id.as_str();
        let open = rentals::Entity::find()
            .filter(rentals::Column::MemberId.eq(member.as_str()))
            .filter(rentals::Column::Status.is_in([status::PENDING, status::ACTIVE]))
            .all(&*tx)
            .await?;
        let now = time::now();
        let existing = open.iter().find(|r| r.book_id == book_id).cloned();
        if let Some(r) = &existing
            && r.status == status::ACTIVE
        {
            if let Some(scanned) = barcode
                && r.barcode.as_deref() != Some(scanned)
            {
                return Err(error::Refusal::failed_precondition(
                    Reason::AlreadyOnLoan,
                    "this member has this book on loan already",
                )
                .with("bookId", book_id)
                .into());
            }
            let answer = self.rental(r.clone(), now);
            if let Some(key) = key {
                key.remember(&tx, &answer).await?;
                tx.commit().await?;
            }
            return Ok(Opened::Answer(answer));
        }
        if let Some(r) = &existing
            && let Some(scanned) = barcode
            && r.barcode.as_deref() != Some(scanned)
        {
            // A loan of this book to the member is being settled with
            // another copy: going on with it would lend that copy, not the
            // one scanned. Once it is settled the scan is answered.
            return Err(error::unavailable_retry_after(
                format!(
                    "a loan of this book to this member is still being settled{}; try again in a moment",
                    r.barcode
                        .as_deref()
                        .map(|b| format!(" (copy {b})"))
                        .unwrap_or_default()
                ),
                std::time::Duration::from_secs(1),
            )
            .into());
        }
        if existing.is_none() {
            domain::may_open(open.len() as u32, &self.policy).map_err(refusal)?;
        }
        let admitted = self.desk.admit()?;
        let row = match existing {
            Some(r) => r,
            None => {
                rentals::ActiveModel {
                    rental_id: Set(Id::new().to_string()),
                    reservation_id: Set(None),
                    book_id: Set(book_id.to_owned()),
                    member_id: Set(member.to_string()),
                    status: Set(status::PENDING.to_owned()),
                    rented_at: Set(None),
                    due_at: Set(None),
                    returned_at: Set(None),
                    return_confirmation: Set(None),
                    barcode: Set(barcode.map(str::to_owned)),
                    renewals: Set(0),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(&*tx)
                .await?
            }
        };
        if let Some(key) = key {
            key.remember(&tx, &self.rental(row.clone(), now)).await?;
        }
        tx.commit().await?;
        Ok(Opened::Pending(row, admitted))
    }

    /// A Rent repeated with its request id goes on with the rental the first
    /// one opened, as it stands now.
    async fn resume(&self, first: Rental) -> ServiceResult<Opened> {
        let Some(r) = find(self.db.conn(), &first.rental_id).await? else {
            return Ok(Opened::Answer(first));
        };
        match r.status.as_str() {
            status::PENDING => Ok(Opened::Pending(r, self.desk.admit()?)),
            status::REJECTED => Err(error::Refusal::failed_precondition(
                Reason::NoReadyReservation,
                "no reservation was ready for you when this loan was asked for; \
                 reserve the book and wait until it is READY, then rent it again",
            )
            .with("bookId", &r.book_id)
            .into()),
            _ => Ok(Opened::Answer(self.rental(r, time::now()))),
        }
    }

    /// Steps (2) and (3) for a PENDING rental; also what the recovery sweep
    /// runs. Several may run for one rental at once (a repeated Rent, the
    /// sweep): each writes its outcome under the rental's lock, and an OK
    /// from the desk wins over a refusal written before it.
    pub async fn settle(
        &self,
        pending: rentals::Model,
        admitted: Admitted,
        deadline: Option<Instant>,
    ) -> ServiceResult<Rental> {
        let member = MemberId::parse(&pending.member_id).map_err(anyhow::Error::msg)?;
        let rental_id = Id::parse(&pending.rental_id).ok_or_else(|| {
            anyhow::anyhow!("stored rental id {} is malformed", pending.rental_id)
        })?;
        let answer = match &pending.barcode {
            // A loan made at the desk: R10 for the scanned item.
            Some(barcode) => {
                self.desk
                    .check_out_item(admitted, &member, barcode, rental_id, deadline)
                    .await
            }
            None => {
                self.desk
                    .fulfill(admitted, &member, &pending.book_id, rental_id, deadline)
                    .await
            }
        };
        match answer {
            Ok(reservation) => {
                let rental = self
                    .activate(&member, &pending.rental_id, &reservation)
                    .await?;
                Ok(self.rental(rental, time::now()))
            }
            Err(CallError::Refused(refusal)) => match self.reject(&pending.rental_id).await? {
                Some(won) => Ok(self.rental(won, time::now())),
                None => Err(refusal.into()),
            },
            Err(CallError::Unavailable(_)) => Err(self.desk.busy().into()),
        }
    }

    /// The desk fulfilled a reservation with this rental: it is ACTIVE, even
    /// if a racing settle's refusal made it REJECTED a moment before.
    async fn activate(
        &self,
        member: &MemberId,
        rental_id: &str,
        reservation: &rentalbook_proto::reserve::v1::Reservation,
    ) -> ServiceResult<rentals::Model> {
        let mut tx = self.db.begin().await?;
        // The member's lock first, as in step (1), which opens rentals.
        tx.lock("member", member.as_str()).await?;
        tx.lock("rental", rental_id).await?;
        let r = find(&*tx, rental_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("rental {rental_id} vanished"))?;
        if r.status != status::PENDING && r.status != status::REJECTED {
            return Ok(r);
        }
        let now = time::now();
        // The book the desk lent from: the one a merged book's id led to.
        let book_id = Some(reservation.book_id.clone())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| r.book_id.clone());
        if r.status == status::REJECTED {
            // The member may have opened another rental of the book since the
            // refusal; the desk refuses that one, since their reservation of
            // the book is fulfilled with this rental.
            rentals::Entity::update_many()
                .col_expr(rentals::Column::Status, Expr::value(status::REJECTED))
                .col_expr(rentals::Column::UpdatedAt, Expr::value(now))
                .filter(rentals::Column::MemberId.eq(member.as_str()))
                .filter(rentals::Column::BookId.is_in([&r.book_id, &book_id]))
                .filter(rentals::Column::Status.eq(status::PENDING))
                .exec(&*tx)
                .await?;
        }
        let due = domain::due_at(now, &self.policy);
        let mut am = r.into_active_model();
        am.status = Set(status::ACTIVE.to_owned());
        // A refused rental may have been anonymised as history meanwhile:
        // the loan is the member's.
        am.member_id = Set(member.to_string());
        am.book_id = Set(book_id);
        am.reservation_id = Set(Some(reservation.reservation_id.clone()));
        am.rented_at = Set(Some(now));
        am.due_at = Set(Some(due));
        am.barcode = Set(Some(reservation.barcode.clone()).filter(|b| !b.is_empty()));
        am.updated_at = Set(now);
        let r = am.update(&*tx).await?;
        outbox::stage(
            &mut tx,
            PRODUCER,
            now,
            Body::BookRented(BookRented {
                rental_id: r.rental_id.clone(),
                reservation_id: reservation.reservation_id.clone(),
                book_id: r.book_id.clone(),
                member_id: r.member_id.clone(),
                rented_at: Some(time::to_proto(now)),
                due_at: Some(time::to_proto(due)),
                barcode: reservation.barcode.clone(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(r)
    }

    /// The desk refused: a PENDING rental becomes REJECTED. Returns the rental
    /// instead when a racing settle's OK made it ACTIVE first.
    async fn reject(&self, rental_id: &str) -> ServiceResult<Option<rentals::Model>> {
        let tx = self.db.begin().await?;
        tx.lock("rental", rental_id).await?;
        let Some(r) = find(&*tx, rental_id).await? else {
            return Ok(None);
        };
        match r.status.as_str() {
            status::PENDING => {
                let mut am = r.into_active_model();
                am.status = Set(status::REJECTED.to_owned());
                am.updated_at = Set(time::now());
                am.update(&*tx).await?;
                tx.commit().await?;
                Ok(None)
            }
            status::REJECTED => Ok(None),
            _ => Ok(Some(r)),
        }
    }

    /// R7's recovery: settles rentals left PENDING for longer than `older_than`.
    pub async fn recover(&self, older_than: Duration) -> ServiceResult<usize> {
        let Some(_sweep) = self.db.exclusive("rent-recovery").await? else {
            return Ok(0);
        };
        let cutoff = time::now()
            - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::zero());
        let stale = rentals::Entity::find()
            .filter(rentals::Column::Status.eq(status::PENDING))
            .filter(rentals::Column::CreatedAt.lt(cutoff))
            .order_by_asc(rentals::Column::CreatedAt)
            .limit(200)
            .all(self.db.conn())
            .await?;
        let mut settled = 0;
        for r in stale {
            // While the breaker is open the desk is not asked; next round.
            let Ok(admitted) = self.desk.admit() else {
                break;
            };
            match self.settle(r, admitted, None).await {
                Ok(_) => settled += 1,
                Err(rentalbook_plumbing::error::ServiceError::Status(s))
                    if s.code() != tonic::Code::Unavailable =>
                {
                    settled += 1
                }
                Err(e) => return Err(e),
            }
        }
        Ok(settled)
    }

    /// R8: returns a rental at once.
    pub async fn return_rental(
        &self,
        caller: &Caller,
        rental_id: Id,
        key: Option<IdempotencyKey>,
        deadline: Option<Instant>,
    ) -> ServiceResult<Rental> {
        // The book is back the moment the member hands it in.
        let returned_at = time::now();
        let r = self.find_visible(caller, rental_id).await?;
        // A request id is checked before anything is answered, so one reused
        // for another rental is refused even when that one is returned.
        if let Some(key) = &key {
            let tx = self.db.begin().await?;
            if let Some(done) = key.recall::<Rental>(&tx).await? {
                return Ok(done);
            }
        }
        if !domain::may_return(&r.status).map_err(refusal)? {
            return Ok(self.rental(r, time::now()));
        }
        let confirmed = self.tell_the_desk(&r, deadline).await.is_some();
        let mut tx = self.db.begin().await?;
        let r = self
            .mark_returned(&mut tx, &rental_id.to_string(), returned_at, confirmed)
            .await?
            .ok_or_else(|| no_rental(rental_id))?;
        let answer = self.rental(r, time::now());
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        Ok(answer)
    }

    /// R8's first step: the desk records the return (and says who the copy
    /// is held for now). None when it cannot be told now: the BookReturned
    /// event will tell it.
    async fn tell_the_desk(
        &self,
        r: &rentals::Model,
        deadline: Option<Instant>,
    ) -> Option<RecordReturnResponse> {
        let rental_id = Id::parse(&r.rental_id)?;
        match self
            .desk
            .record_return(rental_id, &r.book_id, &r.member_id, deadline)
            .await
        {
            Ok(answer) => Some(answer),
            Err(CallError::Unavailable(_)) => None,
            Err(CallError::Refused(s)) => {
                // The desk knows no such loan: record the return anyway; the
                // event tells the desk and the consistency check shows it.
                tracing::error!(rental_id = %rental_id, code = ?s.code(), message = s.message(), "the lending desk refused a return");
                None
            }
        }
    }

    /// Marks a rental RETURNED (with its BookReturned event) if it is ACTIVE,
    /// or confirms a PENDING return. Returns the rental as it stands.
    pub async fn mark_returned(
        &self,
        tx: &mut WriteTx,
        rental_id: &str,
        at: Timestamp,
        confirmed: bool,
    ) -> Result<Option<rentals::Model>, DbErr> {
        tx.lock("rental", rental_id).await?;
        let Some(r) = find(&**tx, rental_id).await? else {
            return Ok(None);
        };
        let state = if confirmed {
            confirmation::CONFIRMED
        } else {
            confirmation::PENDING
        };
        match r.status.as_str() {
            status::ACTIVE => {
                let mut am = r.into_active_model();
                am.status = Set(status::RETURNED.to_owned());
                am.returned_at = Set(Some(at));
                am.return_confirmation = Set(Some(state.to_owned()));
                am.updated_at = Set(time::now());
                let r = am.update(&**tx).await?;
                let confirmation = if confirmed {
                    ReturnConfirmation::Confirmed
                } else {
                    ReturnConfirmation::Pending
                };
                outbox::stage(
                    tx,
                    PRODUCER,
                    at,
                    Body::BookReturned(BookReturned {
                        rental_id: r.rental_id.clone(),
                        book_id: r.book_id.clone(),
                        member_id: r.member_id.clone(),
                        returned_at: Some(time::to_proto(at)),
                        return_confirmation: confirmation as i32,
                        reservation_id: r.reservation_id.clone().unwrap_or_default(),
                        barcode: r.barcode.clone().unwrap_or_default(),
                    }),
                )
                .await?;
                Ok(Some(r))
            }
            status::RETURNED
                if confirmed
                    && r.return_confirmation.as_deref() != Some(confirmation::CONFIRMED) =>
            {
                let mut am = r.into_active_model();
                am.return_confirmation = Set(Some(confirmation::CONFIRMED.to_owned()));
                am.updated_at = Set(time::now());
                Ok(Some(am.update(&**tx).await?))
            }
            _ => Ok(Some(r)),
        }
    }

    /// A rental the caller may see: their own, or any for a librarian.
    /// Another member's is, to a member, no rental at all (SPEC §6): the
    /// same NOT_FOUND as an unknown id, so that ids cannot be probed.
    async fn find_visible(&self, caller: &Caller, rental_id: Id) -> ServiceResult<rentals::Model> {
        let not_found = || no_rental(rental_id);
        let r = find(self.db.conn(), &rental_id.to_string())
            .await?
            .ok_or_else(not_found)?;
        let visible = match MemberId::parse(&r.member_id) {
            Ok(owner) => caller.may_see(&owner),
            // A finished rental whose member erased it, or outlived the
            // retention (ids::ERASED_MEMBER): a librarian's only.
            Err(_) => caller.role != Role::Member,
        };
        if !visible {
            return Err(not_found().into());
        }
        Ok(r)
    }

    pub async fn get(&self, caller: &Caller, rental_id: Id) -> ServiceResult<Rental> {
        Ok(self.rental(self.find_visible(caller, rental_id).await?, time::now()))
    }

    pub async fn list(
        &self,
        member: &MemberId,
        active_only: bool,
        page_size: u64,
        after: Option<Id>,
    ) -> ServiceResult<(Vec<Rental>, String)> {
        let mut q = rentals::Entity::find()
            .filter(rentals::Column::MemberId.eq(member.as_str()))
            .order_by_asc(rentals::Column::RentalId);
        q = if active_only {
            q.filter(rentals::Column::Status.eq(status::ACTIVE))
        } else {
            q.filter(rentals::Column::Status.is_in([
                status::ACTIVE,
                status::RETURNED,
                status::PENDING,
            ]))
        };
        if let Some(after) = after {
            q = q.filter(rentals::Column::RentalId.gt(after.to_string()));
        }
        let mut rows = q.limit(page_size + 1).all(self.db.conn()).await?;
        let next = if rows.len() as u64 > page_size {
            rows.truncate(page_size as usize);
            rows.last().map(|r| r.rental_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let now = time::now();
        Ok((
            rows.into_iter().map(|r| self.rental(r, now)).collect(),
            next,
        ))
    }
}
