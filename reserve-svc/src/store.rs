//! reserve-svc's tables and migrations.

use rentalbook_plumbing::schema::{OutboxTraceparent, PlumbingTables, create_entity_table};
use sea_orm_migration::prelude::*;

/// Reservation states as stored.
pub mod status {
    pub const WAITING: &str = "WAITING";
    pub const READY: &str = "READY";
    pub const FULFILLED: &str = "FULFILLED";
    pub const CANCELLED: &str = "CANCELLED";
    pub const EXPIRED: &str = "EXPIRED";
}

pub mod book_stock {
    use sea_orm::entity::prelude::*;

    /// A book as the lending desk knows it, from book-svc's events.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "book_stock")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub book_id: String,
        pub total_copies: i32,
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
        pub created_at: DateTimeUtc,
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

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(PlumbingTables),
            Box::new(CreateLendingTables),
            Box::new(OutboxTraceparent),
        ]
    }
}
