//! ReservationService over gRPC: parse, check the caller, hand to the desk.

use rentalbook_plumbing::auth::{Caller, Role};
use rentalbook_plumbing::error::Refusal;
use rentalbook_plumbing::idempotency::IdempotencyKey;
use rentalbook_plumbing::ids::{self, Id, MemberId};
use rentalbook_proto::reserve::v1::{
    CancelReservationRequest, CheckInItemRequest, CheckInItemResponse, CheckOutItemRequest,
    FulfillReservationRequest, FulfillReservationResponse, GetItemRequest, GetReservationRequest,
    Item, ItemRequest, ListItemsRequest, ListItemsResponse, ListReservationsRequest,
    ListReservationsResponse, MayRenewRequest, MayRenewResponse, RecordReturnRequest,
    RecordReturnResponse, Reservation, ReserveRequest,
    reservation_service_server::ReservationService,
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

    async fn get_item(&self, request: Request<GetItemRequest>) -> Result<Response<Item>, Status> {
        let caller = Caller::of(&request)?;
        if caller.role != Role::Service {
            caller.require_librarian("look up copies")?;
        }
        let barcode = ids::barcode(&request.get_ref().barcode)?;
        Ok(Response::new(self.desk.get_item(&barcode).await?))
    }

    async fn check_out_item(
        &self,
        request: Request<CheckOutItemRequest>,
    ) -> Result<Response<FulfillReservationResponse>, Status> {
        Caller::of(&request)?.require_service()?;
        let req = request.into_inner();
        let member = member_field(&req.member_id)?;
        let barcode = ids::barcode(&req.barcode)?;
        let rental_id = Id::parse_field("rental_id", &req.rental_id)?;
        let reservation = self
            .desk
            .check_out_item(&member, &barcode, rental_id)
            .await?;
        Ok(Response::new(FulfillReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn may_renew(
        &self,
        request: Request<MayRenewRequest>,
    ) -> Result<Response<MayRenewResponse>, Status> {
        Caller::of(&request)?.require_service()?;
        let book_id = Id::parse_field("book_id", &request.get_ref().book_id)?;
        self.desk.may_renew(&book_id.to_string()).await?;
        Ok(Response::new(MayRenewResponse {}))
    }

    async fn check_in_item(
        &self,
        request: Request<CheckInItemRequest>,
    ) -> Result<Response<CheckInItemResponse>, Status> {
        Caller::of(&request)?.require_service()?;
        let barcode = ids::barcode(&request.get_ref().barcode)?;
        Ok(Response::new(self.desk.check_in_item(&barcode).await?))
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
        let barcode = ids::barcode(&req.barcode)?;
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
