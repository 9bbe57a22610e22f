//! The baseline: a tonic server that implements TaskService and TaskQueryService and does nothing
//! but answer. Measured with the same generator in the same run as dispatch, it shows what share of
//! the machine the gRPC stack alone takes.

use std::net::SocketAddr;
use std::pin::Pin;

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_server::{TaskQueryService, TaskQueryServiceServer};
use dispatch_proto::v1::task_service_server::{TaskService, TaskServiceServer};
use futures::Stream;
use tonic::{Request, Response, Status};

/// The no-op service.
#[derive(Debug, Default, Clone, Copy)]
pub struct Noop;

#[tonic::async_trait]
impl TaskService for Noop {
    async fn submit_task(
        &self,
        r: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        let _ = r.into_inner();
        Ok(Response::new(pb::SubmitTaskResponse {
            task_id: "0".into(),
            ..Default::default()
        }))
    }
    async fn submit_tasks(
        &self,
        r: Request<pb::SubmitTasksRequest>,
    ) -> Result<Response<pb::SubmitTasksResponse>, Status> {
        let n = r.into_inner().tasks.len();
        let results = (0..n as u32)
            .map(|index| pb::SubmitResult {
                index,
                outcome: Some(pb::submit_result::Outcome::Accepted(
                    pb::SubmitTaskResponse::default(),
                )),
            })
            .collect();
        Ok(Response::new(pb::SubmitTasksResponse { results }))
    }
    async fn cancel_task(
        &self,
        _: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        Ok(Response::new(pb::CancelTaskResponse::default()))
    }
    async fn submit_workflow(
        &self,
        _: Request<pb::SubmitWorkflowRequest>,
    ) -> Result<Response<pb::SubmitWorkflowResponse>, Status> {
        Ok(Response::new(pb::SubmitWorkflowResponse::default()))
    }
    async fn cancel_workflow(
        &self,
        _: Request<pb::CancelWorkflowRequest>,
    ) -> Result<Response<pb::CancelWorkflowResponse>, Status> {
        Ok(Response::new(pb::CancelWorkflowResponse::default()))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;

#[tonic::async_trait]
impl TaskQueryService for Noop {
    async fn get_task(
        &self,
        r: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let id = r.into_inner().task_id;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(pb::Task {
                task_id: id,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
    async fn batch_get_tasks(
        &self,
        _: Request<pb::BatchGetTasksRequest>,
    ) -> Result<Response<pb::BatchGetTasksResponse>, Status> {
        Ok(Response::new(pb::BatchGetTasksResponse::default()))
    }
    async fn list_tasks(
        &self,
        _: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        Ok(Response::new(pb::ListTasksResponse::default()))
    }
    async fn get_workflow(
        &self,
        _: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        Ok(Response::new(pb::GetWorkflowResponse::default()))
    }
    type WatchTaskStream = EventStream;
    async fn watch_task(
        &self,
        _: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let ev = pb::TaskEvent {
            state: pb::TaskState::Succeeded as i32,
            ..Default::default()
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(ev)]))))
    }
}

/// Serves until Ctrl-C.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    eprintln!("noop server on {addr}");
    tonic::transport::Server::builder()
        .add_service(TaskServiceServer::new(Noop))
        .add_service(TaskQueryServiceServer::new(Noop))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
