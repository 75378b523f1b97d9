//! rental-svc's tables and migrations.

use rentalbook_plumbing::schema::{
    OutboxTraceparent, PlumbingTables, add_text_column_if_missing, create_entity_table,
};
use sea_orm_migration::prelude::*;

pub mod rentals {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "rentals")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub rental_id: String,
        /// Known once reserve-svc has fulfilled the reservation.
        pub reservation_id: Option<String>,
        pub book_id: String,
        #[sea_orm(indexed)]
        pub member_id: String,
        /// One of [`crate::domain::status`].
        #[sea_orm(indexed)]
        pub status: String,
        pub rented_at: Option<DateTimeUtc>,
        pub due_at: Option<DateTimeUtc>,
        pub returned_at: Option<DateTimeUtc>,
        /// One of [`crate::domain::confirmation`] once returned.
        pub return_confirmation: Option<String>,
        /// The item lent, as the desk said when it fulfilled (set from the
        /// start for a loan made at the desk).
        #[sea_orm(indexed)]
        pub barcode: Option<String>,
        /// Times renewed (R12).
        pub renewals: i32,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

struct CreateRentals;

impl MigrationName for CreateRentals {
    fn name(&self) -> &str {
        "m0001_create_rentals"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateRentals {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, rentals::Entity).await?;
        // One rental being opened or out per member and book.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX IF NOT EXISTS uq_rentals_open \
                 ON rentals (member_id, book_id) WHERE status IN ('PENDING', 'ACTIVE')",
            )
            .await?;
        Ok(())
    }
}

/// The lent item's barcode (SPEC §10), for databases made before it.
struct RentalBarcode;

impl MigrationName for RentalBarcode {
    fn name(&self) -> &str {
        "m0003_rental_barcode"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for RentalBarcode {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_text_column_if_missing(manager, "rentals", "barcode").await?;
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_rentals_barcode ON rentals (barcode, status)",
            )
            .await?;
        Ok(())
    }
}

/// Renewals (R12), for databases made before them.
struct RentalRenewals;

impl MigrationName for RentalRenewals {
    fn name(&self) -> &str {
        "m0004_rental_renewals"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for RentalRenewals {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column("rentals", "renewals").await? {
            manager
                .get_connection()
                .execute_unprepared(
                    "ALTER TABLE rentals ADD COLUMN renewals INTEGER NOT NULL DEFAULT 0",
                )
                .await?;
        }
        Ok(())
    }
}

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(PlumbingTables),
            Box::new(CreateRentals),
            Box::new(OutboxTraceparent),
            Box::new(RentalBarcode),
            Box::new(RentalRenewals),
            Box::new(rentalbook_plumbing::merged::MergedBooks),
        ]
    }
}
