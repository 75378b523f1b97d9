//! The clock's notices: every few seconds, the loans whose next occasion
//! has come are told "due soon" or "overdue" (one replica at a time; each
//! loan in its own transaction, locked as the events lock it), and notices
//! older than `NOTICE_RETENTION` are forgotten.

use std::time::Duration;

use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::notice::v1::NoticeKind;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use tokio_util::sync::CancellationToken;

use crate::domain::{self, LoanOccasion, Schedule};
use crate::events::{erase, notices_of};
use crate::notify::{Notices, Occasion};
use crate::store::loans;

/// Loans looked at in one round.
const BATCH: u64 = 200;

pub struct Clock {
    pub db: Db,
    pub notices: Notices,
    pub schedule: Schedule,
    pub interval: Duration,
    pub retention: chrono::Duration,
}

impl Clock {
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.cancelled() => return,
            }
            match self.round(time::now()).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(notices = n, "loan notices made");
                    self.notices.mail_waiting.notify_one();
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "loan notices not made yet"),
            }
        }
    }

    /// One round at `now`: the loans whose time has come, then the notice
    /// log's retention. Returns the notices made.
    pub async fn round(&self, now: Timestamp) -> anyhow::Result<usize> {
        let Some(_only_me) = self.db.exclusive("notice-clock").await? else {
            return Ok(0);
        };
        let due = loans::Entity::find()
            .filter(loans::Column::NextAt.lte(now))
            .order_by_asc(loans::Column::NextAt)
            .limit(BATCH)
            .all(self.db.conn())
            .await?;
        let mut made = 0;
        for loan in due {
            if self.tick(&loan.rental_id, now).await? {
                made += 1;
            }
        }
        if let Some(cutoff) = now.checked_sub_signed(self.retention) {
            let tx = self.db.begin().await?;
            erase(&tx, None, cutoff).await?;
            tx.commit().await?;
        }
        Ok(made)
    }

    async fn tick(&self, rental_id: &str, now: Timestamp) -> anyhow::Result<bool> {
        let mut tx = self.db.begin().await?;
        tx.lock("loan", rental_id).await?;
        let Some(row) = loans::Entity::find_by_id(rental_id.to_owned())
            .one(&*tx)
            .await?
            .filter(|l| l.closed_at.is_none())
        else {
            tx.rollback().await?;
            return Ok(false);
        };
        let (occasion, after, next_at) = domain::loan_tick(notices_of(&row), now, &self.schedule);
        let mut made = false;
        if let Some(occasion) = occasion {
            let (key, kind) = match occasion {
                LoanOccasion::DueSoon { .. } => (
                    domain::due_soon_key(&row.rental_id, row.due_at),
                    NoticeKind::DueSoon,
                ),
                LoanOccasion::Overdue { reminder, .. } => (
                    domain::overdue_key(&row.rental_id, row.due_at, reminder),
                    NoticeKind::Overdue,
                ),
            };
            made = self
                .notices
                .notify(
                    &mut tx,
                    Occasion {
                        key,
                        kind,
                        member_id: &row.member_id,
                        book_id: &row.book_id,
                        barcode: &row.barcode,
                        deadline: Some(row.due_at),
                        reservation_id: &row.reservation_id,
                        rental_id: &row.rental_id,
                        at: occasion.at(),
                    },
                )
                .await?;
        }
        let mut active = row.into_active_model();
        active.due_soon_done = Set(after.due_soon_done);
        active.overdue_done = Set(after.overdue_done);
        active.next_at = Set(Some(next_at));
        active.update(&*tx).await?;
        tx.commit().await?;
        Ok(made)
    }
}
