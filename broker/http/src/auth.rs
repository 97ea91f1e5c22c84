//! The key check at the door: which role each endpoint needs, the key the
//! request presents, and the caller handed to the handlers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use switchyard_core::Coded;
use switchyard_core::auth::{Auth, AuthError, Role};
use switchyard_core::metrics;

use crate::console::session;
use crate::error::ApiError;

/// The token a request carries: `Authorization: Bearer` (OpenAI's SDKs)
/// or `X-Api-Key`, else the console's session cookie; and whether it came
/// from the cookie, which a browser sends by itself.
fn presented(headers: &HeaderMap) -> (Option<&str>, bool) {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let token = v.to_str().ok().and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        return (token, false);
    }
    if let Some(v) = headers.get("x-api-key") {
        return (v.to_str().ok(), false);
    }
    match session::cookie_key(headers) {
        Some(key) => (Some(key), true),
        None => (None, false),
    }
}

/// The role an HTTP request needs; None for what anyone may call (health,
/// the API description).
fn required(method: &Method, path: &str) -> Option<Role> {
    const PUBLIC: [&str; 3] = ["/openapi.json", "/v2/health/live", "/v2/health/ready"];
    if PUBLIC.contains(&path) {
        return None;
    }
    // The console's page and assets hold no data; signing in needs a key
    // of any role, signing out none.
    if path == session::PATH {
        return (*method != Method::DELETE).then_some(Role::Reader);
    }
    if path == "/console" || path.starts_with("/console/") {
        return None;
    }
    if path.starts_with("/v1/admin/") || path == "/v1/webhooks/enable" {
        return Some(Role::Admin);
    }
    if path == "/v1/webhooks/disabled" || path == "/v1/nodes" || path == "/v1/queues" {
        return Some(Role::Operator);
    }
    // Every other write submits or cancels work.
    if method == Method::GET || method == Method::HEAD {
        Some(Role::Reader)
    } else {
        Some(Role::Submitter)
    }
}

fn refuse(e: AuthError) -> Response {
    metrics::auth_refused(e.code().as_str());
    ApiError::Auth(e).into_response()
}

/// What the key check needs.
#[derive(Clone)]
pub struct Door {
    pub auth: Arc<Auth>,
    /// The header a trusted proxy writes the client's address into.
    pub client_address: Option<HeaderName>,
}

/// The address wrong keys are counted against: the last entry of the
/// trusted proxy's header (the one it added), else the TCP peer.
fn client_address(req: &Request, header: Option<&HeaderName>) -> Option<IpAddr> {
    let forwarded = header
        .and_then(|h| req.headers().get_all(h).iter().next_back())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok());
    forwarded.or_else(|| {
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
    })
}

/// Lets a request in when its key has the role the endpoint needs, and
/// hands the handler its caller. A wrong key counts against the client's
/// address and the key id it names; past the limit, wrong keys from either
/// are answered 429, but a valid key is let in whoever guessed before.
pub async fn guard(State(door): State<Door>, mut req: Request, next: Next) -> Response {
    let Some(need) = required(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let auth = &door.auth;
    let (token, from_cookie) = presented(req.headers());
    // A cookie comes with any request the browser makes, so a write it
    // carries must also prove that the console's own page sent it.
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if from_cookie && !reads && !token.is_some_and(|key| session::csrf_ok(req.headers(), key)) {
        return refuse(AuthError::CsrfToken);
    }
    let caller = match auth.caller(token, switchyard_schemas::now_ms()).await {
        Ok(caller) => caller,
        // A wrong key is a guess; a missing, expired or revoked one is not.
        Err(AuthError::Invalid) => {
            let from = auth.guessers(client_address(&req, door.client_address.as_ref()), token);
            let now = Instant::now();
            if let Some(wait) = auth.blocked(&from, now) {
                return refuse(AuthError::TooManyFailures(wait));
            }
            auth.failed(&from, now);
            return refuse(AuthError::Invalid);
        }
        Err(e) => return refuse(e),
    };
    if !caller.role.grants(need) {
        return refuse(AuthError::Forbidden(need.as_str()));
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn each_endpoint_needs_its_role() {
        let table = [
            (Method::GET, "/openapi.json", None),
            (Method::GET, "/v2/health/ready", None),
            (Method::POST, "/v1/admin/keys", Some(Role::Admin)),
            (Method::GET, "/v1/admin/dead-letters", Some(Role::Admin)),
            (
                Method::POST,
                "/v1/admin/workflows/runs/r1/replay",
                Some(Role::Admin),
            ),
            (Method::POST, "/v1/webhooks/enable", Some(Role::Admin)),
            (Method::GET, "/v1/webhooks/disabled", Some(Role::Operator)),
            (Method::GET, "/v1/nodes", Some(Role::Operator)),
            (Method::GET, "/v1/queues", Some(Role::Operator)),
            (Method::POST, "/v1/jobs", Some(Role::Submitter)),
            (Method::POST, "/v1/jobs/j1/cancel", Some(Role::Submitter)),
            (Method::POST, "/v1/chat/completions", Some(Role::Submitter)),
            (Method::GET, "/v1/jobs/j1", Some(Role::Reader)),
            (Method::GET, "/v1/usage", Some(Role::Reader)),
            (Method::HEAD, "/v1/files/f1/content", Some(Role::Reader)),
            (Method::GET, "/console", None),
            (Method::GET, "/console/assets/app.js", None),
            (Method::POST, "/console/session", Some(Role::Reader)),
            (Method::GET, "/console/session", Some(Role::Reader)),
            (Method::DELETE, "/console/session", None),
        ];
        for (method, path, role) in table {
            assert_eq!(required(&method, path), role, "{method} {path}");
        }
        // And what each role is granted.
        assert!(Role::Admin.grants(Role::Operator));
        assert!(Role::Operator.grants(Role::Reader));
        assert!(Role::Submitter.grants(Role::Reader));
        assert!(!Role::Submitter.grants(Role::Operator));
        assert!(!Role::Reader.grants(Role::Submitter));
    }

    #[test]
    fn a_key_comes_as_a_bearer_token_or_x_api_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers), (None, false));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("sy_console=sy_e_f"),
        );
        assert_eq!(presented(&headers), (Some("sy_e_f"), true));
        headers.insert("x-api-key", HeaderValue::from_static("sy_a_b"));
        assert_eq!(presented(&headers), (Some("sy_a_b"), false));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sy_c_d"),
        );
        assert_eq!(presented(&headers), (Some("sy_c_d"), false));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented(&headers), (None, false));
    }
}
