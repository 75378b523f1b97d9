//! Structured logs and the Prometheus endpoint, once per process.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// JSON (or plain text) logs to stdout, filtered by `RUST_LOG` (default
/// `info`), and spans carried as OpenTelemetry traces: exported over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, silently kept in-process otherwise
/// (they still carry the `traceparent` from call to call). The spans' service
/// is `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`),
/// else the program's name (`book-svc`, `edge`, `rentalbook`): never
/// `unknown_service`.
pub fn init_logging(format: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn,h2=warn"));
    let traces = tracing_opentelemetry::layer().with_tracer(tracer());
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let _ = if format == "text" {
        registry.with(tracing_subscriber::fmt::layer()).try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init()
    };
}

/// The tracer behind the spans: with an OTLP exporter only when configured.
fn tracer() -> opentelemetry_sdk::trace::SdkTracer {
    use opentelemetry::trace::TracerProvider;

    let mut provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_resource(resource(program_name().as_deref()));
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    if !endpoint.is_empty() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => provider = provider.with_batch_exporter(exporter),
            Err(e) => eprintln!("OTLP trace export is off: {e}"),
        }
    }
    let provider = provider.build();
    let tracer = provider.tracer("rentalbook");
    opentelemetry::global::set_tracer_provider(provider);
    tracer
}

/// The resource attribute that names the service.
const SERVICE_NAME: &str = "service.name";

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`),
/// named after `program` when the environment names no service.
fn resource(program: Option<&str>) -> opentelemetry_sdk::Resource {
    let detected = opentelemetry_sdk::Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str(SERVICE_NAME))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        return detected;
    }
    opentelemetry_sdk::Resource::builder()
        .with_service_name(program.unwrap_or("rentalbook").to_owned())
        .build()
}

/// The running program's file name without its extension.
fn program_name() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let stem = exe.file_stem()?.to_str()?;
    (!stem.is_empty()).then(|| stem.to_owned())
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the metrics recorder; with an address, the exporter also serves
/// `/metrics` there. Later calls in the same process reuse the first recorder.
pub fn init_metrics(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    if PROMETHEUS.get().is_some() {
        return Ok(());
    }
    let builder = PrometheusBuilder::new().set_buckets_for_metric(
        Matcher::Suffix("_seconds".to_owned()),
        &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
    )?;
    // Without an address, only the recorder: the exporter's `build` would
    // bind its default listener (0.0.0.0:9000) even when nothing serves it.
    let (recorder, exporter) = match listen {
        Some(addr) => {
            let (recorder, exporter) = builder.with_http_listener(addr).build()?;
            (recorder, Some(exporter))
        }
        None => (builder.build_recorder(), None),
    };
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() || PROMETHEUS.set(handle).is_err() {
        return Ok(());
    }
    if let Some(exporter) = exporter {
        tokio::spawn(async move {
            if let Err(e) = exporter.await {
                tracing::error!(error = ?e, "the metrics endpoint stopped");
            }
        });
    }
    Ok(())
}

/// The rendered metrics of this process, for an HTTP handler of one's own.
pub fn render_metrics() -> String {
    PROMETHEUS.get().map(|h| h.render()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_without_an_address_bind_no_port() {
        // The exporter's default port, taken (by this test, or by whatever
        // else on the machine already holds it).
        let _taken = std::net::TcpListener::bind(("0.0.0.0", 9000));
        init_metrics(None).expect("a recorder without a listener");
        metrics::counter!("test_total").increment(1);
        assert!(render_metrics().contains("test_total"));
    }

    fn service_name(resource: &opentelemetry_sdk::Resource) -> String {
        resource
            .get(&opentelemetry::Key::from_static_str(SERVICE_NAME))
            .expect("a service name")
            .as_str()
            .into_owned()
    }

    #[test]
    fn spans_carry_a_service_name() {
        // The program's name unless the environment gives one (the
        // manifests set OTEL_SERVICE_NAME); `unknown_service` never.
        let from_environment = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|n| !n.is_empty())
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name"));
        if !from_environment {
            assert_eq!(service_name(&resource(Some("book-svc"))), "book-svc");
            assert_eq!(service_name(&resource(None)), "rentalbook");
        }
        let program = program_name().expect("the test binary has a name");
        for given in [Some("book-svc"), Some(program.as_str()), None] {
            assert!(!service_name(&resource(given)).starts_with("unknown_service"));
        }
    }
}
