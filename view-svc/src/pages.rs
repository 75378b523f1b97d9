//! Builds a member's page from the read model.

use std::collections::HashMap;

use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::rental::v1::ReturnConfirmation;
use rentalbook_proto::view::v1::{Journey, JourneyStage, JourneyStep, MyPage};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::domain::{self, stage};
use crate::store::{journeys, steps, titles};

/// Journeys shown, newest first.
const MAX_JOURNEYS: u64 = 200;

/// The page and the next moment it changes by the clock alone.
pub async fn build<C: ConnectionTrait>(
    db: &C,
    member: &str,
    now: Timestamp,
) -> Result<(MyPage, Option<Timestamp>), DbErr> {
    let rows = journeys::Entity::find()
        .filter(journeys::Column::MemberId.eq(member))
        .order_by_desc(journeys::Column::ReservationId)
        .limit(MAX_JOURNEYS)
        .all(db)
        .await?;
    let book_ids: Vec<&str> = rows.iter().map(|j| j.book_id.as_str()).collect();
    let title_of: HashMap<String, String> = titles::Entity::find()
        .filter(titles::Column::BookId.is_in(book_ids))
        .all(db)
        .await?
        .into_iter()
        .map(|t| (t.book_id, t.title))
        .collect();
    let mut steps_of: HashMap<String, Vec<JourneyStep>> = HashMap::new();
    for s in steps::Entity::find()
        .filter(steps::Column::ReservationId.is_in(rows.iter().map(|j| j.reservation_id.as_str())))
        .order_by_asc(steps::Column::At)
        .order_by_asc(steps::Column::Kind)
        .all(db)
        .await?
    {
        steps_of
            .entry(s.reservation_id)
            .or_default()
            .push(JourneyStep {
                kind: s.kind,
                at: Some(time::to_proto(s.at)),
            });
    }

    let next_change =
        domain::next_clock_change(rows.iter().map(|j| (j.stage.as_str(), j.due_at)), now);
    let mut page = MyPage {
        member_id: member.to_owned(),
        generated_at: Some(time::to_proto(now)),
        ..Default::default()
    };
    for j in rows {
        let visible = domain::visible_stage(&j.stage, j.due_at, now);
        let queue_position = if j.stage == stage::WAITING {
            journeys::Entity::find()
                .filter(journeys::Column::BookId.eq(&j.book_id))
                .filter(journeys::Column::Stage.eq(stage::WAITING))
                .filter(journeys::Column::QueueSeq.lt(j.queue_seq))
                .count(db)
                .await? as i32
                + 1
        } else {
            0
        };
        match visible {
            JourneyStage::Waiting | JourneyStage::Ready => page.open_reservations += 1,
            JourneyStage::Rented | JourneyStage::Overdue => page.active_rentals += 1,
            _ => {}
        }
        let return_confirmation = match j.return_confirmation.as_deref() {
            Some("CONFIRMED") => ReturnConfirmation::Confirmed,
            Some(_) => ReturnConfirmation::Pending,
            None => ReturnConfirmation::Unspecified,
        };
        page.journeys.push(Journey {
            book_title: title_of.get(&j.book_id).cloned().unwrap_or_default(),
            steps: steps_of.remove(&j.reservation_id).unwrap_or_default(),
            reservation_id: j.reservation_id,
            book_id: j.book_id,
            stage: visible as i32,
            queue_position,
            pickup_deadline: if visible == JourneyStage::Ready {
                time::opt_to_proto(j.pickup_deadline)
            } else {
                None
            },
            rental_id: j.rental_id.unwrap_or_default(),
            due_at: time::opt_to_proto(j.due_at),
            returned_at: time::opt_to_proto(j.returned_at),
            return_confirmation: return_confirmation as i32,
        });
    }
    Ok((page, next_change))
}

/// Whether two pages show the same thing (the time they were made aside).
pub fn same(a: &MyPage, b: &MyPage) -> bool {
    a.member_id == b.member_id
        && a.journeys == b.journeys
        && a.open_reservations == b.open_reservations
        && a.active_rentals == b.active_rentals
}
