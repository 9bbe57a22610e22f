//! The admin HTTP server: `/metrics`, `/healthz` (alive) and `/readyz` (dependencies).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::RwLock;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The state of one dependency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum ComponentStatus {
    /// Working.
    Up,
    /// Failing, but the service still answers correctly (e.g. a cache tier skipped).
    Degraded(String),
    /// Failing and required: the service is not ready.
    Down(String),
}

/// Named dependency states, shared by the service and the admin server.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<RwLock<BTreeMap<String, ComponentStatus>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

/// The `/readyz` body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// `ready`, `degraded` or `not_ready`.
    pub status: &'static str,
    /// Every component and its state.
    pub components: BTreeMap<String, ComponentStatus>,
    /// Names of components that are down (what makes the service not ready).
    pub down: Vec<String>,
}

impl Health {
    /// An empty registry (ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a component's state; logs transitions.
    pub fn set(&self, name: &str, status: ComponentStatus) {
        let prev = self.inner.write().insert(name.to_owned(), status.clone());
        if prev.as_ref() != Some(&status) {
            match &status {
                ComponentStatus::Up => tracing::info!(component = name, "component up"),
                ComponentStatus::Degraded(r) => {
                    tracing::warn!(component = name, reason = %r, "component degraded")
                }
                ComponentStatus::Down(r) => {
                    tracing::warn!(component = name, reason = %r, "component down")
                }
            }
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Shorthand: `Up` if `ok`, else `Down(reason)`.
    pub fn set_up_or_down(&self, name: &str, result: Result<(), String>) {
        self.set(
            name,
            result.map_or_else(ComponentStatus::Down, |()| ComponentStatus::Up),
        );
    }

    /// The current readiness.
    pub fn readiness(&self) -> Readiness {
        let components = self.inner.read().clone();
        let down: Vec<String> = components
            .iter()
            .filter(|(_, s)| matches!(s, ComponentStatus::Down(_)))
            .map(|(n, _)| n.clone())
            .collect();
        let degraded = components
            .values()
            .any(|s| matches!(s, ComponentStatus::Degraded(_)));
        let status = if !down.is_empty() {
            "not_ready"
        } else if degraded {
            "degraded"
        } else {
            "ready"
        };
        Readiness {
            status,
            components,
            down,
        }
    }

    /// Whether no component is down.
    pub fn is_ready(&self) -> bool {
        self.readiness().down.is_empty()
    }

    /// A receiver that changes whenever a component's state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(),
    )
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        Json(serde_json::json!({ "status": "alive" })),
    )
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let r = health.readiness();
    let code = if r.down.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r))
}

/// A bound admin server, not yet serving.
pub struct AdminServer {
    listener: TcpListener,
    router: Router,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks one).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr, health: Health) -> std::io::Result<Self> {
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(health);
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            router,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, stop: CancellationToken) {
        let res = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "admin server failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reflects_components() {
        let h = Health::new();
        assert_eq!(h.readiness().status, "ready");
        h.set("kafka", ComponentStatus::Up);
        h.set("redis", ComponentStatus::Degraded("timeout".into()));
        assert_eq!(h.readiness().status, "degraded");
        assert!(h.is_ready());
        h.set("mysql", ComponentStatus::Down("refused".into()));
        let r = h.readiness();
        assert_eq!(r.status, "not_ready");
        assert_eq!(r.down, vec!["mysql".to_string()]);
        let body = serde_json::to_value(&r).expect("json");
        assert_eq!(body["components"]["mysql"]["status"], "down");
        assert_eq!(body["components"]["mysql"]["reason"], "refused");
    }
}
