//! The circulation desk's side of check-out (R10), check-in (R11) and
//! renewal (R12): what rental-svc asks the desk about an item scanned at the
//! counter. Every decision runs under the book's lock like the others.

use super::*;

/// What a scanned copy of a book is doing, read under the book's lock.
struct Scanned {
    item: stored_items::Model,
    /// The reservation it serves (READY on the hold shelf, or on loan).
    serves: Option<reservations::Model>,
}

impl Desk {
    /// The item with a barcode and what it serves, or NOT_FOUND.
    pub async fn get_item(&self, barcode: &str) -> ServiceResult<Item> {
        let conn = self.db.conn();
        let item = items::by_barcode(conn, barcode)
            .await?
            .ok_or_else(|| unknown_item(barcode))?;
        let served = match &item.reservation_id {
            Some(id) => {
                reservations::Entity::find_by_id(id.clone())
                    .one(conn)
                    .await?
            }
            None => None,
        };
        Ok(item_to_proto(item, served.as_ref()))
    }

    async fn scan(&self, tx: &WriteTx, barcode: &str) -> ServiceResult<(Book, Scanned)> {
        let found = items::by_barcode(&**tx, barcode)
            .await?
            .ok_or_else(|| unknown_item(barcode))?;
        let book = Book::load(tx, &found.book_id)
            .await?
            .ok_or_else(|| unknown_book_row(&found.book_id))?;
        let item = items::by_barcode(&**tx, barcode)
            .await?
            .ok_or_else(|| unknown_item(barcode))?;
        let serves = match &item.reservation_id {
            Some(id) => {
                reservations::Entity::find_by_id(id.clone())
                    .one(&**tx)
                    .await?
            }
            None => None,
        };
        Ok((book, Scanned { item, serves }))
    }

    /// R10: lends the scanned item to the member at the desk with this
    /// rental. Their READY hold is fulfilled with it (the hold's trap moves
    /// to it when another copy was held); without one it is a walk-in loan,
    /// placed and fulfilled at once. A copy held for another member is lent
    /// only while another copy is free, which is then held for them instead.
    /// Idempotent on the rental id.
    pub async fn check_out_item(
        &self,
        member: &MemberId,
        barcode: &str,
        rental_id: Id,
    ) -> ServiceResult<Reservation> {
        let mut tx = self.db.begin().await?;
        tx.lock("member", member.as_str()).await?;
        let (mut book, scanned) = self.scan(&tx, barcode).await?;
        if let Some(done) = reservations::Entity::find()
            .filter(reservations::Column::RentalId.eq(rental_id.to_string()))
            .one(&*tx)
            .await?
        {
            if done.member_id != member.as_str() || done.book_id != book.row.book_id {
                return Err(error::Refusal::invalid_argument(
                    Reason::RequestIdReused,
                    "this rental_id already fulfilled another reservation",
                )
                .into());
            }
            return Ok(to_proto(done, 0));
        }
        let Scanned { item, serves } = scanned;
        if item.state != item_state::IN_SERVICE {
            return Err(error::Refusal::failed_precondition(
                Reason::ItemNotInService,
                format!(
                    "copy {barcode} is {} and cannot be lent",
                    item.state.to_lowercase()
                ),
            )
            .with("barcode", barcode)
            .with("state", &item.state)
            .into());
        }
        let now = time::now();
        let book_key = book.row.book_id.clone();
        let mine = reservations::Entity::find()
            .filter(reservations::Column::MemberId.eq(member.as_str()))
            .filter(reservations::Column::BookId.eq(&book_key))
            .filter(reservations::Column::Status.eq(status::READY))
            .one(&*tx)
            .await?
            .filter(|r| !domain::pickup_expired(r.pickup_deadline, now));
        match &serves {
            Some(r) if on_loan_row(r) => {
                return Err(error::Refusal::failed_precondition(
                    Reason::ItemOnLoan,
                    format!("copy {barcode} is on loan; check it in first"),
                )
                .with("barcode", barcode)
                .into());
            }
            Some(r)
                if mine
                    .as_ref()
                    .is_some_and(|m| m.reservation_id == r.reservation_id) => {}
            Some(other) => {
                // Held for someone else: lent only if another copy can be
                // held for them instead.
                let Some(instead) = items::free(&*tx, &book_key, None).await?.into_iter().next()
                else {
                    return Err(error::Refusal::failed_precondition(
                        Reason::ItemHeldForAnother,
                        format!(
                            "copy {barcode} is held for another member and no other copy is free"
                        ),
                    )
                    .with("barcode", barcode)
                    .into());
                };
                items::release(&*tx, &other.reservation_id, now).await?;
                items::attach(&*tx, &instead.item_id, &other.reservation_id, now).await?;
                self.announce_trap(&mut tx, &mut book, other.clone(), instead.barcode, now)
                    .await?;
            }
            None => {}
        }
        let lent = match mine {
            Some(ready) => {
                // The member's own hold: fulfilled with the scanned copy; the
                // copy it held (if another) goes back to circulation.
                let held = items::release(&*tx, &ready.reservation_id, now).await?;
                items::attach(&*tx, &item.item_id, &ready.reservation_id, now).await?;
                book.stock.held -= 1;
                book.stock.on_loan += 1;
                let availability = book.advance(&tx).await?;
                let r = set_status(&tx, ready, status::FULFILLED, now, |am| {
                    am.rental_id = Set(Some(rental_id.to_string()));
                    am.barcode = Set(Some(item.barcode.clone()));
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
                        barcode: item.barcode.clone(),
                    }),
                )
                .await?;
                let freed = held.filter(|h| *h != item.item_id);
                self.promote(&mut tx, &mut book, now, freed.as_deref())
                    .await?;
                r
            }
            None => {
                self.walk_in(&mut tx, &mut book, member, &item, rental_id, now)
                    .await?
            }
        };
        tx.commit().await?;
        Ok(to_proto(lent, 0))
    }

    /// A walk-in loan: a reservation placed and fulfilled in one step (no
    /// READY, no hold-ready notice). R2 holds: not a second loan of the
    /// book; the open-reservation limit does not apply.
    async fn walk_in(
        &self,
        tx: &mut WriteTx,
        book: &mut Book,
        member: &MemberId,
        item: &stored_items::Model,
        rental_id: Id,
        now: Timestamp,
    ) -> ServiceResult<reservations::Model> {
        let standing = standing(&**tx, member.as_str(), &book.row.book_id).await?;
        if standing.has_on_loan {
            return Err(error::Refusal::failed_precondition(
                Reason::AlreadyOnLoan,
                "this member has this book on loan already",
            )
            .with("bookId", &book.row.book_id)
            .into());
        }
        if standing.open_for_book {
            // WAITING while a copy is free for them cannot last: they would
            // have been promoted. Their hold is what they should pick up.
            return Err(error::Refusal::failed_precondition(
                Reason::ItemHeldForAnother,
                "this member waits for the book; lend them the copy held for them when it is READY",
            )
            .with("barcode", &item.barcode)
            .into());
        }
        book.stock.on_loan += 1;
        let availability = book.advance(tx).await?;
        let reservation_id = Id::new().to_string();
        items::attach(&**tx, &item.item_id, &reservation_id, now).await?;
        let row = reservations::ActiveModel {
            reservation_id: Set(reservation_id),
            book_id: Set(book.row.book_id.clone()),
            member_id: Set(member.to_string()),
            status: Set(status::FULFILLED.to_owned()),
            queue_seq: Set(availability.book_seq),
            pickup_deadline: Set(None),
            rental_id: Set(Some(rental_id.to_string())),
            returned_at: Set(None),
            barcode: Set(Some(item.barcode.clone())),
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
                book_id: row.book_id.clone(),
                member_id: row.member_id.clone(),
                status: ReservationStatus::Fulfilled as i32,
                queue_position: 0,
                pickup_deadline: None,
                availability: Some(availability),
                barcode: item.barcode.clone(),
                rental_id: rental_id.to_string(),
            }),
        )
        .await?;
        Ok(row)
    }

    /// R12: a loan may be renewed unless someone waits for the book with no
    /// free copy for them.
    pub async fn may_renew(&self, book_id: &str) -> ServiceResult<()> {
        let tx = self.db.begin().await?;
        let book = Book::load(&tx, book_id)
            .await?
            .ok_or_else(|| unknown_book_row(book_id))?;
        if book.stock.waiting > book.stock.free() {
            return Err(error::Refusal::failed_precondition(
                Reason::RenewalWaitedFor,
                format!(
                    "{} member(s) wait for this book; it cannot be renewed, please return it",
                    book.stock.waiting
                ),
            )
            .with("waiting", book.stock.waiting)
            .into());
        }
        Ok(())
    }

    /// R11 for an item rental-svc has no ACTIVE rental of: the loan the
    /// desk knows it is on (rental-svc returns that one), or a lost copy
    /// found again (in service, then held for the next in line or
    /// reshelved); otherwise nothing changes.
    pub async fn check_in_item(&self, barcode: &str) -> ServiceResult<CheckInItemResponse> {
        let mut tx = self.db.begin().await?;
        let (mut book, Scanned { item, serves }) = self.scan(&tx, barcode).await?;
        let mut answer = CheckInItemResponse {
            book_id: item.book_id.clone(),
            ..Default::default()
        };
        if let Some(loan) = serves.as_ref().filter(|r| on_loan_row(r)) {
            answer.on_loan_rental_id = loan.rental_id.clone().unwrap_or_default();
            return Ok(answer);
        }
        if item.state != item_state::LOST {
            return Ok(answer);
        }
        let now = time::now();
        items::set_state(&*tx, &item.item_id, item_state::IN_SERVICE, now).await?;
        let mut row = book.row.clone().into_active_model();
        row.total_copies = Set(book.row.total_copies + 1);
        book.row = row.update(&*tx).await?;
        book.stock.total += 1;
        let availability = book.advance(&tx).await?;
        outbox::stage(
            &mut tx,
            PRODUCER,
            now,
            Body::ItemFound(ItemFound {
                item_id: item.item_id.clone(),
                book_id: item.book_id.clone(),
                barcode: item.barcode.clone(),
                availability: Some(availability),
            }),
        )
        .await?;
        self.promote(&mut tx, &mut book, now, Some(&item.item_id))
            .await?;
        answer.found = true;
        if let Some(hold) = held_by(&*tx, &item.item_id).await? {
            answer.held_for_member_id = hold.member_id;
            answer.held_for_reservation_id = hold.reservation_id;
        }
        tx.commit().await?;
        Ok(answer)
    }
}

fn on_loan_row(r: &reservations::Model) -> bool {
    r.status == status::FULFILLED && r.returned_at.is_none()
}

pub(super) fn unknown_item(barcode: &str) -> error::Refusal {
    error::Refusal::not_found(
        Reason::ItemNotFound,
        format!("no copy has the barcode {barcode}"),
    )
    .with("barcode", barcode)
}

/// The READY hold an item is kept on the hold shelf for, if any.
pub(super) async fn held_by<C: ConnectionTrait>(
    conn: &C,
    item_id: &str,
) -> Result<Option<reservations::Model>, DbErr> {
    let Some(item) = stored_items::Entity::find_by_id(item_id.to_owned())
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    let Some(rid) = item.reservation_id else {
        return Ok(None);
    };
    Ok(reservations::Entity::find_by_id(rid)
        .one(conn)
        .await?
        .filter(|r| r.status == status::READY))
}
