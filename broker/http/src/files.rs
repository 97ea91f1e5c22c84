//! OpenAI's Files API, for batches: a file is streamed into the NATS object
//! store as it arrives and streamed out again, so neither an upload nor a
//! download is ever held whole in memory; the store keeps its catalogue.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, Multipart, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::TryStreamExt;
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
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
    let mut multipart = multipart.map_err(|e| invalid(e.body_text()))?;
    let limit = s.max_file_bytes;
    let id = format!("file-{}", uuid::Uuid::now_v7().simple());
    let mut purpose = None;
    let mut stored: Option<(String, u64)> = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, limit))?
    {
        match field.name() {
            Some("purpose") => {
                purpose = Some(field.text().await.map_err(|e| multipart_error(&e, limit))?);
            }
            Some("file") if stored.is_none() => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_owned();
                let mut too_large = false;
                let mut reader = StreamReader::new(field.map_err(|e| {
                    too_large |= e.status() == StatusCode::PAYLOAD_TOO_LARGE;
                    std::io::Error::other(e)
                }));
                let info = s.files.put(id.as_str(), &mut reader).await;
                drop(reader);
                match info {
                    Ok(info) => stored = Some((filename, info.size as u64)),
                    Err(e) => {
                        // Whatever reached the store is removed.
                        let _ = s.files.delete(&id).await;
                        return Err(if too_large {
                            ApiError::BodyTooLarge(limit)
                        } else {
                            ApiError::Unavailable(e.to_string())
                        });
                    }
                }
            }
            other => {
                return Err(invalid(format!(
                    "unexpected form field {:?}; send purpose and file",
                    other.unwrap_or("")
                )));
            }
        }
    }
    let refuse = |message: &str| invalid(message.to_owned());
    let result = match (purpose.as_deref(), &stored) {
        (_, None) => Err(refuse("no file field")),
        (Some("batch"), Some(_)) => Ok(()),
        (Some(other), Some(_)) => Err(refuse(&format!(
            "purpose {other:?} is not supported; only batch"
        ))),
        (None, Some(_)) => Err(refuse("no purpose field; send purpose=batch")),
    };
    let Some((filename, bytes)) = stored else {
        return Err(refuse("no file field"));
    };
    if let Err(e) = result {
        let _ = s.files.delete(&id).await;
        return Err(e);
    }
    let record = FileRecord {
        id,
        tenant: caller.tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
        filename,
        purpose: "batch".into(),
        bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        created_at_ms: now_ms(),
    };
    s.batch_store.insert_file(&record).await?;
    Ok(axum::Json(file_json(&record)))
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
