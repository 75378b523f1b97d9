//! view-svc's read model and its migrations. Written only by the projection.

use rentalbook_plumbing::schema::{OutboxTraceparent, PlumbingTables, create_entity_table};
use sea_orm_migration::prelude::*;

pub mod journeys {
    use sea_orm::entity::prelude::*;

    /// One reservation and what came of it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "journeys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub reservation_id: String,
        #[sea_orm(indexed)]
        pub member_id: String,
        #[sea_orm(indexed)]
        pub book_id: String,
        /// One of [`crate::domain::stage`].
        pub stage: String,
        /// The book's book_seq when the reservation was placed: queue order.
        pub queue_seq: i64,
        pub pickup_deadline: Option<DateTimeUtc>,
        #[sea_orm(indexed)]
        pub rental_id: Option<String>,
        pub due_at: Option<DateTimeUtc>,
        pub returned_at: Option<DateTimeUtc>,
        /// PENDING or CONFIRMED once returned.
        pub return_confirmation: Option<String>,
        /// The book_seq of the hold event (placement, READY, requeue,
        /// re-trap) that decided the stage while WAITING or READY, and
        /// `hold_barcode` and `trapped_at` with it: the latest wins.
        pub stage_seq: i64,
        /// The copy held for the member while READY (empty when WAITING).
        pub hold_barcode: String,
        /// When `hold_barcode` was held for the member.
        pub trapped_at: Option<DateTimeUtc>,
        /// The copy lent, once known.
        pub loan_barcode: String,
        /// Times the loan was renewed (the highest count told).
        pub renewals: i32,
        /// The book_seq of the change that freed this journey's copy at the
        /// desk (its return recorded, or the READY hold cancelled or
        /// expired): the copy is in the librarian's hands then, so a hold
        /// given that copy at the next book_seq needs no pulling from the
        /// open shelves.
        pub release_seq: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod steps {
    use sea_orm::entity::prelude::*;

    /// A step of a journey, at most one of each kind.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "journey_steps")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub reservation_id: String,
        /// The `StepKind` number.
        #[sea_orm(primary_key, auto_increment = false)]
        pub kind: i32,
        /// The occurred_at of the event that made the step.
        pub at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod titles {
    use sea_orm::entity::prelude::*;

    /// Book titles from BookRegistered, corrected by BookUpdated.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "book_titles")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub book_id: String,
        pub title: String,
        /// The revision of the book this title is from (0: as registered);
        /// an older one never replaces it.
        pub revision: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

struct CreateReadModel;

impl MigrationName for CreateReadModel {
    fn name(&self) -> &str {
        "m0001_create_read_model"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateReadModel {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, journeys::Entity).await?;
        create_entity_table(manager, steps::Entity).await?;
        create_entity_table(manager, titles::Entity).await
    }
}

/// The titles' revision, for read models made before librarians could
/// correct titles.
struct TitleRevisions;

impl MigrationName for TitleRevisions {
    fn name(&self) -> &str {
        "m0003_title_revisions"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for TitleRevisions {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.has_column("book_titles", "revision").await? {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE book_titles ADD COLUMN revision BIGINT NOT NULL DEFAULT 0",
            )
            .await?;
        Ok(())
    }
}

/// The circulation desk's columns (SPEC §10): the copy held or lent,
/// renewals, holds sent back to the queue, and the indexes of the staff
/// views. Journeys made before keep stage_seq 0 until their next hold
/// event, which then wins as it should; `--rebuild` fills every column.
struct DeskColumns;

impl MigrationName for DeskColumns {
    fn name(&self) -> &str {
        "m0004_desk_columns"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for DeskColumns {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let timestamp = match manager.get_database_backend() {
            sea_orm::DbBackend::Postgres => "TIMESTAMP WITH TIME ZONE",
            _ => "TIMESTAMP_WITH_TIMEZONE_TEXT",
        };
        // A read model created by m0001 from today's entity has them all.
        let columns = [
            ("stage_seq", "BIGINT NOT NULL DEFAULT 0".to_owned()),
            ("hold_barcode", "VARCHAR NOT NULL DEFAULT ''".to_owned()),
            ("trapped_at", format!("{timestamp} NULL")),
            ("loan_barcode", "VARCHAR NOT NULL DEFAULT ''".to_owned()),
            ("renewals", "INTEGER NOT NULL DEFAULT 0".to_owned()),
            ("release_seq", "BIGINT NULL".to_owned()),
        ];
        for (column, ddl) in columns {
            if !manager.has_column("journeys", column).await? {
                db.execute_unprepared(&format!("ALTER TABLE journeys ADD COLUMN {column} {ddl}"))
                    .await?;
            }
        }
        for ddl in [
            // The hold shelf (READY by pickup deadline), overdue and due
            // loans (RENTED by due date), a book's queue.
            "CREATE INDEX IF NOT EXISTS idx_journeys_stage_pickup ON journeys (stage, pickup_deadline)",
            "CREATE INDEX IF NOT EXISTS idx_journeys_stage_due ON journeys (stage, due_at)",
            "CREATE INDEX IF NOT EXISTS idx_journeys_book_stage ON journeys (book_id, stage, queue_seq)",
            "CREATE INDEX IF NOT EXISTS idx_journeys_book_release ON journeys (book_id, release_seq)",
        ] {
            db.execute_unprepared(ddl).await?;
        }
        Ok(())
    }
}

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(PlumbingTables),
            Box::new(CreateReadModel),
            Box::new(OutboxTraceparent),
            Box::new(TitleRevisions),
            Box::new(DeskColumns),
            Box::new(rentalbook_plumbing::merged::MergedBooks),
        ]
    }
}

/// Creates or updates the tables, as the service does when it starts.
pub async fn migrate(db: &sea_orm::DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

/// Empties the read model and the inbox, for a rebuild by replay.
pub async fn clear<C: sea_orm::ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    use sea_orm::EntityTrait;
    journeys::Entity::delete_many().exec(db).await?;
    steps::Entity::delete_many().exec(db).await?;
    titles::Entity::delete_many().exec(db).await?;
    rentalbook_plumbing::merged::merged_books::Entity::delete_many()
        .exec(db)
        .await?;
    rentalbook_plumbing::schema::inbox::Entity::delete_many()
        .exec(db)
        .await?;
    Ok(())
}
