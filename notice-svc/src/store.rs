//! notice-svc's tables and migrations: the members' settings, the notice
//! log (one row per occasion, with its e-mail's state), the loans whose
//! notices the clock brings, the books' titles, and the first start.

use rentalbook_plumbing::schema::{OutboxTraceparent, PlumbingTables, create_entity_table};
use sea_orm_migration::prelude::*;

pub mod settings {
    use sea_orm::entity::prelude::*;

    /// A member's notice settings, once they changed the defaults.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notice_settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub member_id: String,
        pub email: String,
        /// `ko` or `en`.
        pub language: String,
        pub hold_ready: bool,
        pub due_soon: bool,
        pub overdue: bool,
        pub hold_expired: bool,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notices {
    use sea_orm::entity::prelude::*;

    /// One notice: one occasion told to one member.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notices")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub notice_id: String,
        /// What makes it one per occasion (see `domain::*_key`).
        #[sea_orm(unique)]
        pub occasion: String,
        #[sea_orm(indexed)]
        pub member_id: String,
        /// One of `domain::kind_name`.
        pub kind: String,
        pub book_id: String,
        pub book_title: String,
        pub barcode: String,
        pub deadline: Option<DateTimeUtc>,
        pub reservation_id: String,
        pub rental_id: String,
        /// `ko` or `en`, as the member's settings said when it was made.
        pub language: String,
        #[sea_orm(indexed)]
        pub created_at: DateTimeUtc,
        /// One of [`crate::mailer::state`].
        pub email_state: String,
        pub attempts: i32,
        /// The next attempt, or while SENDING the end of the attempt's
        /// lease: after it, the attempt is taken as lost and made again.
        #[sea_orm(indexed)]
        pub next_attempt_at: Option<DateTimeUtc>,
        pub last_error: String,
        pub sent_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod loans {
    use sea_orm::entity::prelude::*;

    /// A loan as the events told it, for its due-soon and overdue notices.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notice_loans")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub rental_id: String,
        #[sea_orm(indexed)]
        pub member_id: String,
        pub book_id: String,
        pub reservation_id: String,
        pub barcode: String,
        pub due_at: DateTimeUtc,
        pub known_at: DateTimeUtc,
        pub due_soon_done: bool,
        pub overdue_done: i64,
        /// When the clock looks at it next; None once it is closed
        /// (returned or lost).
        #[sea_orm(indexed)]
        pub next_at: Option<DateTimeUtc>,
        pub closed_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod titles {
    use sea_orm::entity::prelude::*;

    /// A book's title as its latest correction says.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notice_titles")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub book_id: String,
        pub title: String,
        pub revision: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod started {
    use sea_orm::entity::prelude::*;

    /// The service's first start: occasions older than it are not told.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notice_first_start")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

struct CreateNotices;

impl MigrationName for CreateNotices {
    fn name(&self) -> &str {
        "m0001_create_notices"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateNotices {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, settings::Entity).await?;
        create_entity_table(manager, notices::Entity).await?;
        create_entity_table(manager, loans::Entity).await?;
        create_entity_table(manager, titles::Entity).await?;
        create_entity_table(manager, started::Entity).await?;
        Ok(())
    }
}

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(PlumbingTables),
            Box::new(OutboxTraceparent),
            Box::new(CreateNotices),
        ]
    }
}
