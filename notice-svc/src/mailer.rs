//! E-mail delivery, apart from the event consumer so that an SMTP outage
//! never holds events up. Each attempt is recorded before it is made (the
//! notice is SENDING, with a lease) and its result after; a crash between
//! the two leaves a SENDING notice whose lease runs out, and it is sent
//! again: SMTP has no idempotency, so that is the one duplicate a crash may
//! cost, never more per crash. A notice not delivered within
//! `NOTICE_SEND_FOR` is FAILED and listed for librarians.

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::time::{self, Timestamp};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{self, Language};
use crate::notify::settings_from;
use crate::store::{notices, settings};
use crate::texts::{self, Facts};

/// Where a notice's e-mail stands (the EmailState names).
pub mod state {
    pub const NONE: &str = "NONE";
    pub const PENDING: &str = "PENDING";
    /// An attempt is being made (or was, by a process that died).
    pub const SENDING: &str = "SENDING";
    pub const SENT: &str = "SENT";
    pub const FAILED: &str = "FAILED";
}

/// Notices taken in one round.
const BATCH: u64 = 16;

/// How a notice's e-mail is sent.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl Smtp {
    /// From `SMTP_URL`: `smtp://host:port` plain (a local sink),
    /// `smtp://...?tls=required` STARTTLS, `smtps://` TLS; credentials as
    /// `smtp://user:password@host`.
    pub fn new(url: &str, from: &str, timeout: Duration) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("SMTP_URL is not usable: {e}"))?
            .timeout(Some(timeout))
            .build();
        let from: Mailbox = from
            .parse()
            .map_err(|e| anyhow::anyhow!("SMTP_FROM `{from}` is not an address: {e}"))?;
        Ok(Self {
            transport,
            from,
            timeout,
        })
    }
}

pub struct Mailer {
    pub db: Db,
    pub smtp: Smtp,
    pub waiting: Arc<Notify>,
    pub library_name: String,
    pub time_zone: Tz,
    pub default_language: Language,
    pub send_for: chrono::Duration,
}

impl Mailer {
    /// How long an attempt owns its notice: the SMTP timeout twice over,
    /// and a margin to record the result.
    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.smtp.timeout * 2 + Duration::from_secs(1))
            .unwrap_or(chrono::Duration::MAX)
    }

    pub async fn run(self, stop: CancellationToken) {
        loop {
            let idle = match self.round().await {
                Ok(n) if n as u64 == BATCH => continue,
                Ok(_) => Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "notices not e-mailed yet");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = self.waiting.notified() => {}
                _ = tokio::time::sleep(idle) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Sends what is due now; returns how many notices it took.
    pub async fn round(&self) -> anyhow::Result<usize> {
        let now = time::now();
        let due = notices::Entity::find()
            .filter(notices::Column::EmailState.is_in([state::PENDING, state::SENDING]))
            .filter(notices::Column::NextAttemptAt.lte(now))
            .order_by_asc(notices::Column::NextAttemptAt)
            .limit(BATCH)
            .all(self.db.conn())
            .await?;
        let taken = due.len();
        for notice in due {
            if let Some(notice) = self.claim(notice, now).await? {
                self.attempt(notice).await?;
            }
        }
        Ok(taken)
    }

    /// Records the attempt before it is made; None when another replica
    /// took the notice first.
    async fn claim(
        &self,
        notice: notices::Model,
        now: Timestamp,
    ) -> anyhow::Result<Option<notices::Model>> {
        let claimed = notices::Entity::update_many()
            .col_expr(notices::Column::EmailState, Expr::val(state::SENDING))
            .col_expr(
                notices::Column::Attempts,
                Expr::col(notices::Column::Attempts).add(1),
            )
            .col_expr(
                notices::Column::NextAttemptAt,
                Expr::val(now + self.lease()),
            )
            .filter(notices::Column::NoticeId.eq(&notice.notice_id))
            .filter(notices::Column::EmailState.eq(&notice.email_state))
            .filter(notices::Column::NextAttemptAt.eq(notice.next_attempt_at))
            .exec(self.db.conn())
            .await?;
        Ok((claimed.rows_affected == 1).then(|| notices::Model {
            attempts: notice.attempts + 1,
            ..notice
        }))
    }

    async fn attempt(&self, notice: notices::Model) -> anyhow::Result<()> {
        let member = settings::Entity::find_by_id(notice.member_id.clone())
            .one(self.db.conn())
            .await?
            .map(|row| settings_from(&row, self.default_language));
        let Some(member) = member.filter(|m| !m.email.is_empty()) else {
            // The address was taken away meanwhile: My Page only.
            return self.settle(&notice, state::NONE, None, "").await;
        };
        let language = Language::parse(&notice.language).unwrap_or(member.language);
        let text = texts::render(
            &Facts {
                kind: domain::kind_of(&notice.kind),
                book_title: &notice.book_title,
                barcode: &notice.barcode,
                deadline: notice.deadline,
            },
            language,
            &self.library_name,
            self.time_zone,
        );
        let sent = match build(&self.smtp.from, &member.email, &notice.notice_id, text) {
            Ok(message) => self
                .smtp
                .transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let now = time::now();
        match sent {
            Ok(()) => {
                metrics::counter!("notice_emails_sent_total").increment(1);
                self.settle(&notice, state::SENT, None, "").await
            }
            Err(error) if domain::gives_up(notice.created_at, now, self.send_for) => {
                tracing::warn!(notice = %notice.notice_id, error, "notice e-mail given up");
                metrics::counter!("notice_emails_failed_total").increment(1);
                self.settle(&notice, state::FAILED, None, &error).await
            }
            Err(error) => {
                let next = now
                    + chrono::Duration::from_std(domain::retry_after(notice.attempts))
                        .unwrap_or(chrono::Duration::MAX);
                tracing::info!(notice = %notice.notice_id, error, retry_at = %next, "notice e-mail not delivered yet");
                self.settle(&notice, state::PENDING, Some(next), &error)
                    .await
            }
        }
    }

    /// Records an attempt's result, if the attempt still owns the notice.
    async fn settle(
        &self,
        notice: &notices::Model,
        to: &str,
        next_attempt_at: Option<Timestamp>,
        error: &str,
    ) -> anyhow::Result<()> {
        let sent_at = (to == state::SENT).then(time::now);
        notices::Entity::update_many()
            .col_expr(notices::Column::EmailState, Expr::val(to))
            .col_expr(notices::Column::NextAttemptAt, Expr::val(next_attempt_at))
            .col_expr(notices::Column::LastError, Expr::val(error))
            .col_expr(notices::Column::SentAt, Expr::val(sent_at))
            .filter(notices::Column::NoticeId.eq(&notice.notice_id))
            .filter(notices::Column::EmailState.eq(state::SENDING))
            .filter(notices::Column::Attempts.eq(notice.attempts))
            .exec(self.db.conn())
            .await?;
        Ok(())
    }
}

fn build(from: &Mailbox, to: &str, notice_id: &str, text: texts::Text) -> Result<Message, String> {
    let to: Mailbox = to
        .parse()
        .map_err(|e| format!("the address `{to}` is not usable: {e}"))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(text.subject)
        .message_id(Some(format!("<{notice_id}@rentalbook>")))
        .header(ContentType::TEXT_PLAIN)
        .body(text.body)
        .map_err(|e| e.to_string())
}
