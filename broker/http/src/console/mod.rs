//! The console: one page, served by the broker with every asset built into
//! the binary, that reads and writes through the public API with the
//! signed-in key. Each view is a script of its own under `console/views/`.

pub mod session;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One of the page's files: its name under `broker/http/console/`, its
/// content type, and its body, built into the binary.
macro_rules! asset {
    ($name:literal, $kind:expr) => {
        ($name, $kind, include_str!(concat!("../../console/", $name)))
    };
}

/// The page's files. A new view is a file in `console/views/`, named here
/// and in `views/index.js`.
const ASSETS: &[(&str, &str, &str)] = &[
    asset!("style.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("paged.js", JS),
    asset!("views/index.js", JS),
    asset!("views/overview.js", JS),
    asset!("views/nodes.js", JS),
    asset!("views/jobs.js", JS),
    asset!("views/job.js", JS),
    asset!("views/runs.js", JS),
    asset!("views/run.js", JS),
    asset!("views/dead_letters.js", JS),
    asset!("views/models.js", JS),
    asset!("views/usage.js", JS),
    asset!("views/tenants.js", JS),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module a script imports, as a path under `console/`.
    fn imports(name: &str, body: &str) -> Vec<String> {
        let dir = name.rsplit_once('/').map_or("", |(dir, _)| dir);
        body.lines()
            .filter_map(|line| line.trim().strip_prefix("import "))
            .filter_map(|line| line.split(" from '").nth(1)?.split('\'').next())
            .map(|path| {
                let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
                for part in path.split('/') {
                    match part {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        part => parts.push(part),
                    }
                }
                parts.join("/")
            })
            .collect()
    }

    #[test]
    fn every_script_the_page_imports_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|(name, _, _)| *name).collect();
        let mut checked = 0;
        for (name, _, body) in ASSETS {
            for import in imports(name, body) {
                assert!(
                    served.contains(&import.as_str()),
                    "{name} imports {import}, not served"
                );
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} imports found");
        assert!(INDEX.contains("/console/assets/app.js"));
        assert!(INDEX.contains("/console/assets/style.css"));
    }
}
