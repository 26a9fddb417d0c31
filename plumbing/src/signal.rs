//! The signal that stops a process gracefully.

/// Completes on SIGTERM (what Kubernetes sends) or Ctrl-C (SIGINT). If
/// SIGTERM cannot be watched, says so and waits for Ctrl-C alone.
pub async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops gracefully");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
