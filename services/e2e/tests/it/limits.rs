//! Oversized gRPC messages are refused by the configured transport limit, and the services
//! keep serving.

use dispatch_proto::v1 as pb;
use dispatch_testkit::auth::{KEY_ACME, authed};
use dispatch_testkit::stack::Stack;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{await_succeeded, spec, submit};

const LIMIT: usize = 64 * 1024;

fn is_size_rejection(s: &tonic::Status) -> bool {
    matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange)
}

async fn serving(addr: std::net::SocketAddr) -> anyhow::Result<bool> {
    let mut h = HealthClient::new(dispatch_testkit::stack::channel(addr).await?);
    let r = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    Ok(r.status == ServingStatus::Serving as i32)
}

#[tokio::test]
async fn oversized_requests_are_rejected_and_services_stay_healthy() -> anyhow::Result<()> {
    let stack = Stack::start_with(|s| {
        s.gateway.grpc.max_request_bytes = LIMIT;
        s.reader.grpc.max_request_bytes = LIMIT;
    })
    .await?;
    let mut tasks = stack.tasks().await?;
    let mut queries = stack.queries().await?;

    // 100 KiB: a valid payload for the domain (limit 256 KiB), over the transport limit.
    let big = spec("noop", &vec![b'x'; 100 * 1024]);
    let err = tasks
        .submit_task(authed(
            pb::SubmitTaskRequest {
                task: Some(big.clone()),
            },
            KEY_ACME,
        ))
        .await
        .expect_err("an oversized SubmitTask is refused");
    assert!(is_size_rejection(&err), "{err:?}");
    let err = tasks
        .submit_tasks(authed(
            pb::SubmitTasksRequest {
                tasks: vec![spec("noop", &vec![b'y'; 40 * 1024]); 2],
            },
            KEY_ACME,
        ))
        .await
        .expect_err("an oversized SubmitTasks is refused");
    assert!(is_size_rejection(&err), "{err:?}");
    let err = queries
        .get_task(authed(
            pb::GetTaskRequest {
                task_id: "x".repeat(100 * 1024),
                min_version: 0,
            },
            KEY_ACME,
        ))
        .await
        .expect_err("an oversized GetTask is refused");
    assert!(is_size_rejection(&err), "{err:?}");

    // Nothing was accepted for the refused request.
    let listed = queries
        .list_tasks(authed(
            pb::ListTasksRequest {
                business_key: big.business_key.clone(),
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();
    assert!(listed.tasks.is_empty());

    // Both still serve: health, and a request just under the limit goes all the way through
    // on the same connections.
    assert!(stack.gateway.is_running() && stack.reader.is_running());
    assert!(serving(stack.gateway.addr).await?);
    assert!(serving(stack.reader.addr).await?);
    let near = spec("noop", &vec![b'z'; LIMIT - 1024]);
    let accepted = tasks
        .submit_task(authed(pb::SubmitTaskRequest { task: Some(near) }, KEY_ACME))
        .await?
        .into_inner();
    await_succeeded(&stack, &accepted).await?;
    let small = submit(&stack, spec("noop", b"")).await?;
    assert!(!small.task_id.is_empty());
    stack.stop().await
}
