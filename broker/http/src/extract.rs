//! Extractors whose rejection is the API's own error, so that a handler
//! takes what it needs already read and a bad request gets a stable code.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{ApiError, invalid};

/// The largest request body taken (`broker.max_body_bytes`), as a request
/// extension the router adds.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The request's body, up to [`BodyLimit`].
pub struct Body(pub Bytes);

impl<S> FromRequest<S> for Body
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::BodyTooLarge(limit))
            }
            Err(_) => Err(ApiError::BodyUnreadable),
        }
    }
}

/// A query string read as `T`; one that does not fit is `invalid_request`.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| invalid(e.body_text()))
    }
}

/// A JSON body read as `T`; one that does not fit is `invalid_request`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(|e| invalid(e.body_text()))
    }
}

/// A query's optional RFC 3339 time, as Unix ms.
pub fn parse_time(field: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| Some(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)))
        .map_err(|_| {
            invalid(format!(
                "{field} must be an RFC 3339 time, such as 2026-11-22T01:31:50Z"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339() {
        assert_eq!(
            parse_time("since", Some("2026-11-22T01:31:50Z")).unwrap(),
            Some(1_795_311_110_000)
        );
        assert_eq!(parse_time("since", None).unwrap(), None);
        assert!(parse_time("since", Some("yesterday")).is_err());
    }
}
