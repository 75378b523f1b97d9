//! One trace across services: a `traceparent` sent with a call continues in
//! the service that handles it, in the calls it makes, and in the consumers
//! of the events it publishes.

mod support;

use std::time::Duration;

use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use rentalbook_proto::book::v1::RegisterBookRequest;
use rentalbook_proto::rental::v1::RentRequest;
use support::{Mesh, eventually, librarian, member, req};
use tracing_subscriber::layer::SubscriberExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn traced<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = req(token, msg);
    r.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    r
}

/// Whether a finished span of the trace has this name and attribute value.
fn seen(exporter: &InMemorySpanExporter, name: &str, key: &str, value: &str) -> bool {
    exporter
        .get_finished_spans()
        .unwrap_or_default()
        .iter()
        .any(|s| {
            s.span_context.trace_id().to_string() == TRACE
                && s.name == name
                && s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == key && kv.value.as_str().contains(value))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_continues_through_calls_and_into_event_consumers() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mesh = Mesh::start().await;
    let book = mesh
        .books()
        .await
        .register_book(traced(
            &librarian(),
            RegisterBookRequest {
                title: "Traced".into(),
                author: "A".into(),
                total_copies: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    eventually(
        "book-svc's span and reserve-svc's consumer span in the caller's trace",
        || {
            let exporter = exporter.clone();
            async move {
                (seen(&exporter, "grpc", "rpc", "RegisterBook")
                    && seen(&exporter, "event", "consumer", "reserve-svc-books"))
                .then_some(())
            }
        },
    )
    .await;

    mesh.reserve(&member("alice"), &book.book_id).await.unwrap();
    mesh.rentals()
        .await
        .rent(traced(
            &member("alice"),
            RentRequest {
                book_id: book.book_id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    eventually(
        "rental-svc's call to reserve-svc and the BookRented consumer in the trace",
        || {
            let exporter = exporter.clone();
            async move {
                (seen(&exporter, "grpc", "rpc", "FulfillReservation")
                    && seen(&exporter, "event", "subject", "rental.rented"))
                .then_some(())
            }
        },
    )
    .await;

    // A trace that starts at the edge (no traceparent from the caller) runs
    // through book-svc and into reserve-svc's consumer of the event.
    let (edge, stop_edge) = mesh.start_edge().await;
    let response = reqwest::Client::new()
        .post(format!("http://{edge}/v1/books"))
        .bearer_auth(librarian())
        .json(&serde_json::json!({"title": "Traced over REST", "author": "A", "totalCopies": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually("the edge's trace to reach reserve-svc's consumer", || {
        let exporter = exporter.clone();
        async move {
            let spans = exporter.get_finished_spans().unwrap_or_default();
            let edge_trace = spans
                .iter()
                .find(|s| {
                    s.name == "http"
                        && s.attributes
                            .iter()
                            .any(|kv| kv.key.as_str() == "path" && kv.value.as_str() == "/v1/books")
                })
                .map(|s| s.span_context.trace_id())?;
            let in_trace = |name: &str| {
                spans
                    .iter()
                    .any(|s| s.span_context.trace_id() == edge_trace && s.name == name)
            };
            let consumed = spans.iter().any(|s| {
                s.span_context.trace_id() == edge_trace
                    && s.name == "event"
                    && s.attributes.iter().any(|kv| {
                        kv.key.as_str() == "consumer" && kv.value.as_str() == "reserve-svc-books"
                    })
            });
            (in_trace("grpc") && consumed).then_some(())
        }
    })
    .await;
    stop_edge.cancel();
    tokio::time::sleep(Duration::from_millis(1)).await;
}
