//! A job's trace context travels between processes in NATS headers (W3C
//! `traceparent`), so that one trace follows the job from intake through
//! the dispatcher to the agent and its engine. With traces off nothing is
//! added and nothing read.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Adds the current span's context to `headers`.
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Inject(headers)));
}

/// Makes `span` a child of the context `headers` carry, if any.
pub fn adopt(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if let Some(headers) = headers {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(headers)));
        let _ = span.set_parent(cx);
    }
}

/// The current span's context as a W3C `traceparent`, to keep with what
/// outlives the process (a workflow run's header); None with traces off.
pub fn traceparent() -> Option<String> {
    let mut headers = HeaderMap::new();
    inject(&mut headers);
    headers.get("traceparent").map(|v| v.as_str().to_owned())
}

/// The current span's trace id (32 hex digits), to find the trace by
/// later; None with traces off.
pub fn trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let found = span.span_context();
    found.is_valid().then(|| found.trace_id().to_string())
}

/// Makes `span` a child of a kept `traceparent`, if any.
pub fn adopt_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(value) = traceparent {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", value);
        adopt(span, Some(&headers));
    }
}
