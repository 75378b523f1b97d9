//! The circulation desk on rental-svc's side (SPEC §10): check-out of a
//! scanned copy to a member at the counter (R10), check-in of a copy whoever
//! borrowed it (R11), renewals (R12), and a loan closed by a lost copy (R13).
//!
//! Check-out is Rent's saga with the scanned barcode recorded on the PENDING
//! rental, so that the recovery sweep asks the desk for the same item.
//! Check-in is R8's return, found by barcode; the desk's answer says where
//! the copy goes. A renewal asks the desk synchronously, through the same
//! deadline and circuit breaker, and is never granted blindly.

use rentalbook_proto::events::v1::{LoanRenewed, RentalLost};
use rentalbook_proto::rental::v1::{CheckInAction, CheckInResponse};

use super::*;

impl Lending {
    /// R10: lends the scanned item to `member` (a librarian at the desk).
    pub async fn check_out(
        &self,
        caller: &Caller,
        member: &MemberId,
        barcode: &str,
        key: Option<IdempotencyKey>,
        deadline: Option<Instant>,
    ) -> ServiceResult<Rental> {
        caller.require_librarian("lend copies at the desk")?;
        let item = match self.desk.get_item(barcode, deadline).await {
            Ok(item) => item,
            Err(CallError::Refused(s)) => return Err(s.into()),
            Err(CallError::Unavailable(_)) => return Err(self.desk.busy().into()),
        };
        match self
            .open(member, &item.book_id, Some(barcode), key.as_ref())
            .await?
        {
            Opened::Answer(rental) => Ok(rental),
            Opened::Pending(pending, admitted) => self.settle(pending, admitted, deadline).await,
        }
    }

    /// R11: the copy is back at the desk. Its ACTIVE rental is returned,
    /// whoever borrowed it, and the answer says where the copy goes: the
    /// hold shelf for the next in line, the open shelf, or aside while the
    /// desk cannot be reached (the return completes when it can). A copy not
    /// on loan changes nothing, unless it was lost: then it is found again.
    pub async fn check_in(
        &self,
        caller: &Caller,
        barcode: &str,
        key: Option<IdempotencyKey>,
        deadline: Option<Instant>,
    ) -> ServiceResult<CheckInResponse> {
        caller.require_librarian("check copies in")?;
        if let Some(key) = &key {
            let tx = self.db.begin().await?;
            if let Some(done) = key.recall::<CheckInResponse>(&tx).await? {
                return Ok(done);
            }
        }
        let returned_at = time::now();
        let mut lent = rentals::Entity::find()
            .filter(rentals::Column::Barcode.eq(barcode))
            .filter(rentals::Column::Status.eq(status::ACTIVE))
            .one(self.db.conn())
            .await?;
        if lent.is_none() {
            // Not lent with this barcode here: a loan made before copies had
            // barcodes, a lost copy, or a copy on the shelf.
            let desk = match self.desk.check_in_item(barcode, deadline).await {
                Ok(answer) => answer,
                Err(CallError::Refused(s)) => return Err(s.into()),
                Err(CallError::Unavailable(_)) => return Err(self.desk.busy().into()),
            };
            if desk.on_loan_rental_id.is_empty() {
                let action = if desk.held_for_member_id.is_empty() {
                    if desk.found {
                        CheckInAction::Reshelve
                    } else {
                        CheckInAction::NotOnLoan
                    }
                } else {
                    CheckInAction::HoldShelf
                };
                let answer = CheckInResponse {
                    action: action as i32,
                    barcode: barcode.to_owned(),
                    book_id: desk.book_id,
                    rental: None,
                    held_for_member_id: desk.held_for_member_id,
                    held_for_reservation_id: desk.held_for_reservation_id,
                    found: desk.found,
                };
                return self.remember_check_in(key.as_ref(), answer).await;
            }
            lent = find(self.db.conn(), &desk.on_loan_rental_id)
                .await?
                .filter(|r| r.status == status::ACTIVE);
        }
        let Some(r) = lent else {
            // The desk's loan was returned here a moment ago.
            return Err(error::Refusal::failed_precondition(
                Reason::RentalNotActive,
                format!("copy {barcode} was checked in already"),
            )
            .with("barcode", barcode)
            .into());
        };
        let recorded = self.tell_the_desk(&r, deadline).await;
        let mut tx = self.db.begin().await?;
        let r = self
            .mark_returned(&mut tx, &r.rental_id, returned_at, recorded.is_some())
            .await?
            .ok_or_else(|| no_rental(&r.rental_id))?;
        let desk = recorded.unwrap_or_default();
        let action = if desk.reservation_id.is_empty() {
            CheckInAction::SetAside
        } else if desk.held_for_member_id.is_empty() {
            CheckInAction::Reshelve
        } else {
            CheckInAction::HoldShelf
        };
        let answer = CheckInResponse {
            action: action as i32,
            barcode: barcode.to_owned(),
            book_id: r.book_id.clone(),
            rental: Some(self.rental(r, time::now())),
            held_for_member_id: desk.held_for_member_id,
            held_for_reservation_id: desk.held_for_reservation_id,
            found: false,
        };
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        Ok(answer)
    }

    async fn remember_check_in(
        &self,
        key: Option<&IdempotencyKey>,
        answer: CheckInResponse,
    ) -> ServiceResult<CheckInResponse> {
        if let Some(key) = key {
            let tx = self.db.begin().await?;
            key.remember(&tx, &answer).await?;
            tx.commit().await?;
        }
        Ok(answer)
    }

    /// R12: the borrower or a librarian renews an ACTIVE loan (overdue
    /// included). The desk is asked first whether anyone waits; while it
    /// cannot answer the renewal is refused with a retry hint, never granted.
    pub async fn renew(
        &self,
        caller: &Caller,
        rental_id: Id,
        key: Option<IdempotencyKey>,
        deadline: Option<Instant>,
    ) -> ServiceResult<Rental> {
        let r = self.find_visible(caller, rental_id).await?;
        if let Some(key) = &key {
            let tx = self.db.begin().await?;
            if let Some(done) = key.recall::<Rental>(&tx).await? {
                return Ok(done);
            }
        }
        let renewals = |r: &rentals::Model| u32::try_from(r.renewals).unwrap_or(0);
        domain::renewed(&r.status, renewals(&r), r.due_at, time::now(), &self.policy)
            .map_err(refusal)?;
        match self.desk.may_renew(rental_id, &r.book_id, deadline).await {
            Ok(()) => {}
            Err(CallError::Refused(s)) => return Err(s.into()),
            Err(CallError::Unavailable(_)) => return Err(self.desk.busy().into()),
        }
        let mut tx = self.db.begin().await?;
        tx.lock("rental", &r.rental_id).await?;
        let r = find(&*tx, &r.rental_id)
            .await?
            .ok_or_else(|| no_rental(rental_id))?;
        let now = time::now();
        let due = domain::renewed(&r.status, renewals(&r), r.due_at, now, &self.policy)
            .map_err(refusal)?;
        let count = r.renewals + 1;
        let mut am = r.into_active_model();
        am.due_at = Set(Some(due));
        am.renewals = Set(count);
        am.updated_at = Set(now);
        let r = am.update(&*tx).await?;
        outbox::stage(
            &mut tx,
            PRODUCER,
            now,
            Body::LoanRenewed(LoanRenewed {
                rental_id: r.rental_id.clone(),
                book_id: r.book_id.clone(),
                member_id: r.member_id.clone(),
                reservation_id: r.reservation_id.clone().unwrap_or_default(),
                due_at: Some(time::to_proto(due)),
                renewals: count,
                renewed_by: caller.member.to_string(),
            }),
        )
        .await?;
        let answer = self.rental(r, now);
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        Ok(answer)
    }

    /// R13: the desk marked the copy of an ACTIVE rental lost; the rental
    /// is closed as LOST. A rental in any other state is left as it is.
    pub async fn lost(
        &self,
        tx: &mut WriteTx,
        rental_id: &str,
        at: Timestamp,
    ) -> Result<(), DbErr> {
        tx.lock("rental", rental_id).await?;
        let Some(r) = find(&**tx, rental_id).await? else {
            return Ok(());
        };
        if r.status != status::ACTIVE {
            return Ok(());
        }
        let mut am = r.into_active_model();
        am.status = Set(status::LOST.to_owned());
        am.updated_at = Set(time::now());
        let r = am.update(&**tx).await?;
        outbox::stage(
            tx,
            PRODUCER,
            at,
            Body::RentalLost(RentalLost {
                rental_id: r.rental_id.clone(),
                book_id: r.book_id.clone(),
                member_id: r.member_id.clone(),
                reservation_id: r.reservation_id.clone().unwrap_or_default(),
                barcode: r.barcode.clone().unwrap_or_default(),
                lost_at: Some(time::to_proto(at)),
            }),
        )
        .await?;
        Ok(())
    }
}
