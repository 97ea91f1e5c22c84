//! The KServe v2 front (Triton's HTTP protocol), so that `tritonclient`
//! and other KServe clients work unchanged: health, model readiness and
//! metadata, and `infer` — as a job in the durable queue, answered when it
//! ends. Inputs may use Triton's binary tensor extension; outputs are JSON,
//! which every KServe client reads. Errors are KServe's
//! `{"error": "<message>"}`, with the stable `code` beside it.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use switchyard_core::admission::Rejection;
use switchyard_core::auth::Caller;
use switchyard_core::calls::Begun;
use switchyard_runtime::{ModelKind, Readiness};
use switchyard_schemas::redact::without_values;
use switchyard_schemas::{Outcome, SCHEMA_VERSION, Submission};

use crate::error::{ApiError, invalid};
use crate::extract::Body;
use crate::reply::{mark_cache, name_job, priority};
use crate::state::{ApiState, CallState};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer))
}

/// An [`ApiError`] in KServe's shape.
pub struct KserveError(ApiError);

impl<E: Into<ApiError>> From<E> for KserveError {
    fn from(e: E) -> Self {
        KserveError(e.into())
    }
}

impl IntoResponse for KserveError {
    fn into_response(self) -> Response {
        self.0
            .respond(|e| json!({"error": e.message, "code": e.code}))
    }
}

/// The broker is up.
#[utoipa::path(get, path = "/v2/health/live", tag = "kserve",
    responses((status = 200, description = "Live")))]
async fn live() -> StatusCode {
    StatusCode::OK
}

/// The broker can take requests (NATS connected).
#[utoipa::path(get, path = "/v2/health/ready", tag = "kserve",
    responses((status = 200, description = "Ready"), (status = 503, description = "Not ready")))]
async fn ready(State(readiness): State<Readiness>) -> StatusCode {
    match readiness.get() {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A tensor model of the registry, or 404.
fn tensor_model(s: &CallState, model: &str) -> Result<(), KserveError> {
    match s.calls.admitter().registry().kind_of(model) {
        Some(ModelKind::Tensor) => Ok(()),
        _ => Err(Rejection::UnknownModel(model.to_owned()).into()),
    }
}

/// Jobs for a registry model are always accepted: they wait in the queue
/// until a node serves it.
#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "kserve",
    params(("model" = String, Path)),
    responses((status = 200, description = "A tensor model of the registry"),
               (status = 422, description = "`unknown_model`", body = Object)))]
async fn model_ready(
    State(s): State<CallState>,
    Path(model): Path<String>,
) -> Result<StatusCode, KserveError> {
    tensor_model(&s, &model)?;
    Ok(StatusCode::OK)
}

/// What the registry knows of a model; the tensors' shapes are the engine's.
#[utoipa::path(get, path = "/v2/models/{model}", tag = "kserve",
    params(("model" = String, Path)),
    responses((status = 200, description = "`{name, versions, platform, inputs, outputs}`", body = Object),
               (status = 422, description = "`unknown_model`", body = Object)))]
async fn metadata(
    State(s): State<CallState>,
    Path(model): Path<String>,
) -> Result<axum::Json<Value>, KserveError> {
    tensor_model(&s, &model)?;
    Ok(axum::Json(json!({
        "name": model,
        "versions": ["1"],
        "platform": "switchyard",
        "inputs": [],
        "outputs": [],
    })))
}

/// A KServe v2 inference, as a job; JSON or Triton's binary inputs.
#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "kserve",
    params(("model" = String, Path),
           ("X-Switchyard-Priority" = Option<String>, Header, description = "critical, high, normal (default) or batch"),
           ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Triton's binary extension: the JSON's length")),
    request_body(content = Object, description = "`{id?, inputs, outputs?, parameters?}`"),
    responses(
        (status = 200, description = "The engine's response, `id` as the request's", body = Object),
        (status = 400, description = "`malformed_body`, or the engine refused the input (`invalid_input`)", body = Object),
        (status = 422, description = "`invalid_request`, `unknown_model`", body = Object),
        (status = 429, description = "`queue_full`", body = Object),
        (status = 503, description = "`queue_unavailable`, `engine_unavailable`, …", body = Object),
        (status = 504, description = "`still_running`, `timeout`", body = Object),
    ))]
async fn infer(
    State(s): State<CallState>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, KserveError> {
    tensor_model(&s, &model)?;
    let priority = priority(&headers)?;
    let mut request = parse(&headers, &body)?;
    let request_id = request.remove("id");
    let requested: Option<Vec<String>> = request.remove("outputs").map(|outputs| {
        outputs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["name"].as_str().map(str::to_owned))
            .collect()
    });
    // Triton's own request parameters (binary output, its priority and
    // timeout) do not apply here: outputs are JSON, the priority is the
    // header's.
    request.remove("parameters");
    let submission = Submission {
        v: SCHEMA_VERSION,
        id: None,
        model: model.clone(),
        tenant: caller.tenant.clone(),
        priority: Some(priority),
        input: Value::Object(request),
        metadata: Default::default(),
        deadline_ms: None,
        timeout_ms: None,
        stream: false,
        webhook: None,
    };
    let request = CallState::waiting(&caller, &headers, submission, priority, false);
    let id = request.id.as_str().to_owned();
    let (begun, cache) = s.calls.begin(request).await.map_err(|e| s.refused(e))?;
    let mut response = match begun {
        Begun::Cached { output, .. } => answer(output, requested, request_id),
        Begun::Queued { call: None, .. } => return Err(ApiError::StillRunning(id).into()),
        Begun::Queued {
            call: Some(mut call),
            ..
        } => {
            // Dropped here, with the handler, if the client goes away.
            let result = call.result().await;
            let output = match result.map(|r| r.outcome) {
                Some(Outcome::Succeeded { output, .. }) => output,
                Some(Outcome::Failed { error }) => {
                    call.end(None).await;
                    return Err(ApiError::JobFailed(error).into());
                }
                None => {
                    call.end(None).await;
                    return Err(ApiError::StillRunning(id).into());
                }
            };
            call.end(Some(&output)).await;
            let mut response = answer(output, requested, request_id);
            name_job(&mut response, &id);
            response
        }
    };
    mark_cache(&mut response, cache);
    Ok(response)
}

/// The engine's response with the outputs asked for, under the request's id.
fn answer(
    mut output: Value,
    requested: Option<Vec<String>>,
    request_id: Option<Value>,
) -> Response {
    if let (Some(names), Some(outputs)) = (requested, output["outputs"].as_array_mut()) {
        outputs.retain(|o| {
            o["name"]
                .as_str()
                .is_some_and(|n| names.iter().any(|w| w == n))
        });
    }
    if let Some(request_id) = request_id {
        output["id"] = request_id;
    }
    axum::Json(output).into_response()
}

/// The request's JSON; with Triton's binary extension
/// (`Inference-Header-Content-Length`), the JSON is followed by the
/// inputs' raw bytes, which become JSON data here.
fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let json_len = match headers.get("inference-header-content-length") {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| invalid("Inference-Header-Content-Length does not fit the body"))?,
    };
    let (head, mut raw) = body.split_at(json_len);
    let mut request: Map<String, Value> = serde_json::from_slice(head).map_err(|e| {
        Rejection::MalformedBody(format!(
            "body is not valid JSON: {}",
            without_values(&e.to_string())
        ))
    })?;
    let inputs = request
        .get_mut("inputs")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| invalid("inputs must be a list of tensors"))?;
    for (i, input) in inputs.iter_mut().enumerate() {
        let Some(tensor) = input.as_object_mut() else {
            return Err(invalid(format!("inputs[{i}] must be an object")));
        };
        let size = match tensor.remove("parameters") {
            None => None,
            Some(params) => params["binary_data_size"].as_u64(),
        };
        let Some(size) = size else {
            continue;
        };
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > raw.len() {
            return Err(invalid(format!(
                "inputs[{i}] claims {size} bytes of binary data; the body has {}",
                raw.len()
            )));
        }
        let (bytes, rest) = raw.split_at(size);
        raw = rest;
        let datatype = tensor.get("datatype").and_then(Value::as_str).unwrap_or("");
        let data =
            decode_binary(datatype, bytes).map_err(|e| invalid(format!("inputs[{i}]: {e}")))?;
        tensor.insert("data".into(), Value::Array(data));
    }
    if !raw.is_empty() {
        return Err(invalid(format!(
            "{} bytes of binary data belong to no input",
            raw.len()
        )));
    }
    Ok(request)
}

/// Raw tensor bytes (little-endian, row-major) as JSON values.
fn decode_binary(datatype: &str, bytes: &[u8]) -> Result<Vec<Value>, String> {
    fn fixed<const N: usize>(
        bytes: &[u8],
        f: impl Fn([u8; N]) -> Value,
    ) -> Result<Vec<Value>, String> {
        if !bytes.len().is_multiple_of(N) {
            return Err(format!(
                "{} bytes are not a whole number of {N}-byte values",
                bytes.len()
            ));
        }
        Ok(bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().unwrap_or([0; N])))
            .collect())
    }
    match datatype {
        "BOOL" => fixed::<1>(bytes, |b| json!(b[0] != 0)),
        "UINT8" => fixed::<1>(bytes, |b| json!(b[0])),
        "INT8" => fixed::<1>(bytes, |b| json!(i8::from_le_bytes(b))),
        "UINT16" => fixed::<2>(bytes, |b| json!(u16::from_le_bytes(b))),
        "INT16" => fixed::<2>(bytes, |b| json!(i16::from_le_bytes(b))),
        "UINT32" => fixed::<4>(bytes, |b| json!(u32::from_le_bytes(b))),
        "INT32" => fixed::<4>(bytes, |b| json!(i32::from_le_bytes(b))),
        "UINT64" => fixed::<8>(bytes, |b| json!(u64::from_le_bytes(b))),
        "INT64" => fixed::<8>(bytes, |b| json!(i64::from_le_bytes(b))),
        "FP32" => fixed::<4>(bytes, |b| json!(f32::from_le_bytes(b))),
        "FP64" => fixed::<8>(bytes, |b| json!(f64::from_le_bytes(b))),
        "BYTES" => {
            // Each element: a 4-byte little-endian length, then the bytes.
            let mut out = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let (len, tail) = rest
                    .split_at_checked(4)
                    .ok_or("a BYTES element is cut short")?;
                let len = u32::from_le_bytes(len.try_into().unwrap_or([0; 4])) as usize;
                let (element, tail) = tail
                    .split_at_checked(len)
                    .ok_or("a BYTES element is cut short")?;
                out.push(json!(String::from_utf8_lossy(element)));
                rest = tail;
            }
            Ok(out)
        }
        other => Err(format!(
            "binary data of datatype {other:?} is not taken; send it as JSON"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_tensors_become_json_values() {
        let floats: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        assert_eq!(
            decode_binary("FP32", &floats).unwrap(),
            [json!(1.5), json!(-2.0)]
        );
        assert_eq!(
            decode_binary("INT64", &(-3i64).to_le_bytes()).unwrap(),
            [json!(-3)]
        );
        let strings = [&2u32.to_le_bytes()[..], b"hi", &0u32.to_le_bytes()].concat();
        assert_eq!(
            decode_binary("BYTES", &strings).unwrap(),
            [json!("hi"), json!("")]
        );
        assert!(decode_binary("FP32", &[0, 0, 0]).is_err());
        assert!(decode_binary("BYTES", &[9, 0, 0, 0, b'x']).is_err());
        assert!(decode_binary("FP16", &[0, 0]).is_err());
    }

    #[test]
    fn the_binary_extension_is_split_by_its_header() {
        let head = br#"{"inputs":[{"name":"X","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#;
        let body = [&head[..], &7i32.to_le_bytes(), &9i32.to_le_bytes()].concat();
        let mut headers = HeaderMap::new();
        headers.insert("inference-header-content-length", head.len().into());
        let request = parse(&headers, &body).unwrap();
        assert_eq!(
            request["inputs"],
            json!([{"name": "X", "shape": [2], "datatype": "INT32", "data": [7, 9]}])
        );
        let short = &body[..body.len() - 1];
        assert!(parse(&headers, short).is_err());
    }
}
