//! The projection: every domain event, applied to the read model inside the
//! transaction that records it in the inbox; then the members whose page
//! changed are told.

use std::sync::Arc;

use async_trait::async_trait;
use rentalbook_plumbing::consumer::EventHandler;
use rentalbook_plumbing::db::WriteTx;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::{Availability, Envelope, envelope::Body};
use rentalbook_proto::rental::v1::ReturnConfirmation;
use rentalbook_proto::reserve::v1::ReservationStatus;
use rentalbook_proto::view::v1::StepKind;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, QuerySelect, Set,
};

use crate::domain::{self, stage};
use crate::store::{journeys, steps, titles};
use crate::watch::Watchers;

pub struct Projection {
    pub watchers: Arc<Watchers>,
}

/// What an event says about one journey.
#[derive(Default)]
struct Change<'a> {
    reservation_id: &'a str,
    member_id: &'a str,
    book_id: &'a str,
    stage: Option<&'static str>,
    queue_seq: Option<i64>,
    pickup_deadline: Option<Timestamp>,
    rental_id: Option<&'a str>,
    due_at: Option<Timestamp>,
    returned_at: Option<Timestamp>,
    confirmed: Option<bool>,
    steps: Vec<StepKind>,
}

fn seq(a: &Option<Availability>) -> Option<i64> {
    a.as_ref().map(|a| a.book_seq)
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<Timestamp> {
    t.as_ref().and_then(time::from_proto)
}

fn change_of(body: &Body) -> Option<Change<'_>> {
    Some(match body {
        Body::ReservationPlaced(e) => {
            let ready = e.status == ReservationStatus::Ready as i32;
            Change {
                reservation_id: &e.reservation_id,
                member_id: &e.member_id,
                book_id: &e.book_id,
                stage: Some(if ready { stage::READY } else { stage::WAITING }),
                queue_seq: seq(&e.availability),
                pickup_deadline: ts(&e.pickup_deadline),
                steps: if ready {
                    vec![StepKind::Reserved, StepKind::Ready]
                } else {
                    vec![StepKind::Reserved]
                },
                ..Default::default()
            }
        }
        Body::ReservationReady(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::READY),
            pickup_deadline: ts(&e.pickup_deadline),
            steps: vec![StepKind::Ready],
            ..Default::default()
        },
        Body::ReservationCancelled(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::CANCELLED),
            steps: vec![StepKind::Cancelled],
            ..Default::default()
        },
        Body::ReservationExpired(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::EXPIRED),
            steps: vec![StepKind::Expired],
            ..Default::default()
        },
        Body::ReservationFulfilled(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::RENTED),
            rental_id: Some(&e.rental_id),
            ..Default::default()
        },
        Body::BookRented(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::RENTED),
            rental_id: Some(&e.rental_id),
            due_at: ts(&e.due_at),
            steps: vec![StepKind::Rented],
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
                returned_at: ts(&e.returned_at),
                confirmed: Some(confirmed),
                steps: if confirmed {
                    vec![StepKind::Returned, StepKind::ReturnConfirmed]
                } else {
                    vec![StepKind::Returned]
                },
                ..Default::default()
            }
        }
        // The copy is back at the desk, so the book was returned: that step
        // shows now and BookReturned, when it comes, sets its exact time.
        Body::ReturnRecorded(e) => Change {
            reservation_id: &e.reservation_id,
            member_id: &e.member_id,
            book_id: &e.book_id,
            stage: Some(stage::RETURNED),
            rental_id: Some(&e.rental_id),
            confirmed: Some(true),
            steps: vec![StepKind::Returned, StepKind::ReturnConfirmed],
            ..Default::default()
        },
        Body::BookRegistered(_) | Body::CopiesAdded(_) => return None,
    })
}

/// Applies one journey change; never moves a journey backwards.
async fn apply_change<C: ConnectionTrait>(
    db: &C,
    c: Change<'_>,
    at: Timestamp,
) -> Result<(), DbErr> {
    if c.reservation_id.is_empty() {
        return Ok(());
    }
    let existing = journeys::Entity::find_by_id(c.reservation_id.to_owned())
        .one(db)
        .await?;
    let j = match existing {
        Some(j) => j,
        // A journey seen first through a later event (events of two
        // producers may cross): it starts at that event's stage.
        None => {
            journeys::ActiveModel {
                reservation_id: Set(c.reservation_id.to_owned()),
                member_id: Set(c.member_id.to_owned()),
                book_id: Set(c.book_id.to_owned()),
                stage: Set(String::new()),
                queue_seq: Set(c.queue_seq.unwrap_or(i64::MAX)),
                pickup_deadline: Set(None),
                rental_id: Set(None),
                due_at: Set(None),
                returned_at: Set(None),
                return_confirmation: Set(None),
            }
            .insert(db)
            .await?
        }
    };
    let next_stage = c
        .stage
        .map(|s| domain::advance(&j.stage, s).to_owned())
        .unwrap_or_else(|| j.stage.clone());
    let mut am = j.clone().into_active_model();
    am.stage = Set(next_stage);
    if let Some(q) = c.queue_seq {
        am.queue_seq = Set(q);
    }
    if c.pickup_deadline.is_some() && j.stage != stage::RENTED && j.stage != stage::RETURNED {
        am.pickup_deadline = Set(c.pickup_deadline);
    }
    if let Some(r) = c.rental_id.filter(|r| !r.is_empty()) {
        am.rental_id = Set(Some(r.to_owned()));
    }
    if c.due_at.is_some() {
        am.due_at = Set(c.due_at);
    }
    // BookReturned knows when the book came back; ReturnRecorded, which may
    // come first, stands in until then.
    if c.returned_at.is_some() {
        am.returned_at = Set(c.returned_at);
    } else if c.confirmed == Some(true) && j.returned_at.is_none() {
        am.returned_at = Set(Some(at));
    }
    if let Some(confirmed) = c.confirmed {
        let already = j.return_confirmation.as_deref() == Some("CONFIRMED");
        am.return_confirmation = Set(Some(
            if confirmed || already {
                "CONFIRMED"
            } else {
                "PENDING"
            }
            .to_owned(),
        ));
    }
    am.update(db).await?;
    for kind in c.steps {
        let seen = steps::Entity::find_by_id((c.reservation_id.to_owned(), kind as i32))
            .one(db)
            .await?;
        if let Some(step) = seen {
            // Only the return's own event knows when the book came back.
            let exact = kind == StepKind::Returned && c.returned_at.is_some();
            if exact && step.at != at {
                let mut step = step.into_active_model();
                step.at = Set(at);
                step.update(db).await?;
            }
        } else {
            steps::ActiveModel {
                reservation_id: Set(c.reservation_id.to_owned()),
                kind: Set(kind as i32),
                at: Set(at),
            }
            .insert(db)
            .await?;
        }
    }
    Ok(())
}

#[async_trait]
impl EventHandler for Projection {
    async fn apply(&self, tx: &mut WriteTx, event: &Envelope) -> anyhow::Result<()> {
        let Some(body) = &event.body else {
            return Ok(());
        };
        let at = ts(&event.occurred_at).unwrap_or_else(time::now);
        if let Body::BookRegistered(e) = body {
            if titles::Entity::find_by_id(e.book_id.clone())
                .one(&**tx)
                .await?
                .is_none()
            {
                titles::ActiveModel {
                    book_id: Set(e.book_id.clone()),
                    title: Set(e.title.clone()),
                }
                .insert(&**tx)
                .await?;
            }
            return Ok(());
        }
        if let Some(change) = change_of(body) {
            apply_change(&**tx, change, at).await?;
        }
        Ok(())
    }

    async fn after_commit(&self, event: &Envelope) {
        let Some(body) = &event.body else {
            return;
        };
        if let Body::BookRegistered(e) = body {
            // A title arrived: every page with this book may change.
            self.notify_book(&e.book_id, false).await;
            return;
        }
        let Some(change) = change_of(body) else {
            return;
        };
        self.watchers.notify(change.member_id);
        // Queue positions of everybody waiting for the book may have moved.
        let queue_moved = matches!(
            body,
            Body::ReservationReady(_) | Body::ReservationCancelled(_) | Body::ReservationExpired(_)
        );
        if queue_moved {
            self.notify_book(change.book_id, true).await;
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
