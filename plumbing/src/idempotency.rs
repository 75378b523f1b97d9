//! Client request ids (SPEC §5): a mutation repeated with the same id by the
//! same caller gets the first answer; the same id with a different request is
//! refused. The key is written in the transaction of the change, so an answer
//! is remembered exactly when the change happened.

use chrono::Duration;
use prost::Message;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};

use tokio_util::sync::CancellationToken;

use crate::db::{Db, WriteTx};
use crate::error::{Reason, Refusal, ServiceError, ServiceResult};
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

    /// The lock [`IdempotencyKey::recall`] takes, as (scope, key), for a
    /// transaction that names its locks up front ([`Db::grouped`]).
    pub fn lock(&self) -> (&'static str, String) {
        ("idempotency", format!("{}/{}", self.scope, self.request_id))
    }

    /// Locks the key for this transaction and returns the remembered answer,
    /// if any.
    pub async fn recall<R: Message + Default>(&self, tx: &WriteTx) -> ServiceResult<Option<R>> {
        let (scope, key) = self.lock();
        tx.lock(scope, &key).await?;
        let found = idempotency::Entity::find_by_id((self.scope.clone(), self.request_id.clone()))
            .one(&**tx)
            .await?;
        let Some(found) = found else {
            return Ok(None);
        };
        if found.request != self.request {
            return Err(Refusal::invalid_argument(
                Reason::RequestIdReused,
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
    let Some(cutoff) = crate::time::now().checked_sub_signed(keep) else {
        return Ok(0);
    };
    let res = idempotency::Entity::delete_many()
        .filter(idempotency::Column::CreatedAt.lt(cutoff))
        .exec(&**tx)
        .await?;
    Ok(res.rows_affected)
}

/// How often [`purge_periodically`] looks: every tenth of the retention, at
/// most every 100 ms and at least every 10 min; an id outlives its retention
/// by that much at most.
fn purge_interval(keep: std::time::Duration) -> std::time::Duration {
    (keep / 10).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(600),
    )
}

/// Forgets request ids older than `keep`, now and then, until `stop`. Every
/// replica may run it: a second DELETE of the same rows deletes nothing.
pub async fn purge_periodically(
    service: &'static str,
    db: Db,
    keep: std::time::Duration,
    stop: CancellationToken,
) {
    let keep_chrono = Duration::from_std(keep).unwrap_or(Duration::MAX);
    loop {
        let purged = async {
            let tx = db.begin().await?;
            let n = purge(&tx, keep_chrono).await?;
            tx.commit().await?;
            Ok::<_, sea_orm::DbErr>(n)
        }
        .await;
        match purged {
            Ok(0) => {}
            Ok(n) => tracing::info!(service, purged = n, "forgot old request ids"),
            Err(e) => tracing::warn!(service, error = %e, "request ids could not be purged"),
        }
        tokio::select! {
            _ = tokio::time::sleep(purge_interval(keep)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_looks_ten_times_per_retention_within_bounds() {
        use std::time::Duration;
        let secs = Duration::from_secs;
        assert_eq!(purge_interval(secs(10)), secs(1));
        assert_eq!(purge_interval(secs(24 * 3600)), secs(600));
        assert_eq!(
            purge_interval(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }
}
