//! [`task_write`]: a processor's state write, [`new_task`]: a submitted task, [`new_workflow`]: a
//! submitted workflow, and [`dead_letter`]: a DLQ index row, with the defaults tests share, to change with struct update
//! syntax where a test needs other values.

use dispatch_core::workflow::OnFailure;
use dispatch_core::{
    BusinessKey, NewTask, Payload, Priority, RetryPolicy, TaskId, TaskState, TaskType, Tenant,
};
use dispatch_store::dead_letters::DeadLetterRow;
use dispatch_store::tasks::TaskWrite;
use dispatch_store::workflows::{NewNode, NewWorkflow};

/// The processor's write of `id` (owned by `tenant`) in `state` at `attempt`, generation 0, made
/// without a lease, stamped now. The rest: business key `k`, type `noop`, default priority,
/// payload `p`, policy of 4 attempts backing off from 1 s to 5 min, no idempotency key, schedule,
/// deadline, timeout, error or result. Other values with struct update syntax:
/// `TaskWrite { business_key: "order-8".into(), ..task_write(id, "acme", state, 1) }`.
pub fn task_write(id: TaskId, tenant: &str, state: TaskState, attempt: u32) -> TaskWrite {
    let now = chrono::Utc::now();
    TaskWrite {
        task_id: id,
        tenant: tenant.into(),
        business_key: "k".into(),
        task_type: "noop".into(),
        priority: Priority::Default,
        payload: b"p".to_vec(),
        state,
        attempts: attempt,
        max_attempts: 4,
        initial_backoff_ms: 1000,
        max_backoff_ms: 300_000,
        generation: 0,
        idempotency_key: None,
        run_at: None,
        deadline_at: None,
        timeout_ms: None,
        last_error: String::new(),
        result: None,
        version: state.version(0, attempt),
        lease_epoch: 0,
        created_at: now,
        updated_at: now,
    }
}

/// A first submit of `task_type` on business key `key` of tenant `acme` carrying `payload`, as the
/// gateway builds it: a new id, default priority and retry policy, no idempotency key, schedule,
/// deadline or timeout. Other values with struct update syntax:
/// `NewTask { retry, ..new_task("simulate", "k", b"{}") }`.
pub fn new_task(task_type: &str, key: &str, payload: &[u8]) -> NewTask {
    NewTask {
        task_id: TaskId::new(),
        tenant: Tenant::parse("acme").expect("a valid tenant"),
        business_key: BusinessKey::parse(key).expect("a valid business key"),
        task_type: TaskType::parse(task_type).expect("a valid task type"),
        payload: Payload::parse(payload.to_vec()).expect("a payload within the limit"),
        priority: Priority::Default,
        idempotency_key: None,
        run_at: None,
        deadline: None,
        retry: RetryPolicy::DEFAULT,
        timeout_ms: None,
        submitted_at: chrono::Utc::now(),
    }
}

/// The task of workflow node `name` of `workflow`, owned by `tenant`, as the gateway builds it:
/// a `noop` on business key `name` with an empty payload.
pub fn node_task(workflow: TaskId, name: &str, tenant: &str) -> NewTask {
    NewTask {
        task_id: TaskId::workflow_node(workflow, name),
        tenant: Tenant::parse(tenant).expect("a valid tenant"),
        ..new_task("noop", name, b"")
    }
}

/// A workflow of `tenant` with a new id: a [`node_task`] per name of `names`, in that order, and
/// `edges` as `(node, the node it waits for, on failure)` by index; a node that waits for none is
/// a root. No idempotency key, a zero fingerprint.
pub fn new_workflow(
    tenant: &str,
    names: &[&str],
    edges: Vec<(usize, usize, OnFailure)>,
) -> NewWorkflow {
    let workflow_id = TaskId::new();
    let nodes = names
        .iter()
        .enumerate()
        .map(|(i, name)| NewNode {
            name: (*name).into(),
            root: !edges.iter().any(|(node, _, _)| *node == i),
            task: node_task(workflow_id, name, tenant),
        })
        .collect();
    NewWorkflow {
        workflow_id,
        tenant: tenant.into(),
        idempotency_key: None,
        fingerprint: [0; 32],
        nodes,
        edges,
    }
}

/// The DLQ index row of a new task of `tenant` that died `at`, at `offset` of partition 0 of both
/// topic `t` and the DLQ. The rest: type `noop`, business key `k`, generation 0, class
/// `exhausted` after 3 attempts, no error text. Other values with struct update syntax:
/// `DeadLetterRow { error: "boom".into(), ..dead_letter("acme", 7, at) }`.
pub fn dead_letter(tenant: &str, offset: i64, at: chrono::DateTime<chrono::Utc>) -> DeadLetterRow {
    DeadLetterRow {
        task_id: TaskId::new(),
        tenant: tenant.into(),
        task_type: "noop".into(),
        business_key: "k".into(),
        generation: 0,
        error_class: "exhausted".into(),
        error: String::new(),
        attempts: 3,
        original_topic: "t".into(),
        original_partition: 0,
        original_offset: offset,
        dlq_partition: 0,
        dlq_offset: offset,
        dead_at: at,
    }
}
