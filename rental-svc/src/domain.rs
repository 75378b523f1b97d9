//! Loan rules (SPEC §3 R6–R8), free of transport and storage.

use chrono::{DateTime, Duration, Utc};

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub loan_period: Duration,
    pub max_active_rentals: u32,
}

/// Rental states as stored.
pub mod status {
    /// Opened; reserve-svc has not confirmed the reservation yet (the saga's pending step).
    pub const PENDING: &str = "PENDING";
    pub const ACTIVE: &str = "ACTIVE";
    pub const RETURNED: &str = "RETURNED";
    /// reserve-svc refused: there was no READY reservation.
    pub const REJECTED: &str = "REJECTED";
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

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        loan_period: Duration::days(14),
        max_active_rentals: 2,
    };

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
