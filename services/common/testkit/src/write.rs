//! [`task_write`]: a processor's state write with the defaults tests share, to change with struct
//! update syntax where a test needs other values.

use dispatch_core::{Priority, TaskId, TaskState};
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

/// The task of workflow node `name` of `workflow`, owned by `tenant`, as the gateway builds it:
/// its derived id, business key `name`, type `noop`, empty payload, default priority and retry
/// policy, no schedule, deadline or timeout.
pub fn node_task(workflow: TaskId, name: &str, tenant: &str) -> dispatch_core::NewTask {
    use dispatch_core::{BusinessKey, Payload, RetryPolicy, TaskType, Tenant};
    dispatch_core::NewTask {
        task_id: TaskId::workflow_node(workflow, name),
        tenant: Tenant::parse(tenant).expect("a valid tenant"),
        business_key: BusinessKey::parse(name).expect("a node name is a valid key"),
        task_type: TaskType::parse("noop").expect("noop"),
        payload: Payload::parse(Vec::new()).expect("an empty payload"),
        priority: Priority::Default,
        idempotency_key: None,
        run_at: None,
        deadline: None,
        retry: RetryPolicy::DEFAULT,
        timeout_ms: None,
        submitted_at: chrono::Utc::now(),
    }
}
