//! `dispatch.v1.TaskService` over tonic: thin adapters from gRPC to [`Gateway`].
//!
//! Each handler authenticates, rate-limits, parses, then runs the domain call on its own task:
//! a client that gives up (deadline, disconnect) must not abort a submit half way (say after the
//! idempotency key was taken but before the record was produced). The domain call gets the
//! caller's deadline (`grpc-timeout`, capped by `grpc.request_timeout_ms`, less a margin) and
//! answers by it: OK only for what is durable, DEADLINE_EXCEEDED with nothing written. The RPC span continues the
//! caller's trace (W3C `traceparent` metadata), and the same context goes into the records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use dispatch_core::Tenant;
use dispatch_core::task::limits::BATCH_MAX_ITEMS;
use dispatch_core::validate::parse_task_spec_with;
use dispatch_core::{Violations, envelope::header};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_service_server::TaskService;
use dispatch_runtime::grpc::{Authenticator, observe};
use dispatch_runtime::telemetry;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::GatewayError;
use crate::gateway::{Gateway, TraceHeaders};
use crate::limits::Limits;
use crate::metrics;

/// The TaskService implementation.
#[derive(Clone)]
pub struct TaskApi {
    gateway: Arc<Gateway>,
    auth: Arc<Authenticator>,
    limits: Arc<Limits>,
    request_timeout: Option<Duration>,
}

impl TaskApi {
    /// Over the shared domain state.
    pub fn new(gateway: Arc<Gateway>, auth: Arc<Authenticator>, limits: Arc<Limits>) -> Self {
        Self {
            gateway,
            auth,
            limits,
            request_timeout: None,
        }
    }

    /// The server's bound on any request (`grpc.request_timeout_ms`), which caps the caller's.
    pub fn with_request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = Some(t);
        self
    }

    /// When this request's answer is due: the shorter of the caller's `grpc-timeout` and the
    /// server's bound, less a margin (a tenth, at most 50 ms) so the domain's own answer
    /// (OK, or DEADLINE_EXCEEDED with nothing written) goes out before the transport gives up.
    fn deadline(&self, md: &MetadataMap) -> Option<Instant> {
        let start = Instant::now();
        let timeout = match (grpc_timeout(md), self.request_timeout) {
            (Some(c), Some(s)) => c.min(s),
            (c, s) => c.or(s)?,
        };
        let margin = (timeout / 10).min(Duration::from_millis(50));
        Some(start + timeout - margin)
    }

    fn tenant(&self, md: &MetadataMap, counts_as_submit: u64) -> Result<Tenant, Status> {
        self.auth.tenant(md).inspect_err(|_| {
            if counts_as_submit > 0 {
                metrics::submit_n("unauthenticated", counts_as_submit);
            }
        })
    }

    async fn limit(&self, tenant: &Tenant, n: u32, is_submit: bool) -> Result<(), Status> {
        self.limits.check(tenant, n).await.map_err(|l| {
            if is_submit {
                metrics::submit_n("rate_limited", u64::from(n));
            }
            GatewayError::Limited(l).into()
        })
    }
}

/// The RPC span, a child of the caller's trace context.
fn rpc_span(method: &'static str, md: &MetadataMap) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "dispatch.v1.TaskService",
        rpc.method = method,
    );
    telemetry::set_parent(&span, telemetry::context_from_metadata(md));
    span
}

/// Trace context for produced records: the RPC span's when tracing is on, else the caller's as
/// received (so a trace still continues through a gateway that samples nothing).
fn trace_headers(md: &MetadataMap) -> TraceHeaders {
    let mut out = telemetry::current_trace_headers();
    if !out.iter().any(|(k, _)| k == header::TRACEPARENT) {
        out = [header::TRACEPARENT, header::TRACESTATE]
            .iter()
            .filter_map(|k| {
                md.get(*k)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| ((*k).to_owned(), v.to_owned()))
            })
            .collect();
    }
    out
}

/// The caller's `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit).
fn grpc_timeout(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
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

/// Runs `fut` on its own task (so a cancelled RPC cannot abort it half way) inside `span`.
async fn detached<T: Send + 'static>(
    span: tracing::Span,
    fut: impl std::future::Future<Output = Result<T, GatewayError>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(fut.instrument(span)).await {
        Ok(r) => r.map_err(Status::from),
        Err(e) => Err(GatewayError::Internal(format!("request task failed: {e}")).into()),
    }
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    async fn submit_task(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        let span = rpc_span("SubmitTask", request.metadata());
        let deadline = self.deadline(request.metadata());
        observe("gateway", "SubmitTask", async move {
            let tenant = self.tenant(request.metadata(), 1)?;
            self.limit(&tenant, 1, true).await?;
            let trace = span.in_scope(|| trace_headers(request.metadata()));
            let Some(spec) = request.into_inner().task else {
                metrics::submit("invalid");
                let mut v = Violations::default();
                v.add("task", "is required");
                return Err(v.to_status());
            };
            let limits = self.gateway.spec_limits();
            let task =
                parse_task_spec_with("task", &tenant, spec, Utc::now(), limits).map_err(|v| {
                    metrics::submit("invalid");
                    v.to_status()
                })?;
            let gw = self.gateway.clone();
            detached(span, async move { gw.submit(task, &trace, deadline).await }).await
        })
        .await
        .map(Response::new)
    }

    async fn submit_tasks(
        &self,
        request: Request<pb::SubmitTasksRequest>,
    ) -> Result<Response<pb::SubmitTasksResponse>, Status> {
        let span = rpc_span("SubmitTasks", request.metadata());
        let deadline = self.deadline(request.metadata());
        observe("gateway", "SubmitTasks", async move {
            let n = request.get_ref().tasks.len();
            let tenant = self.tenant(request.metadata(), n as u64)?;
            if n == 0 || n > BATCH_MAX_ITEMS {
                metrics::submit_n("invalid", n as u64);
                let mut v = Violations::default();
                v.add(
                    "tasks",
                    format!("must hold 1..={BATCH_MAX_ITEMS} items, not {n}"),
                );
                return Err(v.to_status());
            }
            self.limit(&tenant, n as u32, true).await?;
            let trace = span.in_scope(|| trace_headers(request.metadata()));
            let specs = request.into_inner().tasks;
            let gw = self.gateway.clone();
            detached(span, async move {
                Ok(pb::SubmitTasksResponse {
                    results: gw.submit_many(&tenant, specs, &trace, deadline).await,
                })
            })
            .await
        })
        .await
        .map(Response::new)
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let span = rpc_span("CancelTask", request.metadata());
        let deadline = self.deadline(request.metadata());
        observe("gateway", "CancelTask", async move {
            let tenant = self.tenant(request.metadata(), 0)?;
            self.limit(&tenant, 1, false).await?;
            let trace = span.in_scope(|| trace_headers(request.metadata()));
            let req = request.into_inner();
            let gw = self.gateway.clone();
            detached(span, async move {
                gw.cancel(&tenant, req, &trace, deadline).await
            })
            .await
        })
        .await
        .map(Response::new)
    }
}
