//! NoticeService over gRPC: parse, check the caller, read or write.

use rentalbook_plumbing::auth::Caller;
use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::error::{Reason, Refusal, ServiceResult};
use rentalbook_plumbing::idempotency::IdempotencyKey;
use rentalbook_plumbing::ids::{self, Id};
use rentalbook_plumbing::outbox;
use rentalbook_plumbing::time::{self, Timestamp};
use rentalbook_proto::events::v1::envelope::Body;
use rentalbook_proto::events::v1::{HistoryErased, NoticesRead};
use rentalbook_proto::notice::v1::notice_service_server::NoticeService;
use rentalbook_proto::notice::v1::{
    EmailState, EraseMyHistoryRequest, EraseMyHistoryResponse, GetNoticeSettingsRequest,
    ListFailedNoticesRequest, ListFailedNoticesResponse, MarkNoticesReadRequest,
    MarkNoticesReadResponse, Notice, NoticeSettings, UpdateNoticeSettingsRequest,
};
use sea_orm::sea_query::{Cond, OnConflict};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use tonic::{Request, Response, Status};

use crate::domain::{self, Language, Settings};
use crate::events::erase;
use crate::mailer::state;
use crate::notify::Notices;
use crate::store::{notices, settings};

pub struct NoticeApi {
    pub db: Db,
    pub notices: Notices,
}

fn to_proto(member_id: &str, s: &Settings, updated_at: Option<Timestamp>) -> NoticeSettings {
    NoticeSettings {
        member_id: member_id.to_owned(),
        email: s.email.clone(),
        language: s.language.code().to_owned(),
        hold_ready: s.hold_ready,
        due_soon: s.due_soon,
        overdue: s.overdue,
        hold_expired: s.hold_expired,
        updated_at: time::opt_to_proto(updated_at),
    }
}

/// An e-mail address as a member types it: trimmed; empty stops e-mail.
fn email(value: &str) -> Result<String, Status> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(String::new());
    }
    if v.len() > 254 {
        return Err(Refusal::invalid_field("email", "email must be at most 254 characters").into());
    }
    v.parse::<lettre::Address>()
        .map(|a| a.to_string())
        .map_err(|_| {
            Refusal::invalid_field("email", format!("`{v}` is not an e-mail address")).into()
        })
}

fn email_state(name: &str) -> EmailState {
    EmailState::from_str_name(&format!("EMAIL_STATE_{name}")).unwrap_or(EmailState::Unspecified)
}

fn notice_to_proto(n: notices::Model) -> Notice {
    Notice {
        kind: domain::kind_of(&n.kind) as i32,
        email_state: if n.email_state == state::SENDING {
            EmailState::Pending
        } else {
            email_state(&n.email_state)
        } as i32,
        notice_id: n.notice_id,
        member_id: n.member_id,
        book_id: n.book_id,
        book_title: n.book_title,
        barcode: n.barcode,
        deadline: time::opt_to_proto(n.deadline),
        reservation_id: n.reservation_id,
        rental_id: n.rental_id,
        created_at: Some(time::to_proto(n.created_at)),
        attempts: n.attempts,
        last_error: n.last_error,
    }
}

impl NoticeApi {
    async fn settings(&self, member_id: &str) -> ServiceResult<NoticeSettings> {
        let row = settings::Entity::find_by_id(member_id.to_owned())
            .one(self.db.conn())
            .await?;
        let s = match &row {
            Some(r) => crate::notify::settings_from(r, self.notices.default_language),
            None => Settings::defaults(self.notices.default_language),
        };
        Ok(to_proto(member_id, &s, row.map(|r| r.updated_at)))
    }

    async fn update(
        &self,
        member_id: &str,
        req: UpdateNoticeSettingsRequest,
    ) -> ServiceResult<NoticeSettings> {
        let mut s = self.notices.settings_of(self.db.conn(), member_id).await?;
        if let Some(e) = &req.email {
            s.email = email(e)?;
        }
        if let Some(l) = &req.language {
            s.language = Language::parse(l.trim()).ok_or_else(|| {
                Status::from(Refusal::invalid_field(
                    "language",
                    "language must be `ko` or `en`",
                ))
            })?;
        }
        s.hold_ready = req.hold_ready.unwrap_or(s.hold_ready);
        s.due_soon = req.due_soon.unwrap_or(s.due_soon);
        s.overdue = req.overdue.unwrap_or(s.overdue);
        s.hold_expired = req.hold_expired.unwrap_or(s.hold_expired);
        let now = time::now();
        settings::Entity::insert(settings::ActiveModel {
            member_id: Set(member_id.to_owned()),
            email: Set(s.email.clone()),
            language: Set(s.language.code().to_owned()),
            hold_ready: Set(s.hold_ready),
            due_soon: Set(s.due_soon),
            overdue: Set(s.overdue),
            hold_expired: Set(s.hold_expired),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(settings::Column::MemberId)
                .update_columns([
                    settings::Column::Email,
                    settings::Column::Language,
                    settings::Column::HoldReady,
                    settings::Column::DueSoon,
                    settings::Column::Overdue,
                    settings::Column::HoldExpired,
                    settings::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(self.db.conn())
        .await?;
        Ok(to_proto(member_id, &s, Some(now)))
    }

    async fn mark_read(&self, member_id: &str, notice_id: &str) -> ServiceResult<Timestamp> {
        let up_to = if notice_id.is_empty() {
            time::now()
        } else {
            let id = Id::parse_field("notice_id", notice_id)?;
            notices::Entity::find_by_id(id.to_string())
                .filter(notices::Column::MemberId.eq(member_id))
                .one(self.db.conn())
                .await?
                .ok_or_else(|| {
                    Status::from(
                        Refusal::not_found(
                            Reason::NoticeNotFound,
                            "you have no notice with this id",
                        )
                        .with("notice_id", notice_id),
                    )
                })?
                .created_at
        };
        let mut tx = self.db.begin().await?;
        outbox::stage(
            &mut tx,
            self.notices.producer,
            time::now(),
            Body::NoticesRead(NoticesRead {
                member_id: member_id.to_owned(),
                up_to: Some(time::to_proto(up_to)),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(up_to)
    }

    async fn erase_history(
        &self,
        member_id: &str,
        key: Option<IdempotencyKey>,
    ) -> ServiceResult<EraseMyHistoryResponse> {
        let mut tx = self.db.begin().await?;
        if let Some(key) = &key
            && let Some(answer) = key.recall::<EraseMyHistoryResponse>(&tx).await?
        {
            tx.rollback().await?;
            return Ok(answer);
        }
        let up_to = time::now();
        erase(&tx, Some(member_id), up_to).await?;
        outbox::stage(
            &mut tx,
            self.notices.producer,
            up_to,
            Body::HistoryErased(HistoryErased {
                member_id: member_id.to_owned(),
                up_to: Some(time::to_proto(up_to)),
            }),
        )
        .await?;
        let answer = EraseMyHistoryResponse {
            up_to: Some(time::to_proto(up_to)),
        };
        if let Some(key) = &key {
            key.remember(&tx, &answer).await?;
        }
        tx.commit().await?;
        Ok(answer)
    }

    async fn failed(
        &self,
        page_size: u64,
        after: Option<Id>,
    ) -> ServiceResult<ListFailedNoticesResponse> {
        let mut query =
            notices::Entity::find().filter(notices::Column::EmailState.eq(state::FAILED));
        if let Some(after) = after {
            let Some(last) = notices::Entity::find_by_id(after.to_string())
                .one(self.db.conn())
                .await?
            else {
                return Err(Refusal::invalid_argument(
                    Reason::InvalidPageToken,
                    "page_token is not one this service gave out",
                )
                .into());
            };
            query = query.filter(
                Condition::any()
                    .add(notices::Column::CreatedAt.lt(last.created_at))
                    .add(
                        Cond::all()
                            .add(notices::Column::CreatedAt.eq(last.created_at))
                            .add(notices::Column::NoticeId.lt(last.notice_id)),
                    ),
            );
        }
        let mut rows = query
            .order_by_desc(notices::Column::CreatedAt)
            .order_by_desc(notices::Column::NoticeId)
            .limit(page_size + 1)
            .all(self.db.conn())
            .await?;
        let next_page_token = if rows.len() as u64 > page_size {
            rows.truncate(page_size as usize);
            rows.last().map(|n| n.notice_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListFailedNoticesResponse {
            notices: rows.into_iter().map(notice_to_proto).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl NoticeService for NoticeApi {
    async fn get_notice_settings(
        &self,
        request: Request<GetNoticeSettingsRequest>,
    ) -> Result<Response<NoticeSettings>, Status> {
        let caller = Caller::of(&request)?;
        let member = caller.subject(&request.get_ref().member_id)?;
        Ok(Response::new(self.settings(member.as_str()).await?))
    }

    async fn update_notice_settings(
        &self,
        request: Request<UpdateNoticeSettingsRequest>,
    ) -> Result<Response<NoticeSettings>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.update(caller.member.as_str(), request.into_inner())
                .await?,
        ))
    }

    async fn mark_notices_read(
        &self,
        request: Request<MarkNoticesReadRequest>,
    ) -> Result<Response<MarkNoticesReadResponse>, Status> {
        let caller = Caller::of(&request)?;
        let up_to = self
            .mark_read(caller.member.as_str(), &request.get_ref().notice_id)
            .await?;
        Ok(Response::new(MarkNoticesReadResponse {
            up_to: Some(time::to_proto(up_to)),
        }))
    }

    async fn erase_my_history(
        &self,
        request: Request<EraseMyHistoryRequest>,
    ) -> Result<Response<EraseMyHistoryResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "EraseMyHistory",
            ids::request_id(&req.request_id)?,
            &req,
        );
        Ok(Response::new(
            self.erase_history(caller.member.as_str(), key).await?,
        ))
    }

    async fn list_failed_notices(
        &self,
        request: Request<ListFailedNoticesRequest>,
    ) -> Result<Response<ListFailedNoticesResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_librarian("list the notices that could not be e-mailed")?;
        let req = request.into_inner();
        let page_size = ids::page_size(req.page_size)?;
        let after = ids::page_token(&req.page_token)?;
        Ok(Response::new(self.failed(page_size, after).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_checked_and_may_be_cleared() {
        assert_eq!(email(" ada@example.org ").unwrap(), "ada@example.org");
        assert_eq!(email("").unwrap(), "");
        assert_eq!(email("   ").unwrap(), "");
        let bad = email("not an address").unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(email(&format!("{}@example.org", "a".repeat(250))).is_err());
    }

    #[test]
    fn every_address_the_contract_allows_is_accepted() {
        // The extremes of the e-mail field's pattern in notice.proto.
        let label = |c: char| format!("{c}{}{c}", "-".repeat(30));
        let longest_host = [label('a'), label('b'), label('c'), label('d'), label('e')].join(".");
        for address in [
            "a@b",
            "%+_-@0",
            "first.middle.last@host-name.example",
            &format!(
                "{}.{}.{}@{longest_host}",
                "x".repeat(32),
                "y".repeat(15),
                "z".repeat(15)
            ),
            "A-Z_09%+@X9",
        ] {
            assert_eq!(email(address).unwrap(), address, "{address}");
        }
    }
}
