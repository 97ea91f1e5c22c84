//! Logs, traces and metrics set-up.

use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where traces go, when they go anywhere.
#[derive(Debug, Clone)]
pub struct Tracing {
    /// OTLP/HTTP collector base URL (`/v1/traces` is added).
    pub otlp_endpoint: String,
    /// `service.name` of this process's spans.
    pub service: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up trace export: {0}")]
pub struct TracingError(String);

/// Exports this process's spans until dropped, then sends what is left.
pub struct TraceExport(SdkTracerProvider);

impl Drop for TraceExport {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("trace export did not finish: {e}");
        }
    }
}

/// Structured logs to stderr; `RUST_LOG` filters (default `info`); JSON lines
/// when `json` is set, for log shippers. With `tracing`, spans also go to an
/// OTLP collector; call before the async runtime starts (the exporter's
/// HTTP client blocks).
pub fn init(json: bool, tracing: Option<&Tracing>) -> Result<Option<TraceExport>, TracingError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = tracing.map(provider).transpose()?;
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("switchyard")));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    if json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    Ok(provider.map(TraceExport))
}

fn provider(t: &Tracing) -> Result<SdkTracerProvider, TracingError> {
    let endpoint = format!("{}/v1/traces", t.otlp_endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TracingError(e.to_string()))?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(t.service.clone())
                .build(),
        )
        .build())
}

#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct MetricsError(String);

/// Installs the process-wide Prometheus recorder; `/metrics` renders the handle.
/// Histograms get buckets from 1 ms to 2 min, which covers queue waits,
/// engine times and request latencies alike.
pub fn init_metrics() -> Result<PrometheusHandle, MetricsError> {
    const BUCKETS: [f64; 14] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
    ];
    PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .map_err(|e| MetricsError(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError(e.to_string()))
}
