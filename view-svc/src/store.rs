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
        /// When the journey finished (returned, lost, cancelled, expired):
        /// its history is kept until `HISTORY_RETENTION` after this, or
        /// until the member erases it (see [`crate::domain::finished_at`]).
        pub finished_at: Option<DateTimeUtc>,
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

pub mod notices {
    use sea_orm::entity::prelude::*;

    /// A notice notice-svc sent a member (NoticeSent), read once the member
    /// marked it so (NoticesRead).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notices")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub notice_id: String,
        pub member_id: String,
        /// The `NoticeKind` number.
        pub kind: i32,
        pub book_id: String,
        pub book_title: String,
        pub barcode: String,
        pub deadline: Option<DateTimeUtc>,
        pub reservation_id: String,
        pub rental_id: String,
        /// The occurred_at of its NoticeSent.
        pub created_at: DateTimeUtc,
        pub read: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notices_read {
    use sea_orm::entity::prelude::*;

    /// The latest moment up to which a member read their notices, so that a
    /// notice whose NoticeSent is applied after the NoticesRead that covers
    /// it is read all the same.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notices_read")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub member_id: String,
        pub up_to: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod erased_journeys {
    use sea_orm::entity::prelude::*;

    /// A journey erased from the read model (its member's HistoryErased, or
    /// the retention sweep): an event of it applied later is dropped rather
    /// than bringing part of it back. It names no member.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "erased_journeys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub reservation_id: String,
        pub erased_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod history_erased {
    use sea_orm::entity::prelude::*;

    /// The latest HistoryErased of a member: a journey of theirs that
    /// finishes at or before `up_to` through an event applied after it (the
    /// producers' events cross) is erased then.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "history_erased")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub member_id: String,
        pub up_to: DateTimeUtc,
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

/// Notices and the privacy rules (SPEC §10): the notices table, when each
/// journey finished (filled in from the steps for the journeys made before),
/// the erased journeys and the members' erasures.
struct Privacy;

impl MigrationName for Privacy {
    fn name(&self) -> &str {
        "m0011_notices_and_privacy"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Privacy {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use crate::domain::stage;
        use rentalbook_proto::view::v1::StepKind;

        let db = manager.get_connection();
        create_entity_table(manager, notices::Entity).await?;
        create_entity_table(manager, notices_read::Entity).await?;
        create_entity_table(manager, erased_journeys::Entity).await?;
        create_entity_table(manager, history_erased::Entity).await?;
        if !manager.has_column("journeys", "finished_at").await? {
            let timestamp = match manager.get_database_backend() {
                sea_orm::DbBackend::Postgres => "TIMESTAMP WITH TIME ZONE",
                _ => "TIMESTAMP_WITH_TIMEZONE_TEXT",
            };
            db.execute_unprepared(&format!(
                "ALTER TABLE journeys ADD COLUMN finished_at {timestamp} NULL"
            ))
            .await?;
            db.execute_unprepared(&format!(
                "UPDATE journeys SET finished_at = returned_at WHERE stage = '{}'",
                stage::RETURNED
            ))
            .await?;
            for (ended, step) in [
                (stage::CANCELLED, StepKind::Cancelled),
                (stage::EXPIRED, StepKind::Expired),
                (stage::LOST, StepKind::Lost),
            ] {
                db.execute_unprepared(&format!(
                    "UPDATE journeys SET finished_at = (SELECT s.at FROM journey_steps s \
                     WHERE s.reservation_id = journeys.reservation_id AND s.kind = {}) \
                     WHERE stage = '{ended}'",
                    step as i32
                ))
                .await?;
            }
        }
        for ddl in [
            // The sweep: finished journeys by when they finished.
            "CREATE INDEX IF NOT EXISTS idx_journeys_finished ON journeys (finished_at)",
            // My Page: a member's notices, newest first.
            "CREATE INDEX IF NOT EXISTS idx_notices_member ON notices (member_id, created_at)",
            // The sweep: notices by age.
            "CREATE INDEX IF NOT EXISTS idx_notices_created ON notices (created_at)",
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
            Box::new(Privacy),
        ]
    }
}

/// Creates or updates the tables, as the service does when it starts.
pub async fn migrate(db: &sea_orm::DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

/// Empties the read model and the inbox, for a rebuild by replay: the
/// notices, the erased journeys and the erasures too, which the replay's
/// NoticeSent, NoticesRead and HistoryErased make again.
pub async fn clear<C: sea_orm::ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    use sea_orm::EntityTrait;
    journeys::Entity::delete_many().exec(db).await?;
    steps::Entity::delete_many().exec(db).await?;
    titles::Entity::delete_many().exec(db).await?;
    notices::Entity::delete_many().exec(db).await?;
    notices_read::Entity::delete_many().exec(db).await?;
    erased_journeys::Entity::delete_many().exec(db).await?;
    history_erased::Entity::delete_many().exec(db).await?;
    rentalbook_plumbing::merged::merged_books::Entity::delete_many()
        .exec(db)
        .await?;
    rentalbook_plumbing::schema::inbox::Entity::delete_many()
        .exec(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rentalbook_plumbing::db::Db;
    use sea_orm::{ConnectionTrait, EntityTrait};

    use super::*;

    /// A read model made before the privacy rules: its finished journeys
    /// get the moment they finished from their return or their last step.
    #[tokio::test]
    async fn migrating_gives_finished_journeys_their_moment() {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        let before = Migrator::migrations().len() as u32 - 1;
        Migrator::up(db.conn(), Some(before)).await.unwrap();
        let conn = db.conn();
        let journey = |id: &str, stage: &str, returned: &str| {
            format!(
                "INSERT INTO journeys (reservation_id, member_id, book_id, stage, queue_seq, \
                 returned_at, stage_seq, hold_barcode, loan_barcode, renewals) VALUES \
                 ('{id}', 'alice', 'b1', '{stage}', 1, {returned}, 0, '', '', 0)"
            )
        };
        for ddl in [
            "ALTER TABLE journeys DROP COLUMN finished_at".to_owned(),
            journey("r1", "RETURNED", "'2026-01-05 00:00:00+00:00'"),
            journey("r2", "CANCELLED", "NULL"),
            journey("r3", "RENTED", "NULL"),
            "INSERT INTO journey_steps (reservation_id, kind, at) VALUES \
             ('r2', 1, '2026-01-01 00:00:00+00:00'), ('r2', 6, '2026-01-03 00:00:00+00:00')"
                .to_owned(),
        ] {
            conn.execute_unprepared(&ddl).await.unwrap();
        }
        Migrator::up(conn, None).await.unwrap();
        let finished = |id: &str| {
            let id = id.to_owned();
            async move {
                journeys::Entity::find_by_id(id)
                    .one(conn)
                    .await
                    .unwrap()
                    .unwrap()
                    .finished_at
                    .map(|t| t.to_rfc3339())
            }
        };
        assert_eq!(
            finished("r1").await.as_deref(),
            Some("2026-01-05T00:00:00+00:00")
        );
        assert_eq!(
            finished("r2").await.as_deref(),
            Some("2026-01-03T00:00:00+00:00")
        );
        assert_eq!(finished("r3").await, None);
    }
}
