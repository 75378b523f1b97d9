//! Making a notice: once per occasion, for a member who wants that kind,
//! and never for an occasion older than the service's first start. The
//! notice row (with its e-mail, when there is an address and an SMTP
//! server) and the NoticeSent event are written in the caller's
//! transaction, so a notice exists exactly when its occasion was handled.

use std::sync::Arc;

use rentalbook_plumbing::db::WriteTx;
use rentalbook_plumbing::ids::Id;
use rentalbook_plumbing::outbox;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::NoticeSent;
use rentalbook_proto::events::v1::envelope::Body;
use rentalbook_proto::notice::v1::NoticeKind;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, Set};
use tokio::sync::{Notify, OnceCell};

use crate::domain::{self, Language, Settings};
use crate::mailer::state;
use crate::store::{notices, settings, started, titles};

/// An occasion to tell a member of.
#[derive(Clone, Debug)]
pub struct Occasion<'a> {
    pub key: String,
    pub kind: NoticeKind,
    pub member_id: &'a str,
    pub book_id: &'a str,
    pub barcode: &'a str,
    pub deadline: Option<Timestamp>,
    pub reservation_id: &'a str,
    pub rental_id: &'a str,
    /// When it happened: a notice is made only if that is no older than
    /// the first start.
    pub at: Timestamp,
}

/// Makes notices. Cheap to clone.
#[derive(Clone)]
pub struct Notices {
    pub producer: &'static str,
    pub default_language: Language,
    /// Whether an SMTP server is configured: without one, notices are for
    /// My Page only.
    pub email: bool,
    /// Wakes the mailer when a notice with an e-mail was made.
    pub mail_waiting: Arc<Notify>,
    first_start: Arc<OnceCell<Timestamp>>,
}

impl Notices {
    pub fn new(
        producer: &'static str,
        default_language: Language,
        email: bool,
        mail_waiting: Arc<Notify>,
    ) -> Self {
        Self {
            producer,
            default_language,
            email,
            mail_waiting,
            first_start: Arc::new(OnceCell::new()),
        }
    }

    /// When this service first started on its database (recorded then).
    pub async fn first_start<C: ConnectionTrait>(&self, conn: &C) -> Result<Timestamp, DbErr> {
        self.first_start
            .get_or_try_init(|| async {
                started::Entity::insert(started::ActiveModel {
                    id: Set(1),
                    at: Set(time::now()),
                })
                .on_conflict(
                    OnConflict::column(started::Column::Id)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(conn)
                .await?;
                let row = started::Entity::find_by_id(1)
                    .one(conn)
                    .await?
                    .ok_or_else(|| DbErr::RecordNotFound("the first start".into()))?;
                Ok(row.at)
            })
            .await
            .copied()
    }

    /// A member's settings, the defaults until they change them.
    pub async fn settings_of<C: ConnectionTrait>(
        &self,
        conn: &C,
        member_id: &str,
    ) -> Result<Settings, DbErr> {
        Ok(
            match settings::Entity::find_by_id(member_id.to_owned())
                .one(conn)
                .await?
            {
                Some(row) => settings_from(&row, self.default_language),
                None => Settings::defaults(self.default_language),
            },
        )
    }

    /// Tells the member of `occasion` unless it was told already, is older
    /// than the first start, or is of a kind they do not want. True when a
    /// notice was made.
    pub async fn notify(&self, tx: &mut WriteTx, occasion: Occasion<'_>) -> anyhow::Result<bool> {
        let first = self.first_start(&**tx).await?;
        if !domain::is_news(occasion.at, first) {
            return Ok(false);
        }
        let settings = self.settings_of(&**tx, occasion.member_id).await?;
        if !settings.wants(occasion.kind) {
            return Ok(false);
        }
        let book_title = titles::Entity::find_by_id(occasion.book_id.to_owned())
            .one(&**tx)
            .await?
            .map(|t| t.title)
            .unwrap_or_default();
        let by_email = self.email && !settings.email.is_empty();
        let now = time::now();
        let notice_id = Id::new().to_string();
        let inserted = notices::Entity::insert(notices::ActiveModel {
            notice_id: Set(notice_id.clone()),
            occasion: Set(occasion.key.clone()),
            member_id: Set(occasion.member_id.to_owned()),
            kind: Set(domain::kind_name(occasion.kind).to_owned()),
            book_id: Set(occasion.book_id.to_owned()),
            book_title: Set(book_title.clone()),
            barcode: Set(occasion.barcode.to_owned()),
            deadline: Set(occasion.deadline),
            reservation_id: Set(occasion.reservation_id.to_owned()),
            rental_id: Set(occasion.rental_id.to_owned()),
            language: Set(settings.language.code().to_owned()),
            created_at: Set(now),
            email_state: Set(if by_email {
                state::PENDING
            } else {
                state::NONE
            }
            .to_owned()),
            attempts: Set(0),
            next_attempt_at: Set(by_email.then_some(now)),
            last_error: Set(String::new()),
            sent_at: Set(None),
        })
        .on_conflict(
            OnConflict::column(notices::Column::Occasion)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&**tx)
        .await?;
        if inserted == 0 {
            return Ok(false);
        }
        outbox::stage(
            tx,
            self.producer,
            now,
            Body::NoticeSent(NoticeSent {
                notice_id,
                member_id: occasion.member_id.to_owned(),
                kind: occasion.kind as i32,
                book_id: occasion.book_id.to_owned(),
                book_title,
                barcode: occasion.barcode.to_owned(),
                deadline: time::opt_to_proto(occasion.deadline),
                reservation_id: occasion.reservation_id.to_owned(),
                rental_id: occasion.rental_id.to_owned(),
            }),
        )
        .await?;
        metrics::counter!("notices_made_total", "kind" => domain::kind_name(occasion.kind))
            .increment(1);
        Ok(true)
    }
}

pub fn settings_from(row: &settings::Model, default_language: Language) -> Settings {
    Settings {
        email: row.email.clone(),
        language: Language::parse(&row.language).unwrap_or(default_language),
        hold_ready: row.hold_ready,
        due_soon: row.due_soon,
        overdue: row.overdue,
        hold_expired: row.hold_expired,
    }
}
