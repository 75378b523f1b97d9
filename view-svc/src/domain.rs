//! My Page's rules, free of transport and storage: how a journey moves from
//! stage to stage, and what a member sees at a given moment.
//!
//! Events can arrive late, twice, or (replicas sharing the durable consumer)
//! in another order than the stream's, and every order must give the same
//! journey. Two rules decide a journey's stage:
//!
//! - Before the loan, a hold moves between WAITING and READY, and back once
//!   in a while: a READY hold whose copy was withdrawn or lost and had no
//!   replacement is WAITING again at the head of the queue
//!   (ReservationRequeued). Every event that says WAITING or READY comes from
//!   reserve-svc and carries the book's `book_seq`, which grows by one with
//!   every change of that book under the book's lock: so the hold's stage is
//!   the one told by the event with the highest `book_seq` ([`hold_wins`]),
//!   whatever order the events are applied in. The copy held (and when it
//!   was held) follows the same event.
//! - From the loan on, stages only move forward along RENTED -> LOST ->
//!   RETURNED, CANCELLED and EXPIRED end a hold before the loan only, and
//!   any of these stages wins over WAITING and READY ([`advance`]): a late
//!   ReservationPlaced after ReservationFulfilled changes nothing.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rentalbook_proto::view::v1::JourneyStage;

/// The library's settings the read side needs.
#[derive(Clone, Copy, Debug)]
pub struct Library {
    /// Times a loan may be renewed (R12; rental-svc enforces it).
    pub max_renewals: u32,
    /// Where the library's days begin and end.
    pub time_zone: Tz,
}

impl Default for Library {
    fn default() -> Self {
        Self {
            max_renewals: 2,
            time_zone: Tz::UTC,
        }
    }
}

impl Library {
    /// Renewals left to a loan in `visible` stage renewed `renewals` times:
    /// only an active loan (RENTED or OVERDUE) has any.
    pub fn renewals_left(&self, visible: JourneyStage, renewals: i32) -> i32 {
        match visible {
            JourneyStage::Rented | JourneyStage::Overdue => {
                let max = i64::from(self.max_renewals);
                (max - i64::from(renewals.max(0))).clamp(0, i64::from(i32::MAX)) as i32
            }
            _ => 0,
        }
    }

    /// The day `at` falls on in the library.
    pub fn day_of(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.time_zone).date_naive()
    }

    /// The moments a library day starts and ends (the next one's start): a
    /// day is 23 or 25 hours long when the clocks change, and starts at the
    /// first moment it has when midnight is skipped.
    pub fn day_bounds(&self, day: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let start = |d: NaiveDate| {
            (0..24).find_map(|hour| {
                let local = d.and_hms_opt(hour, 0, 0)?;
                self.time_zone
                    .from_local_datetime(&local)
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
            })
        };
        Some((start(day)?, start(day.succ_opt()?)?))
    }
}

/// Stages as stored (OVERDUE is RENTED past the due date, computed on read).
pub mod stage {
    pub const WAITING: &str = "WAITING";
    pub const READY: &str = "READY";
    pub const RENTED: &str = "RENTED";
    pub const RETURNED: &str = "RETURNED";
    pub const CANCELLED: &str = "CANCELLED";
    pub const EXPIRED: &str = "EXPIRED";
    /// The copy on loan was marked lost (R13): the loan is closed.
    pub const LOST: &str = "LOST";
    /// The journeys that are over, for history.
    pub const FINISHED: [&str; 4] = [RETURNED, LOST, CANCELLED, EXPIRED];
}

/// Whether a journey in this stage is over: part of the member's history.
pub fn is_finished(s: &str) -> bool {
    stage::FINISHED.contains(&s)
}

/// When a journey finished, after a change applied at `at` took it from
/// `before` (finished at `before_at`, if it was) to `after`: a returned
/// journey when its book came back (`returned_at`); a lost, cancelled or
/// expired one when the one event that ends it that way happened, the
/// change that brought it there; None while it goes on. Whatever order its
/// events come in, a journey gets the same moment.
pub fn finished_at(
    before: &str,
    before_at: Option<DateTime<Utc>>,
    after: &str,
    returned_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match after {
        stage::RETURNED => returned_at.or(Some(at)),
        stage::LOST | stage::CANCELLED | stage::EXPIRED if before == after => {
            before_at.or(Some(at))
        }
        stage::LOST | stage::CANCELLED | stage::EXPIRED => Some(at),
        _ => None,
    }
}

/// Whether an erasure up to `up_to` (the member's HistoryErased, or the
/// retention sweep's cutoff) takes a journey in `stored` stage that
/// finished at `finished_at`: only a finished one, finished by then.
pub fn erased_by(stored: &str, finished_at: Option<DateTime<Utc>>, up_to: DateTime<Utc>) -> bool {
    is_finished(stored) && finished_at.is_some_and(|f| f <= up_to)
}

/// Whether an erasure up to `up_to` takes a notice made at `created_at`:
/// one made by then, unless it is about a journey still open (a hold or a
/// loan the member still has), which it keeps telling about.
pub fn notice_erased_by(
    created_at: DateTime<Utc>,
    about_open_journey: bool,
    up_to: DateTime<Utc>,
) -> bool {
    created_at <= up_to && !about_open_journey
}

/// Where a stage stands; ENDED for the two that end a hold before the loan.
const ENDED: u8 = 6;

fn rank(s: &str) -> u8 {
    match s {
        stage::WAITING => 1,
        stage::READY => 2,
        stage::RENTED => 3,
        // A loan closed as lost may still be returned after all; the return
        // is what the member did last.
        stage::LOST => 4,
        stage::RETURNED => 5,
        stage::CANCELLED | stage::EXPIRED => ENDED,
        _ => 0,
    }
}

/// WAITING and READY: the stages of a hold, which may go back and forth.
pub fn is_hold(s: &str) -> bool {
    matches!(s, stage::WAITING | stage::READY)
}

/// The stage after an event that points at `next`: `next` if it is further
/// along, otherwise the current one. A cancelled or expired journey ends
/// there, and neither can happen once the book is rented. Between WAITING
/// and READY [`hold_wins`] decides, before this.
pub fn advance<'a>(current: &'a str, next: &'a str) -> &'a str {
    let (now, then) = (rank(current), rank(next));
    let ended = now == ENDED;
    let too_late_to_end = then == ENDED && now >= 3;
    if ended || too_late_to_end || then <= now {
        current
    } else {
        next
    }
}

/// Whether a hold event (WAITING or READY at the book's `seq`) replaces the
/// hold the journey knows (`known`: the `book_seq` and stage of the hold
/// event that won so far, `None` before any): the later change of the book
/// wins, and of two at one `book_seq` (one event applied twice) the stage
/// further along. The hold's copy follows the winner; its stage is the
/// journey's only while the journey is not past its hold ([`hold_stage`]).
pub fn hold_wins(known: Option<(i64, &str)>, next: &str, seq: i64) -> bool {
    debug_assert!(is_hold(next));
    known.is_none_or(|(known_seq, known_stage)| (seq, rank(next)) > (known_seq, rank(known_stage)))
}

/// The stage after a hold event that won ([`hold_wins`]): its stage, unless
/// the journey is past its hold already.
pub fn hold_stage<'a>(current: &'a str, next: &'a str) -> &'a str {
    if current.is_empty() || is_hold(current) {
        next
    } else {
        current
    }
}

/// The stage a member sees at `now`.
pub fn visible_stage(
    stored: &str,
    due_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> JourneyStage {
    match stored {
        stage::WAITING => JourneyStage::Waiting,
        stage::READY => JourneyStage::Ready,
        stage::RENTED if due_at.is_some_and(|d| d < now) => JourneyStage::Overdue,
        stage::RENTED => JourneyStage::Rented,
        stage::RETURNED => JourneyStage::Returned,
        stage::CANCELLED => JourneyStage::Cancelled,
        stage::EXPIRED => JourneyStage::Expired,
        stage::LOST => JourneyStage::Lost,
        _ => JourneyStage::Unspecified,
    }
}

/// The next moment a page changes by the clock alone: the earliest due date
/// still ahead of a rented journey.
pub fn next_clock_change<'a>(
    journeys: impl IntoIterator<Item = (&'a str, Option<DateTime<Utc>>)>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    journeys
        .into_iter()
        .filter(|(s, _)| *s == stage::RENTED)
        .filter_map(|(_, due)| due)
        .filter(|due| *due >= now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn journeys_only_move_forward() {
        assert_eq!(advance(stage::WAITING, stage::READY), stage::READY);
        assert_eq!(advance(stage::READY, stage::RENTED), stage::RENTED);
        assert_eq!(advance(stage::RENTED, stage::RETURNED), stage::RETURNED);
        // Late or repeated events change nothing.
        assert_eq!(advance(stage::RENTED, stage::WAITING), stage::RENTED);
        assert_eq!(advance(stage::READY, stage::READY), stage::READY);
        assert_eq!(advance(stage::RETURNED, stage::RENTED), stage::RETURNED);
    }

    #[test]
    fn cancelling_and_expiring_end_a_journey_before_the_loan_only() {
        assert_eq!(advance(stage::WAITING, stage::CANCELLED), stage::CANCELLED);
        assert_eq!(advance(stage::READY, stage::EXPIRED), stage::EXPIRED);
        assert_eq!(advance(stage::CANCELLED, stage::READY), stage::CANCELLED);
        assert_eq!(advance(stage::EXPIRED, stage::RENTED), stage::EXPIRED);
        assert_eq!(advance(stage::RENTED, stage::CANCELLED), stage::RENTED);
    }

    #[test]
    fn a_lost_loan_is_closed_and_never_overdue() {
        assert_eq!(advance(stage::RENTED, stage::LOST), stage::LOST);
        assert_eq!(advance(stage::LOST, stage::RENTED), stage::LOST);
        assert_eq!(advance(stage::READY, stage::LOST), stage::LOST);
        assert_eq!(advance(stage::LOST, stage::RETURNED), stage::RETURNED);
        assert_eq!(advance(stage::RETURNED, stage::LOST), stage::RETURNED);
        assert_eq!(advance(stage::LOST, stage::CANCELLED), stage::LOST);
        let now = Utc::now();
        let past = Some(now - Duration::days(1));
        assert_eq!(visible_stage(stage::LOST, past, now), JourneyStage::Lost);
        assert_eq!(
            next_clock_change([(stage::LOST, Some(now + Duration::hours(1)))], now),
            None
        );
    }

    #[test]
    fn a_hold_follows_the_latest_change_of_its_book() {
        let ready_at_5 = Some((5, stage::READY));
        let requeued_at_7 = Some((7, stage::WAITING));
        // Requeued (seq 7) after READY (seq 5): WAITING, in either order.
        assert!(hold_wins(ready_at_5, stage::WAITING, 7));
        assert!(!hold_wins(requeued_at_7, stage::READY, 5));
        // READY again (seq 9) after the requeue.
        assert!(hold_wins(requeued_at_7, stage::READY, 9));
        // One event twice changes nothing.
        assert!(!hold_wins(ready_at_5, stage::READY, 5));
        assert!(hold_wins(Some((5, stage::WAITING)), stage::READY, 5));
        // Any hold event wins over none.
        assert!(hold_wins(None, stage::WAITING, 0));
        // A journey past its hold keeps its stage.
        assert_eq!(hold_stage("", stage::WAITING), stage::WAITING);
        assert_eq!(hold_stage(stage::READY, stage::WAITING), stage::WAITING);
        for past in [
            stage::RENTED,
            stage::LOST,
            stage::RETURNED,
            stage::CANCELLED,
        ] {
            assert_eq!(hold_stage(past, stage::READY), past);
        }
    }

    #[test]
    fn a_journey_finishes_when_its_last_event_happened() {
        let t = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        // Returned: when the book came back, whatever event told it.
        assert_eq!(
            finished_at(stage::RENTED, None, stage::RETURNED, Some(t(5)), t(9)),
            Some(t(5))
        );
        assert_eq!(
            finished_at(
                stage::RETURNED,
                Some(t(6)),
                stage::RETURNED,
                Some(t(5)),
                t(9)
            ),
            Some(t(5)),
            "BookReturned's time replaces ReturnRecorded's stand-in"
        );
        // Cancelled, expired, lost: the event that ended it, kept after.
        for ended in [stage::CANCELLED, stage::EXPIRED, stage::LOST] {
            assert_eq!(
                finished_at(stage::READY, None, ended, None, t(7)),
                Some(t(7))
            );
            assert_eq!(finished_at("", None, ended, None, t(7)), Some(t(7)));
            assert_eq!(
                finished_at(ended, Some(t(7)), ended, None, t(8)),
                Some(t(7)),
                "a later event of the journey changes nothing"
            );
        }
        assert_eq!(
            finished_at(stage::LOST, Some(t(7)), stage::RETURNED, Some(t(8)), t(9)),
            Some(t(8)),
            "a lost copy returned after all"
        );
        for open in [stage::WAITING, stage::READY, stage::RENTED] {
            assert_eq!(finished_at(open, None, open, None, t(1)), None);
        }
    }

    #[test]
    fn an_erasure_takes_finished_journeys_and_notices_up_to_its_moment() {
        let t = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        for finished in stage::FINISHED {
            assert!(erased_by(finished, Some(t(5)), t(5)), "{finished}");
            assert!(erased_by(finished, Some(t(4)), t(5)), "{finished}");
            assert!(!erased_by(finished, Some(t(6)), t(5)), "{finished}: after");
            assert!(!erased_by(finished, None, t(5)), "{finished}: no moment");
        }
        for open in [stage::WAITING, stage::READY, stage::RENTED, ""] {
            assert!(
                !erased_by(open, Some(t(1)), t(5)),
                "{open:?} is not history"
            );
        }
        assert!(notice_erased_by(t(5), false, t(5)));
        assert!(!notice_erased_by(t(6), false, t(5)), "made after");
        assert!(
            !notice_erased_by(t(1), true, t(5)),
            "about a current loan or hold"
        );
    }

    #[test]
    fn renewals_left_count_down_on_active_loans_only() {
        let library = Library::default();
        assert_eq!(library.renewals_left(JourneyStage::Rented, 0), 2);
        assert_eq!(library.renewals_left(JourneyStage::Overdue, 1), 1);
        assert_eq!(library.renewals_left(JourneyStage::Rented, 2), 0);
        assert_eq!(library.renewals_left(JourneyStage::Rented, 7), 0);
        assert_eq!(library.renewals_left(JourneyStage::Returned, 0), 0);
        assert_eq!(library.renewals_left(JourneyStage::Lost, 0), 0);
        assert_eq!(library.renewals_left(JourneyStage::Ready, 0), 0);
        let generous = Library {
            max_renewals: u32::MAX,
            ..library
        };
        assert_eq!(generous.renewals_left(JourneyStage::Rented, 0), i32::MAX);
    }

    #[test]
    fn library_days_follow_its_time_zone_and_clock_changes() {
        let utc = Library::default();
        let day = NaiveDate::from_ymd_opt(2025, 3, 30).unwrap();
        let (start, end) = utc.day_bounds(day).unwrap();
        assert_eq!(start.to_rfc3339(), "2025-03-30T00:00:00+00:00");
        assert_eq!(end - start, Duration::hours(24));

        let seoul = Library {
            time_zone: "Asia/Seoul".parse().unwrap(),
            ..utc
        };
        let (start, _) = seoul.day_bounds(day).unwrap();
        assert_eq!(start.to_rfc3339(), "2025-03-29T15:00:00+00:00");
        assert_eq!(seoul.day_of(start), day);
        assert_eq!(
            seoul.day_of(start - Duration::seconds(1)),
            day.pred_opt().unwrap()
        );

        // Europe's clocks go forward that night: a 23-hour day.
        let berlin = Library {
            time_zone: "Europe/Berlin".parse().unwrap(),
            ..utc
        };
        let (start, end) = berlin.day_bounds(day).unwrap();
        assert_eq!(end - start, Duration::hours(23));
        // Santiago skipped midnight on 2022-09-11: the day starts at 01:00.
        let santiago = Library {
            time_zone: "America/Santiago".parse().unwrap(),
            ..utc
        };
        let skipped = NaiveDate::from_ymd_opt(2022, 9, 11).unwrap();
        let (start, _) = santiago.day_bounds(skipped).unwrap();
        assert_eq!(start.to_rfc3339(), "2022-09-11T04:00:00+00:00");
    }

    #[test]
    fn a_loan_past_its_due_date_is_overdue() {
        let now = Utc::now();
        let past = Some(now - Duration::seconds(1));
        let future = Some(now + Duration::days(1));
        assert_eq!(
            visible_stage(stage::RENTED, past, now),
            JourneyStage::Overdue
        );
        assert_eq!(
            visible_stage(stage::RENTED, future, now),
            JourneyStage::Rented
        );
        assert_eq!(
            visible_stage(stage::RETURNED, past, now),
            JourneyStage::Returned
        );
    }

    #[test]
    fn the_clock_changes_a_page_at_the_next_due_date() {
        let now = Utc::now();
        let soon = now + Duration::hours(1);
        let later = now + Duration::days(1);
        let journeys = [
            (stage::RENTED, Some(later)),
            (stage::RENTED, Some(soon)),
            (stage::RETURNED, Some(now + Duration::minutes(1))),
            (stage::RENTED, Some(now - Duration::days(1))),
        ];
        assert_eq!(next_clock_change(journeys, now), Some(soon));
        assert_eq!(next_clock_change([], now), None);
    }
}
