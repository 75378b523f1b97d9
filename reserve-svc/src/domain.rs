//! The hold queue's rules (SPEC §3 R1–R5), free of transport and storage.
//! The store gathers a book's numbers under the book's lock, these functions
//! decide, and the store writes the decision with its event.

use chrono::{DateTime, Duration, Utc};

use crate::store::status;

/// Policy values from configuration.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub pickup_window: Duration,
    pub max_open_reservations: u32,
}

/// A book's copies right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stock {
    pub total: i32,
    /// READY reservations: copies held for pickup.
    pub held: i32,
    /// FULFILLED reservations whose return is not recorded yet.
    pub on_loan: i32,
    /// WAITING reservations.
    pub waiting: i32,
}

impl Stock {
    /// Copies nobody holds or has; never negative, even if copies were
    /// counted down below what is out.
    pub fn free(self) -> i32 {
        (self.total - self.held - self.on_loan).max(0)
    }

    /// How many heads of the queue get a copy now (R3): one per free copy,
    /// as long as somebody waits.
    pub fn promotions(self) -> i32 {
        self.free().min(self.waiting)
    }
}

/// What the member already has, as far as R2 cares.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemberStanding {
    /// A WAITING or READY reservation for this book.
    pub open_for_book: bool,
    /// This book is on loan to the member.
    pub has_on_loan: bool,
    /// WAITING or READY reservations across all books.
    pub open_total: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A copy is held until the deadline.
    Ready { pickup_deadline: DateTime<Utc> },
    /// In the queue at this 1-based place.
    Waiting { position: i32 },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("you already have an open reservation for this book")]
    AlreadyReserved,
    #[error("you have this book on loan; return it before reserving it again")]
    OnLoan,
    #[error("you already have {0} open reservations, the most a member may have")]
    TooManyOpen(u32),
}

/// R1 and R2: where a new reservation goes.
pub fn place(
    stock: Stock,
    member: MemberStanding,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<Placement, Refusal> {
    if member.open_for_book {
        return Err(Refusal::AlreadyReserved);
    }
    if member.has_on_loan {
        return Err(Refusal::OnLoan);
    }
    if member.open_total >= policy.max_open_reservations {
        return Err(Refusal::TooManyOpen(policy.max_open_reservations));
    }
    if stock.free() > 0 && stock.waiting == 0 {
        Ok(Placement::Ready {
            pickup_deadline: now + policy.pickup_window,
        })
    } else {
        Ok(Placement::Waiting {
            position: stock.waiting + 1,
        })
    }
}

/// R4: a READY reservation whose deadline has passed is expired.
pub fn pickup_expired(pickup_deadline: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    pickup_deadline.is_some_and(|d| d < now)
}

/// When a reservation became history (SPEC §10, privacy): a hold
/// cancelled or expired when it ended, which was its last change; a loan
/// when its copy came back or was lost, which the desk records as the
/// return. None while it is the member's current business: WAITING, READY,
/// or FULFILLED with the copy still out. Erasing a member's history up to a
/// moment anonymises the reservations that finished by then.
pub fn finished_at(
    status: &str,
    returned_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match status {
        status::CANCELLED | status::EXPIRED => Some(updated_at),
        status::FULFILLED => returned_at,
        _ => None,
    }
}

/// An open reservation of a book being merged into another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenHold {
    pub reservation_id: String,
    pub member_id: String,
    pub ready: bool,
    pub placed_at: DateTime<Utc>,
}

/// MergeBooks: a member keeps one open reservation for the merged book, the
/// READY one if any, else the first placed. The ones to cancel, in the
/// order given.
pub fn duplicate_holds(open: &[OpenHold]) -> Vec<String> {
    let better = |a: &OpenHold, b: &OpenHold| {
        (!a.ready, a.placed_at, &a.reservation_id) < (!b.ready, b.placed_at, &b.reservation_id)
    };
    open.iter()
        .filter(|h| {
            open.iter().any(|o| {
                o.member_id == h.member_id && o.reservation_id != h.reservation_id && better(o, h)
            })
        })
        .map(|h| h.reservation_id.clone())
        .collect()
}

/// MergeBooks: the hold queues of the merged books become one. Each queue
/// keeps its own order (a requeued hold stays at its head); between
/// queues, the member who joined first goes first.
pub fn merge_queues<T, K: Ord>(queues: Vec<Vec<T>>, joined: impl Fn(&T) -> K) -> Vec<T> {
    let mut queues: Vec<std::collections::VecDeque<T>> =
        queues.into_iter().map(Into::into).collect();
    let mut merged = Vec::with_capacity(queues.iter().map(|q| q.len()).sum());
    while let Some(next) = queues
        .iter()
        .enumerate()
        .filter_map(|(i, q)| q.front().map(|head| (joined(head), i)))
        .min()
        .map(|(_, i)| i)
    {
        merged.extend(queues[next].pop_front());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_holds_and_loans_whose_copy_is_back_are_history() {
        let t = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        assert_eq!(finished_at(status::CANCELLED, None, t(5)), Some(t(5)));
        assert_eq!(finished_at(status::EXPIRED, None, t(6)), Some(t(6)));
        assert_eq!(
            finished_at(status::FULFILLED, Some(t(7)), t(9)),
            Some(t(7)),
            "a loan ends when its copy comes back"
        );
        assert_eq!(
            finished_at(status::FULFILLED, None, t(9)),
            None,
            "the copy is still out"
        );
        assert_eq!(finished_at(status::WAITING, None, t(1)), None);
        assert_eq!(finished_at(status::READY, None, t(1)), None);
    }

    const POLICY: Policy = Policy {
        pickup_window: Duration::hours(72),
        max_open_reservations: 5,
    };

    fn stock(total: i32, held: i32, on_loan: i32, waiting: i32) -> Stock {
        Stock {
            total,
            held,
            on_loan,
            waiting,
        }
    }

    #[test]
    fn a_free_copy_with_nobody_waiting_is_ready_at_once() {
        let now = Utc::now();
        let p = place(stock(1, 0, 0, 0), MemberStanding::default(), &POLICY, now).unwrap();
        assert_eq!(
            p,
            Placement::Ready {
                pickup_deadline: now + Duration::hours(72)
            }
        );
    }

    #[test]
    fn otherwise_the_member_joins_the_end_of_the_queue() {
        let now = Utc::now();
        let m = MemberStanding::default();
        assert_eq!(
            place(stock(1, 1, 0, 0), m, &POLICY, now).unwrap(),
            Placement::Waiting { position: 1 }
        );
        assert_eq!(
            place(stock(1, 0, 1, 3), m, &POLICY, now).unwrap(),
            Placement::Waiting { position: 4 }
        );
        // A free copy is not taken past people already waiting for it.
        assert_eq!(
            place(stock(2, 0, 1, 1), m, &POLICY, now).unwrap(),
            Placement::Waiting { position: 2 }
        );
    }

    #[test]
    fn member_limits_are_refused_in_order() {
        let now = Utc::now();
        let s = stock(1, 0, 0, 0);
        let open = MemberStanding {
            open_for_book: true,
            ..Default::default()
        };
        assert_eq!(place(s, open, &POLICY, now), Err(Refusal::AlreadyReserved));
        let lent = MemberStanding {
            has_on_loan: true,
            ..Default::default()
        };
        assert_eq!(place(s, lent, &POLICY, now), Err(Refusal::OnLoan));
        let busy = MemberStanding {
            open_total: 5,
            ..Default::default()
        };
        assert_eq!(place(s, busy, &POLICY, now), Err(Refusal::TooManyOpen(5)));
        assert!(Refusal::TooManyOpen(5).to_string().contains('5'));
    }

    #[test]
    fn promotions_fill_free_copies_from_the_queue() {
        assert_eq!(stock(3, 1, 0, 5).promotions(), 2);
        assert_eq!(stock(3, 0, 0, 1).promotions(), 1);
        assert_eq!(stock(1, 1, 0, 4).promotions(), 0);
        assert_eq!(stock(1, 0, 2, 4).promotions(), 0);
        assert_eq!(stock(1, 0, 2, 4).free(), 0);
    }

    #[test]
    fn expiry_is_strictly_after_the_deadline() {
        let now = Utc::now();
        assert!(pickup_expired(Some(now - Duration::seconds(1)), now));
        assert!(!pickup_expired(Some(now), now));
        assert!(!pickup_expired(None, now));
    }

    fn hold(id: &str, member: &str, ready: bool, minute: i64) -> OpenHold {
        OpenHold {
            reservation_id: id.to_owned(),
            member_id: member.to_owned(),
            ready,
            placed_at: DateTime::<Utc>::UNIX_EPOCH + Duration::minutes(minute),
        }
    }

    #[test]
    fn a_member_keeps_the_ready_hold_else_the_first_placed() {
        let open = [
            hold("a1", "ann", false, 1),
            hold("a2", "ann", true, 5),
            hold("b1", "bob", false, 2),
            hold("b2", "bob", false, 3),
            hold("c1", "cat", false, 4),
        ];
        assert_eq!(duplicate_holds(&open), ["a1", "b2"]);
    }

    #[test]
    fn merged_queues_keep_their_own_order_and_interleave_by_joining() {
        // Each queue in its order; (name, minute joined). x0 was requeued to
        // the head of its queue although it joined last.
        let one = vec![("x0", 9), ("x1", 1), ("x2", 4)];
        let two = vec![("y1", 2), ("y2", 3), ("y3", 8)];
        let merged = merge_queues(vec![one, two], |(_, minute)| *minute);
        let names: Vec<&str> = merged.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["y1", "y2", "y3", "x0", "x1", "x2"]);
        let merged = merge_queues(
            vec![vec![("x1", 1), ("x2", 4)], vec![("y1", 2), ("y3", 8)]],
            |(_, m)| *m,
        );
        let names: Vec<&str> = merged.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["x1", "y1", "x2", "y3"]);
    }
}
