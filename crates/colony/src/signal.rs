//! What stops a long-running command: Ctrl-C (SIGINT) at a terminal, SIGTERM from a service
//! manager, `docker stop` or Kubernetes. A process that handles no SIGTERM is killed by it at
//! once, without stopping cleanly; as PID 1 in a container it does not even hear it, and is
//! killed after the grace period.

/// Resolves at the next SIGINT or SIGTERM.
pub(crate) async fn stop() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            eprintln!("warning: cannot listen for SIGTERM ({e}); Ctrl-C still stops");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
