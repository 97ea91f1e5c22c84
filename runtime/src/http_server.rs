//! The HTTP server every component runs, with the bounds a public endpoint
//! needs: a client has `header_timeout` to send a request's head and may
//! leave its body silent for at most `body_timeout`, and at most
//! `max_connections` are open at once (past it a new one is closed at
//! once), so half-sent requests cannot pile up.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::ops::ServeError;

/// Connections closed at once because `max_connections` were open.
const REFUSED: &str = "switchyard_http_connections_refused_total";

/// How long clients may take, and how many may be connected.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Time to send a request's line and headers.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest silence while a request's body is read.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting and lets the requests in flight finish. Handlers see the
/// peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
) -> Result<(), ServeError> {
    metrics::describe_counter!(REFUSED, "Connections closed at once: too many were open");
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was taken: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(place) = open.clone().try_acquire_owned() else {
            metrics::counter!(REFUSED).increment(1);
            drop(stream);
            continue;
        };
        let router = router.clone();
        let body_timeout = limits.body_timeout;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let req = req.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
            router.clone().oneshot(req)
        });
        let builder = builder.clone();
        let header_timeout = limits.header_timeout;
        let watcher = graceful.watcher();
        connections.spawn(async move {
            // The protocol is told by the first bytes, and hyper's header
            // timeout starts only once there are some: a client that sends
            // nothing gets as long as one that sends half a head.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(header_timeout, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                return;
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            // A client's broken connection is its own affair.
            let _ = watcher.watch(connection.into_owned()).await;
            drop(place);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    connections.close();
    connections.wait().await;
    Ok(())
}
