//! The TaskQueryService gRPC adapter: authenticate, parse, call [`Reader`], map the error. The
//! server around it (load shedding, RPC spans and metrics, the request timeout) is
//! `dispatch_runtime::server`'s.

use std::sync::Arc;

use dispatch_core::{TaskId, Tenant};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_server::TaskQueryService;
use dispatch_runtime::ratelimit::SharedLimiter;
use dispatch_runtime::server::auth::Authenticator;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::ReadError;
use crate::lookup::Reader;
use crate::watch::{self, WatchLimits, WatchStream, Watches};
use crate::{batch, list};

/// Bounds of the service.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// WatchTask's bounds and safety re-read interval.
    pub watch: WatchLimits,
    /// Largest encoded BatchGetTasks or ListTasks answer (`query.max_response_bytes`).
    pub max_response_bytes: usize,
}

/// The service.
#[derive(Clone)]
pub struct QueryApi {
    reader: Arc<Reader>,
    auth: Arc<Authenticator>,
    stop: CancellationToken,
    watches: Arc<Watches>,
    max_response_bytes: usize,
    rate: Option<Arc<SharedLimiter>>,
}

impl QueryApi {
    /// A service over `reader`; open WatchTask streams end when `stop` fires.
    pub fn new(
        reader: Arc<Reader>,
        auth: Arc<Authenticator>,
        stop: CancellationToken,
        limits: Limits,
    ) -> Self {
        Self {
            reader,
            auth,
            stop,
            watches: Watches::new(limits.watch),
            max_response_bytes: limits.max_response_bytes,
            rate: None,
        }
    }

    /// Applies per-tenant read rate limits (`[limits]`).
    pub fn with_rate_limits(mut self, rate: Arc<SharedLimiter>) -> Self {
        self.rate = Some(rate);
        self
    }
}

fn parse_id(field: &str, raw: &str) -> Result<TaskId, ReadError> {
    TaskId::parse(raw).map_err(|e| ReadError::field(field, e.to_string()))
}

impl QueryApi {
    fn tenant<T>(&self, req: &Request<T>) -> Result<Tenant, Status> {
        self.auth.tenant(req.metadata())
    }
}

#[tonic::async_trait]
impl TaskQueryService for QueryApi {
    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let tenant = self.tenant(&req)?;
        let r = req.get_ref();
        let id = parse_id("task_id", &r.task_id)?;
        crate::limits::check(self.rate.as_deref(), &tenant, 1).await?;
        let found = self.reader.get(&tenant, id, r.min_version).await?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(pb::Task::clone(&found.task)),
            stale: found.stale,
            served_from: found.served_from as i32,
        }))
    }

    /// Read straight from MySQL (the replica when one is configured) on every call: workflows
    /// are not cached, so there is no stale answer when MySQL fails (UNAVAILABLE).
    async fn get_workflow(
        &self,
        req: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        let tenant = self.tenant(&req)?;
        let id = parse_id("workflow_id", &req.get_ref().workflow_id)?;
        crate::limits::check(self.rate.as_deref(), &tenant, 1).await?;
        let workflow = self.reader.workflow(&tenant, id).await?;
        Ok(Response::new(pb::GetWorkflowResponse {
            workflow: Some(workflow),
        }))
    }

    async fn batch_get_tasks(
        &self,
        req: Request<pb::BatchGetTasksRequest>,
    ) -> Result<Response<pb::BatchGetTasksResponse>, Status> {
        let tenant = self.tenant(&req)?;
        let ids = batch::parse_ids(&req.get_ref().task_ids)?;
        crate::limits::check(self.rate.as_deref(), &tenant, ids.len()).await?;
        let mut v = dispatch_core::Violations::default();
        let full = list::full_view(req.get_ref().view, &mut v);
        if !v.is_empty() {
            return Err(ReadError::Invalid(v).into());
        }
        let max = self.max_response_bytes;
        Ok(Response::new(
            self.reader.batch_get_view(&tenant, &ids, full, max).await?,
        ))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let tenant = self.tenant(&req)?;
        let filter = list::parse_request(&tenant, req.get_ref())?;
        crate::limits::check(self.rate.as_deref(), &tenant, 1).await?;
        let max = self.max_response_bytes;
        Ok(Response::new(self.reader.list(filter, max).await?))
    }

    type WatchTaskStream = WatchStream;

    async fn watch_task(
        &self,
        req: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let tenant = self.tenant(&req)?;
        let id = parse_id("task_id", &req.get_ref().task_id)?;
        let min_version = req.get_ref().min_version;
        crate::limits::check(self.rate.as_deref(), &tenant, 1).await?;
        let admitted = self.watches.admit(&tenant)?;
        let stream = watch::start(
            Arc::clone(&self.reader),
            admitted,
            tenant,
            id,
            min_version,
            self.stop.clone(),
        )
        .await?;
        Ok(Response::new(stream))
    }
}
