//! [`RpcLayer`]: the one tower layer every gRPC server runs its requests through, outermost of
//! the server's own layers. Per request, in order:
//!
//! 1. Metrics start ([`RpcGuard`]): from here on the request is counted exactly once.
//! 2. Load shedding: a global bound on requests in flight. A request over the bound is answered
//!    UNAVAILABLE at once (never queued), so overload turns into fast rejections the client can
//!    retry with backoff rather than a latency cliff, and it is counted as UNAVAILABLE. Health and
//!    reflection are exempt, so probes keep working under overload. (tonic's own `load_shed`
//!    answers RESOURCE_EXHAUSTED, which clients read as "your quota", and
//!    `concurrency_limit_per_connection` bounds one connection only; hence this layer.)
//! 3. The RPC span (`rpc`, a child of the caller's W3C trace context): the handler runs in it.
//! 4. The request timeout: the shorter of the caller's `grpc-timeout` and
//!    `grpc.request_timeout_ms`. On expiry the handler future is dropped and the caller gets
//!    what tonic's own `Server::timeout` answers (CANCELLED, "Timeout expired"); the metrics
//!    count it as DEADLINE_EXCEEDED, which is what happened.
//!
//! A handler future dropped by the transport (client disconnect, reset stream) is counted as
//! CANCELLED by the guard's `Drop`, and the in-flight gauge goes back down with it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::Instrument;

use super::metrics::RpcGuard;
use crate::telemetry;

/// What tonic's `Server::timeout` answers on expiry (kept, so callers see no change).
pub const TIMEOUT_MESSAGE: &str = "Timeout expired";

/// The message of a request shed by the in-flight bound.
pub const SHED_MESSAGE: &str = "server overloaded: too many requests in flight; retry with backoff";

/// Builds [`Rpc`] services.
#[derive(Clone)]
pub struct RpcLayer {
    cfg: Arc<Config>,
}

struct Config {
    /// The `service` label of the metrics (`gateway`, `reader`, `processor`).
    label: &'static str,
    /// `/<grpc service>/<method>` -> (grpc service, method): the RPCs measured.
    methods: HashMap<String, (&'static str, &'static str)>,
    timeout: Option<Duration>,
    permits: Arc<Semaphore>,
    on_shed: Option<fn()>,
}

impl RpcLayer {
    /// Requests of the RPCs of `services` are measured under the label `label`; at most
    /// `max_in_flight` requests (health and reflection aside) are
    /// served at once (each shed one also calls `on_shed`, a service's own counter); none runs
    /// longer than `timeout` (`None`: only the caller's `grpc-timeout`).
    pub fn new(
        label: &'static str,
        services: &[super::Rpcs],
        max_in_flight: usize,
        timeout: Option<Duration>,
        on_shed: Option<fn()>,
    ) -> Self {
        let methods = services
            .iter()
            .flat_map(|r| {
                r.methods
                    .iter()
                    .map(|m| (format!("/{}/{m}", r.service), (r.service, *m)))
            })
            .collect();
        Self {
            cfg: Arc::new(Config {
                label,
                methods,
                timeout,
                permits: Arc::new(Semaphore::new(max_in_flight)),
                on_shed,
            }),
        }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;
    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            cfg: Arc::clone(&self.cfg),
        }
    }
}

/// The service [`RpcLayer`] wraps around the routes.
#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    cfg: Arc<Config>,
}

/// A `grpc-timeout` value (gRPC over HTTP/2: at most 8 digits and a unit), as tonic reads it.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The code a response carries in its headers (a trailers-only error), else OK (the status of a
/// response with a body comes in its trailers: the handler answered).
fn response_code<B>(r: &http::Response<B>) -> Code {
    header(r.headers(), "grpc-status")
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// The RPC span, a child of the caller's trace context.
fn rpc_span(service: &'static str, method: &'static str, h: &http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    let pairs: Vec<(String, String)> = ["traceparent", "tracestate"]
        .iter()
        .filter_map(|k| header(h, k).map(|v| ((*k).to_owned(), v.to_owned())))
        .collect();
    if !pairs.is_empty() {
        telemetry::set_parent(&span, telemetry::context_from_pairs(&pairs));
    }
    span
}

impl Config {
    /// When the server gives up on a request that arrived now.
    fn deadline(&self, h: &http::HeaderMap) -> Option<Instant> {
        let client = header(h, "grpc-timeout").and_then(parse_grpc_timeout);
        let t = match (client, self.timeout) {
            (Some(c), Some(s)) => c.min(s),
            (c, s) => c.or(s)?,
        };
        Instant::now().checked_add(t)
    }
}

/// Runs `fut` until `deadline`: `None` when it passed first (the future is dropped).
async fn until<F: std::future::Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut).await.ok(),
        None => Some(fut.await),
    }
}

fn timed_out<RB: Default>() -> http::Response<RB> {
    Status::cancelled(TIMEOUT_MESSAGE).into_http()
}

impl<S, B, RB> Service<http::Request<B>> for Rpc<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>, Error = Infallible>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<S::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let deadline = self.cfg.deadline(req.headers());
        let path = req.uri().path();
        if path.starts_with("/grpc.") {
            // Health and reflection: neither shed nor measured.
            let fut = self.inner.call(req);
            return Box::pin(async move {
                until(deadline, fut)
                    .await
                    .unwrap_or_else(|| Ok(timed_out()))
            });
        }
        let rpc = self.cfg.methods.get(path).copied();
        let guard = rpc.map(|(_, method)| RpcGuard::start(self.cfg.label, method, deadline));
        let Ok(permit) = Arc::clone(&self.cfg.permits).try_acquire_owned() else {
            if let Some(f) = self.cfg.on_shed {
                f();
            }
            if let Some(g) = guard {
                g.finish(Code::Unavailable);
            }
            return Box::pin(std::future::ready(Ok(
                Status::unavailable(SHED_MESSAGE).into_http()
            )));
        };
        let span = match rpc {
            Some((service, method)) => rpc_span(service, method, req.headers()),
            None => tracing::Span::none(),
        };
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(
            async move {
                let out = until(deadline, fut).await;
                drop(permit);
                let out = match out {
                    Some(r) => r?,
                    None => {
                        if let Some(g) = guard {
                            g.finish(Code::DeadlineExceeded);
                        }
                        return Ok(timed_out());
                    }
                };
                if let Some(g) = guard {
                    g.finish(response_code(&out));
                }
                Ok(out)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_like_tonic() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("123456789S"), None, "more than 8 digits");
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
    }

    #[test]
    fn the_code_is_the_trailers_only_status_else_ok() {
        let err: http::Response<tonic::body::Body> = Status::not_found("x").into_http();
        assert_eq!(response_code(&err), Code::NotFound);
        let ok = http::Response::new(tonic::body::Body::default());
        assert_eq!(response_code(&ok), Code::Ok);
    }
}
