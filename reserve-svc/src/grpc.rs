//! ReservationService over gRPC: parse, check the caller, hand to the desk.

use rentalbook_plumbing::auth::Caller;
use rentalbook_plumbing::error::Refusal;
use rentalbook_plumbing::idempotency::IdempotencyKey;
use rentalbook_plumbing::ids::{self, Id, MemberId};
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, FulfillReservationRequest, FulfillReservationResponse,
    GetReservationRequest, Item, ItemRequest, ListItemsRequest, ListItemsResponse,
    ListReservationsRequest, ListReservationsResponse, RecordReturnRequest, RecordReturnResponse,
    Reservation, ReserveRequest, reservation_service_server::ReservationService,
};
use tonic::{Request, Response, Status};

use crate::desk::Desk;
use crate::store::item_state;

pub struct Reservations {
    pub desk: Desk,
}

fn member_field(value: &str) -> Result<MemberId, Status> {
    MemberId::parse(value)
        .map_err(|e| Refusal::invalid_field("member_id", format!("member_id: {e}")).into())
}

#[tonic::async_trait]
impl ReservationService for Reservations {
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<Reservation>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let book_id = Id::parse_field("book_id", &req.book_id)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "Reserve",
            ids::request_id(&req.request_id)?,
            &req,
        );
        Ok(Response::new(
            self.desk.reserve(&caller, book_id, key).await?,
        ))
    }

    async fn cancel_reservation(
        &self,
        request: Request<CancelReservationRequest>,
    ) -> Result<Response<Reservation>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let reservation_id = Id::parse_field("reservation_id", &req.reservation_id)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            "CancelReservation",
            ids::request_id(&req.request_id)?,
            &req,
        );
        Ok(Response::new(
            self.desk.cancel(&caller, reservation_id, key).await?,
        ))
    }

    async fn get_reservation(
        &self,
        request: Request<GetReservationRequest>,
    ) -> Result<Response<Reservation>, Status> {
        let caller = Caller::of(&request)?;
        let reservation_id = Id::parse_field("reservation_id", &request.get_ref().reservation_id)?;
        Ok(Response::new(self.desk.get(&caller, reservation_id).await?))
    }

    async fn list_reservations(
        &self,
        request: Request<ListReservationsRequest>,
    ) -> Result<Response<ListReservationsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let member = caller.subject(&req.member_id)?;
        let page_size = ids::page_size(req.page_size)?;
        let after = ids::page_token(&req.page_token)?;
        let (reservations, next_page_token) = self
            .desk
            .list(&member, req.open_only, page_size, after)
            .await?;
        Ok(Response::new(ListReservationsResponse {
            reservations,
            next_page_token,
        }))
    }

    async fn fulfill_reservation(
        &self,
        request: Request<FulfillReservationRequest>,
    ) -> Result<Response<FulfillReservationResponse>, Status> {
        Caller::of(&request)?.require_service()?;
        let req = request.into_inner();
        let member = member_field(&req.member_id)?;
        let book_id = Id::parse_field("book_id", &req.book_id)?;
        let rental_id = Id::parse_field("rental_id", &req.rental_id)?;
        let reservation = self.desk.fulfill(&member, book_id, rental_id).await?;
        Ok(Response::new(FulfillReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn record_return(
        &self,
        request: Request<RecordReturnRequest>,
    ) -> Result<Response<RecordReturnResponse>, Status> {
        Caller::of(&request)?.require_service()?;
        let req = request.into_inner();
        let rental_id = Id::parse_field("rental_id", &req.rental_id)?;
        Ok(Response::new(self.desk.record_return(rental_id).await?))
    }

    async fn list_items(
        &self,
        request: Request<ListItemsRequest>,
    ) -> Result<Response<ListItemsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let book_id = Id::parse_field("book_id", &request.get_ref().book_id)?;
        Ok(Response::new(ListItemsResponse {
            items: self.desk.list_items(&caller, book_id).await?,
        }))
    }

    async fn withdraw_item(&self, request: Request<ItemRequest>) -> Result<Response<Item>, Status> {
        self.out_of_service(request, item_state::WITHDRAWN, "WithdrawItem")
            .await
    }

    async fn mark_item_lost(
        &self,
        request: Request<ItemRequest>,
    ) -> Result<Response<Item>, Status> {
        self.out_of_service(request, item_state::LOST, "MarkItemLost")
            .await
    }
}

impl Reservations {
    async fn out_of_service(
        &self,
        request: Request<ItemRequest>,
        target: &'static str,
        method: &str,
    ) -> Result<Response<Item>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let barcode = barcode_field(&req.barcode)?;
        let key = IdempotencyKey::new(
            caller.member.as_str(),
            method,
            ids::request_id(&req.request_id)?,
            &req,
        );
        Ok(Response::new(
            self.desk
                .take_out_of_service(&caller, &barcode, target, key)
                .await?,
        ))
    }
}

/// A scanned barcode: 1 to 32 printable ASCII characters, surrounding
/// spaces (a scanner's) dropped.
fn barcode_field(value: &str) -> Result<String, Status> {
    let b = value.trim();
    if (1..=32).contains(&b.len()) && b.chars().all(|c| c.is_ascii_graphic()) {
        Ok(b.to_owned())
    } else if b.is_empty() {
        Err(Refusal::invalid_field("barcode", "barcode is required").into())
    } else {
        Err(Refusal::invalid_field(
            "barcode",
            "barcode must be 1 to 32 printable ASCII characters without spaces",
        )
        .into())
    }
}
