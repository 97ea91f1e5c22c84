//! What every engine spoken to over HTTP shares: how a failed request is
//! classified, and what its configuration must say.

use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;
use switchyard_runtime::Issues;
use switchyard_schemas::ErrorClass;

use super::EngineError;

/// A client for one engine: every request has a deadline.
pub fn client(request_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// Whether the probe answers with a success, within two seconds.
pub async fn answers(probe: reqwest::RequestBuilder) -> bool {
    probe
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The engine's Prometheus text at `url`; `None`, logged, when it cannot be
/// read.
pub async fn scrape(http: &reqwest::Client, url: &str) -> Option<String> {
    let scraped = async {
        let r = http.get(url).timeout(Duration::from_secs(2)).send().await?;
        r.error_for_status()?.text().await
    };
    match scraped.await {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::warn!(%url, error = %e, "cannot read the engine's metrics");
            None
        }
    }
}

pub fn check_url(url: &str, request_timeout: Duration, issues: &mut Issues) {
    issues.check(
        url.starts_with("http://") || url.starts_with("https://"),
        "agent.engine.url",
        url,
        "must be an http:// or https:// URL",
    );
    issues.check(
        !request_timeout.is_zero(),
        "agent.engine.request_timeout",
        request_timeout,
        "must be positive",
    );
}

/// The request never got an answer: the engine is down, unreachable, or too
/// slow. Another attempt elsewhere may succeed.
pub fn transport_error(e: reqwest::Error) -> EngineError {
    let class = if e.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::EngineUnavailable
    };
    EngineError {
        class,
        message: format!("engine request failed: {e}"),
    }
}

/// The engine's answer as `T`, or its error answer classified.
pub async fn json_answer<T: DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, EngineError> {
    let status = response.status();
    let text = response.text().await.map_err(transport_error)?;
    if !status.is_success() {
        return Err(status_error(status, &text));
    }
    serde_json::from_str(&text).map_err(|e| EngineError {
        class: ErrorClass::EngineUnavailable,
        message: format!("the engine's answer is not what it should be: {e}"),
    })
}

/// Maps an error answer to a class: the input's fault is fatal, the
/// engine's is retryable.
pub fn status_error(status: StatusCode, body: &str) -> EngineError {
    let class = match status {
        StatusCode::NOT_FOUND => ErrorClass::UnknownModel,
        StatusCode::TOO_MANY_REQUESTS => ErrorClass::Overloaded,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => ErrorClass::Timeout,
        s if s.is_client_error() => ErrorClass::InvalidInput,
        _ => ErrorClass::EngineUnavailable,
    };
    // OpenAI servers say {"error": {"message": …}}, Triton {"error": "…"}.
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let error = v.get("error").unwrap_or(&v);
            let message = error.get("message").unwrap_or(error);
            message.as_str().map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    EngineError {
        class,
        message: format!("engine answered {}: {detail}", status.as_u16()),
    }
}

/// A gauge in Prometheus text, summed over its label sets (one per model and
/// engine); `None` when the text does not have it.
pub fn gauge_sum(metrics: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_s_fault_is_fatal_and_the_engine_s_is_retryable() {
        let bad = status_error(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"max_tokens is too large","type":"BadRequestError","code":400}}"#,
        );
        assert_eq!(bad.class, ErrorClass::InvalidInput);
        assert_eq!(bad.message, "engine answered 400: max_tokens is too large");
        let dead = status_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":{"message":"EngineCore encountered an issue.","type":"InternalServerError"}}"#,
        );
        assert_eq!(dead.class, ErrorClass::EngineUnavailable);
        assert!(dead.class.is_retryable());
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, "no such model").class,
            ErrorClass::UnknownModel
        );
        assert_eq!(
            status_error(StatusCode::TOO_MANY_REQUESTS, "").class,
            ErrorClass::Overloaded
        );
        let triton = status_error(
            StatusCode::BAD_REQUEST,
            r#"{"error":"unexpected shape for input 'INPUT0' for model 'tiny-linear'"}"#,
        );
        assert_eq!(triton.class, ErrorClass::InvalidInput);
        assert!(
            triton.message.ends_with("for model 'tiny-linear'"),
            "{}",
            triton.message
        );
    }
}
