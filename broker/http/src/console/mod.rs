//! The console: one page, served by the broker with every asset built into
//! the binary, that reads and writes through the public API with the
//! signed-in key. Each view is a script of its own under `console/views/`.

pub mod session;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page's files: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", CSS, include_str!("../../console/style.css")),
    ("app.js", JS, include_str!("../../console/app.js")),
    ("api.js", JS, include_str!("../../console/api.js")),
    ("dom.js", JS, include_str!("../../console/dom.js")),
    (
        "views/index.js",
        JS,
        include_str!("../../console/views/index.js"),
    ),
    (
        "views/overview.js",
        JS,
        include_str!("../../console/views/overview.js"),
    ),
    (
        "views/nodes.js",
        JS,
        include_str!("../../console/views/nodes.js"),
    ),
    (
        "views/jobs.js",
        JS,
        include_str!("../../console/views/jobs.js"),
    ),
    (
        "views/job.js",
        JS,
        include_str!("../../console/views/job.js"),
    ),
    (
        "views/dead_letters.js",
        JS,
        include_str!("../../console/views/dead_letters.js"),
    ),
];
const INDEX: &str = include_str!("../../console/index.html");
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Scripts and styles from this origin only, no inline code, no frames, and
/// requests to this origin only: a value that slipped past escaping could
/// still run nothing and send nothing away.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn router() -> Router<crate::state::ApiState> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/assets/{*name}", get(asset))
        .route(
            session::PATH,
            get(session::current)
                .post(session::sign_in)
                .delete(session::sign_out),
        )
        .layer(axum::middleware::map_response(guarded))
}

/// Every console response: the policy above, no sniffing, no framing, no
/// referrer, no caching of what a key read.
async fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
