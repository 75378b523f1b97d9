//! rental-svc's tables and migrations.

use rentalbook_plumbing::schema::{OutboxTraceparent, PlumbingTables, create_entity_table};
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

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(PlumbingTables),
            Box::new(CreateRentals),
            Box::new(OutboxTraceparent),
        ]
    }
}
