//! Pieces of requests and responses that several fronts share.

use std::convert::Infallible;
use std::future::Future;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::channel::mpsc;
use switchyard_schemas::Priority;

use crate::error::{ApiError, invalid};

/// `X-Switchyard-Priority`, `normal` when absent.
pub fn priority(headers: &HeaderMap) -> Result<Priority, ApiError> {
    match headers.get("x-switchyard-priority") {
        None => Ok(Priority::default()),
        Some(v) => v.to_str().ok().and_then(|p| p.parse().ok()).ok_or_else(|| {
            invalid("X-Switchyard-Priority must be critical, high, normal or batch")
        }),
    }
}

/// Whether the client asked not to be answered from the result cache
/// (`X-Switchyard-Cache: bypass` or `Cache-Control: no-cache`).
pub fn bypasses_cache(headers: &HeaderMap) -> bool {
    let says = |name: &str, value: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains(value))
    };
    says("x-switchyard-cache", "bypass") || says("cache-control", "no-cache")
}

/// Names the job that answered, for calls that do not return its record.
pub fn name_job(response: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-switchyard-job-id", v);
    }
}

/// Sets `X-Switchyard-Cache` (`hit`, `miss`, `bypass`) where the model is
/// cached.
pub fn mark_cache(response: &mut Response, state: Option<&'static str>) {
    if let Some(state) = state {
        response
            .headers_mut()
            .insert("x-switchyard-cache", HeaderValue::from_static(state));
    }
}

/// Server-sent events that `producer` sends into its channel. The producer
/// runs inside the response body, so when the client goes away the body is
/// dropped and the producer with it, with all it holds.
pub fn sse(
    producer: impl Future<Output = ()> + Send + 'static,
    events: mpsc::Receiver<Event>,
) -> Response {
    let driver = futures::stream::once(producer).filter_map(|()| async { None });
    let stream = futures::stream::select(events, driver);
    Sse::new(stream.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn the_priority_header_is_one_of_the_levels() {
        assert_eq!(priority(&headers(&[])).unwrap(), Priority::Normal);
        assert_eq!(
            priority(&headers(&[("x-switchyard-priority", "critical")])).unwrap(),
            Priority::Critical
        );
        assert!(priority(&headers(&[("x-switchyard-priority", "urgent")])).is_err());
    }

    #[test]
    fn either_header_bypasses_the_cache() {
        assert!(!bypasses_cache(&headers(&[])));
        assert!(bypasses_cache(&headers(&[(
            "x-switchyard-cache",
            "Bypass"
        )])));
        assert!(bypasses_cache(&headers(&[(
            "cache-control",
            "no-cache, max-age=0"
        )])));
        assert!(!bypasses_cache(&headers(&[(
            "cache-control",
            "max-age=60"
        )])));
    }
}
