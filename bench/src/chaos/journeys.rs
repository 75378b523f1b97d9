//! The campaign's workload: seeded members going through whole journeys
//! (reserve, wait for READY, rent, return, or cancel on the way) while the
//! faults come and go. A third of the pick-ups and returns happen at the
//! circulation desk instead (a librarian checks the held copy out and in),
//! some loans are renewed, and some members walk in and borrow a free copy
//! at the desk without a reservation. Every call and its outcome goes into the history.
//! A call that fails in a way that leaves its effect unknown is retried a
//! few times with the same client request id; when it stays unknown the
//! member looks at its open reservations and loans and settles them before
//! going on.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rentalbook_plumbing::auth::Role;
use rentalbook_proto::rental::v1::rental_service_client::RentalServiceClient;
use rentalbook_proto::rental::v1::{
    CheckInAction, CheckInRequest, CheckInResponse, CheckOutRequest, ListRentalsRequest,
    RenewRentalRequest, RentRequest, Rental, RentalStatus, ReturnConfirmation, ReturnRentalRequest,
};
use rentalbook_proto::reserve::v1::reservation_service_client::ReservationServiceClient;
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, GetReservationRequest, ItemState, ListItemsRequest,
    ListReservationsRequest, Reservation, ReservationStatus, ReserveRequest,
};
use tonic::transport::Channel;

use super::history::{Call, History, Verdict, outcome_name, verdict};
use crate::client::channel;
use crate::workload::{Rng, token};

/// The deadline of every call: past it the call is indeterminate.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries of a call whose effect stayed unknown, with the same request id.
const TRIES: usize = 3;

/// What the members share.
pub struct Members {
    pub reserve: SocketAddr,
    pub rental: SocketAddr,
    pub secret: String,
    pub books: Vec<String>,
    pub history: Arc<History>,
    pub stop: Arc<AtomicBool>,
}

fn request<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = crate::client::with_token(token, msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

fn status_name<E: TryFrom<i32> + std::fmt::Debug>(n: i32) -> String {
    E::try_from(n)
        .map(|s| {
            let name = format!("{s:?}");
            name.to_uppercase()
        })
        .unwrap_or_default()
}

/// One member and its connections.
struct Member {
    id: String,
    token: String,
    /// The librarian at the desk who serves this member.
    librarian: String,
    desk: ReservationServiceClient<Channel>,
    loans: RentalServiceClient<Channel>,
    shared: Arc<Members>,
    rng: Rng,
}

type Answer<T> = Result<T, tonic::Status>;

impl Member {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    fn record<T>(&self, started: Instant, mut call: Call, answer: &Answer<T>) {
        call.member = self.id.clone();
        call.outcome = outcome_name(answer.as_ref().err().map(|s| s.code()));
        self.shared.history.record(started, call);
    }

    /// A write under one client request id, sent again (at most [`TRIES`]
    /// times) while its effect stays unknown. `call` names it; `sent`
    /// sends it with the request id; `answered` gives the id and status the
    /// answer names, for the history.
    async fn write<T, Fut>(
        &mut self,
        call: Call,
        mut sent: impl FnMut(String) -> Fut,
        answered: impl Fn(&T) -> (String, String),
    ) -> (Verdict, Option<T>)
    where
        Fut: Future<Output = Answer<T>>,
    {
        let request_id = uuid::Uuid::now_v7().to_string();
        let mut last = Verdict::Indeterminate;
        for _ in 0..TRIES {
            let started = Instant::now();
            let answer = sent(request_id.clone()).await;
            let (result_id, status) = answer.as_ref().map(&answered).unwrap_or_default();
            self.record(
                started,
                Call {
                    result_id,
                    status,
                    request_id: request_id.clone(),
                    ..call.clone()
                },
                &answer,
            );
            last = verdict(answer.as_ref().err().map(|s| s.code()));
            match (last, answer) {
                (Verdict::Ok, Ok(done)) => return (last, Some(done)),
                (Verdict::Indeterminate, _) => self.pause_after_failure().await,
                _ => return (last, None),
            }
        }
        (last, None)
    }

    async fn reserve(&mut self, book_id: &str) -> (Verdict, Option<Reservation>) {
        let (desk, token) = (self.desk.clone(), self.token.clone());
        let call = Call {
            op: "Reserve",
            book_id: book_id.to_owned(),
            ..Default::default()
        };
        let sent = |request_id| {
            let (mut desk, token) = (desk.clone(), token.clone());
            let book_id = book_id.to_owned();
            async move {
                let msg = ReserveRequest {
                    book_id,
                    request_id,
                };
                desk.reserve(request(&token, msg))
                    .await
                    .map(|r| r.into_inner())
            }
        };
        self.write(call, sent, |r: &Reservation| {
            (
                r.reservation_id.clone(),
                status_name::<ReservationStatus>(r.status),
            )
        })
        .await
    }

    async fn cancel(&mut self, book_id: &str, reservation_id: &str) -> Verdict {
        let (desk, token) = (self.desk.clone(), self.token.clone());
        let call = Call {
            op: "CancelReservation",
            book_id: book_id.to_owned(),
            target_id: reservation_id.to_owned(),
            ..Default::default()
        };
        let sent = |request_id| {
            let (mut desk, token) = (desk.clone(), token.clone());
            let reservation_id = reservation_id.to_owned();
            async move {
                let msg = CancelReservationRequest {
                    reservation_id,
                    request_id,
                };
                desk.cancel_reservation(request(&token, msg))
                    .await
                    .map(|r| r.into_inner())
            }
        };
        self.write(call, sent, |r: &Reservation| {
            (String::new(), status_name::<ReservationStatus>(r.status))
        })
        .await
        .0
    }

    async fn rent(&mut self, book_id: &str) -> (Verdict, Option<Rental>) {
        let (loans, token) = (self.loans.clone(), self.token.clone());
        let call = Call {
            op: "Rent",
            book_id: book_id.to_owned(),
            ..Default::default()
        };
        let sent = |request_id| {
            let (mut loans, token) = (loans.clone(), token.clone());
            let book_id = book_id.to_owned();
            async move {
                let msg = RentRequest {
                    book_id,
                    request_id,
                };
                loans
                    .rent(request(&token, msg))
                    .await
                    .map(|r| r.into_inner())
            }
        };
        self.write(call, sent, |l: &Rental| {
            (l.rental_id.clone(), status_name::<RentalStatus>(l.status))
        })
        .await
    }

    async fn give_back(&mut self, book_id: &str, rental_id: &str) -> Verdict {
        let (loans, token) = (self.loans.clone(), self.token.clone());
        let call = Call {
            op: "ReturnRental",
            book_id: book_id.to_owned(),
            target_id: rental_id.to_owned(),
            ..Default::default()
        };
        let sent = |request_id| {
            let (mut loans, token) = (loans.clone(), token.clone());
            let rental_id = rental_id.to_owned();
            async move {
                let msg = ReturnRentalRequest {
                    rental_id,
                    request_id,
                };
                loans
                    .return_rental(request(&token, msg))
                    .await
                    .map(|r| r.into_inner())
            }
        };
        // With the return's confirmation: PENDING when the desk was not
        // reached and the return fell back to the event (R8).
        self.write(call, sent, |l: &Rental| {
            let status = format!(
                "{} {}",
                status_name::<RentalStatus>(l.status),
                status_name::<ReturnConfirmation>(l.return_confirmation)
            );
            (String::new(), status)
        })
        .await
        .0
    }

    /// R10 at the desk: the librarian lends the scanned copy to this member.
    async fn check_out(&mut self, book_id: &str, barcode: &str) -> (Verdict, Option<Rental>) {
        let (loans, token) = (self.loans.clone(), self.librarian.clone());
        let call = Call {
            op: "CheckOut",
            book_id: book_id.to_owned(),
            target_id: barcode.to_owned(),
            ..Default::default()
        };
        let member = self.id.clone();
        let sent = |request_id| {
            let (mut loans, token) = (loans.clone(), token.clone());
            let (member_id, barcode) = (member.clone(), barcode.to_owned());
            async move {
                let msg = CheckOutRequest {
                    member_id,
                    barcode,
                    request_id,
                };
                loans
                    .check_out(request(&token, msg))
                    .await
                    .map(|r| r.into_inner())
            }
        };
        self.write(call, sent, |l: &Rental| {
            (l.rental_id.clone(), status_name::<RentalStatus>(l.status))
        })
        .await
    }

    /// R11 at the desk: the copy of `rental_id` is checked in.
    async fn check_in(&mut self, book_id: &str, barcode: &str, rental_id: &str) -> Verdict {
        let (loans, token) = (self.loans.clone(), self.librarian.clone());
        let call = Call {
            op: "CheckIn",
            book_id: book_id.to_owned(),
            target_id: rental_id.to_owned(),
            ..Default::default()
        };
        let sent = |request_id| {
            let (mut loans, token) = (loans.clone(), token.clone());
            let barcode = barcode.to_owned();
            async move {
                let msg = CheckInRequest {
                    barcode,
                    request_id,
                };
                loans
                    .check_in(request(&token, msg))
                    .await
                    .map(|r| r.into_inner())
            }
        };
        self.write(call, sent, |a: &CheckInResponse| {
            let returned = a.rental.as_ref().map(|r| r.rental_id.clone());
            (
                returned.unwrap_or_default(),
                status_name::<CheckInAction>(a.action),
            )
        })
        .await
        .0
    }

    /// R12: the member renews the loan.
    async fn renew(&mut self, book_id: &str, rental_id: &str) -> Verdict {
        let (loans, token) = (self.loans.clone(), self.token.clone());
        let call = Call {
            op: "RenewRental",
            book_id: book_id.to_owned(),
            target_id: rental_id.to_owned(),
            ..Default::default()
        };
        let sent = |request_id| {
            let (mut loans, token) = (loans.clone(), token.clone());
            let rental_id = rental_id.to_owned();
            async move {
                let msg = RenewRentalRequest {
                    rental_id,
                    request_id,
                };
                loans
                    .renew_rental(request(&token, msg))
                    .await
                    .map(|r| r.into_inner())
            }
        };
        self.write(call, sent, |l: &Rental| {
            (String::new(), format!("renewals={}", l.renewals))
        })
        .await
        .0
    }

    /// A free copy of the book on the open shelf, as the desk lists it.
    async fn free_copy(&mut self, book_id: &str) -> Option<String> {
        let started = Instant::now();
        let answer = self
            .desk
            .list_items(request(
                &self.librarian,
                ListItemsRequest {
                    book_id: book_id.to_owned(),
                },
            ))
            .await
            .map(|r| r.into_inner());
        self.record(
            started,
            Call {
                op: "ListItems",
                book_id: book_id.to_owned(),
                ..Default::default()
            },
            &answer,
        );
        let free: Vec<String> = answer
            .ok()?
            .items
            .into_iter()
            .filter(|i| i.state == ItemState::InService as i32 && i.reservation_id.is_empty())
            .map(|i| i.barcode)
            .collect();
        (!free.is_empty()).then(|| free[self.rng.below(free.len())].clone())
    }

    /// A walk-in: borrows a free copy at the desk and brings it back there.
    async fn walk_in(&mut self, book: &str) -> bool {
        let Some(barcode) = self.free_copy(book).await else {
            return true;
        };
        let rental = match self.check_out(book, &barcode).await {
            (Verdict::Ok, Some(l)) => l,
            (Verdict::Indeterminate, _) => return false,
            // Taken by someone else meanwhile.
            _ => return true,
        };
        tokio::time::sleep(Duration::from_millis(self.rng.below(300) as u64)).await;
        self.check_in(book, &barcode, &rental.rental_id).await != Verdict::Indeterminate
    }

    async fn status_of(&mut self, book_id: &str, reservation_id: &str) -> Option<i32> {
        self.read_reservation(book_id, reservation_id)
            .await
            .map(|r| r.status)
    }

    async fn read_reservation(
        &mut self,
        book_id: &str,
        reservation_id: &str,
    ) -> Option<Reservation> {
        let started = Instant::now();
        let answer = self
            .desk
            .get_reservation(request(
                &self.token,
                GetReservationRequest {
                    reservation_id: reservation_id.to_owned(),
                },
            ))
            .await
            .map(|r| r.into_inner());
        let status = answer
            .as_ref()
            .map(|r| status_name::<ReservationStatus>(r.status))
            .unwrap_or_default();
        self.record(
            started,
            Call {
                op: "GetReservation",
                book_id: book_id.to_owned(),
                target_id: reservation_id.to_owned(),
                status,
                ..Default::default()
            },
            &answer,
        );
        answer.ok()
    }

    async fn pause_after_failure(&mut self) {
        let ms = 100 + self.rng.below(300) as u64;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// After a call whose effect stayed unknown: returns every loan and
    /// gives up or picks up every open reservation. True when all of it
    /// was answered.
    async fn settle(&mut self) -> bool {
        let started = Instant::now();
        let answer = self
            .loans
            .list_rentals(request(
                &self.token,
                ListRentalsRequest {
                    active_only: true,
                    page_size: 100,
                    ..Default::default()
                },
            ))
            .await
            .map(|r| r.into_inner());
        self.record(
            started,
            Call {
                op: "ListRentals",
                ..Default::default()
            },
            &answer,
        );
        let Ok(loans) = answer else { return false };
        let mut settled = true;
        for l in loans.rentals {
            if l.status == RentalStatus::Active as i32 {
                settled &= self.give_back(&l.book_id, &l.rental_id).await != Verdict::Indeterminate;
            }
        }
        let started = Instant::now();
        let answer = self
            .desk
            .list_reservations(request(
                &self.token,
                ListReservationsRequest {
                    open_only: true,
                    page_size: 100,
                    ..Default::default()
                },
            ))
            .await
            .map(|r| r.into_inner());
        self.record(
            started,
            Call {
                op: "ListReservations",
                ..Default::default()
            },
            &answer,
        );
        let Ok(open) = answer else { return false };
        for r in open.reservations {
            let pick_up = r.status == ReservationStatus::Ready as i32 && self.rng.below(2) == 0;
            if pick_up {
                match self.rent(&r.book_id).await {
                    (Verdict::Ok, Some(l)) => {
                        settled &= self.give_back(&r.book_id, &l.rental_id).await
                            != Verdict::Indeterminate;
                    }
                    (Verdict::Indeterminate, _) => settled = false,
                    _ => {}
                }
            } else {
                settled &=
                    self.cancel(&r.book_id, &r.reservation_id).await != Verdict::Indeterminate;
            }
        }
        settled
    }

    /// Waits for READY: Some(true) when it came, Some(false) when the
    /// reservation ended otherwise, None when the member stopped waiting.
    async fn wait_ready(&mut self, book_id: &str, reservation_id: &str) -> Option<bool> {
        let give_up = Instant::now() + Duration::from_millis(2000 + self.rng.below(4000) as u64);
        while Instant::now() < give_up && !self.stopped() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match self
                .status_of(book_id, reservation_id)
                .await
                .and_then(|s| ReservationStatus::try_from(s).ok())
            {
                Some(ReservationStatus::Ready) => return Some(true),
                Some(ReservationStatus::Waiting) | None => {}
                Some(_) => return Some(false),
            }
        }
        None
    }

    /// One journey; false when something stayed unknown.
    async fn journey(&mut self) -> bool {
        let book = self.shared.books[self.rng.below(self.shared.books.len())].clone();
        if self.rng.below(10) == 0 {
            return self.walk_in(&book).await;
        }
        let at_desk = self.rng.below(3) == 0;
        let reservation = match self.reserve(&book).await {
            (Verdict::Ok, Some(r)) => r,
            (Verdict::Indeterminate, _) => return false,
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return true;
            }
        };
        let rid = reservation.reservation_id;
        // Some members change their mind at once.
        if self.rng.below(10) == 0 {
            return self.cancel(&book, &rid).await != Verdict::Indeterminate;
        }
        if reservation.status != ReservationStatus::Ready as i32 {
            match self.wait_ready(&book, &rid).await {
                Some(true) => {}
                Some(false) => return true,
                None => return self.cancel(&book, &rid).await != Verdict::Indeterminate,
            }
        }
        // At the desk the librarian scans the copy held for the member.
        let held = if at_desk {
            self.read_reservation(&book, &rid)
                .await
                .map(|r| r.barcode)
                .filter(|b| !b.is_empty())
        } else {
            None
        };
        let picked_up = match &held {
            Some(barcode) => self.check_out(&book, barcode).await,
            None => self.rent(&book).await,
        };
        let rental = match picked_up {
            (Verdict::Ok, Some(l)) => l,
            (Verdict::Indeterminate, _) => return false,
            // Expired or cancelled meanwhile.
            _ => return true,
        };
        tokio::time::sleep(Duration::from_millis(self.rng.below(300) as u64)).await;
        if self.rng.below(4) == 0
            && self.renew(&book, &rental.rental_id).await == Verdict::Indeterminate
        {
            return false;
        }
        if at_desk && !rental.barcode.is_empty() {
            return self
                .check_in(&book, &rental.barcode, &rental.rental_id)
                .await
                != Verdict::Indeterminate;
        }
        self.give_back(&book, &rental.rental_id).await != Verdict::Indeterminate
    }
}

/// A member until the stop flag is raised.
pub async fn member(shared: Arc<Members>, index: usize, seed: u64) {
    let id = format!("chaos-m{index}");
    let mut me = Member {
        token: token(&shared.secret, &id, Role::Member),
        librarian: token(
            &shared.secret,
            &format!("chaos-desk{index}"),
            Role::Librarian,
        ),
        id,
        desk: ReservationServiceClient::new(channel(shared.reserve)),
        loans: RentalServiceClient::new(channel(shared.rental)),
        rng: Rng::new(seed.wrapping_add(index as u64).wrapping_mul(0x9E37_79B9)),
        shared,
    };
    let mut unsettled = false;
    while !me.stopped() {
        if unsettled {
            unsettled = !me.settle().await;
            if unsettled {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        unsettled = !me.journey().await;
    }
}
