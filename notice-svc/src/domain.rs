//! The rules of notices, without I/O: which occasions a loan has and when,
//! the key that makes each occasion one notice, the first start's cut-off,
//! the e-mail retry schedule, and the members' settings.

use chrono::{Duration, NaiveTime, TimeZone};
use chrono_tz::Tz;
use rentalbook_plumbing::time::Timestamp;
use rentalbook_proto::notice::v1::NoticeKind;

/// The notices' language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    Ko,
    En,
}

impl Language {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ko" => Some(Self::Ko),
            "en" => Some(Self::En),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Ko => "ko",
            Self::En => "en",
        }
    }
}

/// When loan notices fall due.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// `DUE_SOON_BEFORE`: whole days count as the library's days.
    pub due_soon_before: Duration,
    /// `OVERDUE_REMINDER_EVERY`.
    pub overdue_every: Duration,
    pub time_zone: Tz,
}

/// A member's notice settings, the defaults until they change them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub email: String,
    pub language: Language,
    pub hold_ready: bool,
    pub due_soon: bool,
    pub overdue: bool,
    pub hold_expired: bool,
}

impl Settings {
    pub fn defaults(language: Language) -> Self {
        Self {
            email: String::new(),
            language,
            hold_ready: true,
            due_soon: true,
            overdue: true,
            hold_expired: true,
        }
    }

    /// Whether the member wants notices of this kind.
    pub fn wants(&self, kind: NoticeKind) -> bool {
        match kind {
            NoticeKind::HoldReady => self.hold_ready,
            NoticeKind::DueSoon => self.due_soon,
            NoticeKind::Overdue => self.overdue,
            NoticeKind::HoldExpired => self.hold_expired,
            NoticeKind::Unspecified => false,
        }
    }
}

/// The stable name of a kind in the notice log.
pub fn kind_name(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::HoldReady => "HOLD_READY",
        NoticeKind::DueSoon => "DUE_SOON",
        NoticeKind::Overdue => "OVERDUE",
        NoticeKind::HoldExpired => "HOLD_EXPIRED",
        NoticeKind::Unspecified => "UNSPECIFIED",
    }
}

pub fn kind_of(name: &str) -> NoticeKind {
    NoticeKind::from_str_name(&format!("NOTICE_KIND_{name}")).unwrap_or(NoticeKind::Unspecified)
}

/// The key that makes an occasion one notice, whatever the redeliveries,
/// replicas and restarts: a hold's readiness at one book_seq (a requeued
/// hold that is ready again is a new occasion), its expiry, a loan's due
/// date warned of, and each overdue reminder of a due date.
pub fn hold_ready_key(reservation_id: &str, book_seq: i64) -> String {
    format!("hold-ready/{reservation_id}/{book_seq}")
}

pub fn hold_expired_key(reservation_id: &str) -> String {
    format!("hold-expired/{reservation_id}")
}

pub fn due_soon_key(rental_id: &str, due_at: Timestamp) -> String {
    format!("due-soon/{rental_id}/{}", due_at.timestamp())
}

pub fn overdue_key(rental_id: &str, due_at: Timestamp, reminder: i64) -> String {
    format!("overdue/{rental_id}/{}/{reminder}", due_at.timestamp())
}

/// An occasion older than the service's first start is history it never
/// saw happen: it sends nothing for it.
pub fn is_news(occasion_at: Timestamp, first_started_at: Timestamp) -> bool {
    occasion_at >= first_started_at
}

/// When a loan due at `due_at` is "due soon". `DUE_SOON_BEFORE` in whole
/// days counts the library's days: 2d before a loan due on Friday is the
/// start of Wednesday in `LIBRARY_TIMEZONE`. A period shorter than a day,
/// or not a whole number of days, is taken as it is.
pub fn due_soon_at(due_at: Timestamp, schedule: &Schedule) -> Timestamp {
    let before = schedule.due_soon_before;
    let day = Duration::days(1);
    if before >= day && before.num_seconds() % day.num_seconds() == 0 {
        let local_day = due_at.with_timezone(&schedule.time_zone).date_naive();
        let start = local_day - Duration::days(before.num_days());
        if let Some(at) = schedule
            .time_zone
            .from_local_datetime(&start.and_time(NaiveTime::MIN))
            .earliest()
        {
            return at.to_utc();
        }
    }
    due_at - before
}

/// Where a loan stands among its notices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoanNotices {
    pub due_at: Timestamp,
    /// When this service learnt of the loan or its latest due date: an
    /// occasion cannot be older than that.
    pub known_at: Timestamp,
    pub due_soon_done: bool,
    /// Overdue reminders of this due date handled (the first is the
    /// moment it became overdue).
    pub overdue_done: i64,
}

/// A loan's occasion that has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoanOccasion {
    DueSoon {
        at: Timestamp,
    },
    /// The reminder'th overdue notice (0: the loan just became overdue).
    Overdue {
        reminder: i64,
        at: Timestamp,
    },
}

impl LoanOccasion {
    pub fn at(&self) -> Timestamp {
        match self {
            Self::DueSoon { at } | Self::Overdue { at, .. } => *at,
        }
    }
}

/// What the clock says about a loan at `now`: the occasion to notify, if
/// one has come (only the latest when several were missed while the
/// service was away), the loan's state after it, and when to look again.
pub fn loan_tick(
    loan: LoanNotices,
    now: Timestamp,
    schedule: &Schedule,
) -> (Option<LoanOccasion>, LoanNotices, Timestamp) {
    let every = schedule.overdue_every.max(Duration::seconds(1));
    let mut next = loan;
    if now >= loan.due_at {
        let reminder = ((now - loan.due_at).num_milliseconds() / every.num_milliseconds()).max(0);
        let next_at = loan.due_at + every * (reminder as i32 + 1);
        next.due_soon_done = true;
        if loan.overdue_done <= reminder {
            next.overdue_done = reminder + 1;
            let at = (loan.due_at + every * reminder as i32).max(loan.known_at);
            return (Some(LoanOccasion::Overdue { reminder, at }), next, next_at);
        }
        return (None, next, next_at);
    }
    let soon = due_soon_at(loan.due_at, schedule);
    if !loan.due_soon_done && now >= soon {
        next.due_soon_done = true;
        let at = soon.max(loan.known_at);
        return (Some(LoanOccasion::DueSoon { at }), next, loan.due_at);
    }
    let next_at = if loan.due_soon_done {
        loan.due_at
    } else {
        soon
    };
    (None, next, next_at)
}

/// A loan's new due date (R12): a later one starts its notices over.
pub fn renewed(loan: LoanNotices, due_at: Timestamp, known_at: Timestamp) -> LoanNotices {
    if due_at <= loan.due_at {
        return loan;
    }
    LoanNotices {
        due_at,
        known_at,
        due_soon_done: false,
        overdue_done: 0,
    }
}

/// How long after a failed attempt (the `attempts`th) the next one is
/// made: 1 s, doubling, at most 5 min.
pub fn retry_after(attempts: i32) -> std::time::Duration {
    let exp = attempts.clamp(1, 20) as u32 - 1;
    std::time::Duration::from_secs(1)
        .saturating_mul(2u32.saturating_pow(exp))
        .min(std::time::Duration::from_secs(300))
}

/// Whether a notice whose e-mail failed is given up: its first attempt was
/// made long enough ago (`NOTICE_SEND_FOR`).
pub fn gives_up(created_at: Timestamp, now: Timestamp, send_for: Duration) -> bool {
    now - created_at >= send_for
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn t(s: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn schedule(before: Duration, every: Duration, tz: &str) -> Schedule {
        Schedule {
            due_soon_before: before,
            overdue_every: every,
            time_zone: tz.parse().unwrap(),
        }
    }

    #[test]
    fn due_soon_counts_the_librarys_days_or_the_exact_period() {
        // Due Friday 2026-12-04 15:00 in Seoul (06:00 UTC): two days before
        // is the start of Wednesday in Seoul, Tuesday 15:00 UTC.
        let s = schedule(Duration::days(2), Duration::days(7), "Asia/Seoul");
        assert_eq!(
            due_soon_at(t("2026-12-04T06:00:00Z"), &s),
            t("2026-12-01T15:00:00Z")
        );
        let s = schedule(Duration::days(1), Duration::days(7), "UTC");
        assert_eq!(
            due_soon_at(t("2026-12-04T06:00:00Z"), &s),
            t("2026-12-03T00:00:00Z")
        );
        let s = schedule(Duration::seconds(2), Duration::days(7), "Asia/Seoul");
        assert_eq!(
            due_soon_at(t("2026-12-04T06:00:00Z"), &s),
            t("2026-12-04T05:59:58Z")
        );
        let s = schedule(Duration::hours(36), Duration::days(7), "UTC");
        assert_eq!(
            due_soon_at(t("2026-12-04T06:00:00Z"), &s),
            t("2026-12-02T18:00:00Z")
        );
    }

    #[test]
    fn a_loan_is_due_soon_once_then_overdue_then_reminded_every_period() {
        let s = schedule(Duration::seconds(10), Duration::seconds(60), "UTC");
        let due = t("2026-12-04T06:00:00Z");
        let loan = LoanNotices {
            due_at: due,
            known_at: t("2026-12-01T00:00:00Z"),
            due_soon_done: false,
            overdue_done: 0,
        };
        let (none, loan, next) = loan_tick(loan, t("2026-12-04T05:59:00Z"), &s);
        assert_eq!(none, None);
        assert_eq!(next, t("2026-12-04T05:59:50Z"));
        let (soon, loan, next) = loan_tick(loan, next, &s);
        assert_eq!(
            soon,
            Some(LoanOccasion::DueSoon {
                at: t("2026-12-04T05:59:50Z")
            })
        );
        assert_eq!(next, due);
        assert_eq!(loan_tick(loan, t("2026-12-04T05:59:55Z"), &s).0, None);
        let (over, loan, next) = loan_tick(loan, due, &s);
        assert_eq!(
            over,
            Some(LoanOccasion::Overdue {
                reminder: 0,
                at: due
            })
        );
        assert_eq!(next, t("2026-12-04T06:01:00Z"));
        assert_eq!(loan_tick(loan, t("2026-12-04T06:00:30Z"), &s).0, None);
        // Away for three periods: one reminder, the latest.
        let (late, loan, next) = loan_tick(loan, t("2026-12-04T06:03:10Z"), &s);
        assert_eq!(
            late,
            Some(LoanOccasion::Overdue {
                reminder: 3,
                at: t("2026-12-04T06:03:00Z")
            })
        );
        assert_eq!(next, t("2026-12-04T06:04:00Z"));
        assert_eq!(loan_tick(loan, t("2026-12-04T06:03:59Z"), &s).0, None);
    }

    #[test]
    fn a_loan_learnt_of_late_is_overdue_without_a_due_soon_first() {
        let s = schedule(Duration::days(2), Duration::days(7), "UTC");
        let loan = LoanNotices {
            due_at: t("2026-12-04T06:00:00Z"),
            known_at: t("2026-12-05T00:00:00Z"),
            due_soon_done: false,
            overdue_done: 0,
        };
        let (o, next, _) = loan_tick(loan, t("2026-12-05T00:00:01Z"), &s);
        // Its occasion is no older than when the loan was learnt of.
        assert_eq!(
            o,
            Some(LoanOccasion::Overdue {
                reminder: 0,
                at: t("2026-12-05T00:00:00Z")
            })
        );
        assert!(next.due_soon_done);
    }

    #[test]
    fn a_renewal_starts_the_notices_over_and_never_moves_the_date_back() {
        let loan = LoanNotices {
            due_at: t("2026-12-04T06:00:00Z"),
            known_at: t("2026-12-01T00:00:00Z"),
            due_soon_done: true,
            overdue_done: 2,
        };
        let later = renewed(loan, t("2026-12-18T06:00:00Z"), t("2026-12-10T00:00:00Z"));
        assert!(!later.due_soon_done);
        assert_eq!(later.overdue_done, 0);
        assert_eq!(
            renewed(loan, t("2026-12-02T00:00:00Z"), t("2026-12-10T00:00:00Z")),
            loan
        );
        assert_ne!(
            due_soon_key("r", loan.due_at),
            due_soon_key("r", later.due_at)
        );
    }

    #[test]
    fn occasions_before_the_first_start_are_not_news() {
        let start = t("2026-12-01T00:00:00Z");
        assert!(!is_news(t("2026-11-30T23:59:59Z"), start));
        assert!(is_news(start, start));
    }

    #[test]
    fn retries_back_off_and_give_up_after_the_sending_period() {
        assert_eq!(retry_after(1), std::time::Duration::from_secs(1));
        assert_eq!(retry_after(2), std::time::Duration::from_secs(2));
        assert_eq!(retry_after(5), std::time::Duration::from_secs(16));
        assert_eq!(retry_after(40), std::time::Duration::from_secs(300));
        let made = t("2026-12-01T00:00:00Z");
        assert!(!gives_up(
            made,
            t("2026-12-01T23:59:59Z"),
            Duration::hours(24)
        ));
        assert!(gives_up(
            made,
            t("2026-12-02T00:00:00Z"),
            Duration::hours(24)
        ));
    }

    #[test]
    fn settings_choose_kinds_and_languages_parse() {
        let mut s = Settings::defaults(Language::Ko);
        assert!(s.wants(NoticeKind::HoldReady));
        s.due_soon = false;
        assert!(!s.wants(NoticeKind::DueSoon));
        assert!(!s.wants(NoticeKind::Unspecified));
        assert_eq!(Language::parse("en"), Some(Language::En));
        assert_eq!(Language::parse("EN"), None);
        assert_eq!(kind_of(kind_name(NoticeKind::Overdue)), NoticeKind::Overdue);
    }
}
