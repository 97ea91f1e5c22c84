//! The ops endpoints every component serves: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Whether the process should be sent work: set once it is set up, cleared
/// as soon as shutdown starts so that load balancers stop first, and false
/// whenever the watched NATS connection is down.
#[derive(Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    nats: Arc<OnceLock<async_nats::Client>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// From now on, readiness also requires this connection to be up.
    pub fn watch(&self, client: &async_nats::Client) {
        let _ = self.nats.set(client.clone());
    }

    pub fn get(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && self
                .nats
                .get()
                .is_none_or(|c| c.connection_state() == async_nats::connection::State::Connected)
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    ready: Readiness,
}

/// Router with the three ops routes; components merge their own routes in.
pub fn router(metrics: PrometheusHandle, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(OpsState { metrics, ready })
}

async fn render_metrics(State(s): State<OpsState>) -> String {
    s.metrics.render()
}

async fn readyz(State(s): State<OpsState>) -> (StatusCode, &'static str) {
    if s.ready.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Binds `addr` and says where it listens: with port 0 the system picks the
/// port, and the log names it.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!("listening on {bound}");
    Ok(listener)
}

/// Binds `addr` and serves the ops routes alone on `tasks` until `stop`;
/// returns the readiness switch they report.
pub async fn start(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<Readiness, ServeError> {
    let listener = bind(addr).await?;
    let ready = Readiness::default();
    tasks.spawn(crate::http_server::serve(
        listener,
        router(metrics, ready.clone()),
        stop,
        crate::http_server::HttpLimits::default(),
    ));
    Ok(ready)
}
