//! Builds a member's page (journeys and notices), and their history, from
//! the read model.

use std::collections::HashMap;

use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::rental::v1::ReturnConfirmation;
use rentalbook_proto::view::v1::{Journey, JourneyStage, JourneyStep, MyPage, PageNotice};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::domain::{self, Library, stage};
use crate::store::{journeys, notices, steps, titles};

/// Journeys shown, newest first.
const MAX_JOURNEYS: u64 = 200;

/// Notices shown, newest first.
const MAX_NOTICES: u64 = 50;

/// The page and the next moment it changes by the clock alone.
pub async fn build<C: ConnectionTrait>(
    db: &C,
    member: &str,
    now: Timestamp,
    library: &Library,
) -> Result<(MyPage, Option<Timestamp>), DbErr> {
    let rows = journeys::Entity::find()
        .filter(journeys::Column::MemberId.eq(member))
        .order_by_desc(journeys::Column::ReservationId)
        .limit(MAX_JOURNEYS)
        .all(db)
        .await?;
    let next_change =
        domain::next_clock_change(rows.iter().map(|j| (j.stage.as_str(), j.due_at)), now);
    let mut page = MyPage {
        member_id: member.to_owned(),
        generated_at: Some(time::to_proto(now)),
        ..Default::default()
    };
    page.journeys = journeys_of(db, rows, now, library).await?;
    for j in &page.journeys {
        match j.stage() {
            JourneyStage::Waiting | JourneyStage::Ready => page.open_reservations += 1,
            JourneyStage::Rented | JourneyStage::Overdue => page.active_rentals += 1,
            _ => {}
        }
    }
    let shown = notices::Entity::find()
        .filter(notices::Column::MemberId.eq(member))
        .order_by_desc(notices::Column::CreatedAt)
        .order_by_desc(notices::Column::NoticeId)
        .limit(MAX_NOTICES)
        .all(db)
        .await?;
    // Fewer than a page of notices are all of them: count the unread among
    // them instead of asking the database again.
    let unread = if (shown.len() as u64) < MAX_NOTICES {
        shown.iter().filter(|n| !n.read).count() as u64
    } else {
        notices::Entity::find()
            .filter(notices::Column::MemberId.eq(member))
            .filter(notices::Column::Read.eq(false))
            .count(db)
            .await?
    };
    page.notices = shown.into_iter().map(notice_of).collect();
    page.unread_notices = i32::try_from(unread).unwrap_or(i32::MAX);
    Ok((page, next_change))
}

fn notice_of(n: notices::Model) -> PageNotice {
    PageNotice {
        notice_id: n.notice_id,
        kind: n.kind,
        book_id: n.book_id,
        book_title: n.book_title,
        barcode: n.barcode,
        deadline: time::opt_to_proto(n.deadline),
        reservation_id: n.reservation_id,
        rental_id: n.rental_id,
        created_at: Some(time::to_proto(n.created_at)),
        read: n.read,
    }
}

/// The titles of these books that are known.
pub async fn titles_of<C: ConnectionTrait>(
    db: &C,
    book_ids: impl IntoIterator<Item = &str>,
) -> Result<HashMap<String, String>, DbErr> {
    let mut book_ids: Vec<&str> = book_ids.into_iter().collect();
    book_ids.sort_unstable();
    book_ids.dedup();
    if book_ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(titles::Entity::find()
        .filter(titles::Column::BookId.is_in(book_ids))
        .all(db)
        .await?
        .into_iter()
        .map(|t| (t.book_id, t.title))
        .collect())
}

/// The 1-based place of a WAITING journey in its book's queue.
pub async fn queue_position<C: ConnectionTrait>(
    db: &C,
    book_id: &str,
    queue_seq: i64,
) -> Result<i32, DbErr> {
    let before = journeys::Entity::find()
        .filter(journeys::Column::BookId.eq(book_id))
        .filter(journeys::Column::Stage.eq(stage::WAITING))
        .filter(journeys::Column::QueueSeq.lt(queue_seq))
        .count(db)
        .await?;
    Ok(i32::try_from(before).unwrap_or(i32::MAX - 1) + 1)
}

/// The copy a member sees on a journey: the one lent once it is known, the
/// one held for them while READY.
pub fn barcode_of(j: &journeys::Model) -> &str {
    if !j.loan_barcode.is_empty() {
        &j.loan_barcode
    } else if j.stage == stage::READY {
        &j.hold_barcode
    } else {
        ""
    }
}

/// Journeys as a member sees them at `now`, in the order of `rows`.
pub async fn journeys_of<C: ConnectionTrait>(
    db: &C,
    rows: Vec<journeys::Model>,
    now: Timestamp,
    library: &Library,
) -> Result<Vec<Journey>, DbErr> {
    let title_of = titles_of(db, rows.iter().map(|j| j.book_id.as_str())).await?;
    let mut steps_of: HashMap<String, Vec<JourneyStep>> = HashMap::new();
    if !rows.is_empty() {
        for s in steps::Entity::find()
            .filter(
                steps::Column::ReservationId.is_in(rows.iter().map(|j| j.reservation_id.as_str())),
            )
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
    }
    let mut out = Vec::with_capacity(rows.len());
    for j in rows {
        let visible = domain::visible_stage(&j.stage, j.due_at, now);
        let queue_position = if j.stage == stage::WAITING {
            queue_position(db, &j.book_id, j.queue_seq).await?
        } else {
            0
        };
        let return_confirmation = match j.return_confirmation.as_deref() {
            Some("CONFIRMED") => ReturnConfirmation::Confirmed,
            Some(_) => ReturnConfirmation::Pending,
            None => ReturnConfirmation::Unspecified,
        };
        out.push(Journey {
            book_title: title_of.get(&j.book_id).cloned().unwrap_or_default(),
            steps: steps_of.remove(&j.reservation_id).unwrap_or_default(),
            barcode: barcode_of(&j).to_owned(),
            renewals: j.renewals,
            renewals_left: library.renewals_left(visible, j.renewals),
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
    Ok(out)
}

/// A page of a member's finished journeys (returned, lost, cancelled,
/// expired), newest first, after the journey `after`; one more than `limit`
/// tells that another page follows.
pub async fn history<C: ConnectionTrait>(
    db: &C,
    member: &str,
    after: Option<&str>,
    limit: u64,
    now: Timestamp,
    library: &Library,
) -> Result<Vec<Journey>, DbErr> {
    let mut q = journeys::Entity::find()
        .filter(journeys::Column::MemberId.eq(member))
        .filter(journeys::Column::Stage.is_in(stage::FINISHED));
    if let Some(after) = after {
        q = q.filter(journeys::Column::ReservationId.lt(after));
    }
    let rows = q
        .order_by_desc(journeys::Column::ReservationId)
        .limit(limit)
        .all(db)
        .await?;
    journeys_of(db, rows, now, library).await
}

/// Whether two pages show the same thing (the time they were made aside).
pub fn same(a: &MyPage, b: &MyPage) -> bool {
    a.member_id == b.member_id
        && a.journeys == b.journeys
        && a.open_reservations == b.open_reservations
        && a.active_rentals == b.active_rentals
        && a.notices == b.notices
        && a.unread_notices == b.unread_notices
}
