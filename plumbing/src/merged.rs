//! Books merged into another (MergeBooks): every service that keeps book ids
//! records where a merged id leads, and reads ids it is given through
//! [`resolve`], so an old link, a request or an event written before the
//! merge reaches the book that stayed.

use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set};
use sea_orm_migration::prelude::*;

use crate::schema::create_entity_table;

pub mod merged_books {
    use sea_orm::entity::prelude::*;

    /// A book id that was merged into another.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "merged_books")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub book_id: String,
        /// The book it was merged into (never itself merged: [`super::record`]
        /// re-points earlier merges).
        pub into_book_id: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The book `book_id` stands for: itself unless it was merged.
pub async fn resolve<C: ConnectionTrait>(conn: &C, book_id: &str) -> Result<String, DbErr> {
    Ok(merged_books::Entity::find_by_id(book_id.to_owned())
        .one(conn)
        .await?
        .map_or_else(|| book_id.to_owned(), |m| m.into_book_id))
}

/// Records that `merged` now lead to `into`, and that ids merged into one of
/// them before lead there too. Recording it again changes nothing.
pub async fn record<C: ConnectionTrait>(
    conn: &C,
    into: &str,
    merged: &[String],
) -> Result<(), DbErr> {
    for id in merged.iter().filter(|id| id.as_str() != into) {
        merged_books::Entity::insert(merged_books::ActiveModel {
            book_id: Set(id.clone()),
            into_book_id: Set(into.to_owned()),
        })
        .on_conflict(
            OnConflict::column(merged_books::Column::BookId)
                .update_column(merged_books::Column::IntoBookId)
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
        merged_books::Entity::update_many()
            .col_expr(merged_books::Column::IntoBookId, Expr::val(into))
            .filter(merged_books::Column::IntoBookId.eq(id.as_str()))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// The `merged_books` table, in every service that keeps book ids.
pub struct MergedBooks;

impl MigrationName for MergedBooks {
    fn name(&self) -> &str {
        "m0010_merged_books"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for MergedBooks {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, merged_books::Entity).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[tokio::test]
    async fn merged_ids_lead_to_the_book_that_stayed_even_after_a_second_merge() {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        let manager = SchemaManager::new(db.conn());
        MergedBooks.up(&manager).await.unwrap();
        let conn = db.conn();
        record(conn, "b", &["c".to_owned()]).await.unwrap();
        assert_eq!(resolve(conn, "c").await.unwrap(), "b");
        record(conn, "a", &["b".to_owned(), "d".to_owned()])
            .await
            .unwrap();
        record(conn, "a", &["b".to_owned(), "d".to_owned()])
            .await
            .unwrap();
        for id in ["b", "c", "d"] {
            assert_eq!(resolve(conn, id).await.unwrap(), "a", "{id}");
        }
        assert_eq!(resolve(conn, "a").await.unwrap(), "a");
        assert_eq!(resolve(conn, "e").await.unwrap(), "e");
    }
}
