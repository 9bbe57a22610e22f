//! `dispatch.v1.TaskService` over tonic: thin adapters from gRPC to [`Gateway`].
//!
//! Each handler authenticates, rate-limits, parses, then runs the domain call on its own task:
//! a client that gives up (deadline, disconnect) must not abort a submit half way (say after the
//! idempotency key was taken but before the record was produced). The domain call gets the
//! caller's deadline (`grpc-timeout`, capped by `grpc.request_timeout_ms`, less a margin) and
//! answers by it: OK only for what is durable, DEADLINE_EXCEEDED with nothing written. The RPC span
//! (`dispatch_runtime::server`'s, which also sheds, times out and measures every request)
//! continues the caller's trace (W3C `traceparent` metadata), and the same context goes into the
//! records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use dispatch_core::Tenant;
use dispatch_core::task::limits::BATCH_MAX_ITEMS;
use dispatch_core::validate::parse_task_spec_with;
use dispatch_core::{Violations, envelope::header};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_service_server::TaskService;
use dispatch_runtime::server::auth::Authenticator;
use dispatch_runtime::server::layer::parse_grpc_timeout;
use dispatch_runtime::telemetry;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::GatewayError;
use crate::limits::Limits;
use crate::metrics;
use crate::tasks::{Gateway, TraceHeaders};
use crate::workflows::Workflows;

/// TaskService's RPCs (the metrics' `method` label).
pub const METHODS: [&str; 5] = [
    "SubmitTask",
    "SubmitTasks",
    "CancelTask",
    "SubmitWorkflow",
    "CancelWorkflow",
];

/// The TaskService implementation.
#[derive(Clone)]
pub struct TaskApi {
    gateway: Arc<Gateway>,
    workflows: Arc<Workflows>,
    auth: Arc<Authenticator>,
    limits: Arc<Limits>,
    request_timeout: Option<Duration>,
}

impl TaskApi {
    /// Over the shared domain state.
    pub fn new(
        gateway: Arc<Gateway>,
        workflows: Arc<Workflows>,
        auth: Arc<Authenticator>,
        limits: Arc<Limits>,
    ) -> Self {
        Self {
            gateway,
            workflows,
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
    /// server's bound, less a margin (a quarter, at most 50 ms) so the domain's own answer
    /// (OK, or DEADLINE_EXCEEDED with nothing written) goes out before the transport gives up.
    /// The margin also has to cover the time between the caller's send and this handler's
    /// start, which on a loaded host was seen to take 20 ms: a tenth of a 200 ms deadline was
    /// not enough.
    fn deadline(&self, md: &MetadataMap) -> Option<Instant> {
        let start = Instant::now();
        let timeout = match (grpc_timeout(md), self.request_timeout) {
            (Some(c), Some(s)) => c.min(s),
            (c, s) => c.or(s)?,
        };
        let margin = (timeout / 4).min(Duration::from_millis(50));
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

/// Trace context for produced records: the RPC span's when tracing is on, else the caller's as
/// received (so a trace still continues through a gateway that samples nothing).
fn trace_headers(md: &MetadataMap) -> TraceHeaders {
    let mut out = telemetry::current_trace_headers();
    if !out.iter().any(|(k, _)| k == header::TRACEPARENT) {
        out = telemetry::pairs_from_metadata(md);
    }
    out
}

/// The caller's `grpc-timeout`.
fn grpc_timeout(md: &MetadataMap) -> Option<Duration> {
    md.get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
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
        let span = tracing::Span::current();
        let deadline = self.deadline(request.metadata());
        async move {
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
        }
        .await
        .map(Response::new)
    }

    async fn submit_tasks(
        &self,
        request: Request<pb::SubmitTasksRequest>,
    ) -> Result<Response<pb::SubmitTasksResponse>, Status> {
        let span = tracing::Span::current();
        let deadline = self.deadline(request.metadata());
        async move {
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
        }
        .await
        .map(Response::new)
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let span = tracing::Span::current();
        let deadline = self.deadline(request.metadata());
        async move {
            let tenant = self.tenant(request.metadata(), 0)?;
            self.limit(&tenant, 1, false).await?;
            let trace = span.in_scope(|| trace_headers(request.metadata()));
            let req = request.into_inner();
            let gw = self.gateway.clone();
            detached(span, async move {
                gw.cancel(&tenant, req, &trace, deadline).await
            })
            .await
        }
        .await
        .map(Response::new)
    }

    async fn submit_workflow(
        &self,
        request: Request<pb::SubmitWorkflowRequest>,
    ) -> Result<Response<pb::SubmitWorkflowResponse>, Status> {
        let span = tracing::Span::current();
        async move {
            let tenant = self.auth.tenant(request.metadata()).inspect_err(|_| {
                metrics::workflow_submit("unauthenticated");
            })?;
            let n = request.get_ref().nodes.len();
            let invalid = |v: Violations| {
                metrics::workflow_submit("invalid");
                v.to_status()
            };
            // A workflow of no nodes or too many is refused on its size before it costs tokens
            // (as a batch is); otherwise it costs one per node.
            if n == 0 || n > self.workflows.max_nodes() {
                return Err(invalid(
                    self.workflows
                        .parse(&tenant, request.into_inner(), Utc::now())
                        .err()
                        .unwrap_or_default(),
                ));
            }
            self.limits.check(&tenant, n as u32).await.map_err(|l| {
                metrics::workflow_submit("rate_limited");
                Status::from(GatewayError::Limited(l))
            })?;
            let parsed = self
                .workflows
                .parse(&tenant, request.into_inner(), Utc::now())
                .map_err(invalid)?;
            let wf = self.workflows.clone();
            detached(span, async move { wf.submit(parsed).await }).await
        }
        .await
        .map(Response::new)
    }

    async fn cancel_workflow(
        &self,
        request: Request<pb::CancelWorkflowRequest>,
    ) -> Result<Response<pb::CancelWorkflowResponse>, Status> {
        let span = tracing::Span::current();
        async move {
            let tenant = self.tenant(request.metadata(), 0)?;
            self.limit(&tenant, 1, false).await?;
            let req = request.into_inner();
            let wf = self.workflows.clone();
            detached(span, async move { wf.cancel(&tenant, req).await }).await
        }
        .await
        .map(Response::new)
    }
}
