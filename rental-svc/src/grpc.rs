//! RentalService over gRPC: parse, check the caller, hand to the saga.

use rentalbook_plumbing::auth::Caller;
use rentalbook_plumbing::error::Refusal;
use rentalbook_plumbing::idempotency::IdempotencyKey;
use rentalbook_plumbing::ids::{self, Id, MemberId};
use rentalbook_plumbing::time::grpc_timeout;
use rentalbook_proto::rental::v1::{
    CheckInRequest, CheckInResponse, CheckOutRequest, GetRentalRequest, ListRentalsRequest,
    ListRentalsResponse, RenewRentalRequest, RentRequest, Rental, ReturnRentalRequest,
    rental_service_server::RentalService,
};
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::lending::Lending;

pub struct Rentals {
    pub lending: Lending,
}

/// When our own call to the desk must be over for the caller's deadline,
/// with a margin to write the answer. An instant, so that time spent before
/// the call (the database) comes out of the call's budget.
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    grpc_timeout(request.metadata())
        .map(|d| Instant::now() + d.saturating_sub(Duration::from_millis(50)))
}

#[tonic::async_trait]
impl RentalService for Rentals {
    async fn rent(&self, request: Request<RentRequest>) -> Result<Response<Rental>, Status> {
        let caller = Caller::of(&request)?;
        let deadline = deadline(&request);
        let req = request.into_inner();
        let book_id = Id::parse_field("book_id", &req.book_id)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "Rent",
            ids::request_id(&req.request_id)?,
            &req,
        );
        Ok(Response::new(
            self.lending.rent(&caller, book_id, key, deadline).await?,
        ))
    }

    async fn return_rental(
        &self,
        request: Request<ReturnRentalRequest>,
    ) -> Result<Response<Rental>, Status> {
        let caller = Caller::of(&request)?;
        let deadline = deadline(&request);
        let req = request.into_inner();
        let rental_id = Id::parse_field("rental_id", &req.rental_id)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "ReturnRental",
            ids::request_id(&req.request_id)?,
            &req,
        );
        Ok(Response::new(
            self.lending
                .return_rental(&caller, rental_id, key, deadline)
                .await?,
        ))
    }

    async fn get_rental(
        &self,
        request: Request<GetRentalRequest>,
    ) -> Result<Response<Rental>, Status> {
        let caller = Caller::of(&request)?;
        let rental_id = Id::parse_field("rental_id", &request.get_ref().rental_id)?;
        Ok(Response::new(self.lending.get(&caller, rental_id).await?))
    }

    async fn list_rentals(
        &self,
        request: Request<ListRentalsRequest>,
    ) -> Result<Response<ListRentalsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let member = caller.subject(&req.member_id)?;
        let page_size = ids::page_size(req.page_size)?;
        let after = ids::page_token(&req.page_token)?;
        let (rentals, next_page_token) = self
            .lending
            .list(&member, req.active_only, page_size, after)
            .await?;
        Ok(Response::new(ListRentalsResponse {
            rentals,
            next_page_token,
        }))
    }

    async fn renew_rental(
        &self,
        request: Request<RenewRentalRequest>,
    ) -> Result<Response<Rental>, Status> {
        let caller = Caller::of(&request)?;
        let deadline = deadline(&request);
        let req = request.into_inner();
        let rental_id = Id::parse_field("rental_id", &req.rental_id)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "RenewRental",
            ids::request_id(&req.request_id)?,
            &req,
        );
        Ok(Response::new(
            self.lending
                .renew(&caller, rental_id, key, deadline)
                .await?,
        ))
    }

    async fn check_out(
        &self,
        request: Request<CheckOutRequest>,
    ) -> Result<Response<Rental>, Status> {
        let caller = Caller::of(&request)?;
        let deadline = deadline(&request);
        let req = request.into_inner();
        let member = MemberId::parse(req.member_id.trim())
            .map_err(|e| Refusal::invalid_field("member_id", format!("member_id: {e}")))?;
        let barcode = ids::barcode(&req.barcode)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "CheckOut",
            ids::request_id(&req.request_id)?,
            &req,
        );
        Ok(Response::new(
            self.lending
                .check_out(&caller, &member, &barcode, key, deadline)
                .await?,
        ))
    }

    async fn check_in(
        &self,
        request: Request<CheckInRequest>,
    ) -> Result<Response<CheckInResponse>, Status> {
        let caller = Caller::of(&request)?;
        let deadline = deadline(&request);
        let req = request.into_inner();
        let barcode = ids::barcode(&req.barcode)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "CheckIn",
            ids::request_id(&req.request_id)?,
            &req,
        );
        Ok(Response::new(
            self.lending
                .check_in(&caller, &barcode, key, deadline)
                .await?,
        ))
    }
}
