//! Loan rules (SPEC §3 R6–R8), free of transport and storage.

use chrono::{DateTime, Duration, Utc};

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub loan_period: Duration,
    pub max_active_rentals: u32,
    /// R12: renewals a loan may have.
    pub max_renewals: u32,
}

/// Rental states as stored.
pub mod status {
    /// Opened; reserve-svc has not confirmed the reservation yet (the saga's pending step).
    pub const PENDING: &str = "PENDING";
    pub const ACTIVE: &str = "ACTIVE";
    pub const RETURNED: &str = "RETURNED";
    /// reserve-svc refused: there was no READY reservation.
    pub const REJECTED: &str = "REJECTED";
    /// The copy was marked lost while on loan (R13).
    pub const LOST: &str = "LOST";
}

/// Return confirmation states as stored.
pub mod confirmation {
    pub const PENDING: &str = "PENDING";
    pub const CONFIRMED: &str = "CONFIRMED";
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("you already have {0} books on loan, the most a member may have; return one first")]
    TooManyActive(u32),
    #[error("this rental is not active, so there is nothing to return")]
    NotActive,
    #[error("this loan is not active, so it cannot be renewed")]
    NotRenewable,
    #[error("this loan was renewed {0} times already, the most a loan may be; please return it")]
    RenewalsUsedUp(u32),
}

/// R12: the due date after a renewal now (now + the loan period, never
/// earlier than before), if an ACTIVE loan renewed `renewals` times may be
/// renewed once more.
pub fn renewed(
    status: &str,
    renewals: u32,
    due_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<DateTime<Utc>, Refusal> {
    if status != status::ACTIVE {
        return Err(Refusal::NotRenewable);
    }
    if renewals >= policy.max_renewals {
        return Err(Refusal::RenewalsUsedUp(policy.max_renewals));
    }
    let due = now + policy.loan_period;
    Ok(due_at.map_or(due, |d| d.max(due)))
}

/// Renewals left to a loan renewed `renewals` times.
pub fn renewals_left(renewals: u32, policy: &Policy) -> u32 {
    policy.max_renewals.saturating_sub(renewals)
}

/// R6: may a member with `open` loans (active or being opened) open another?
pub fn may_open(open: u32, policy: &Policy) -> Result<(), Refusal> {
    if open >= policy.max_active_rentals {
        Err(Refusal::TooManyActive(policy.max_active_rentals))
    } else {
        Ok(())
    }
}

/// When a loan that starts now is due.
pub fn due_at(rented_at: DateTime<Utc>, policy: &Policy) -> DateTime<Utc> {
    rented_at + policy.loan_period
}

/// Overdue is ACTIVE with the due date passed.
pub fn overdue(status: &str, due_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    status == status::ACTIVE && due_at.is_some_and(|d| d < now)
}

/// R8: only an ACTIVE rental can be returned; a RETURNED one is answered as
/// it is (returning twice is idempotent).
pub fn may_return(status: &str) -> Result<bool, Refusal> {
    match status {
        status::ACTIVE => Ok(true),
        status::RETURNED => Ok(false),
        _ => Err(Refusal::NotActive),
    }
}

/// When a rental became history (SPEC §10, privacy): a loan returned when
/// its copy came back; one lost (R13) or refused by the desk when that was
/// recorded, its last change. None while it is the member's current
/// business: PENDING or ACTIVE. Erasing a member's history up to a moment
/// anonymises the rentals that finished by then.
pub fn finished_at(
    status: &str,
    returned_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match status {
        status::RETURNED => returned_at,
        status::LOST | status::REJECTED => Some(updated_at),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returned_lost_and_refused_rentals_are_history() {
        let t = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        assert_eq!(
            finished_at(status::RETURNED, Some(t(5)), t(9)),
            Some(t(5)),
            "when the copy came back, not when the desk confirmed it"
        );
        assert_eq!(finished_at(status::LOST, None, t(6)), Some(t(6)));
        assert_eq!(finished_at(status::REJECTED, None, t(7)), Some(t(7)));
        assert_eq!(finished_at(status::ACTIVE, None, t(1)), None);
        assert_eq!(finished_at(status::PENDING, None, t(1)), None);
    }

    const POLICY: Policy = Policy {
        loan_period: Duration::days(14),
        max_active_rentals: 2,
        max_renewals: 2,
    };

    #[test]
    fn a_renewal_moves_the_due_date_later_and_is_counted() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let overdue = now - Duration::days(3);
        assert_eq!(
            renewed(status::ACTIVE, 0, Some(overdue), now, &POLICY),
            Ok(now + Duration::days(14)),
            "an overdue loan is renewed from now"
        );
        let far = now + Duration::days(30);
        assert_eq!(
            renewed(status::ACTIVE, 1, Some(far), now, &POLICY),
            Ok(far),
            "never earlier than before"
        );
        assert_eq!(
            renewed(status::ACTIVE, 2, Some(now), now, &POLICY),
            Err(Refusal::RenewalsUsedUp(2))
        );
        for s in [status::RETURNED, status::PENDING, status::LOST] {
            assert_eq!(
                renewed(s, 0, None, now, &POLICY),
                Err(Refusal::NotRenewable)
            );
        }
        assert_eq!(
            (renewals_left(0, &POLICY), renewals_left(3, &POLICY)),
            (2, 0)
        );
    }

    #[test]
    fn members_have_at_most_the_configured_loans() {
        assert!(may_open(0, &POLICY).is_ok());
        assert!(may_open(1, &POLICY).is_ok());
        assert_eq!(may_open(2, &POLICY), Err(Refusal::TooManyActive(2)));
    }

    #[test]
    fn loans_fall_due_after_the_loan_period() {
        let now = Utc::now();
        assert_eq!(due_at(now, &POLICY), now + Duration::days(14));
        assert!(overdue(
            status::ACTIVE,
            Some(now - Duration::seconds(1)),
            now
        ));
        assert!(!overdue(
            status::ACTIVE,
            Some(now + Duration::seconds(1)),
            now
        ));
        assert!(!overdue(
            status::RETURNED,
            Some(now - Duration::days(1)),
            now
        ));
    }

    #[test]
    fn only_active_rentals_are_returned_and_twice_is_fine() {
        assert_eq!(may_return(status::ACTIVE), Ok(true));
        assert_eq!(may_return(status::RETURNED), Ok(false));
        assert_eq!(may_return(status::PENDING), Err(Refusal::NotActive));
        assert_eq!(may_return(status::REJECTED), Err(Refusal::NotActive));
    }
}
