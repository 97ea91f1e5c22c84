//! The console's sign-in: the key a user types is checked at the door like
//! any other and then held in an `HttpOnly`, `SameSite=Strict` cookie, so
//! the page's scripts never keep it. Writes made with the cookie must carry
//! a token derived from the key, which only a page of this origin can read.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use switchyard_core::auth::Caller;

use crate::state::TraceLink;

pub const PATH: &str = "/console/session";
const COOKIE: &str = "sy_console";
/// The header a cookie-authenticated write carries.
const CSRF_HEADER: &str = "x-csrf-token";

/// The key held in the session cookie, if the request has one.
pub fn cookie_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|key| !key.is_empty())
}

/// The session's token against cross-site writes. Derived from the key, so
/// it needs no server state and no other origin can compute it; a hash, so
/// a script that reads it learns nothing of the key.
fn csrf_token(key: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"switchyard console csrf\0");
    hash.update(key.as_bytes());
    hex::encode(hash.finalize())
}

pub fn csrf_ok(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|token| token == csrf_token(key))
}

/// The key the sign-in presented in its `Authorization` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// `Secure` when the browser reached the broker over TLS, as the proxy in
/// front says; over plain HTTP a browser would drop such a cookie.
fn secure(headers: &HeaderMap) -> &'static str {
    let tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    if tls { "; Secure" } else { "" }
}

fn cookie(value: &str, headers: &HeaderMap, max_age: Option<u32>) -> Option<HeaderValue> {
    let expiry = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{}{expiry}",
        secure(headers)
    ))
    .ok()
}

fn who(caller: &Caller, key: Option<&str>, link: &TraceLink) -> serde_json::Value {
    json!({
        "role": caller.role.as_str(),
        "tenant": caller.tenant,
        "csrf_token": key.map(csrf_token),
        "trace_link": link.0.as_deref(),
    })
}

/// Signs in: the door has checked the key; it becomes the session cookie.
pub async fn sign_in(
    State(link): State<TraceLink>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    let body = axum::Json(who(&caller, bearer(&headers), &link));
    // With authentication off there is no key to hold.
    let Some(key) = bearer(&headers) else {
        return body.into_response();
    };
    // Keys are `sy_<id>_<secret>` in URL-safe characters: anything else
    // could not have passed the door, nor belongs in a cookie.
    let safe = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (safe, cookie(key, &headers, None)) {
        (true, Some(cookie)) => ([(header::SET_COOKIE, cookie)], body).into_response(),
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// Who the session is, the token its writes carry, and where a job's
/// trace is.
pub async fn current(
    State(link): State<TraceLink>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    axum::Json(who(&caller, cookie_key(&headers), &link)).into_response()
}

/// Signs out: the browser drops the cookie.
pub async fn sign_out(headers: HeaderMap) -> Response {
    match cookie("", &headers, Some(0)) {
        Some(cookie) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_an_empty_one_is_none() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sy_console=sy_k_s; b=2"),
        );
        assert_eq!(cookie_key(&headers), Some("sy_k_s"));
        headers.insert(header::COOKIE, HeaderValue::from_static("sy_console="));
        assert_eq!(cookie_key(&headers), None);
        headers.insert(header::COOKIE, HeaderValue::from_static("sy_consolex=1"));
        assert_eq!(cookie_key(&headers), None);
    }

    #[test]
    fn a_write_needs_the_token_of_its_own_key() {
        let mut headers = HeaderMap::new();
        assert!(!csrf_ok(&headers, "sy_k_s"));
        let token = HeaderValue::from_str(&csrf_token("sy_k_s")).unwrap();
        headers.insert(CSRF_HEADER, token);
        assert!(csrf_ok(&headers, "sy_k_s"));
        assert!(!csrf_ok(&headers, "sy_k_t"));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_tls() {
        let mut headers = HeaderMap::new();
        let plain = cookie("sy_k_s", &headers, None).unwrap();
        assert_eq!(
            plain,
            "sy_console=sy_k_s; Path=/; HttpOnly; SameSite=Strict"
        );
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let tls = cookie("", &headers, Some(0)).unwrap();
        assert_eq!(
            tls,
            "sy_console=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0"
        );
    }
}
