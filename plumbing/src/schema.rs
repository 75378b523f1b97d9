//! Tables every service has, next to its own: the outbox of events to
//! publish, the inbox of events already applied, and the client request ids
//! already answered. Each service's migrator runs [`PlumbingTables`] first.

use sea_orm::{EntityTrait, Schema};
use sea_orm_migration::prelude::*;

pub mod outbox {
    use sea_orm::entity::prelude::*;

    /// An event committed with the change it describes, not yet acknowledged
    /// by the event bus. Rows leave in `id` order.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub event_id: String,
        /// Subject below the stream prefix, such as `reservation.placed`.
        pub subject: String,
        /// The encoded `Envelope`.
        pub payload: Vec<u8>,
        /// W3C trace context of the change, carried in the event's headers.
        pub traceparent: Option<String>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod inbox {
    use sea_orm::entity::prelude::*;

    /// An event this service has applied; written in the effect's transaction.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "inbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub consumer: String,
        pub processed_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod idempotency {
    use sea_orm::entity::prelude::*;

    /// The answer to a mutating request that carried a client request id.
    /// Every service's server deletes the rows older than
    /// `REQUEST_ID_RETENTION` now and then (by `created_at`, indexed).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        /// `<caller>/<method>`: ids are scoped per caller and method.
        #[sea_orm(primary_key, auto_increment = false)]
        pub scope: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        /// The encoded request, to refuse the same id with a different request.
        pub request: Vec<u8>,
        /// The encoded response.
        pub response: Vec<u8>,
        #[sea_orm(indexed)]
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Creates an entity's table and the indexes its model declares.
pub async fn create_entity_table<E: EntityTrait>(
    manager: &SchemaManager<'_>,
    entity: E,
) -> Result<(), DbErr> {
    let schema = Schema::new(manager.get_database_backend());
    manager
        .create_table(
            schema
                .create_table_from_entity(entity)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
    for mut index in schema.create_index_from_entity(entity) {
        manager
            .create_index(index.if_not_exists().to_owned())
            .await?;
    }
    Ok(())
}

/// Adds a nullable text column to a table created before the column existed.
pub async fn add_text_column_if_missing(
    manager: &SchemaManager<'_>,
    table: &str,
    column: &str,
) -> Result<(), DbErr> {
    if manager.has_column(table, column).await? {
        return Ok(());
    }
    manager
        .alter_table(
            Table::alter()
                .table(Alias::new(table))
                .add_column(ColumnDef::new(Alias::new(column)).text().null())
                .to_owned(),
        )
        .await
}

/// The outbox's `traceparent` column, for databases made before it.
pub struct OutboxTraceparent;

impl MigrationName for OutboxTraceparent {
    fn name(&self) -> &str {
        "m0002_outbox_traceparent"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for OutboxTraceparent {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_text_column_if_missing(manager, "outbox", "traceparent").await
    }
}

pub struct PlumbingTables;

impl MigrationName for PlumbingTables {
    fn name(&self) -> &str {
        "m0000_plumbing_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for PlumbingTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, outbox::Entity).await?;
        create_entity_table(manager, inbox::Entity).await?;
        create_entity_table(manager, idempotency::Entity).await
    }
}
