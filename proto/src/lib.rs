//! The contracts of rentalbook, generated from the `.proto` files beside this
//! crate: one module per protobuf package, plus the encoded descriptor set that
//! server reflection and the REST edge read.

/// Every message, service and HTTP annotation of the contracts (and what they
/// import), as an encoded `google.protobuf.FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rentalbook_descriptor.bin"));

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod book {
    pub mod v1 {
        tonic::include_proto!("rentalbook.book.v1");
    }
}

pub mod reserve {
    pub mod v1 {
        tonic::include_proto!("rentalbook.reserve.v1");
    }
}

pub mod rental {
    pub mod v1 {
        tonic::include_proto!("rentalbook.rental.v1");
    }
}

pub mod notice {
    pub mod v1 {
        tonic::include_proto!("rentalbook.notice.v1");
    }
}

pub mod view {
    pub mod v1 {
        tonic::include_proto!("rentalbook.view.v1");
    }
}

pub mod api {
    pub mod v1 {
        tonic::include_proto!("rentalbook.api.v1");
    }
}

pub mod errors {
    pub mod v1 {
        tonic::include_proto!("rentalbook.errors.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("rentalbook.events.v1");

        impl Envelope {
            /// The subject of this event below the stream's prefix, such as
            /// `reservation.placed`; None for an envelope without a body.
            pub fn subject_suffix(&self) -> Option<&'static str> {
                self.body.as_ref().map(envelope::Body::subject_suffix)
            }
        }

        impl envelope::Body {
            pub fn subject_suffix(&self) -> &'static str {
                use envelope::Body;
                match self {
                    Body::BookRegistered(_) => "book.registered",
                    Body::CopiesAdded(_) => "book.copies_added",
                    Body::BookUpdated(_) => "book.updated",
                    Body::ItemsRegistered(_) => "book.items_registered",
                    Body::BooksMerged(_) => "book.merged",
                    Body::ReservationPlaced(_) => "reservation.placed",
                    Body::ReservationReady(_) => "reservation.ready",
                    Body::ReservationCancelled(_) => "reservation.cancelled",
                    Body::ReservationExpired(_) => "reservation.expired",
                    Body::ReservationFulfilled(_) => "reservation.fulfilled",
                    Body::ReturnRecorded(_) => "reservation.return_recorded",
                    Body::ReservationRequeued(_) => "reservation.requeued",
                    Body::ReservationRetrapped(_) => "reservation.retrapped",
                    Body::QueuesMerged(_) => "reservation.queues_merged",
                    Body::ItemWithdrawn(_) => "reservation.item_withdrawn",
                    Body::ItemLost(_) => "reservation.item_lost",
                    Body::ItemFound(_) => "reservation.item_found",
                    Body::BookRented(_) => "rental.rented",
                    Body::BookReturned(_) => "rental.returned",
                    Body::LoanRenewed(_) => "rental.renewed",
                    Body::RentalLost(_) => "rental.lost",
                    Body::NoticeSent(_) => "notice.sent",
                    Body::NoticesRead(_) => "notice.read",
                    Body::HistoryErased(_) => "member.history_erased",
                }
            }
        }
    }
}
