//! reserve-svc's tables and migrations.

use rentalbook_plumbing::schema::{
    OutboxTraceparent, PlumbingTables, add_text_column_if_missing, create_entity_table,
};
use sea_orm_migration::prelude::*;

/// Reservation states as stored.
pub mod status {
    pub const WAITING: &str = "WAITING";
    pub const READY: &str = "READY";
    pub const FULFILLED: &str = "FULFILLED";
    pub const CANCELLED: &str = "CANCELLED";
    pub const EXPIRED: &str = "EXPIRED";
}

/// Item circulation states as stored.
pub mod item_state {
    pub const IN_SERVICE: &str = "IN_SERVICE";
    pub const WITHDRAWN: &str = "WITHDRAWN";
    pub const LOST: &str = "LOST";
}

pub mod book_stock {
    use sea_orm::entity::prelude::*;

    /// A book as the lending desk knows it, from book-svc's events.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "book_stock")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub book_id: String,
        /// Copies in circulation: those the catalogue registered less the
        /// items withdrawn or lost.
        pub total_copies: i32,
        /// Copies the catalogue registered (its events' totals).
        pub registered_copies: i32,
        /// Grows by one with every change of the book's reservations; the
        /// availability snapshots carry it so consumers apply them in order.
        pub book_seq: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod reservations {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reservations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub reservation_id: String,
        #[sea_orm(indexed)]
        pub book_id: String,
        #[sea_orm(indexed)]
        pub member_id: String,
        /// One of [`super::status`].
        pub status: String,
        /// The book's book_seq when placed: the queue is ordered by it.
        pub queue_seq: i64,
        pub pickup_deadline: Option<DateTimeUtc>,
        /// Set when FULFILLED; a rental has at most one reservation.
        #[sea_orm(unique)]
        pub rental_id: Option<String>,
        /// When the copy of the rental came back (the return receipt).
        pub returned_at: Option<DateTimeUtc>,
        /// The item held while READY, lent once FULFILLED (R9); kept on
        /// finished rows as the item's history.
        pub barcode: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod items {
    use sea_orm::entity::prelude::*;

    /// A copy with its barcode (from the catalogue's events) and its
    /// circulation state, which the desk owns.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "items")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub item_id: String,
        #[sea_orm(indexed)]
        pub book_id: String,
        #[sea_orm(unique)]
        pub barcode: String,
        /// One of [`super::item_state`].
        pub state: String,
        /// The reservation the item serves: READY (on the hold shelf) or
        /// FULFILLED and not returned (on loan). None: on the open shelf.
        #[sea_orm(unique)]
        pub reservation_id: Option<String>,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

struct CreateLendingTables;

impl MigrationName for CreateLendingTables {
    fn name(&self) -> &str {
        "m0001_create_lending_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateLendingTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, book_stock::Entity).await?;
        create_entity_table(manager, reservations::Entity).await?;
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS idx_reservations_queue \
             ON reservations (book_id, status, queue_seq)",
        )
        .await?;
        // R2 as a last line of defence: one open reservation per member and book.
        db.execute_unprepared(
            "CREATE UNIQUE INDEX IF NOT EXISTS uq_reservations_open \
             ON reservations (member_id, book_id) WHERE status IN ('WAITING', 'READY')",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS idx_reservations_pickup \
             ON reservations (status, pickup_deadline)",
        )
        .await?;
        Ok(())
    }
}

/// Items and the trapped barcode (SPEC §10, R9). Copies registered before
/// are given their items by the catalogue's ItemsRegistered events.
struct Items;

impl MigrationName for Items {
    fn name(&self) -> &str {
        "m0003_items"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Items {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, items::Entity).await?;
        add_text_column_if_missing(manager, "reservations", "barcode").await?;
        if !manager
            .has_column("book_stock", "registered_copies")
            .await?
        {
            let db = manager.get_connection();
            db.execute_unprepared(
                "ALTER TABLE book_stock ADD COLUMN registered_copies INTEGER NOT NULL DEFAULT 0",
            )
            .await?;
            db.execute_unprepared("UPDATE book_stock SET registered_copies = total_copies")
                .await?;
        }
        Ok(())
    }
}

/// The desk counts a book's and a member's live reservations (waiting,
/// held, on loan) at every change. Returned loans and cancelled or expired
/// reservations pile up over the years and over a member's history, and
/// the indexes by book and status, and by member, made each count read them
/// all: these index only the rows not returned, by status, so a count reads
/// the live ones alone.
struct LiveReservationIndexes;

impl MigrationName for LiveReservationIndexes {
    fn name(&self) -> &str {
        "m0004_live_reservation_indexes"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for LiveReservationIndexes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for ddl in [
            "CREATE INDEX IF NOT EXISTS idx_reservations_live_book \
             ON reservations (book_id, status) WHERE returned_at IS NULL",
            "CREATE INDEX IF NOT EXISTS idx_reservations_live_member \
             ON reservations (member_id, status) WHERE returned_at IS NULL",
        ] {
            db.execute_unprepared(ddl).await?;
        }
        Ok(())
    }
}

/// A book's free items (`reservation_id IS NULL`) are found by book: the
/// unique index on `reservation_id` alone looked selective to SQLite's
/// planner, which then read every free item of the library to find one
/// book's (20 ms a hold at 100,000 items, under the one writer).
struct FreeItemsByBook;

impl MigrationName for FreeItemsByBook {
    fn name(&self) -> &str {
        "m0005_free_items_by_book"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for FreeItemsByBook {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_items_book_free ON items (book_id, reservation_id)",
            )
            .await?;
        Ok(())
    }
}

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(PlumbingTables),
            Box::new(CreateLendingTables),
            Box::new(OutboxTraceparent),
            Box::new(Items),
            Box::new(rentalbook_plumbing::merged::MergedBooks),
            Box::new(LiveReservationIndexes),
            Box::new(FreeItemsByBook),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rentalbook_plumbing::db::Db;
    use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, QueryTrait, Statement};

    /// SQLite's plan for a book's free items goes by the book, not through
    /// every free item of the library.
    #[tokio::test]
    async fn a_books_free_items_are_found_by_book() {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        Migrator::up(db.conn(), None).await.unwrap();
        for prefer in [None, Some("item-1")] {
            let query = crate::items::free_items("b1", prefer).build(DbBackend::Sqlite);
            let plan = db
                .conn()
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    format!("EXPLAIN QUERY PLAN {}", query.sql),
                    query.values.map(|v| v.0).unwrap_or_default(),
                ))
                .await
                .unwrap();
            let steps: Vec<String> = plan
                .iter()
                .map(|row| row.try_get::<String>("", "detail").unwrap())
                .collect();
            assert!(
                steps.iter().any(|s| s.contains("idx_items_book_free")),
                "{steps:?}"
            );
        }
    }

    /// A desk database as today's code made it before items: its books keep
    /// their copies (registered and in circulation alike) and its
    /// reservations gain an empty barcode.
    #[tokio::test]
    async fn migrating_keeps_every_book_and_reservation() {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        Migrator::up(db.conn(), Some(3)).await.unwrap();
        let conn = db.conn();
        for ddl in [
            "ALTER TABLE book_stock DROP COLUMN registered_copies",
            "ALTER TABLE reservations DROP COLUMN barcode",
            "INSERT INTO book_stock (book_id, total_copies, book_seq) VALUES ('b1', 3, 7)",
            "INSERT INTO reservations (reservation_id, book_id, member_id, status, queue_seq, \
             pickup_deadline, rental_id, returned_at, created_at, updated_at) VALUES ('r1', 'b1', \
             'alice', 'READY', 1, '2026-01-02 00:00:00+00:00', NULL, NULL, \
             '2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00')",
        ] {
            conn.execute_unprepared(ddl).await.unwrap();
        }
        Migrator::up(conn, None).await.unwrap();
        let book = book_stock::Entity::find_by_id("b1".to_owned())
            .one(conn)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (book.total_copies, book.registered_copies, book.book_seq),
            (3, 3, 7)
        );
        let r = reservations::Entity::find_by_id("r1".to_owned())
            .one(conn)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.status.as_str(), r.barcode), ("READY", None));
        assert!(items::Entity::find().all(conn).await.unwrap().is_empty());
    }
}
