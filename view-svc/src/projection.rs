//! The projection: every domain event, applied to the read model inside the
//! transaction that records it in the inbox; then the members whose page
//! changed, and the desk's lists, are told.
//!
//! Replicas share the durable consumer, so two events of one journey may be
//! applied at the same moment and commit in either order. Each change reads,
//! decides and writes a journey holding that journey's lock (a transaction
//! advisory lock on PostgreSQL, which the consumer takes for a whole batch in
//! one order, see [`EventHandler::locks`]; SQLite has one writer), so no
//! change is decided on a row another one is rewriting. And every field only
//! moves one way, so the order in which replicas commit does not show:
//!
//! - the hold (WAITING or READY, the copy held and when) is the one told by
//!   the hold event with the highest `book_seq` ([`domain::hold_wins`]): a
//!   requeue, the one move backwards, is simply the book's later change;
//! - past the hold the stage only moves forward ([`domain::advance`]) and
//!   wins over any hold event;
//! - the queue order keeps the earliest placement, the pickup and due dates
//!   the latest, the renewals the highest count, the rental and the copy
//!   lent the first one set, the moment the copy was freed at the desk the
//!   latest, the confirmation goes from PENDING to CONFIRMED;
//! - each step is written once, except that a step's own event times it
//!   after a stand-in did, and that READY, REQUEUED and RENEWED, which may
//!   happen more than once, keep the latest time;
//! - the moment a journey finished is its return's, or that of the one
//!   event that lost, cancelled or expired it ([`domain::finished_at`]).
//!
//! Notices (NoticeSent) are listed on the member's page; NoticesRead reads
//! those made up to its moment, and the latest such moment is kept so that a
//! notice applied after it is read too. HistoryErased erases the member's
//! finished history ([`privacy`]): an erased journey's later events are
//! dropped, and a journey finished by its moment through an event applied
//! after it goes then. Every change of a member's journeys and notices holds
//! the member's lock besides the journey's, so that no erasure is decided
//! while one of them is being rewritten.

use std::sync::Arc;

use async_trait::async_trait;
use rentalbook_plumbing::consumer::{EventHandler, Poison};
use rentalbook_plumbing::db::WriteTx;
use rentalbook_plumbing::merged;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::{
    Availability, Envelope, NoticeSent, QueuePlace, envelope::Body,
};
use rentalbook_proto::rental::v1::ReturnConfirmation;
use rentalbook_proto::reserve::v1::ReservationStatus;
use rentalbook_proto::view::v1::StepKind;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, IntoActiveModel, QueryFilter, QuerySelect,
    Set,
};

use crate::domain::{self, stage};
use crate::staff;
use crate::store::{journeys, notices, notices_read, steps, titles};
use crate::watch::Watchers;
use crate::{privacy, rebuild};

pub struct Projection {
    pub watchers: Arc<Watchers>,
}

/// What a hold event (WAITING or READY) says, at its `book_seq`.
struct Hold<'a> {
    stage: &'static str,
    seq: i64,
    /// The copy held (READY), empty when none is.
    barcode: &'a str,
}

/// What an event says about one journey.
#[derive(Default)]
struct Change<'a> {
    reservation_id: &'a str,
    member_id: &'a str,
    book_id: &'a str,
    /// A stage past the hold (RENTED and on).
    stage: Option<&'static str>,
    hold: Option<Hold<'a>>,
    queue_seq: Option<i64>,
    /// The copy lent.
    loan_barcode: Option<&'a str>,
    renewals: Option<i32>,
    /// The book_seq at which the journey's copy was freed at the desk.
    release_seq: Option<i64>,
    pickup_deadline: Option<Timestamp>,
    rental_id: Option<&'a str>,
    due_at: Option<Timestamp>,
    returned_at: Option<Timestamp>,
    confirmed: Option<bool>,
    steps: Vec<StepKind>,
    /// The step this event times even when another event wrote it first as
    /// a stand-in: the return (BookReturned) and its confirmation
    /// (ReturnRecorded) are each told by two events, one of them their own.
    owns: Option<StepKind>,
}

fn seq(a: &Option<Availability>) -> Option<i64> {
    a.as_ref().map(|a| a.book_seq)
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<Timestamp> {
    t.as_ref().and_then(time::from_proto)
}

fn hold<'a>(stage: &'static str, a: &Option<Availability>, barcode: &'a str) -> Option<Hold<'a>> {
    Some(Hold {
        stage,
        seq: seq(a).unwrap_or(0),
        barcode: if stage == stage::READY { barcode } else { "" },
    })
}

fn lent(barcode: &str) -> Option<&str> {
    Some(barcode).filter(|b| !b.is_empty())
}

fn change_of(body: &Body) -> Option<Change<'_>> {
    Some(match body {
        Body::ReservationPlaced(e) => {
            let base = Change {
                reservation_id: &e.reservation_id,
                member_id: &e.member_id,
                book_id: &e.book_id,
                queue_seq: seq(&e.availability),
                ..Default::default()
            };
            if e.status == ReservationStatus::Fulfilled as i32 {
                // A walk-in loan at the desk (R10): placed and lent at
                // once, never READY.
                Change {
                    stage: Some(stage::RENTED),
                    rental_id: Some(&e.rental_id),
                    loan_barcode: lent(&e.barcode),
                    steps: vec![StepKind::Reserved],
                    ..base
                }
            } else if e.status == ReservationStatus::Ready as i32 {
                Change {
                    hold: hold(stage::READY, &e.availability, &e.barcode),
                    pickup_deadline: ts(&e.pickup_deadline),
                    steps: vec![StepKind::Reserved, StepKind::Ready],
                    ..base
                }
            } else {
                Change {
                    hold: hold(stage::WAITING, &e.availability, ""),
                    steps: vec![StepKind::Reserved],
                    ..base
                }
            }
        }
        Body::ReservationReady(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            hold: hold(stage::READY, &e.availability, &e.barcode),
            pickup_deadline: ts(&e.pickup_deadline),
            steps: vec![StepKind::Ready],
            ..Default::default()
        },
        // The copy held was withdrawn or lost and none was free: WAITING at
        // the head of the queue (its queue order is the placement's, older
        // than everyone's behind it).
        Body::ReservationRequeued(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            hold: hold(stage::WAITING, &e.availability, ""),
            steps: vec![StepKind::Requeued],
            ..Default::default()
        },
        // Another copy is held for the READY hold; the deadline stays.
        Body::ReservationRetrapped(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            hold: hold(stage::READY, &e.availability, &e.barcode),
            ..Default::default()
        },
        Body::ReservationCancelled(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::CANCELLED),
            // A READY hold's copy comes off the hold shelf.
            release_seq: (e.previous_status == ReservationStatus::Ready as i32)
                .then(|| seq(&e.availability))
                .flatten(),
            steps: vec![StepKind::Cancelled],
            ..Default::default()
        },
        Body::ReservationExpired(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::EXPIRED),
            release_seq: seq(&e.availability),
            steps: vec![StepKind::Expired],
            ..Default::default()
        },
        Body::ReservationFulfilled(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::RENTED),
            rental_id: Some(&e.rental_id),
            loan_barcode: lent(&e.barcode),
            ..Default::default()
        },
        Body::BookRented(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::RENTED),
            rental_id: Some(&e.rental_id),
            loan_barcode: lent(&e.barcode),
            due_at: ts(&e.due_at),
            steps: vec![StepKind::Rented],
            ..Default::default()
        },
        // R12: due later; the loan is active (an early event of it).
        Body::LoanRenewed(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::RENTED),
            rental_id: Some(&e.rental_id),
            due_at: ts(&e.due_at),
            renewals: Some(e.renewals),
            steps: vec![StepKind::Renewed],
            ..Default::default()
        },
        // R13: the loan is closed, its copy lost.
        Body::RentalLost(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::LOST),
            rental_id: Some(&e.rental_id),
            loan_barcode: lent(&e.barcode),
            steps: vec![StepKind::Lost],
            ..Default::default()
        },
        Body::BookReturned(e) => {
            let confirmed = e.return_confirmation == ReturnConfirmation::Confirmed as i32;
            Change {
                reservation_id: &e.reservation_id,
                member_id: &e.member_id,
                book_id: &e.book_id,
                stage: Some(stage::RETURNED),
                rental_id: Some(&e.rental_id),
                loan_barcode: lent(&e.barcode),
                returned_at: ts(&e.returned_at),
                confirmed: Some(confirmed),
                steps: if confirmed {
                    vec![StepKind::Returned, StepKind::ReturnConfirmed]
                } else {
                    vec![StepKind::Returned]
                },
                owns: Some(StepKind::Returned),
                ..Default::default()
            }
        }
        // The copy is back at the desk, so the book was returned: that step
        // shows now and BookReturned, when it comes, sets its exact time.
        // The desk's record is the confirmation, whatever BookReturned said.
        Body::ReturnRecorded(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::RETURNED),
            rental_id: Some(&e.rental_id),
            loan_barcode: lent(&e.barcode),
            release_seq: seq(&e.availability),
            confirmed: Some(true),
            steps: vec![StepKind::Returned, StepKind::ReturnConfirmed],
            owns: Some(StepKind::ReturnConfirmed),
            ..Default::default()
        },
        // Items: what they do to holds and loans comes as reservation and
        // rental events of their own (re-trap, requeue, RentalLost).
        Body::BookRegistered(_)
        | Body::CopiesAdded(_)
        | Body::BookUpdated(_)
        | Body::ItemsRegistered(_)
        | Body::ItemWithdrawn(_)
        | Body::ItemLost(_)
        | Body::ItemFound(_)
        | Body::BooksMerged(_)
        | Body::QueuesMerged(_) => return None,
        // Notices and erasure change no journey: see `member_event`.
        Body::NoticeSent(_) | Body::NoticesRead(_) | Body::HistoryErased(_) => return None,
    })
}

/// Steps that may happen more than once in a journey: the latest time
/// stands, whatever order their events come in.
fn keeps_latest(kind: StepKind) -> bool {
    matches!(
        kind,
        StepKind::Ready | StepKind::Requeued | StepKind::Renewed
    )
}

/// The book, title and revision an event tells: BookRegistered the title
/// as registered (revision 0), BookUpdated a librarian's correction.
fn title_of(body: &Body) -> Option<(&str, &str, i64)> {
    match body {
        Body::BookRegistered(e) => Some((&e.book_id, &e.title, 0)),
        Body::BookUpdated(e) => Some((&e.book_id, &e.title, e.revision)),
        _ => None,
    }
}

/// The journey after a change: each field moves one way only, so changes
/// give the same journey in whatever order they come.
fn merged(j: &journeys::Model, c: &Change<'_>, at: Timestamp) -> journeys::Model {
    let confirmed =
        j.return_confirmation.as_deref() == Some(CONFIRMED) || c.confirmed == Some(true);
    let mut next = j.clone();
    if let Some(h) = &c.hold {
        let known = (!j.stage.is_empty()).then(|| {
            let held = if j.trapped_at.is_some() {
                stage::READY
            } else {
                stage::WAITING
            };
            (j.stage_seq, held)
        });
        if domain::hold_wins(known, h.stage, h.seq) {
            next.stage = domain::hold_stage(&j.stage, h.stage).to_owned();
            next.stage_seq = h.seq;
            next.hold_barcode = h.barcode.to_owned();
            next.trapped_at = (h.stage == stage::READY).then_some(at);
        }
    }
    if let Some(after) = c.stage {
        next.stage = domain::advance(&next.stage, after).to_owned();
    }
    // BookReturned knows when the book came back; ReturnRecorded, which
    // may come first, stands in until then.
    let returned_at = c
        .returned_at
        .or(j.returned_at)
        .or_else(|| (c.confirmed == Some(true)).then_some(at));
    let finished_at = domain::finished_at(&j.stage, j.finished_at, &next.stage, returned_at, at);
    journeys::Model {
        // The placement's book_seq; the earliest if a replay tells another.
        queue_seq: c.queue_seq.map_or(j.queue_seq, |q| q.min(j.queue_seq)),
        // Shown only while READY, so a late hold's deadline after the loan
        // changes nothing a member sees; a hold READY again after a requeue
        // has a later one.
        pickup_deadline: j.pickup_deadline.max(c.pickup_deadline),
        // A reservation is fulfilled by one rental.
        rental_id: j
            .rental_id
            .clone()
            .or_else(|| c.rental_id.filter(|r| !r.is_empty()).map(str::to_owned)),
        // Every event of a loan names the same copy.
        loan_barcode: if j.loan_barcode.is_empty() {
            c.loan_barcode.unwrap_or_default().to_owned()
        } else {
            j.loan_barcode.clone()
        },
        due_at: j.due_at.max(c.due_at),
        renewals: c.renewals.map_or(j.renewals, |r| r.max(j.renewals)),
        release_seq: j.release_seq.max(c.release_seq),
        returned_at,
        finished_at,
        return_confirmation: if confirmed {
            Some(CONFIRMED.to_owned())
        } else if c.confirmed.is_some() {
            Some(PENDING.to_owned())
        } else {
            j.return_confirmation.clone()
        },
        ..next
    }
}

const CONFIRMED: &str = "CONFIRMED";
const PENDING: &str = "PENDING";

/// The scope of a journey's lock; its key is the reservation id.
const JOURNEY_LOCK: &str = "journey";

/// Applies one journey change; the journey's lock is held.
async fn apply_change(tx: &WriteTx, c: Change<'_>, at: Timestamp) -> Result<(), DbErr> {
    if c.reservation_id.is_empty() {
        return Ok(());
    }
    let db = &**tx;
    let found = journeys::Entity::find_by_id(c.reservation_id.to_owned())
        .one(db)
        .await?;
    let (j, new) = match found {
        Some(j) => (j, false),
        // An event of an erased journey, late or sent again, brings none
        // of it back.
        None if privacy::was_erased(db, c.reservation_id).await? => return Ok(()),
        None => (first_seen(db, &c).await?, true),
    };
    let next = merged(&j, &c, at);
    let finished = domain::is_finished(&next.stage)
        .then_some(next.finished_at)
        .flatten();
    let member = next.member_id.clone();
    if new {
        // Inserted as it stands after this first event, in one statement;
        // the journey's lock is held, so nobody inserted it meanwhile.
        journeys::Entity::insert(next.into_active_model())
            .exec_without_returning(db)
            .await?;
    } else if next != j {
        // The book is the journey's first event's (or the one it was
        // merged into), never rewritten here: a merge of books moves it.
        let mut am = next.into_active_model().reset_all();
        am.book_id = sea_orm::ActiveValue::NotSet;
        am.update(db).await?;
    }
    for kind in c.steps {
        // The return's own time, the same in every BookReturned of a rental,
        // so one sent again later changes nothing.
        let at = match (kind, c.returned_at) {
            (StepKind::Returned, Some(returned_at)) => returned_at,
            _ => at,
        };
        let step = steps::Entity::insert(steps::ActiveModel {
            reservation_id: Set(c.reservation_id.to_owned()),
            kind: Set(kind as i32),
            at: Set(at),
        });
        let on_conflict = if c.owns == Some(kind) {
            OnConflict::columns([steps::Column::ReservationId, steps::Column::Kind])
                .update_column(steps::Column::At)
                .to_owned()
        } else if keeps_latest(kind) {
            OnConflict::columns([steps::Column::ReservationId, steps::Column::Kind])
                .update_column(steps::Column::At)
                .action_and_where(steps::Column::At.lt(at))
                .to_owned()
        } else {
            OnConflict::columns([steps::Column::ReservationId, steps::Column::Kind])
                .do_nothing()
                .to_owned()
        };
        step.on_conflict(on_conflict)
            .exec_without_returning(db)
            .await?;
    }
    // A journey finished by an event applied after its member's erasure,
    // at or before the erasure's moment, goes as the erasure took the
    // others.
    if let Some(finished) = finished
        && let Some(up_to) = privacy::erased_up_to(db, &member).await?
        && finished <= up_to
    {
        privacy::erase_member(tx, &member, up_to).await?;
    }
    Ok(())
}

/// NoticeSent: the notice is on the member's page, read already if the
/// member read their notices up to a later moment (a NoticesRead applied
/// first); a notice made before the member's erasure and about no open
/// journey goes as the erasure took the others.
async fn notice_sent(tx: &WriteTx, e: &NoticeSent, at: Timestamp) -> Result<(), DbErr> {
    let db = &**tx;
    let read_up_to = notices_read::Entity::find_by_id(e.member_id.clone())
        .one(db)
        .await?
        .map(|r| r.up_to);
    notices::Entity::insert(notices::ActiveModel {
        notice_id: Set(e.notice_id.clone()),
        member_id: Set(e.member_id.clone()),
        kind: Set(e.kind),
        book_id: Set(e.book_id.clone()),
        book_title: Set(e.book_title.clone()),
        barcode: Set(e.barcode.clone()),
        deadline: Set(ts(&e.deadline)),
        reservation_id: Set(e.reservation_id.clone()),
        rental_id: Set(e.rental_id.clone()),
        created_at: Set(at),
        read: Set(read_up_to.is_some_and(|up_to| at <= up_to)),
    })
    .on_conflict(
        OnConflict::column(notices::Column::NoticeId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    if let Some(up_to) = privacy::erased_up_to(db, &e.member_id).await?
        && at <= up_to
    {
        privacy::erase_member(tx, &e.member_id, up_to).await?;
    }
    Ok(())
}

/// NoticesRead: the member's notices made at or before `up_to` are read,
/// and so are those whose NoticeSent is applied later (the latest moment
/// is kept).
async fn notices_read(tx: &WriteTx, member: &str, up_to: Timestamp) -> Result<(), DbErr> {
    let db = &**tx;
    notices_read::Entity::insert(notices_read::ActiveModel {
        member_id: Set(member.to_owned()),
        up_to: Set(up_to),
    })
    .on_conflict(
        OnConflict::column(notices_read::Column::MemberId)
            .update_column(notices_read::Column::UpTo)
            .action_and_where(notices_read::Column::UpTo.lt(up_to))
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    notices::Entity::update_many()
        .col_expr(notices::Column::Read, Expr::val(true))
        .filter(notices::Column::MemberId.eq(member))
        .filter(notices::Column::CreatedAt.lte(up_to))
        .filter(notices::Column::Read.eq(false))
        .exec(db)
        .await?;
    Ok(())
}

/// The member whose notices or history an event is about: NoticeSent,
/// NoticesRead and HistoryErased.
fn member_event(body: &Body) -> Option<&str> {
    match body {
        Body::NoticeSent(e) => Some(&e.member_id),
        Body::NoticesRead(e) => Some(&e.member_id),
        Body::HistoryErased(e) => Some(&e.member_id),
        _ => None,
    }
}

/// A journey seen first through this change (events of two producers may
/// cross, so it may be a later one): it starts empty, for the book its id
/// leads to now.
/// A journey not seen before, as it stands before its first event: the
/// book is the one the event names, or the one it was merged into.
async fn first_seen<C: sea_orm::ConnectionTrait>(
    db: &C,
    c: &Change<'_>,
) -> Result<journeys::Model, DbErr> {
    let book_id = merged::resolve(db, c.book_id).await?;
    Ok(journeys::Model {
        reservation_id: c.reservation_id.to_owned(),
        member_id: c.member_id.to_owned(),
        book_id,
        stage: String::new(),
        queue_seq: i64::MAX,
        pickup_deadline: None,
        rental_id: None,
        due_at: None,
        returned_at: None,
        return_confirmation: None,
        stage_seq: 0,
        hold_barcode: String::new(),
        trapped_at: None,
        loan_barcode: String::new(),
        renewals: 0,
        release_seq: None,
        finished_at: None,
    })
}

/// BooksMerged and the desk's QueuesMerged: journeys of the merged books
/// are the kept book's (both events move them, so a journey the first one
/// missed while it was being made is moved by the second); QueuesMerged
/// also gives the waiting ones their places in the merged queue.
async fn merge_books(
    tx: &WriteTx,
    into: &str,
    merged_ids: &[String],
    waiting: &[QueuePlace],
) -> Result<(), DbErr> {
    let db = &**tx;
    merged::record(db, into, merged_ids).await?;
    journeys::Entity::update_many()
        .col_expr(journeys::Column::BookId, Expr::val(into))
        .filter(journeys::Column::BookId.is_in(merged_ids.iter().cloned()))
        .exec(db)
        .await?;
    for place in waiting {
        journeys::Entity::update_many()
            .col_expr(journeys::Column::QueueSeq, Expr::val(place.queue_seq))
            .filter(journeys::Column::ReservationId.eq(&place.reservation_id))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// The book a merge event keeps, if the event is one.
fn merge_of(body: &Body) -> Option<&str> {
    match body {
        Body::BooksMerged(e) => Some(&e.into_book_id),
        Body::QueuesMerged(e) => Some(&e.into_book_id),
        _ => None,
    }
}

#[async_trait]
impl EventHandler for Projection {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        // The consumer took them for the whole batch already; taking them
        // again costs nothing and keeps the order (journeys, then the
        // rebuild's lock) for any other caller.
        for (scope, key) in self.locks(event) {
            tx.lock(scope, &key).await?;
        }
        rebuild::wait_for_rebuild(tx).await?;
        let Some(body) = &event.body else {
            return Ok(());
        };
        let at = ts(&event.occurred_at).unwrap_or_else(time::now);
        if let Some((book_id, title, revision)) = title_of(body) {
            // One statement, so replicas applying a book's events at once
            // need no lock: the newest revision wins in any order.
            titles::Entity::insert(titles::ActiveModel {
                book_id: Set(book_id.to_owned()),
                title: Set(title.to_owned()),
                revision: Set(revision),
            })
            .on_conflict(
                OnConflict::column(titles::Column::BookId)
                    .update_columns([titles::Column::Title, titles::Column::Revision])
                    .action_and_where(titles::Column::Revision.lt(revision))
                    .to_owned(),
            )
            .exec_without_returning(&**tx)
            .await?;
            return Ok(());
        }
        match body {
            Body::NoticeSent(e) => {
                if e.notice_id.is_empty() || e.member_id.is_empty() {
                    return Err(Poison::error("NoticeSent without a notice or member id"));
                }
                notice_sent(tx, e, at).await?
            }
            Body::NoticesRead(e) => {
                let up_to = ts(&e.up_to)
                    .filter(|_| !e.member_id.is_empty())
                    .ok_or_else(|| Poison::error("NoticesRead without a member or moment"))?;
                notices_read(tx, &e.member_id, up_to).await?
            }
            Body::HistoryErased(e) => {
                let up_to = ts(&e.up_to)
                    .filter(|_| !e.member_id.is_empty())
                    .ok_or_else(|| Poison::error("HistoryErased without a member or moment"))?;
                privacy::history_erased(tx, &e.member_id, up_to).await?;
            }
            Body::BooksMerged(e) => {
                merge_books(tx, &e.into_book_id, &e.merged_book_ids, &[]).await?
            }
            Body::QueuesMerged(e) => {
                merge_books(tx, &e.into_book_id, &e.merged_book_ids, &e.waiting).await?
            }
            _ => {
                if let Some(change) = change_of(body) {
                    apply_change(tx, change, at).await?;
                }
            }
        }
        Ok(())
    }

    fn locks(&self, event: &Envelope) -> Vec<(&'static str, String)> {
        match &event.body {
            Some(Body::QueuesMerged(e)) => e
                .waiting
                .iter()
                .map(|p| (JOURNEY_LOCK, p.reservation_id.clone()))
                .collect(),
            Some(body) if member_event(body).is_some() => member_event(body)
                .filter(|m| !m.is_empty())
                .map(|m| vec![(privacy::MEMBER_LOCK, m.to_owned())])
                .unwrap_or_default(),
            // The journey's, then its member's, which an erasure of the
            // member's history takes.
            body => body
                .as_ref()
                .and_then(change_of)
                .filter(|c| !c.reservation_id.is_empty())
                .map(|c| {
                    let mut locks = vec![(JOURNEY_LOCK, c.reservation_id.to_owned())];
                    if !c.member_id.is_empty() {
                        locks.push((privacy::MEMBER_LOCK, c.member_id.to_owned()));
                    }
                    locks
                })
                .unwrap_or_default(),
        }
    }

    async fn after_commit(&self, event: &Envelope) {
        let Some(body) = &event.body else {
            return;
        };
        if let Some(book_id) = merge_of(body) {
            // Every page and list with the kept book may change.
            self.notify_book(book_id, false).await;
            self.watchers.notify(staff::HOLD_SHELF);
            self.watchers.notify(staff::LOANS);
            return;
        }
        if let Some((book_id, _, _)) = title_of(body) {
            // A title arrived: every page and list with this book may change.
            self.notify_book(book_id, false).await;
            self.watchers.notify(staff::HOLD_SHELF);
            self.watchers.notify(staff::LOANS);
            return;
        }
        if let Some(member) = member_event(body) {
            // The member's notices or history changed: their page only.
            self.watchers.notify(member);
            return;
        }
        let Some(change) = change_of(body) else {
            return;
        };
        self.watchers.notify(change.member_id);
        // Queue positions of everybody waiting for the book may have moved.
        let queue_moved = matches!(
            body,
            Body::ReservationReady(_)
                | Body::ReservationCancelled(_)
                | Body::ReservationExpired(_)
                | Body::ReservationRequeued(_)
        );
        if queue_moved {
            self.notify_book(change.book_id, true).await;
        }
        // The desk's live lists: the hold shelf may change with any change
        // of a journey (a hold, its end, a copy freed at the desk, which
        // decides whether the next hold's copy is to pull); the loans with
        // every change of a loan.
        self.watchers.notify(staff::HOLD_SHELF);
        if change.due_at.is_some()
            || matches!(
                change.stage,
                Some(stage::RENTED | stage::RETURNED | stage::LOST)
            )
        {
            self.watchers.notify(staff::LOANS);
        }
    }
}

impl Projection {
    /// Tells the members with journeys for this book (only the waiting ones
    /// when `waiting_only`).
    async fn notify_book(&self, book_id: &str, waiting_only: bool) {
        let mut q = journeys::Entity::find()
            .select_only()
            .column(journeys::Column::MemberId)
            .distinct()
            .filter(journeys::Column::BookId.eq(book_id));
        if waiting_only {
            q = q.filter(journeys::Column::Stage.eq(stage::WAITING));
        }
        match q.into_tuple::<String>().all(self.watchers.db.conn()).await {
            Ok(members) => {
                for m in members {
                    self.watchers.notify(&m);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not tell watchers of a book"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rentalbook_plumbing::db::Db;
    use rentalbook_proto::events::v1::{
        BookRegistered, BookRented, BookReturned, BookUpdated, HistoryErased, LoanRenewed,
        NoticesRead, RentalLost, ReservationCancelled, ReservationFulfilled, ReservationPlaced,
        ReservationReady, ReservationRequeued, ReservationRetrapped, ReturnRecorded,
    };
    use rentalbook_proto::notice::v1::NoticeKind;
    use rentalbook_proto::view::v1::{JourneyStage, MyPage};
    use sea_orm_migration::MigratorTrait;

    const EPOCH: i64 = 1_700_000_000;

    fn at(secs: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: EPOCH + secs,
            nanos: 0,
        })
    }

    fn event(secs: i64, body: Body) -> Envelope {
        Envelope {
            event_id: format!("event-{secs}"),
            occurred_at: at(secs),
            producer: "test".into(),
            body: Some(body),
        }
    }

    fn availability(book_seq: i64) -> Option<Availability> {
        Some(Availability {
            book_seq,
            total: 1,
            ..Default::default()
        })
    }

    /// Ids of one journey: reservation, member, book, rental.
    struct Ids {
        r: String,
        m: String,
        b: String,
        l: String,
    }

    fn ids(n: usize) -> Ids {
        Ids {
            r: format!("r{n:04}"),
            m: format!("m{n:04}"),
            b: format!("b{n:04}"),
            l: format!("l{n:04}"),
        }
    }

    /// A loan from a place in the queue to a confirmed return, as the
    /// services emit it: rental-svc's BookReturned carries the moment the
    /// book was handed in, before the desk's ReturnRecorded.
    fn a_whole_loan(i: &Ids) -> Vec<Envelope> {
        vec![
            event(
                1,
                Body::ReservationPlaced(ReservationPlaced {
                    reservation_id: i.r.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    status: ReservationStatus::Waiting as i32,
                    queue_position: 1,
                    pickup_deadline: None,
                    availability: availability(2),
                    rental_id: String::new(),
                    barcode: String::new(),
                }),
            ),
            event(
                2,
                Body::ReservationReady(ReservationReady {
                    reservation_id: i.r.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    pickup_deadline: at(100),
                    availability: availability(3),
                    barcode: String::new(),
                }),
            ),
            event(
                3,
                Body::ReservationFulfilled(ReservationFulfilled {
                    reservation_id: i.r.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    rental_id: i.l.clone(),
                    availability: availability(4),
                    barcode: String::new(),
                }),
            ),
            event(
                4,
                Body::BookRented(BookRented {
                    rental_id: i.l.clone(),
                    reservation_id: i.r.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    rented_at: at(3),
                    due_at: at(10_000),
                    barcode: String::new(),
                }),
            ),
            event(
                5,
                Body::BookReturned(BookReturned {
                    rental_id: i.l.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    returned_at: at(5),
                    return_confirmation: ReturnConfirmation::Confirmed as i32,
                    reservation_id: i.r.clone(),
                    barcode: String::new(),
                }),
            ),
            event(
                6,
                Body::ReturnRecorded(ReturnRecorded {
                    reservation_id: i.r.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    rental_id: i.l.clone(),
                    availability: availability(5),
                    barcode: String::new(),
                }),
            ),
        ]
    }

    /// A hold given up before it was picked up.
    fn a_cancelled_hold(i: &Ids) -> Vec<Envelope> {
        let mut events = a_whole_loan(i);
        events.truncate(2);
        events.push(event(
            7,
            Body::ReservationCancelled(ReservationCancelled {
                reservation_id: i.r.clone(),
                book_id: i.b.clone(),
                member_id: i.m.clone(),
                previous_status: ReservationStatus::Ready as i32,
                cancelled_by: i.m.clone(),
                availability: availability(4),
            }),
        ));
        events
    }

    fn placed_ready(i: &Ids, secs: i64, book_seq: i64, barcode: &str) -> Envelope {
        event(
            secs,
            Body::ReservationPlaced(ReservationPlaced {
                reservation_id: i.r.clone(),
                book_id: i.b.clone(),
                member_id: i.m.clone(),
                status: ReservationStatus::Ready as i32,
                queue_position: 0,
                pickup_deadline: at(100),
                availability: availability(book_seq),
                rental_id: String::new(),
                barcode: barcode.into(),
            }),
        )
    }

    fn retrapped(i: &Ids, secs: i64, book_seq: i64, from: &str, to: &str) -> Envelope {
        event(
            secs,
            Body::ReservationRetrapped(ReservationRetrapped {
                reservation_id: i.r.clone(),
                book_id: i.b.clone(),
                member_id: i.m.clone(),
                barcode: to.into(),
                previous_barcode: from.into(),
                availability: availability(book_seq),
            }),
        )
    }

    fn requeued(i: &Ids, secs: i64, book_seq: i64, barcode: &str) -> Envelope {
        event(
            secs,
            Body::ReservationRequeued(ReservationRequeued {
                reservation_id: i.r.clone(),
                book_id: i.b.clone(),
                member_id: i.m.clone(),
                barcode: barcode.into(),
                availability: availability(book_seq),
            }),
        )
    }

    /// A READY hold whose copy is replaced, then lost with no other left:
    /// WAITING again at the head of the queue.
    fn a_requeued_hold(i: &Ids) -> Vec<Envelope> {
        vec![
            placed_ready(i, 1, 2, "A-1"),
            retrapped(i, 2, 3, "A-1", "A-2"),
            requeued(i, 3, 4, "A-2"),
        ]
    }

    /// A requeued hold READY again with a new copy, lent, renewed twice and
    /// lost on loan.
    fn a_requeued_renewed_and_lost_loan(i: &Ids) -> Vec<Envelope> {
        let mut events = a_requeued_hold(i);
        let renewed = |secs, renewals, due| {
            event(
                secs,
                Body::LoanRenewed(LoanRenewed {
                    rental_id: i.l.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    reservation_id: i.r.clone(),
                    due_at: at(due),
                    renewals,
                    renewed_by: i.m.clone(),
                }),
            )
        };
        events.extend([
            event(
                4,
                Body::ReservationReady(ReservationReady {
                    reservation_id: i.r.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    pickup_deadline: at(200),
                    availability: availability(6),
                    barcode: "A-3".into(),
                }),
            ),
            event(
                5,
                Body::ReservationFulfilled(ReservationFulfilled {
                    reservation_id: i.r.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    rental_id: i.l.clone(),
                    availability: availability(7),
                    barcode: "A-3".into(),
                }),
            ),
            event(
                6,
                Body::BookRented(BookRented {
                    rental_id: i.l.clone(),
                    reservation_id: i.r.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    rented_at: at(5),
                    due_at: at(10),
                    barcode: "A-3".into(),
                }),
            ),
            renewed(7, 1, 30),
            renewed(8, 2, 45),
            event(
                9,
                Body::RentalLost(RentalLost {
                    rental_id: i.l.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    reservation_id: i.r.clone(),
                    barcode: "A-3".into(),
                    lost_at: at(9),
                }),
            ),
        ]);
        events
    }

    /// A walk-in loan at the desk: placed and lent at once, returned.
    fn a_walk_in_loan(i: &Ids) -> Vec<Envelope> {
        let mut events = a_whole_loan(i);
        events.drain(..3);
        events.insert(
            0,
            event(
                3,
                Body::ReservationPlaced(ReservationPlaced {
                    reservation_id: i.r.clone(),
                    book_id: i.b.clone(),
                    member_id: i.m.clone(),
                    status: ReservationStatus::Fulfilled as i32,
                    queue_position: 0,
                    pickup_deadline: None,
                    availability: availability(4),
                    rental_id: i.l.clone(),
                    barcode: "W-1".into(),
                }),
            ),
        );
        events
    }

    /// `n` orders of `0..len`: in order, reversed, and shuffled by a fixed
    /// seed (too many to try them all).
    fn some_orders(len: usize, n: usize) -> Vec<Vec<usize>> {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut all = vec![(0..len).collect::<Vec<_>>(), (0..len).rev().collect()];
        while all.len() < n {
            let mut order: Vec<usize> = (0..len).collect();
            for k in (1..len).rev() {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                order.swap(k, (state >> 33) as usize % (k + 1));
            }
            all.push(order);
        }
        all
    }

    /// Every order of `0..n`.
    fn orders(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut all = Vec::new();
        for shorter in orders(n - 1) {
            for at in 0..=shorter.len() {
                let mut order = shorter.clone();
                order.insert(at, n - 1);
                all.push(order);
            }
        }
        all
    }

    async fn read_model() -> (Db, Projection) {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        crate::store::Migrator::up(db.conn(), None).await.unwrap();
        let projection = Projection {
            watchers: Arc::new(Watchers::new(db.clone())),
        };
        (db, projection)
    }

    /// The member's page with this journey's own ids blanked, so that the
    /// pages of different journeys compare.
    async fn page(db: &Db, i: &Ids) -> MyPage {
        let now = time::from_proto(&at(50).unwrap()).unwrap();
        let library = crate::domain::Library::default();
        let (mut page, _) = crate::pages::build(db.conn(), &i.m, now, &library)
            .await
            .unwrap();
        page.generated_at = None;
        page.member_id.clear();
        for j in &mut page.journeys {
            assert_eq!((&j.reservation_id, &j.book_id), (&i.r, &i.b));
            j.reservation_id.clear();
            j.book_id.clear();
            if j.rental_id == i.l {
                j.rental_id.clear();
            }
        }
        page
    }

    /// Two replicas sharing the durable consumer apply a journey's events in
    /// any order; every order must give the page that stream order gives.
    #[tokio::test]
    async fn a_journey_looks_the_same_whatever_order_its_events_are_applied_in() {
        let (db, projection) = read_model().await;
        let mut n = 0;
        let all = |len| orders(len);
        let sampled = |len| some_orders(len, 400);
        let journeys = [
            (
                a_whole_loan as fn(&Ids) -> Vec<Envelope>,
                all as fn(usize) -> Vec<Vec<usize>>,
            ),
            (a_cancelled_hold, all),
            (a_requeued_hold, all),
            (a_walk_in_loan, all),
            (a_requeued_renewed_and_lost_loan, sampled),
        ];
        for (journey, orders) in journeys {
            let mut expected = None;
            for order in orders(journey(&ids(0)).len()) {
                n += 1;
                let i = ids(n);
                let events = journey(&i);
                let mut tx = db.begin().await.unwrap();
                for &k in &order {
                    projection.apply(&mut tx, &events[k]).await.unwrap();
                }
                tx.commit().await.unwrap();
                let got = page(&db, &i).await;
                let stored = journeys::Entity::find_by_id(i.r.clone())
                    .one(db.conn())
                    .await
                    .unwrap()
                    .unwrap();
                let stored = journeys::Model {
                    reservation_id: String::new(),
                    member_id: String::new(),
                    book_id: String::new(),
                    rental_id: None,
                    ..stored
                };
                let expected = expected.get_or_insert_with(|| (got.clone(), stored.clone()));
                assert_eq!(&got, &expected.0, "events applied in the order {order:?}");
                assert_eq!(&stored, &expected.1, "the row, in the order {order:?}");
            }
        }
    }

    /// What stream order gives for the journeys of the desk.
    #[tokio::test]
    async fn requeues_retraps_renewals_losses_and_walk_ins_show_on_the_page() {
        let (db, projection) = read_model().await;
        let apply_all = |events: Vec<Envelope>| {
            let (db, projection) = (&db, &projection);
            async move {
                let mut tx = db.begin().await.unwrap();
                for e in &events {
                    projection.apply(&mut tx, e).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        };
        let kinds = |p: &MyPage| -> Vec<StepKind> {
            p.journeys[0].steps.iter().map(|s| s.kind()).collect()
        };

        // Held copy replaced: READY with the new copy.
        let i = ids(1);
        let mut events = a_requeued_hold(&i);
        events.truncate(2);
        apply_all(events).await;
        let p = page(&db, &i).await;
        assert_eq!(p.journeys[0].stage(), JourneyStage::Ready);
        assert_eq!(p.journeys[0].barcode, "A-2");

        // Then requeued: WAITING first in line, no copy.
        let i = ids(2);
        apply_all(a_requeued_hold(&i)).await;
        let p = page(&db, &i).await;
        let j = &p.journeys[0];
        assert_eq!((j.stage(), j.queue_position), (JourneyStage::Waiting, 1));
        assert_eq!(j.barcode, "");
        assert_eq!(j.pickup_deadline, None);
        assert_eq!(
            kinds(&p),
            [StepKind::Reserved, StepKind::Ready, StepKind::Requeued]
        );
        assert_eq!(p.open_reservations, 1);

        // READY again, lent, renewed twice, lost: closed, never overdue.
        let i = ids(3);
        let events = a_requeued_renewed_and_lost_loan(&i);
        apply_all(events[..8].to_vec()).await;
        let p = page(&db, &i).await;
        let j = &p.journeys[0];
        assert_eq!(j.stage(), JourneyStage::Overdue, "due at 45, read at 50");
        assert_eq!(j.barcode, "A-3");
        assert_eq!((j.renewals, j.renewals_left), (2, 0));
        assert_eq!(j.due_at, at(45), "the latest renewal's due date");
        apply_all(events[8..].to_vec()).await;
        let p = page(&db, &i).await;
        let j = &p.journeys[0];
        assert_eq!(j.stage(), JourneyStage::Lost, "lost, not overdue");
        assert_eq!((j.renewals, j.renewals_left), (2, 0));
        assert_eq!((p.open_reservations, p.active_rentals), (0, 0));
        assert_eq!(
            kinds(&p),
            [
                StepKind::Reserved,
                StepKind::Requeued,
                StepKind::Ready,
                StepKind::Rented,
                StepKind::Renewed,
                StepKind::Lost
            ],
            "READY and RENEWED at their latest"
        );
        assert_eq!(j.steps[2].at, at(4));
        assert_eq!(j.steps[4].at, at(8));

        // A walk-in: RESERVED then RENTED, never READY.
        let i = ids(4);
        let mut events = a_walk_in_loan(&i);
        events.truncate(2);
        apply_all(events).await;
        let p = page(&db, &i).await;
        let j = &p.journeys[0];
        assert_eq!(j.stage(), JourneyStage::Rented);
        assert_eq!((j.barcode.as_str(), j.renewals_left), ("W-1", 2));
        assert_eq!(kinds(&p), [StepKind::Reserved, StepKind::Rented]);
    }

    /// A book's registration and two corrections of its title, applied in
    /// every order (replicas, redelivery): the page shows the latest title.
    #[tokio::test]
    async fn a_title_follows_its_latest_correction_whatever_the_order() {
        let (db, projection) = read_model().await;
        for (n, order) in orders(3).into_iter().enumerate() {
            let i = ids(n);
            let corrected = |secs, title: &str, revision| {
                event(
                    secs,
                    Body::BookUpdated(BookUpdated {
                        book_id: i.b.clone(),
                        title: title.into(),
                        author: "Octavia E. Butler".into(),
                        revision,
                    }),
                )
            };
            let events = [
                event(
                    1,
                    Body::BookRegistered(BookRegistered {
                        book_id: i.b.clone(),
                        isbn: String::new(),
                        title: "Kindrid".into(),
                        author: "Octavia Butler".into(),
                        total_copies: 1,
                        items: Vec::new(),
                    }),
                ),
                corrected(2, "Kindred?", 1),
                corrected(3, "Kindred", 2),
            ];
            let mut tx = db.begin().await.unwrap();
            projection
                .apply(&mut tx, &a_whole_loan(&i)[0])
                .await
                .unwrap();
            for &k in &order {
                projection.apply(&mut tx, &events[k]).await.unwrap();
            }
            tx.commit().await.unwrap();
            let page = page(&db, &i).await;
            assert_eq!(
                page.journeys[0].book_title, "Kindred",
                "events applied in the order {order:?}"
            );
        }
    }

    fn notice(n: u32, member: &str, secs: i64, reservation_id: &str, rental_id: &str) -> Envelope {
        event(
            secs,
            Body::NoticeSent(NoticeSent {
                notice_id: format!("n{n:04}"),
                member_id: member.into(),
                kind: NoticeKind::DueSoon as i32,
                book_id: "b-notice".into(),
                book_title: "Persuasion".into(),
                barcode: String::new(),
                deadline: at(secs + 100),
                reservation_id: reservation_id.into(),
                rental_id: rental_id.into(),
            }),
        )
    }

    fn read_up_to(member: &str, secs: i64, up_to: i64) -> Envelope {
        event(
            secs,
            Body::NoticesRead(NoticesRead {
                member_id: member.into(),
                up_to: at(up_to),
            }),
        )
    }

    fn history_erased(member: &str, secs: i64, up_to: i64) -> Envelope {
        event(
            secs,
            Body::HistoryErased(HistoryErased {
                member_id: member.into(),
                up_to: at(up_to),
            }),
        )
    }

    async fn apply_all(db: &Db, projection: &Projection, events: &[Envelope]) {
        let mut tx = db.begin().await.unwrap();
        for e in events {
            projection.apply(&mut tx, e).await.unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// The member's whole page as read at 50 s, the moment of reading aside.
    async fn whole_page(db: &Db, member: &str) -> MyPage {
        let now = time::from_proto(&at(50).unwrap()).unwrap();
        let (mut page, _) = crate::pages::build(db.conn(), member, now, &Default::default())
            .await
            .unwrap();
        page.generated_at = None;
        page
    }

    fn shown(page: &MyPage) -> Vec<&str> {
        page.journeys
            .iter()
            .map(|j| j.reservation_id.as_str())
            .collect()
    }

    fn notice_ids(page: &MyPage) -> Vec<(&str, bool)> {
        page.notices
            .iter()
            .map(|n| (n.notice_id.as_str(), n.read))
            .collect()
    }

    #[tokio::test]
    async fn notices_show_newest_first_and_are_read_up_to_a_moment_in_any_order() {
        let (db, projection) = read_model().await;
        apply_all(
            &db,
            &projection,
            &[
                notice(1, "m1", 10, "", ""),
                notice(3, "m1", 30, "", ""),
                notice(2, "m1", 20, "", ""),
                notice(9, "m2", 15, "", ""),
            ],
        )
        .await;
        let page = whole_page(&db, "m1").await;
        assert_eq!(
            notice_ids(&page),
            [("n0003", false), ("n0002", false), ("n0001", false)]
        );
        assert_eq!(page.unread_notices, 3);
        let n = &page.notices[0];
        assert_eq!(
            (n.kind(), n.book_title.as_str(), n.created_at, n.deadline),
            (NoticeKind::DueSoon, "Persuasion", at(30), at(130))
        );

        // Read up to the second: the third stays unread, m2's too.
        apply_all(&db, &projection, &[read_up_to("m1", 31, 20)]).await;
        let page = whole_page(&db, "m1").await;
        assert_eq!(
            notice_ids(&page),
            [("n0003", false), ("n0002", true), ("n0001", true)]
        );
        assert_eq!(page.unread_notices, 1);
        assert_eq!(whole_page(&db, "m2").await.unread_notices, 1);

        // A notice whose NoticeSent comes after the NoticesRead covering it
        // (replicas, redelivery) is read all the same; an earlier reading
        // applied late reads nothing back.
        apply_all(
            &db,
            &projection,
            &[notice(4, "m1", 18, "", ""), read_up_to("m1", 32, 5)],
        )
        .await;
        let page = whole_page(&db, "m1").await;
        assert_eq!(
            notice_ids(&page),
            [
                ("n0003", false),
                ("n0002", true),
                ("n0004", true),
                ("n0001", true)
            ]
        );
        assert_eq!(page.unread_notices, 1);

        // The page lists the latest 50; the count is of them all.
        let many: Vec<Envelope> = (100..160)
            .map(|n| notice(n, "m3", i64::from(n), "", ""))
            .collect();
        apply_all(&db, &projection, &many).await;
        let page = whole_page(&db, "m3").await;
        assert_eq!(page.notices.len(), 50);
        assert_eq!(page.notices[0].notice_id, "n0159");
        assert_eq!(page.notices[49].notice_id, "n0110");
        assert_eq!(page.unread_notices, 60);
    }

    /// Ids of a journey of `member`.
    fn of(member: &str, n: usize) -> Ids {
        Ids {
            m: member.into(),
            ..ids(n)
        }
    }

    /// A loan that is out (placed, ready, fulfilled, rented).
    fn a_current_loan(i: &Ids) -> Vec<Envelope> {
        let mut events = a_whole_loan(i);
        events.truncate(4);
        events
    }

    fn returned(i: &Ids, secs: i64, returned_at: i64) -> Envelope {
        event(
            secs,
            Body::BookReturned(BookReturned {
                rental_id: i.l.clone(),
                book_id: i.b.clone(),
                member_id: i.m.clone(),
                returned_at: at(returned_at),
                return_confirmation: ReturnConfirmation::Confirmed as i32,
                reservation_id: i.r.clone(),
                barcode: String::new(),
            }),
        )
    }

    /// alice's and bob's journeys and notices, then alice erases her history
    /// up to 10 s; then events that come late.
    fn an_erasure() -> (Vec<Envelope>, Vec<Envelope>) {
        let returned_early = of("alice", 1);
        let cancelled = of("alice", 2);
        let out = of("alice", 3);
        let returned_late = of("alice", 4);
        let bobs = of("bob", 5);
        let returns_late = of("alice", 6);
        let mut before = Vec::new();
        before.extend(a_whole_loan(&returned_early)); // returned at 5
        before.extend(a_cancelled_hold(&cancelled)); // cancelled at 7
        before.extend(a_current_loan(&out));
        let mut late = a_whole_loan(&returned_late);
        late[4] = returned(&returned_late, 40, 40);
        late.truncate(5);
        before.extend(late); // returned at 40
        before.extend(a_whole_loan(&bobs)); // returned at 5
        before.extend(a_current_loan(&returns_late));
        before.extend([
            notice(1, "alice", 3, &returned_early.r, ""),
            notice(2, "alice", 4, "", &out.l),
            notice(3, "alice", 8, "", ""),
            notice(4, "alice", 12, &returned_early.r, ""),
            notice(5, "bob", 3, &bobs.r, ""),
            history_erased("alice", 11, 10),
        ]);
        let after = vec![
            // A late event of an erased journey.
            event(
                4,
                Body::BookRented(BookRented {
                    rental_id: returned_early.l.clone(),
                    reservation_id: returned_early.r.clone(),
                    book_id: returned_early.b.clone(),
                    member_id: returned_early.m.clone(),
                    rented_at: at(3),
                    due_at: at(10_000),
                    barcode: String::new(),
                }),
            ),
            // The loan that was out when she erased came back before.
            returned(&returns_late, 13, 9),
            // Notices made before, told late: about that loan, and about
            // the one still out.
            notice(6, "alice", 9, &returns_late.r, ""),
            notice(7, "alice", 9, "", &out.l),
        ];
        (before, after)
    }

    #[tokio::test]
    async fn an_erasure_takes_only_the_members_finished_history_and_nothing_brings_it_back() {
        let (db, projection) = read_model().await;
        let (before, after) = an_erasure();
        let bob = {
            let (db, projection) = read_model().await;
            apply_all(&db, &projection, &before[..before.len() - 1]).await;
            whole_page(&db, "bob").await
        };
        apply_all(&db, &projection, &before).await;
        let page = whole_page(&db, "alice").await;
        assert_eq!(
            shown(&page),
            ["r0006", "r0004", "r0003"],
            "the loans out and the journey finished after the erasure's moment stay"
        );
        assert_eq!(
            notice_ids(&page),
            [("n0004", false), ("n0002", false)],
            "notices made after, or about a loan still out, stay"
        );
        assert_eq!(whole_page(&db, "bob").await, bob, "bob's page is his own");
        for gone in ["r0001", "r0002"] {
            let steps = steps::Entity::find()
                .filter(steps::Column::ReservationId.eq(gone))
                .all(db.conn())
                .await
                .unwrap();
            assert!(steps.is_empty(), "{gone}'s steps go with it");
        }

        apply_all(&db, &projection, &after[..1]).await;
        let page = whole_page(&db, "alice").await;
        assert_eq!(
            shown(&page),
            ["r0006", "r0004", "r0003"],
            "a late event brings back no erased journey"
        );
        apply_all(&db, &projection, &after[1..2]).await;
        let page = whole_page(&db, "alice").await;
        assert_eq!(
            shown(&page),
            ["r0004", "r0003"],
            "a loan that came back before the erasure's moment goes once its return is told"
        );
        apply_all(&db, &projection, &after[2..]).await;
        let page = whole_page(&db, "alice").await;
        assert_eq!(
            notice_ids(&page),
            [("n0004", false), ("n0007", false), ("n0002", false)]
        );
        assert_eq!(page.active_rentals, 1);
    }

    #[tokio::test]
    async fn a_rebuild_erases_again_and_shows_the_same_pages() {
        let (db, projection) = read_model().await;
        let (mut stream, after) = an_erasure();
        stream.extend(after);
        apply_all(&db, &projection, &stream).await;
        let live = [whole_page(&db, "alice").await, whole_page(&db, "bob").await];
        let tx = db.begin().await.unwrap();
        crate::store::clear(&*tx).await.unwrap();
        tx.commit().await.unwrap();
        let emptied = whole_page(&db, "alice").await;
        assert!(emptied.journeys.is_empty() && emptied.notices.is_empty());
        assert_eq!(
            crate::store::erased_journeys::Entity::find()
                .all(db.conn())
                .await
                .unwrap(),
            [],
            "the replay erases again"
        );
        assert!(
            privacy::erased_up_to(db.conn(), "alice")
                .await
                .unwrap()
                .is_none()
        );
        apply_all(&db, &projection, &stream).await;
        let rebuilt = [whole_page(&db, "alice").await, whole_page(&db, "bob").await];
        assert_eq!(rebuilt, live);
        assert_eq!(shown(&rebuilt[0]), ["r0004", "r0003"]);
    }
}
