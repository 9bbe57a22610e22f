//! The gRPC server skeleton every dispatch service runs: a service's start-up only names its
//! gRPC service, its methods and its handler; everything around it is here, once.
//!
//! - [`GrpcServer`]: binds `grpc.listen`, accepts with `TCP_NODELAY` ([`incoming`]), TLS when
//!   configured ([`crate::tls::ServerTls`], certificates re-read on change), gRPC health
//!   (NOT_SERVING until the service says otherwise, and again as soon as shutdown starts),
//!   reflection ([`reflection_services`]), and the HTTP/2 limits of `[grpc]`
//!   (`max_concurrent_streams`, `max_header_list_bytes`).
//! - [`layer`]: the one per-request layer: metrics, load shedding, the RPC span, the request
//!   timeout.
//! - [`metrics`]: `dispatch_grpc_*`, recorded by a drop guard so timeouts, disconnects and shed
//!   requests are counted as what they are and the in-flight gauge never leaks.
//! - [`status`]: the one rule for store and internal errors: log the detail, answer a generic
//!   message.
//! - [`auth`]: API-key authentication (tenant and admin keys).

pub mod auth;
pub mod layer;
pub mod metrics;
pub mod status;

mod reflection;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

pub use self::layer::RpcLayer;
pub use self::reflection::reflection_services;
use crate::SettingsError;
use crate::settings::GrpcSettings;
use crate::tls::ServerTls;

/// One dispatch gRPC service a server serves.
#[derive(Debug, Clone, Copy)]
pub struct Rpcs {
    /// The gRPC service's full name (`dispatch.v1.TaskService`).
    pub service: &'static str,
    /// Its RPCs (the metrics' `method` label; other paths are not measured).
    pub methods: &'static [&'static str],
}

/// What a server serves.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The `service` label of its metrics (`gateway`, `reader`, `processor`).
    pub label: &'static str,
    /// The dispatch gRPC services (health and reflection come with every server).
    pub services: &'static [Rpcs],
}

/// Checks the `[grpc]` bounds, naming the setting.
///
/// # Errors
/// A bound that is zero (or a header-list limit too small for any request).
pub fn validate(s: &GrpcSettings) -> Result<(), SettingsError> {
    let bad = |m: &str| Err(SettingsError(m.to_owned()));
    if s.max_concurrent_requests == 0 {
        return bad("grpc.max_concurrent_requests must be > 0");
    }
    if s.max_concurrent_streams == 0 {
        return bad("grpc.max_concurrent_streams must be > 0");
    }
    if s.max_header_list_bytes < 1024 {
        return bad("grpc.max_header_list_bytes must be >= 1024");
    }
    if s.request_timeout_ms == 0 {
        return bad("grpc.request_timeout_ms must be > 0");
    }
    Ok(())
}

/// Accepted connections of a gRPC listener, with `TCP_NODELAY` and keepalive set.
///
/// `Server::serve_with_incoming*` ignores the builder's `tcp_nodelay` (on by default only for
/// `serve(addr)`); a plain `TcpListenerStream` leaves Nagle's algorithm on, and small responses
/// then wait for the client's delayed ACK: 40 ms outliers at the tail of every latency figure.
pub fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// The serving status a server reports over grpc.health.v1, for both the server as a whole
/// (`""`) and each of its dispatch services.
#[derive(Debug, Clone)]
pub struct Serving {
    reporter: HealthReporter,
    services: &'static [Rpcs],
}

impl Serving {
    /// SERVING or NOT_SERVING.
    pub async fn set(&self, serving: bool) {
        let st = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", st).await;
        for r in self.services {
            self.reporter.set_service_status(r.service, st).await;
        }
    }

    /// The tonic reporter behind it.
    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }
}

/// A bound gRPC server, reporting NOT_SERVING, not accepting yet.
pub struct GrpcServer {
    spec: Spec,
    settings: GrpcSettings,
    tls: Option<ServerTls>,
    listener: TcpListener,
    serving: Serving,
    on_shed: Option<fn()>,
}

impl GrpcServer {
    /// Binds `settings.listen` and creates the RPC metrics of `spec` (so they exist before the
    /// first request). `tls`: from [`ServerTls::from_settings`], read early so a bad file fails
    /// start-up before anything else.
    ///
    /// # Errors
    /// The address cannot be bound (the message names `grpc.listen`).
    pub async fn bind(
        spec: Spec,
        settings: &GrpcSettings,
        tls: Option<ServerTls>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding grpc.listen {}", settings.listen))?;
        for r in spec.services {
            metrics::init_rpc_metrics(spec.label, r.methods);
        }
        let serving = Serving {
            reporter: HealthReporter::new(),
            services: spec.services,
        };
        serving.set(false).await;
        Ok(Self {
            spec,
            settings: settings.clone(),
            tls,
            listener,
            serving,
            on_shed: None,
        })
    }

    /// Also calls `f` for every request the in-flight bound sheds (a service's own counter).
    #[must_use]
    pub fn on_shed(mut self, f: fn()) -> Self {
        self.on_shed = Some(f);
        self
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The health status handle (NOT_SERVING until set).
    pub fn serving(&self) -> Serving {
        self.serving.clone()
    }

    /// Serves `routes` (the services of the [`Spec`]) with health and reflection until `stop`
    /// completes: then reports NOT_SERVING, stops accepting and returns once the requests in
    /// flight are answered (the caller bounds that wait).
    ///
    /// # Errors
    /// The embedded descriptor sets do not decode, or the server fails.
    pub async fn serve(
        self,
        routes: Routes,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            spec,
            settings: s,
            tls,
            listener,
            serving,
            on_shed,
        } = self;
        let served: Vec<&str> = spec.services.iter().map(|r| r.service).collect();
        let (reflection_v1, reflection_v1alpha) = reflection_services(&served)?;
        let health = HealthServer::new(HealthService::from_health_reporter(
            serving.reporter.clone(),
        ));
        let layer = RpcLayer::new(
            spec.label,
            spec.services,
            s.max_concurrent_requests,
            Some(Duration::from_millis(s.request_timeout_ms)),
            on_shed,
        );
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(s.max_concurrent_streams)
            .http2_max_header_list_size(s.max_header_list_bytes)
            .layer(layer)
            .add_routes(routes)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let signal = async move {
            stop.await;
            serving.set(false).await;
            tracing::info!("shutting down: not serving, draining in-flight requests");
        };
        let incoming = incoming(listener);
        match tls {
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(tls.incoming(incoming), signal)
                    .await
            }
            None => router.serve_with_incoming_shutdown(incoming, signal).await,
        }
        .context("grpc server")
    }
}
