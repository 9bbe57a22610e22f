//! [`task_write`]: a processor's state write, and [`new_task`]: a submitted task, with the
//! defaults tests share, to change with struct update syntax where a test needs other values.

use dispatch_core::{
    BusinessKey, NewTask, Payload, Priority, RetryPolicy, TaskId, TaskState, TaskType, Tenant,
};
use dispatch_store::tasks::TaskWrite;

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
