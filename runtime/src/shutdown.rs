//! Shutdown on SIGTERM or Ctrl-C.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs a component until it ends by itself or a signal arrives; on a signal
/// the component is told through `token` and awaited while it drains, and
/// a second signal ends the process at once.
pub async fn run_until_signal<F, T>(token: CancellationToken, component: F) -> T
where
    F: Future<Output = T>,
{
    tokio::pin!(component);
    tokio::select! {
        out = &mut component => out,
        () = signal() => {
            tracing::info!("shutdown requested: draining (a second signal exits at once)");
            token.cancel();
            tokio::select! {
                out = &mut component => out,
                () = signal() => {
                    tracing::warn!("second signal: exiting without waiting for the drain");
                    std::process::exit(130);
                }
            }
        }
    }
}
