//! Structured logs and the Prometheus endpoint, once per process.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// JSON (or plain text) logs to stdout, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn,h2=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "text" {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the metrics recorder; with an address, the exporter also serves
/// `/metrics` there. Later calls in the same process reuse the first recorder.
pub fn init_metrics(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    if PROMETHEUS.get().is_some() {
        return Ok(());
    }
    let mut builder = PrometheusBuilder::new().set_buckets_for_metric(
        Matcher::Suffix("_seconds".to_owned()),
        &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
    )?;
    if let Some(addr) = listen {
        builder = builder.with_http_listener(addr);
    }
    let (recorder, exporter) = builder.build()?;
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() || PROMETHEUS.set(handle).is_err() {
        return Ok(());
    }
    if listen.is_some() {
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
