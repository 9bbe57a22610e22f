//! Shutdown plumbing: one root token, child tokens per subsystem, a tracker to await them.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The root of a service's shutdown tree.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// The root token (cancelled when shutdown starts).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A child token, cancelled with the root (or on its own).
    pub fn child(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// The tracker that background tasks are spawned on.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Spawns a tracked task.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Starts shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Waits until shutdown starts.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// Closes the tracker and waits up to `timeout` for every tracked task. Returns false on timeout.
    pub async fn wait(&self, timeout: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "sigint", "shutdown requested"),
        () = term => tracing::info!(signal = "sigterm", "shutdown requested"),
    }
}

/// A [`Shutdown`] that triggers on SIGTERM/SIGINT.
pub fn on_signals() -> Shutdown {
    let s = Shutdown::new();
    let t = s.token().clone();
    tokio::spawn(async move {
        signal().await;
        t.cancel();
    });
    s
}

/// Sleeps for `d`, or less if `stop` fires first: the pause between rounds of a background loop
/// that must not hold shutdown up.
pub async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn children_follow_the_root_and_wait_returns() {
        let s = Shutdown::new();
        let child = s.child();
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.spawn(async move {
            child.cancelled().await;
            let _ = tx.send(());
        });
        s.trigger();
        assert!(s.wait(Duration::from_secs(5)).await);
        assert!(rx.await.is_ok());
    }
}
