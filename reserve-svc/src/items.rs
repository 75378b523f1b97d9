//! Items on the desk's side: which copy serves which reservation (R9).
//!
//! An item serves at most one reservation (a unique index): the READY one it
//! is held for on the hold shelf, or the FULFILLED one it is on loan to.
//! Everything here runs under the book's lock, in the caller's transaction.

use rentalbook_plumbing::time::Timestamp;
use rentalbook_proto::events::v1 as events;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Select, Set,
};

use crate::store::{item_state, items};

/// The book's free items in the order they are handed out: `prefer` first
/// (the copy that just came back to the desk), then by barcode.
pub(crate) fn free_items(book_id: &str, prefer: Option<&str>) -> Select<items::Entity> {
    let mut free = items::Entity::find()
        .filter(items::Column::BookId.eq(book_id))
        .filter(items::Column::State.eq(item_state::IN_SERVICE))
        .filter(items::Column::ReservationId.is_null());
    if let Some(p) = prefer {
        free = free.order_by_desc(items::Column::ItemId.eq(p));
    }
    free.order_by_asc(items::Column::Barcode)
}

/// See [`free_items`].
pub async fn free<C: ConnectionTrait>(
    conn: &C,
    book_id: &str,
    prefer: Option<&str>,
) -> Result<Vec<items::Model>, DbErr> {
    free_items(book_id, prefer).all(conn).await
}

/// Holds the first free item (see [`free_items`]) for a reservation; its
/// barcode, or None when the book has no free item with a barcode. One
/// statement: the item chosen and held by the same UPDATE.
pub async fn trap<C: ConnectionTrait>(
    conn: &C,
    book_id: &str,
    reservation_id: &str,
    prefer: Option<&str>,
    now: Timestamp,
) -> Result<Option<String>, DbErr> {
    let first = free_items(book_id, prefer)
        .select_only()
        .column(items::Column::ItemId)
        .limit(1)
        .into_query();
    let held = items::Entity::update_many()
        .col_expr(items::Column::ReservationId, Expr::val(reservation_id))
        .col_expr(items::Column::UpdatedAt, Expr::val(now))
        .filter(items::Column::ItemId.in_subquery(first))
        .exec_with_returning(conn)
        .await?;
    Ok(held.into_iter().next().map(|item| item.barcode))
}

pub async fn attach<C: ConnectionTrait>(
    conn: &C,
    item_id: &str,
    reservation_id: &str,
    now: Timestamp,
) -> Result<(), DbErr> {
    items::Entity::update_many()
        .col_expr(items::Column::ReservationId, Expr::val(reservation_id))
        .col_expr(items::Column::UpdatedAt, Expr::val(now))
        .filter(items::Column::ItemId.eq(item_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// Frees the item that serves a reservation, in one statement; the item's
/// id, if one did.
pub async fn release<C: ConnectionTrait>(
    conn: &C,
    reservation_id: &str,
    now: Timestamp,
) -> Result<Option<String>, DbErr> {
    let freed = items::Entity::update_many()
        .col_expr(
            items::Column::ReservationId,
            Expr::val(Option::<String>::None),
        )
        .col_expr(items::Column::UpdatedAt, Expr::val(now))
        .filter(items::Column::ReservationId.eq(reservation_id))
        .exec_with_returning(conn)
        .await?;
    Ok(freed.into_iter().next().map(|item| item.item_id))
}

/// The item serving a reservation.
pub async fn serving<C: ConnectionTrait>(
    conn: &C,
    reservation_id: &str,
) -> Result<Option<items::Model>, DbErr> {
    items::Entity::find()
        .filter(items::Column::ReservationId.eq(reservation_id))
        .one(conn)
        .await
}

pub async fn by_barcode<C: ConnectionTrait>(
    conn: &C,
    barcode: &str,
) -> Result<Option<items::Model>, DbErr> {
    items::Entity::find()
        .filter(items::Column::Barcode.eq(barcode))
        .one(conn)
        .await
}

/// Records the catalogue's items of a book, in service and free; items
/// already known are left as they are, so a replayed event changes nothing.
/// Returns how many were new.
pub async fn register<C: ConnectionTrait>(
    conn: &C,
    book_id: &str,
    registered: &[events::Item],
    now: Timestamp,
) -> Result<usize, DbErr> {
    let mut new = 0;
    for item in registered {
        let known = items::Entity::find_by_id(item.item_id.clone())
            .one(conn)
            .await?
            .is_some();
        if known {
            continue;
        }
        items::Entity::insert(items::ActiveModel {
            item_id: Set(item.item_id.clone()),
            book_id: Set(book_id.to_owned()),
            barcode: Set(item.barcode.clone()),
            state: Set(item_state::IN_SERVICE.to_owned()),
            reservation_id: Set(None),
            updated_at: Set(now),
        })
        .exec(conn)
        .await?;
        new += 1;
    }
    Ok(new)
}

/// A book's items in barcode order.
pub async fn of_book<C: ConnectionTrait>(
    conn: &C,
    book_id: &str,
) -> Result<Vec<items::Model>, DbErr> {
    items::Entity::find()
        .filter(items::Column::BookId.eq(book_id))
        .order_by_asc(items::Column::Barcode)
        .all(conn)
        .await
}

pub async fn set_state<C: ConnectionTrait>(
    conn: &C,
    item_id: &str,
    state: &str,
    now: Timestamp,
) -> Result<(), DbErr> {
    items::Entity::update_many()
        .col_expr(items::Column::State, Expr::val(state))
        .col_expr(items::Column::UpdatedAt, Expr::val(now))
        .filter(items::Column::ItemId.eq(item_id))
        .exec(conn)
        .await?;
    Ok(())
}
