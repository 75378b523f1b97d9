//! Structured logs and the Prometheus endpoint, once per process.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// JSON (or plain text) logs to stdout, filtered by `RUST_LOG` (default
/// `info`), and spans carried as OpenTelemetry traces: exported over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, silently kept in-process otherwise
/// (they still carry the `traceparent` from call to call).
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

    let mut provider = opentelemetry_sdk::trace::SdkTracerProvider::builder();
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
}
