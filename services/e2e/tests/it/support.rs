//! Helpers shared by the test modules.

use std::time::Duration;

use dispatch_proto::v1 as pb;
use dispatch_testkit::auth::{KEY_ACME, authed};
use dispatch_testkit::stack::Stack;

/// How long a task may take from submit to its terminal state.
pub const SETTLE: Duration = Duration::from_secs(30);

/// A spec of `task_type` with a unique business key.
pub fn spec(task_type: &str, payload: &[u8]) -> pb::TaskSpec {
    pb::TaskSpec {
        business_key: format!("order-{}", uuid::Uuid::now_v7().simple()),
        task_type: task_type.into(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// Submits `spec` as tenant `acme`.
pub async fn submit(stack: &Stack, spec: pb::TaskSpec) -> anyhow::Result<pb::SubmitTaskResponse> {
    let mut c = stack.tasks().await?;
    Ok(
        c.submit_task(authed(pb::SubmitTaskRequest { task: Some(spec) }, KEY_ACME))
            .await?
            .into_inner(),
    )
}

/// [`await_state`] of a task `acme` submitted, as accepted (from its version), until it
/// succeeded.
pub async fn await_succeeded(
    stack: &Stack,
    accepted: &pb::SubmitTaskResponse,
) -> anyhow::Result<pb::Task> {
    await_state(
        stack,
        KEY_ACME,
        &accepted.task_id,
        accepted.version,
        pb::TaskState::Succeeded,
    )
    .await
}

/// Reads the task through the reader (read-your-writes from `min_version`) until its state is
/// `want`.
pub async fn await_state(
    stack: &Stack,
    key: &str,
    task_id: &str,
    min_version: u64,
    want: pb::TaskState,
) -> anyhow::Result<pb::Task> {
    let q = stack.queries().await?;
    dispatch_testkit::eventually(&format!("task {task_id} {want:?}"), SETTLE, || {
        let mut q = q.clone();
        async move {
            let r = q
                .get_task(authed(
                    pb::GetTaskRequest {
                        task_id: task_id.to_owned(),
                        min_version,
                    },
                    key,
                ))
                .await
                .ok()?
                .into_inner();
            r.task.filter(|t| t.state == want as i32)
        }
    })
    .await
}
