//! book-svc's tables and migrations.

use rentalbook_plumbing::schema::{OutboxTraceparent, PlumbingTables, create_entity_table};
use sea_orm_migration::prelude::*;

pub mod books {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "books")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub book_id: String,
        pub isbn: Option<String>,
        pub title: String,
        pub author: String,
        /// Lower-case title, author and ISBN, for the text query.
        pub search_text: String,
        pub total_copies: i32,
        /// From the latest availability snapshot of the lending desk.
        pub held_copies: i32,
        pub on_loan_copies: i32,
        pub waiting: i32,
        /// book_seq of that snapshot; older ones are ignored.
        pub availability_seq: i64,
        pub registered_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

struct CreateBooks;

impl MigrationName for CreateBooks {
    fn name(&self) -> &str {
        "m0001_create_books"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateBooks {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, books::Entity).await
    }
}

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(PlumbingTables),
            Box::new(CreateBooks),
            Box::new(OutboxTraceparent),
        ]
    }
}
