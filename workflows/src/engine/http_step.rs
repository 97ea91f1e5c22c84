//! HTTP steps: a call to an external API under the webhooks' address
//! guard, with an `Idempotency-Key` derived from the run, the step and the
//! attempt; the response's JSON is the step's output.

use std::time::Duration;

use serde_json::Value;

use super::Engine;
use super::effects::Failure;
use crate::definition::{HttpStep, StepErrorClass};

/// Where an HTTP step's headers read `secrets.<name>`: the environment
/// variable `WORKFLOW_SECRET_<NAME>`, read as the call is made, so that
/// no secret is ever written to a run's history.
const SECRET_PREFIX: &str = "WORKFLOW_SECRET_";

fn with_secrets(mut context: Value) -> Value {
    let secrets: serde_json::Map<String, Value> = std::env::vars()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(SECRET_PREFIX)?.to_ascii_lowercase();
            Some((name, Value::String(v)))
        })
        .collect();
    context["secrets"] = Value::Object(secrets);
    context
}

/// An HTTP step: the call, under the address guard, with its
/// `Idempotency-Key`; the response's JSON is its output.
pub(crate) async fn http(
    engine: &Engine,
    step: &HttpStep,
    id: &str,
    input: &Value,
    context: Value,
    timeout: Option<Duration>,
) -> Result<Value, Failure> {
    let invalid = |e: String| (StepErrorClass::InvalidInput, e);
    let url = input["url"].as_str().unwrap_or_default();
    let (url, _) = engine
        .guard
        .check_form(url)
        .map_err(|e| invalid(format!("url {e}")))?;
    let method = reqwest::Method::from_bytes(input["method"].as_str().unwrap_or("POST").as_bytes())
        .map_err(|e| invalid(e.to_string()))?;
    let mut request = engine
        .http
        .request(method, url)
        .header("Idempotency-Key", id)
        .timeout(timeout.unwrap_or(engine.cfg.http_timeout));
    if !step.headers.is_empty() {
        let context = with_secrets(context);
        for (name, template) in &step.headers {
            let at = format!("http.headers.{name}");
            let value = engine
                .templates
                .render(&Value::String(template.clone()), &context, &at)
                .map_err(|e| (StepErrorClass::TemplateError, e.to_string()))?;
            let value = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            request = request.header(name.as_str(), value);
        }
    }
    if !input["body"].is_null() {
        request = request.json(&input["body"]);
    }
    let mut response = request.send().await.map_err(|e| match e.is_timeout() {
        true => (StepErrorClass::Timeout, format!("no answer in time: {e}")),
        false => (StepErrorClass::Unavailable, format!("{e:#}")),
    })?;
    let status = response.status();
    if !status.is_success() {
        let class = match status.as_u16() {
            408 | 429 | 500..=599 => StepErrorClass::Unavailable,
            _ => StepErrorClass::HttpStatus,
        };
        return Err((class, format!("answered {status}")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        (
            StepErrorClass::Unavailable,
            format!("reading the answer: {e}"),
        )
    })? {
        body.extend_from_slice(&chunk);
        if body.len() > engine.cfg.max_response_bytes {
            return Err((
                StepErrorClass::HttpStatus,
                format!(
                    "answered with more than {} bytes",
                    engine.cfg.max_response_bytes
                ),
            ));
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| {
        (
            StepErrorClass::HttpStatus,
            format!("answered {status} with a body that is not JSON: {e}"),
        )
    })
}
