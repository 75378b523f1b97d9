//! A concurrent lending workload for fault tests: members reserve, pick up
//! what is READY, return it, and give up some waiting; every acknowledged
//! change is recorded so a test can prove none was lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rentalbook_proto::rental::v1::rental_service_client::RentalServiceClient;
use rentalbook_proto::rental::v1::{
    GetRentalRequest, RentRequest, RentalStatus, ReturnRentalRequest,
};
use rentalbook_proto::reserve::v1::reservation_service_client::ReservationServiceClient;
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, GetReservationRequest, ListReservationsRequest, ReservationStatus,
    ReserveRequest,
};
use tokio::task::JoinHandle;
use tonic::{Code, Status};

use super::{channel, eventually, member, req};

/// What the workload saw.
#[derive(Default, Debug)]
pub struct Acked {
    pub requests: u64,
    pub reservations: Vec<(String, String)>,
    pub rentals: Vec<(String, String)>,
    pub returns: Vec<(String, String)>,
    /// Failed calls by method and gRPC code, such as `Rent Unavailable`.
    pub failures: BTreeMap<String, u64>,
}

impl Acked {
    fn failed(&mut self, method: &str, s: &Status) {
        *self
            .failures
            .entry(format!("{method} {:?}", s.code()))
            .or_default() += 1;
    }

    /// Failures that were not business answers.
    pub fn infrastructure_failures(&self) -> u64 {
        self.failures
            .iter()
            .filter(|(key, _)| {
                !key.ends_with(" AlreadyExists")
                    && !key.ends_with(" FailedPrecondition")
                    && !key.ends_with(" NotFound")
            })
            .map(|(_, n)| n)
            .sum()
    }
}

pub struct Workload {
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    pub fn start(
        reserve: SocketAddr,
        rental: SocketAddr,
        members: &[String],
        books: &[String],
    ) -> Self {
        let acked = Arc::new(Mutex::new(Acked::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = members
            .iter()
            .map(|m| {
                tokio::spawn(member_loop(
                    reserve,
                    rental,
                    m.clone(),
                    books.to_vec(),
                    acked.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Self { acked, stop, tasks }
    }

    pub async fn stop(self) -> Acked {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.acked.lock().unwrap())
    }

    pub fn reservations_so_far(&self) -> usize {
        self.acked.lock().unwrap().reservations.len()
    }
}

async fn member_loop(
    reserve: SocketAddr,
    rental: SocketAddr,
    who: String,
    books: Vec<String>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    let token = member(&who);
    let mut desk = ReservationServiceClient::new(channel(reserve).await);
    let mut loans = RentalServiceClient::new(channel(rental).await);
    let record = |method: &str,
                  result: Result<String, Status>,
                  into: fn(&mut Acked) -> &mut Vec<(String, String)>| {
        let mut a = acked.lock().unwrap();
        a.requests += 1;
        match result {
            Ok(id) => {
                into(&mut a).push((who.clone(), id));
                true
            }
            Err(s) => {
                a.failed(method, &s);
                false
            }
        }
    };
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let book_id = books[(i + who.len()) % books.len()].clone();
        let placed = desk
            .reserve(req(
                &token,
                ReserveRequest {
                    book_id,
                    request_id: String::new(),
                },
            ))
            .await
            .map(|r| r.into_inner().reservation_id);
        if !record("Reserve", placed, |a| &mut a.reservations) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Settle the open reservations: pick up the READY ones, give up some waiting.
        let Ok(open) = desk
            .list_reservations(req(
                &token,
                ListReservationsRequest {
                    open_only: true,
                    ..Default::default()
                },
            ))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        for r in open.into_inner().reservations {
            if r.status() == ReservationStatus::Waiting {
                if i.is_multiple_of(3) {
                    let _ = desk
                        .cancel_reservation(req(
                            &token,
                            CancelReservationRequest {
                                reservation_id: r.reservation_id,
                                request_id: String::new(),
                            },
                        ))
                        .await;
                }
                continue;
            }
            let rented = loans
                .rent(req(
                    &token,
                    RentRequest {
                        book_id: r.book_id,
                        request_id: String::new(),
                    },
                ))
                .await
                .map(|l| l.into_inner().rental_id);
            let Ok(rental_id) = rented.clone() else {
                record("Rent", rented, |a| &mut a.rentals);
                continue;
            };
            record("Rent", rented, |a| &mut a.rentals);
            let returned = loans
                .return_rental(req(
                    &token,
                    ReturnRentalRequest {
                        rental_id,
                        request_id: String::new(),
                    },
                ))
                .await
                .map(|l| l.into_inner().rental_id);
            record("ReturnRental", returned, |a| &mut a.returns);
        }
    }
}

/// The acknowledged reservations, rentals and returns that cannot be read
/// back as acknowledged, in words: empty when nothing was lost.
pub async fn lost(acked: &Acked, reserve: SocketAddr, rental: SocketAddr) -> Vec<String> {
    let mut desk = ReservationServiceClient::new(channel(reserve).await);
    let mut loans = RentalServiceClient::new(channel(rental).await);
    let mut lost = Vec::new();
    for (who, id) in &acked.reservations {
        let found = desk
            .get_reservation(req(
                &member(who),
                GetReservationRequest {
                    reservation_id: id.clone(),
                },
            ))
            .await;
        if let Err(e) = found {
            lost.push(format!("reservation {id} of {who}: {e}"));
        }
    }
    let returned: std::collections::HashSet<&String> =
        acked.returns.iter().map(|(_, id)| id).collect();
    for (who, id) in &acked.rentals {
        let found = loans
            .get_rental(req(
                &member(who),
                GetRentalRequest {
                    rental_id: id.clone(),
                },
            ))
            .await
            .map(|l| l.into_inner().status());
        let expected: &[RentalStatus] = if returned.contains(id) {
            &[RentalStatus::Returned]
        } else {
            &[RentalStatus::Active, RentalStatus::Returned]
        };
        match found {
            Ok(status) if expected.contains(&status) => {}
            Ok(status) => lost.push(format!("rental {id} of {who} is {status:?}")),
            Err(e) => lost.push(format!("rental {id} of {who}: {e}")),
        }
    }
    lost
}

/// Every acknowledged reservation, rental and return is still there.
pub async fn assert_nothing_lost(acked: &Acked, reserve: SocketAddr, rental: SocketAddr) {
    let lost = lost(acked, reserve, rental).await;
    assert!(lost.is_empty(), "acknowledged changes lost: {lost:#?}");
}

/// Waits until the desk knows each book (its registration event arrived).
pub async fn wait_until_desk_knows(reserve: SocketAddr, books: &[String]) {
    let desk = ReservationServiceClient::new(channel(reserve).await);
    for b in books {
        eventually("the desk to know the book", || {
            let mut desk = desk.clone();
            let b = b.clone();
            async move {
                let probe = member("probe");
                match desk
                    .reserve(req(
                        &probe,
                        ReserveRequest {
                            book_id: b,
                            request_id: String::new(),
                        },
                    ))
                    .await
                {
                    Ok(r) => {
                        desk.cancel_reservation(req(
                            &probe,
                            CancelReservationRequest {
                                reservation_id: r.into_inner().reservation_id,
                                request_id: String::new(),
                            },
                        ))
                        .await
                        .ok()?;
                        Some(())
                    }
                    Err(s) if s.code() == Code::NotFound => None,
                    Err(_) => None,
                }
            }
        })
        .await;
    }
}
