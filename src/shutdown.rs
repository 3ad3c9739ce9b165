//! The one shutdown signal, and what each part does when it fires.
//!
//! [`signal`] resolves on SIGTERM or Ctrl-C (SIGINT). [`crate::server::run`]
//! takes any future as its shutdown signal (tests pass their own) and, when
//! it resolves:
//! 1. the listener stops accepting;
//! 2. the server's [`tokio_util::sync::CancellationToken`] is cancelled: every
//!    SSE stream ends after the frame it is writing (clients reconnect with
//!    their `Last-Event-ID` and resume), the presence flusher stops;
//! 3. requests in flight get up to [`GRACE`] to finish;
//! 4. the log writer stops taking appends, syncs what it has and is joined.

use std::time::Duration;

/// How long in-flight requests may take to finish after the signal.
pub const GRACE: Duration = Duration::from_secs(5);

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
