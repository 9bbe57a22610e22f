//! Load shedding: a global bound on requests in flight. A request over the bound is answered
//! UNAVAILABLE at once (never queued), so overload turns into fast rejections the client can
//! retry with backoff rather than a latency cliff. Health and reflection are exempt, so probes
//! keep working under overload.
//!
//! (tonic's own `load_shed` answers RESOURCE_EXHAUSTED, which clients read as "your quota", and
//! `concurrency_limit_per_connection` bounds one connection only; hence this layer.)

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::Status;
use tower::{Layer, Service};

use crate::metrics;

/// Wraps a service with the in-flight bound.
#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
}

impl ShedLayer {
    /// At most `max_in_flight` requests at once.
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// The shedding service.
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B, RB> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path().starts_with("/grpc.") {
            return Box::pin(self.inner.call(req));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let out = fut.await;
                    drop(permit);
                    out
                })
            }
            Err(_) => {
                metrics::load_shed();
                let status = Status::unavailable(
                    "server overloaded: too many requests in flight; retry with backoff",
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
