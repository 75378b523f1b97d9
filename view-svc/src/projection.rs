//! The projection: every domain event, applied to the read model inside the
//! transaction that records it in the inbox; then the members whose page
//! changed are told.
//!
//! Replicas share the durable consumer, so two events of one journey may be
//! applied at the same moment and commit in either order. Each change reads,
//! decides and writes a journey holding that journey's lock (a transaction
//! advisory lock on PostgreSQL, which the consumer takes for a whole batch in
//! one order, see [`EventHandler::locks`]; SQLite has one writer), so no
//! change is decided on a row another one is rewriting. And every field only
//! moves one way, so the order in which replicas commit does not show: the
//! stage only forward ([`domain::advance`]), the queue order to the earliest
//! placement, the pickup and due dates to the latest, the rental once set,
//! the confirmation from PENDING to CONFIRMED, and each step is written once,
//! except that a step's own event times it after a stand-in did.

use std::sync::Arc;

use async_trait::async_trait;
use rentalbook_plumbing::consumer::EventHandler;
use rentalbook_plumbing::db::WriteTx;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::{Availability, Envelope, envelope::Body};
use rentalbook_proto::rental::v1::ReturnConfirmation;
use rentalbook_proto::reserve::v1::ReservationStatus;
use rentalbook_proto::view::v1::StepKind;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, IntoActiveModel, QueryFilter, QuerySelect,
    Set,
};

use crate::domain::{self, stage};
use crate::rebuild;
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
            confirmed: Some(true),
            steps: vec![StepKind::Returned, StepKind::ReturnConfirmed],
            owns: Some(StepKind::ReturnConfirmed),
            ..Default::default()
        },
        Body::BookRegistered(_)
        | Body::CopiesAdded(_)
        | Body::BookUpdated(_)
        | Body::ItemsRegistered(_)
        | Body::ItemWithdrawn(_)
        | Body::ItemFound(_) => return None,
        // Not on My Page yet: the trapped barcode, a hold sent back to the
        // queue and a loan ended by a lost copy.
        Body::LoanRenewed(_) | Body::RentalLost(_) => return None,
        Body::ReservationRetrapped(_) | Body::ReservationRequeued(_) | Body::ItemLost(_) => {
            return None;
        }
    })
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
    journeys::Model {
        stage: c
            .stage
            .map_or(j.stage.as_str(), |next| domain::advance(&j.stage, next))
            .to_owned(),
        // The placement's book_seq; the earliest if a replay tells another.
        queue_seq: c.queue_seq.map_or(j.queue_seq, |q| q.min(j.queue_seq)),
        // Shown only while READY, so a late hold's deadline after the loan
        // changes nothing a member sees.
        pickup_deadline: j.pickup_deadline.max(c.pickup_deadline),
        // A reservation is fulfilled by one rental.
        rental_id: j
            .rental_id
            .clone()
            .or_else(|| c.rental_id.filter(|r| !r.is_empty()).map(str::to_owned)),
        due_at: j.due_at.max(c.due_at),
        // BookReturned knows when the book came back; ReturnRecorded, which
        // may come first, stands in until then.
        returned_at: c
            .returned_at
            .or(j.returned_at)
            .or_else(|| (c.confirmed == Some(true)).then_some(at)),
        return_confirmation: if confirmed {
            Some(CONFIRMED.to_owned())
        } else if c.confirmed.is_some() {
            Some(PENDING.to_owned())
        } else {
            j.return_confirmation.clone()
        },
        ..j.clone()
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
    // A journey seen first through a later event (events of two producers
    // may cross) starts empty.
    journeys::Entity::insert(journeys::ActiveModel {
        reservation_id: Set(c.reservation_id.to_owned()),
        member_id: Set(c.member_id.to_owned()),
        book_id: Set(c.book_id.to_owned()),
        stage: Set(String::new()),
        queue_seq: Set(i64::MAX),
        pickup_deadline: Set(None),
        rental_id: Set(None),
        due_at: Set(None),
        returned_at: Set(None),
        return_confirmation: Set(None),
    })
    .on_conflict_do_nothing()
    .exec_without_returning(db)
    .await?;
    let j = journeys::Entity::find_by_id(c.reservation_id.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("journey {}", c.reservation_id)))?;
    let next = merged(&j, &c, at);
    if next != j {
        next.into_active_model().reset_all().update(db).await?;
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
        } else {
            OnConflict::columns([steps::Column::ReservationId, steps::Column::Kind])
                .do_nothing()
                .to_owned()
        };
        step.on_conflict(on_conflict)
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
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
        if let Some(change) = change_of(body) {
            apply_change(tx, change, at).await?;
        }
        Ok(())
    }

    fn locks(&self, event: &Envelope) -> Vec<(&'static str, String)> {
        event
            .body
            .as_ref()
            .and_then(change_of)
            .filter(|c| !c.reservation_id.is_empty())
            .map(|c| vec![(JOURNEY_LOCK, c.reservation_id.to_owned())])
            .unwrap_or_default()
    }

    async fn after_commit(&self, event: &Envelope) {
        let Some(body) = &event.body else {
            return;
        };
        if let Some((book_id, _, _)) = title_of(body) {
            // A title arrived: every page with this book may change.
            self.notify_book(book_id, false).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use rentalbook_plumbing::db::Db;
    use rentalbook_proto::events::v1::{
        BookRegistered, BookRented, BookReturned, BookUpdated, ReservationCancelled,
        ReservationFulfilled, ReservationPlaced, ReservationReady, ReturnRecorded,
    };
    use rentalbook_proto::view::v1::MyPage;
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
                    barcode: String::new(),
                    rental_id: String::new(),
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
        let (mut page, _) = crate::pages::build(db.conn(), &i.m, now).await.unwrap();
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
        for journey in [a_whole_loan as fn(&Ids) -> Vec<Envelope>, a_cancelled_hold] {
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
                let expected = expected.get_or_insert_with(|| got.clone());
                assert_eq!(&got, expected, "events applied in the order {order:?}");
            }
        }
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
}
