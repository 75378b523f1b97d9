//! Client request ids (SPEC §5): a mutation repeated with the same id by the
//! same caller gets the first answer; the same id with a different request is
//! refused. The key is written in the transaction of the change, so an answer
//! is remembered exactly when the change happened.

use chrono::Duration;
use prost::Message;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use tonic::Status;

use crate::db::WriteTx;
use crate::error::{ServiceError, ServiceResult};
use crate::schema::idempotency;

/// A request id in the scope of one caller and method.
pub struct IdempotencyKey {
    scope: String,
    request_id: String,
    request: Vec<u8>,
}

impl IdempotencyKey {
    /// None when the request carries no id.
    pub fn new(
        caller: &str,
        method: &str,
        request_id: Option<String>,
        request: &impl Message,
    ) -> Option<Self> {
        request_id.map(|request_id| Self {
            scope: format!("{caller}/{method}"),
            request_id,
            request: request.encode_to_vec(),
        })
    }

    /// Locks the key for this transaction and returns the remembered answer,
    /// if any.
    pub async fn recall<R: Message + Default>(&self, tx: &WriteTx) -> ServiceResult<Option<R>> {
        tx.lock(
            "idempotency",
            &format!("{}/{}", self.scope, self.request_id),
        )
        .await?;
        let found = idempotency::Entity::find_by_id((self.scope.clone(), self.request_id.clone()))
            .one(&**tx)
            .await?;
        let Some(found) = found else {
            return Ok(None);
        };
        if found.request != self.request {
            return Err(Status::invalid_argument(
                "this request_id was already used for a different request",
            )
            .into());
        }
        R::decode(found.response.as_slice())
            .map(Some)
            .map_err(|e| ServiceError::Other(e.into()))
    }

    /// Remembers the answer, in the transaction of the change.
    pub async fn remember(&self, tx: &WriteTx, response: &impl Message) -> ServiceResult<()> {
        idempotency::ActiveModel {
            scope: Set(self.scope.clone()),
            request_id: Set(self.request_id.clone()),
            request: Set(self.request.clone()),
            response: Set(response.encode_to_vec()),
            created_at: Set(crate::time::now()),
        }
        .insert(&**tx)
        .await?;
        Ok(())
    }
}

/// Forgets answers older than `keep` (at least the 24 h that SPEC §5 promises).
pub async fn purge(tx: &WriteTx, keep: Duration) -> Result<u64, sea_orm::DbErr> {
    let cutoff = crate::time::now() - keep;
    let res = idempotency::Entity::delete_many()
        .filter(idempotency::Column::CreatedAt.lt(cutoff))
        .exec(&**tx)
        .await?;
    Ok(res.rows_affected)
}
