//! OpenAI's Files API, for batches: a file is streamed into the NATS object
//! store as it arrives and streamed out again, so neither an upload nor a
//! download is ever held whole in memory; the store keeps its catalogue.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, Multipart, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_schemas::redact::shown;
use switchyard_schemas::{DEFAULT_TENANT, now_ms};
use switchyard_store::FileRecord;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::error::{ApiError, invalid};
use crate::state::{ApiState, BatchState, visible};

pub fn router(max_file_bytes: usize) -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/files",
            get(list)
                .post(upload)
                .layer(DefaultBodyLimit::max(max_file_bytes)),
        )
        .route("/v1/files/{id}", get(retrieve).delete(delete))
        .route("/v1/files/{id}/content", get(content))
}

fn file_json(f: &FileRecord) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at_ms / 1000,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
    })
}

fn multipart_error(e: &axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge(limit)
    } else {
        invalid(format!("multipart body: {}", e.body_text()))
    }
}

/// Uploads a batch input file (`multipart/form-data`: `purpose=batch`, `file`).
#[utoipa::path(post, path = "/v1/files", tag = "batches",
    request_body(content = Object, content_type = "multipart/form-data", description = "`purpose` (`batch`) and `file` (JSONL)"),
    responses(
        (status = 200, description = "The file: `{id, object: file, bytes, created_at, filename, purpose}`", body = Object),
        (status = 413, description = "`body_too_large`: over `broker.max_file_bytes`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
        (status = 503, description = "`broker_unavailable`, `store_unavailable`", body = Object),
    ))]
async fn upload(
    State(s): State<BatchState>,
    Extension(caller): Extension<Caller>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let multipart = multipart.map_err(|e| invalid(e.body_text()))?;
    let tenant = caller.tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned());
    let quota = s.max_file_bytes_per_tenant;
    let room = quota.saturating_sub(s.batch_store.file_bytes(&tenant).await?);
    if room == 0 {
        return Err(ApiError::FileQuota(quota));
    }
    let id = format!("file-{}", uuid::Uuid::now_v7().simple());
    let received = match receive(&s, multipart, &id, room).await {
        Ok(received) => received,
        Err(e) => {
            // Whatever reached the store before the refusal is removed.
            let _ = s.files.delete(&id).await;
            return Err(e.into_api(s.max_file_bytes, quota));
        }
    };
    let record = FileRecord {
        id,
        tenant,
        filename: received.filename,
        purpose: "batch".into(),
        bytes: i64::try_from(received.bytes).unwrap_or(i64::MAX),
        created_at_ms: now_ms(),
    };
    if let Err(e) = s.batch_store.insert_file(&record).await {
        let _ = s.files.delete(&record.id).await;
        return Err(e.into());
    }
    Ok(axum::Json(file_json(&record)))
}

/// The longest `purpose` read: the only one taken is `batch`.
const MAX_PURPOSE: usize = 64;

/// A file that reached the store whole.
struct Received {
    filename: String,
    bytes: u64,
}

/// Why an upload was refused.
enum Refused {
    Api(ApiError),
    /// Over `broker.max_file_bytes`.
    TooLarge,
    /// Over what the tenant's quota leaves.
    OverQuota,
    /// The bucket is at `nats.max_file_store_bytes`.
    StoreFull,
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Api(e)
    }
}

impl Refused {
    fn into_api(self, max_file_bytes: usize, quota: u64) -> ApiError {
        match self {
            Refused::Api(e) => e,
            Refused::TooLarge => ApiError::BodyTooLarge(max_file_bytes),
            Refused::OverQuota => ApiError::FileQuota(quota),
            Refused::StoreFull => ApiError::FilesFull,
        }
    }
}

/// Reads the form: `purpose=batch` and one `file`, streamed into the store
/// as `id`, at most `room` bytes of it.
async fn receive(
    s: &BatchState,
    mut multipart: Multipart,
    id: &str,
    room: u64,
) -> Result<Received, Refused> {
    let limit = s.max_file_bytes;
    let mut purpose = None;
    let mut stored: Option<Received> = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, limit))?
    {
        match field.name() {
            Some("purpose") => {
                let mut text = Vec::new();
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(&e, limit))?
                {
                    text.extend_from_slice(&chunk);
                    if text.len() > MAX_PURPOSE {
                        return Err(
                            invalid(format!("purpose is longer than {MAX_PURPOSE} bytes")).into(),
                        );
                    }
                }
                purpose = Some(String::from_utf8_lossy(&text).into_owned());
            }
            Some("file") if stored.is_none() => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_owned();
                let (mut too_large, mut read) = (false, 0u64);
                let mut reader = StreamReader::new(field.map(|chunk| {
                    let chunk = chunk.map_err(|e| {
                        too_large |= e.status() == StatusCode::PAYLOAD_TOO_LARGE;
                        std::io::Error::other(e)
                    })?;
                    read += chunk.len() as u64;
                    if read > room {
                        return Err(std::io::Error::other("over the tenant's file quota"));
                    }
                    Ok(chunk)
                }));
                let put = s.files.put(id, &mut reader).await;
                drop(reader);
                match put {
                    Ok(info) => {
                        stored = Some(Received {
                            filename,
                            bytes: info.size as u64,
                        });
                    }
                    Err(_) if too_large => return Err(Refused::TooLarge),
                    Err(_) if read > room => return Err(Refused::OverQuota),
                    Err(e) if is_full(&e.to_string()) => return Err(Refused::StoreFull),
                    Err(e) => return Err(ApiError::Unavailable(e.to_string()).into()),
                }
            }
            other => {
                return Err(invalid(format!(
                    "unexpected form field {}; send purpose and file",
                    shown(other.unwrap_or(""))
                ))
                .into());
            }
        }
    }
    let stored = stored.ok_or_else(|| invalid("no file field"))?;
    match purpose.as_deref() {
        Some("batch") => Ok(stored),
        Some(other) => Err(invalid(format!(
            "purpose {} is not supported; only batch",
            shown(other)
        ))
        .into()),
        None => Err(invalid("no purpose field; send purpose=batch").into()),
    }
}

/// Whether the object store refused for want of room.
fn is_full(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("maximum bytes") || error.contains("insufficient resources")
}

/// Files, newest first.
#[utoipa::path(get, path = "/v1/files", tag = "batches",
    responses((status = 200, description = "`{object: list, data: [file]}`", body = Object)))]
async fn list(
    State(s): State<BatchState>,
    Extension(caller): Extension<Caller>,
) -> Result<axum::Json<Value>, ApiError> {
    let data: Vec<Value> = s
        .batch_store
        .list_files(caller.tenant.as_deref(), 1000)
        .await?
        .iter()
        .map(file_json)
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}

/// The file, if the caller may see it.
pub async fn find(s: &BatchState, caller: &Caller, id: &str) -> Result<FileRecord, ApiError> {
    let found = s.batch_store.get_file(id).await?;
    visible(caller, found, |f| &f.tenant, || format!("file {id:?}"))
}

#[utoipa::path(get, path = "/v1/files/{id}", tag = "batches",
    responses(
        (status = 200, description = "The file", body = Object),
        (status = 404, description = "`not_found`", body = Object),
    ))]
async fn retrieve(
    State(s): State<BatchState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(file_json(&find(&s, &caller, &id).await?)))
}

/// The file's content, streamed.
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "batches",
    responses(
        (status = 200, description = "The content (JSONL)", body = String),
        (status = 404, description = "`not_found`", body = Object),
        (status = 503, description = "`broker_unavailable`", body = Object),
    ))]
async fn content(
    State(s): State<BatchState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let file = find(&s, &caller, &id).await?;
    let object = s
        .files
        .read(&file.id)
        .await
        .map_err(ApiError::Unavailable)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/jsonl".to_owned()),
            (header::CONTENT_LENGTH, file.bytes.to_string()),
        ],
        Body::from_stream(ReaderStream::new(object)),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/v1/files/{id}", tag = "batches",
    responses(
        (status = 200, description = "`{id, object: file, deleted: true}`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
    ))]
async fn delete(
    State(s): State<BatchState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    find(&s, &caller, &id).await?;
    if !s.batch_store.delete_file(&id).await? {
        return Err(ApiError::NotFound(format!("file {id:?}")));
    }
    if let Err(e) = s.files.delete(&id).await {
        tracing::warn!(file = %id, error = %e, "file forgotten but its content could not be deleted");
    }
    Ok(axum::Json(
        json!({"id": id, "object": "file", "deleted": true}),
    ))
}
