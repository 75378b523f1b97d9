//! My Page's rules, free of transport and storage: how a journey moves from
//! stage to stage, and what a member sees at a given moment.
//!
//! Events can arrive late or twice. A journey only ever moves forward along
//! WAITING -> READY -> RENTED -> RETURNED, and CANCELLED and EXPIRED end it, so
//! a late ReservationPlaced after ReservationFulfilled changes nothing.

use chrono::{DateTime, Utc};
use rentalbook_proto::view::v1::JourneyStage;

/// Stages as stored (OVERDUE is RENTED past the due date, computed on read).
pub mod stage {
    pub const WAITING: &str = "WAITING";
    pub const READY: &str = "READY";
    pub const RENTED: &str = "RENTED";
    pub const RETURNED: &str = "RETURNED";
    pub const CANCELLED: &str = "CANCELLED";
    pub const EXPIRED: &str = "EXPIRED";
}

fn rank(s: &str) -> u8 {
    match s {
        stage::WAITING => 1,
        stage::READY => 2,
        stage::RENTED => 3,
        stage::RETURNED => 4,
        stage::CANCELLED | stage::EXPIRED => 5,
        _ => 0,
    }
}

/// The stage after an event that points at `next`: `next` if it is further
/// along, otherwise the current one. A cancelled or expired journey ends
/// there, and neither can happen once the book is rented.
pub fn advance<'a>(current: &'a str, next: &'a str) -> &'a str {
    let (now, then) = (rank(current), rank(next));
    let ended = now == 5;
    let too_late_to_end = then == 5 && now >= 3;
    if ended || too_late_to_end || then <= now {
        current
    } else {
        next
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
