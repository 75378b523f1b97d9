//! The circulation desk's lists (SPEC §10), for librarians, read from the
//! same journeys as My Page: nothing here is written by anything but
//! events.
//!
//! - The hold shelf: READY holds, soonest pickup deadline first, with the
//!   copy held. A hold's copy is *to pull* from the open shelves unless it
//!   was in the librarian's hands when it was held: reserve-svc holds the
//!   copy that just came back first (a return recorded at the desk, or a
//!   READY hold cancelled or expired, whose copy is on the hold shelf
//!   already), in the same transaction, so that change is the book's
//!   `book_seq` right before the hold's. Every other hold (a free copy, a
//!   replacement for a withdrawn or lost one, a new copy) waits for someone
//!   to fetch it. Whether a copy was since fetched is told by no event, so
//!   a hold stays to pull until it is picked up or ends; `trapped_since`
//!   narrows the list to the holds made since the last round of pulling.
//! - Overdue loans (RENTED past the due date at the moment of reading),
//!   longest overdue first, and loans due on a library day (in
//!   `LIBRARY_TIMEZONE`), earliest first.
//! - A book's queue: its WAITING journeys in `book_seq` order (a requeued
//!   hold first, its placement being older than anyone's behind it), and
//!   its READY holds.
//! - Members whose id starts with a prefix, among those the events named.
//!
//! Lists are paged by their own order: a page token holds the last row's
//! sort key and id, so rows that move meanwhile are neither lost nor
//! repeated by a page they did not belong to.

use std::collections::HashMap;

use rentalbook_plumbing::error::{Reason, Refusal};
use rentalbook_plumbing::ids::MemberId;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::view::v1::{
    BookQueue, HoldShelf, HoldShelfEntry, ListMembersResponse, LoanEntry, Loans, MemberSummary,
    QueueEntry, StepKind,
};
use sea_orm::sea_query::{Alias, Cond, Expr, Query, SimpleExpr};
use sea_orm::{
    AccessMode, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, FromQueryResult, IsolationLevel, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Select, TransactionTrait,
};
use tonic::Status;

use crate::domain::{self, stage};
use crate::pages;
use crate::store::{journeys, steps};

/// A read-only transaction in which every statement sees the same moment:
/// a list and its counts agree even while events are being applied.
pub async fn snapshot(db: &sea_orm::DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    if db.get_database_backend() == DbBackend::Postgres {
        db.begin_with_config(
            Some(IsolationLevel::RepeatableRead),
            Some(AccessMode::ReadOnly),
        )
        .await
    } else {
        // SQLite reads a transaction's first snapshot until it ends.
        db.begin().await
    }
}

/// The watchers' key of the hold shelf; member ids cannot start with `#`.
pub const HOLD_SHELF: &str = "#hold-shelf";
/// The watchers' key of the lists of loans.
pub const LOANS: &str = "#loans";

fn bad_token() -> Status {
    Refusal::invalid_argument(
        Reason::InvalidPageToken,
        "page_token is not one this service gave out",
    )
    .into()
}

/// A reservation id as a page token carries it.
fn token_id(s: &str) -> Result<String, Status> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err(bad_token());
    }
    Ok(s.to_owned())
}

/// A page token: the last row's sort key and reservation id.
pub fn token<K: std::fmt::Display>(key: K, id: &str) -> String {
    format!("{key}~{id}")
}

/// The sort key (a number) and reservation id of a page token; `None` for
/// the first page.
pub fn parse_token(value: &str) -> Result<Option<(i64, String)>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    let (key, id) = value.split_once('~').ok_or_else(bad_token)?;
    let key = key.parse::<i64>().map_err(|_| bad_token())?;
    Ok(Some((key, token_id(id)?)))
}

/// A moment as a page token's key: nanoseconds since 1970.
fn instant_key(t: Timestamp) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn instant_of(key: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_nanos(key)
}

/// Rows after (`key`, `id`) in ascending order of `column` then id.
fn after<C: ColumnTrait>(column: C, key: impl Into<sea_orm::Value> + Clone, id: &str) -> Condition {
    Condition::any().add(column.gt(key.clone())).add(
        Condition::all()
            .add(column.eq(key))
            .add(journeys::Column::ReservationId.gt(id)),
    )
}

fn in_stage(s: &str) -> Select<journeys::Entity> {
    journeys::Entity::find().filter(journeys::Column::Stage.eq(s))
}

/// Whether a READY journey's copy was in the librarian's hands when it was
/// held: the change right before the hold (its book_seq less one) freed
/// that very copy at the desk.
fn held_from_the_desk() -> SimpleExpr {
    use sea_orm::sea_query::ExprTrait;
    let k = Alias::new("freed");
    let this = |c: journeys::Column| Expr::col((journeys::Entity, c));
    let freed = |c: journeys::Column| Expr::col((k.clone(), c));
    let released_here = Query::select()
        .expr(Expr::val(1))
        .from_as(journeys::Entity, k.clone())
        .cond_where(
            Cond::all()
                .add(freed(journeys::Column::BookId).eq(this(journeys::Column::BookId)))
                .add(
                    freed(journeys::Column::ReleaseSeq).eq(this(journeys::Column::StageSeq).sub(1)),
                )
                // The copy freed: the one lent, or the one held when the
                // hold ended before a loan.
                .add(
                    Cond::any()
                        .add(
                            freed(journeys::Column::LoanBarcode)
                                .eq(this(journeys::Column::HoldBarcode)),
                        )
                        .add(
                            Cond::all()
                                .add(freed(journeys::Column::LoanBarcode).eq(""))
                                .add(
                                    freed(journeys::Column::HoldBarcode)
                                        .eq(this(journeys::Column::HoldBarcode)),
                                ),
                        ),
                ),
        )
        .to_owned();
    this(journeys::Column::HoldBarcode)
        .ne("")
        .and(Expr::exists(released_here))
}

/// Whether a READY journey's copy is still on the open shelves.
fn to_pull() -> SimpleExpr {
    use sea_orm::sea_query::ExprTrait;
    held_from_the_desk().not()
}

/// What the hold shelf asks for.
pub struct ShelfQuery {
    pub to_pull_only: bool,
    pub trapped_since: Option<Timestamp>,
    pub after: Option<(i64, String)>,
    pub limit: u64,
}

#[derive(FromQueryResult)]
struct ShelfRow {
    reservation_id: String,
    member_id: String,
    book_id: String,
    hold_barcode: String,
    pickup_deadline: Option<Timestamp>,
    trapped_at: Option<Timestamp>,
    in_hand: bool,
}

/// READY holds in pickup deadline order, with whether each copy is to pull.
fn shelf() -> Select<journeys::Entity> {
    in_stage(stage::READY)
        .select_only()
        .columns([
            journeys::Column::ReservationId,
            journeys::Column::MemberId,
            journeys::Column::BookId,
            journeys::Column::HoldBarcode,
            journeys::Column::PickupDeadline,
            journeys::Column::TrappedAt,
        ])
        .column_as(held_from_the_desk(), "in_hand")
        .order_by_asc(journeys::Column::PickupDeadline)
        .order_by_asc(journeys::Column::ReservationId)
}

async fn shelf_entries<C: ConnectionTrait>(
    db: &C,
    rows: Vec<ShelfRow>,
) -> Result<Vec<HoldShelfEntry>, DbErr> {
    let titles = pages::titles_of(db, rows.iter().map(|r| r.book_id.as_str())).await?;
    Ok(rows
        .into_iter()
        .map(|r| HoldShelfEntry {
            book_title: titles.get(&r.book_id).cloned().unwrap_or_default(),
            reservation_id: r.reservation_id,
            member_id: r.member_id,
            book_id: r.book_id,
            barcode: r.hold_barcode,
            pickup_deadline: time::opt_to_proto(r.pickup_deadline),
            trapped_at: time::opt_to_proto(r.trapped_at),
            to_pull: !r.in_hand,
        })
        .collect())
}

fn count(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A page of the hold shelf.
pub async fn hold_shelf<C: ConnectionTrait>(
    db: &C,
    q: &ShelfQuery,
    now: Timestamp,
) -> Result<HoldShelf, DbErr> {
    let mut filter = Condition::all();
    if q.to_pull_only {
        filter = filter.add(to_pull());
    }
    if let Some(since) = q.trapped_since {
        filter = filter.add(journeys::Column::TrappedAt.gte(since));
    }
    let total = in_stage(stage::READY)
        .filter(filter.clone())
        .count(db)
        .await?;
    let to_pull = in_stage(stage::READY).filter(to_pull()).count(db).await?;
    let mut page = shelf().filter(filter);
    if let Some((key, id)) = &q.after {
        page = page.filter(after(
            journeys::Column::PickupDeadline,
            instant_of(*key),
            id,
        ));
    }
    let mut rows: Vec<ShelfRow> = page
        .limit(q.limit + 1)
        .into_model::<ShelfRow>()
        .all(db)
        .await?;
    let next_page_token = next_token(&mut rows, q.limit, |r| {
        token(
            instant_key(r.pickup_deadline.unwrap_or_default()),
            &r.reservation_id,
        )
    });
    Ok(HoldShelf {
        holds: shelf_entries(db, rows).await?,
        next_page_token,
        total: count(total),
        to_pull: count(to_pull),
        generated_at: Some(time::to_proto(now)),
    })
}

/// Keeps `limit` rows and tells the token of the next page, if any.
fn next_token<T>(rows: &mut Vec<T>, limit: u64, token_of: impl Fn(&T) -> String) -> String {
    if rows.len() as u64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(token_of).unwrap_or_default()
    } else {
        String::new()
    }
}

/// Which loans a list holds.
pub enum LoanFilter {
    /// Due before this moment: overdue at it.
    DueBefore(Timestamp),
    /// Due in [start, end).
    DueWithin(Timestamp, Timestamp),
}

/// A page of active loans in due date order.
pub async fn loans<C: ConnectionTrait>(
    db: &C,
    filter: &LoanFilter,
    after_row: Option<&(i64, String)>,
    limit: u64,
    now: Timestamp,
) -> Result<Loans, DbErr> {
    let which = match filter {
        LoanFilter::DueBefore(t) => Condition::all().add(journeys::Column::DueAt.lt(*t)),
        LoanFilter::DueWithin(start, end) => Condition::all()
            .add(journeys::Column::DueAt.gte(*start))
            .add(journeys::Column::DueAt.lt(*end)),
    };
    let total = in_stage(stage::RENTED)
        .filter(which.clone())
        .count(db)
        .await?;
    let mut page = in_stage(stage::RENTED).filter(which);
    if let Some((key, id)) = after_row {
        page = page.filter(after(journeys::Column::DueAt, instant_of(*key), id));
    }
    let mut rows = page
        .order_by_asc(journeys::Column::DueAt)
        .order_by_asc(journeys::Column::ReservationId)
        .limit(limit + 1)
        .all(db)
        .await?;
    let next_page_token = next_token(&mut rows, limit, |j| {
        token(instant_key(j.due_at.unwrap_or_default()), &j.reservation_id)
    });
    let titles = pages::titles_of(db, rows.iter().map(|j| j.book_id.as_str())).await?;
    let loans = rows
        .into_iter()
        .map(|j| LoanEntry {
            book_title: titles.get(&j.book_id).cloned().unwrap_or_default(),
            overdue: j.due_at.is_some_and(|d| d < now),
            barcode: pages::barcode_of(&j).to_owned(),
            due_at: time::opt_to_proto(j.due_at),
            renewals: j.renewals,
            rental_id: j.rental_id.unwrap_or_default(),
            reservation_id: j.reservation_id,
            member_id: j.member_id,
            book_id: j.book_id,
        })
        .collect();
    Ok(Loans {
        loans,
        next_page_token,
        total: count(total),
        generated_at: Some(time::to_proto(now)),
        ..Default::default()
    })
}

/// The next moment the overdue list changes by the clock alone: the
/// earliest due date still ahead.
pub async fn next_due<C: ConnectionTrait>(
    db: &C,
    now: Timestamp,
) -> Result<Option<Timestamp>, DbErr> {
    Ok(in_stage(stage::RENTED)
        .filter(journeys::Column::DueAt.gte(now))
        .order_by_asc(journeys::Column::DueAt)
        .one(db)
        .await?
        .and_then(|j| j.due_at))
}

/// Whether anything is known of the book: its title or a journey.
async fn book_known<C: ConnectionTrait>(db: &C, book_id: &str) -> Result<bool, DbErr> {
    Ok(journeys::Entity::find()
        .filter(journeys::Column::BookId.eq(book_id))
        .one(db)
        .await?
        .is_some())
}

/// A page of a book's queue; `None` when nothing is known of the book.
pub async fn book_queue<C: ConnectionTrait>(
    db: &C,
    book_id: &str,
    after_row: Option<&(i64, String)>,
    limit: u64,
    now: Timestamp,
) -> Result<Option<BookQueue>, DbErr> {
    // A merged book's id shows the queue of the book it was merged into.
    let book_id = &rentalbook_plumbing::merged::resolve(db, book_id).await?;
    let book_id = book_id.as_str();
    let title = pages::titles_of(db, [book_id]).await?.remove(book_id);
    if title.is_none() && !book_known(db, book_id).await? {
        return Ok(None);
    }
    let waiting = || in_stage(stage::WAITING).filter(journeys::Column::BookId.eq(book_id));
    let total = waiting().count(db).await?;
    let mut page = waiting();
    if let Some((key, id)) = after_row {
        page = page.filter(after(journeys::Column::QueueSeq, *key, id));
    }
    let mut rows = page
        .order_by_asc(journeys::Column::QueueSeq)
        .order_by_asc(journeys::Column::ReservationId)
        .limit(limit + 1)
        .all(db)
        .await?;
    let next_page_token = next_token(&mut rows, limit, |j| token(j.queue_seq, &j.reservation_id));
    let first = match rows.first() {
        Some(j) => pages::queue_position(db, book_id, j.queue_seq).await?,
        None => 1,
    };
    let ids: Vec<&str> = rows.iter().map(|j| j.reservation_id.as_str()).collect();
    let mut step_at: HashMap<(String, i32), Timestamp> = HashMap::new();
    if !ids.is_empty() {
        for s in steps::Entity::find()
            .filter(steps::Column::ReservationId.is_in(ids))
            .filter(
                steps::Column::Kind.is_in([StepKind::Reserved as i32, StepKind::Requeued as i32]),
            )
            .all(db)
            .await?
        {
            step_at.insert((s.reservation_id, s.kind), s.at);
        }
    }
    let waiting = rows
        .into_iter()
        .zip(first..)
        .map(|(j, position)| QueueEntry {
            position,
            reserved_at: step_at
                .get(&(j.reservation_id.clone(), StepKind::Reserved as i32))
                .map(|t| time::to_proto(*t)),
            requeued: step_at.contains_key(&(j.reservation_id.clone(), StepKind::Requeued as i32)),
            reservation_id: j.reservation_id,
            member_id: j.member_id,
        })
        .collect();
    let ready = if after_row.is_none() {
        let rows = shelf()
            .filter(journeys::Column::BookId.eq(book_id))
            .into_model::<ShelfRow>()
            .all(db)
            .await?;
        shelf_entries(db, rows).await?
    } else {
        Vec::new()
    };
    let next_due: Option<Option<Timestamp>> = in_stage(stage::RENTED)
        .filter(journeys::Column::BookId.eq(book_id))
        .filter(journeys::Column::DueAt.is_not_null())
        .select_only()
        .column(journeys::Column::DueAt)
        .order_by_asc(journeys::Column::DueAt)
        .into_tuple()
        .one(db)
        .await?;
    Ok(Some(BookQueue {
        next_due_at: next_due.flatten().map(time::to_proto),
        book_id: book_id.to_owned(),
        book_title: title.unwrap_or_default(),
        waiting,
        next_page_token,
        total_waiting: count(total),
        ready,
        generated_at: Some(time::to_proto(now)),
    }))
}

/// `SUBSTR(member_id, 1, len) = prefix`.
fn id_starts_with(prefix: &str) -> SimpleExpr {
    use sea_orm::sea_query::{ExprTrait, Func};
    let len = i32::try_from(prefix.len()).unwrap_or(i32::MAX);
    Expr::expr(
        Func::cust("SUBSTR")
            .arg(Expr::col((journeys::Entity, journeys::Column::MemberId)))
            .arg(1)
            .arg(len),
    )
    .eq(prefix)
}

#[derive(FromQueryResult)]
struct Holding {
    member_id: String,
    stage: String,
    due_at: Option<Timestamp>,
}

/// A page of the members whose id starts with `prefix`, by id.
pub async fn list_members<C: ConnectionTrait>(
    db: &C,
    prefix: &str,
    after_member: Option<&MemberId>,
    limit: u64,
    now: Timestamp,
) -> Result<ListMembersResponse, DbErr> {
    // Member ids are ASCII, so a prefix is its first bytes, compared
    // exactly (LIKE would be case-blind on SQLite and take `_` as a
    // wildcard).
    let mut q = journeys::Entity::find()
        .select_only()
        .column(journeys::Column::MemberId)
        .distinct();
    if !prefix.is_empty() {
        q = q.filter(id_starts_with(prefix));
    }
    if let Some(after_member) = after_member {
        q = q.filter(journeys::Column::MemberId.gt(after_member.as_str()));
    }
    let mut members: Vec<String> = q
        .order_by_asc(journeys::Column::MemberId)
        .limit(limit + 1)
        .into_tuple::<String>()
        .all(db)
        .await?;
    let next_page_token = next_token(&mut members, limit, |m| m.clone());
    let mut summaries: Vec<MemberSummary> = members
        .iter()
        .map(|m| MemberSummary {
            member_id: m.clone(),
            ..Default::default()
        })
        .collect();
    if !members.is_empty() {
        let holdings = journeys::Entity::find()
            .select_only()
            .columns([
                journeys::Column::MemberId,
                journeys::Column::Stage,
                journeys::Column::DueAt,
            ])
            .filter(journeys::Column::MemberId.is_in(members.iter().map(String::as_str)))
            .filter(journeys::Column::Stage.is_in([stage::WAITING, stage::READY, stage::RENTED]))
            .into_model::<Holding>()
            .all(db)
            .await?;
        let at: HashMap<String, usize> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i))
            .collect();
        for h in holdings {
            let Some(s) = at.get(&h.member_id).map(|&i| &mut summaries[i]) else {
                continue;
            };
            match domain::visible_stage(&h.stage, h.due_at, now) {
                rentalbook_proto::view::v1::JourneyStage::Waiting => s.open_reservations += 1,
                rentalbook_proto::view::v1::JourneyStage::Ready => {
                    s.open_reservations += 1;
                    s.ready += 1;
                }
                rentalbook_proto::view::v1::JourneyStage::Rented => s.active_rentals += 1,
                rentalbook_proto::view::v1::JourneyStage::Overdue => {
                    s.active_rentals += 1;
                    s.overdue += 1;
                }
                _ => {}
            }
        }
    }
    Ok(ListMembersResponse {
        members: summaries,
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_carry_a_key_and_an_id_and_refuse_anything_else() {
        let t = token(-5, "r-1");
        assert_eq!(parse_token(&t).unwrap(), Some((-5, "r-1".to_owned())));
        assert_eq!(parse_token("").unwrap(), None);
        for bad in [
            "r-1",
            "x~r-1",
            "1~",
            "1~a b",
            &format!("1~{}", "a".repeat(65)),
        ] {
            let e = parse_token(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        let now = time::now();
        assert_eq!(instant_of(instant_key(now)), now);
    }
}
