//! Idempotency keys are case-sensitive end to end: two tasks whose keys differ only in letter
//! case are two rows, each keeping its own state (the tasks table's unique key once compared
//! them without case, so the second task's writes landed on the first task's row).

use dispatch_core::{TaskId, TaskState};
use dispatch_store::tasks::{self, TaskWrite};
use dispatch_testkit::{TestEnv, task_write};

#[tokio::test]
async fn keys_differing_only_in_case_are_two_tasks() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let upper = TaskId::from_idempotency_key("acme", "Nightly-1");
    let lower = TaskId::from_idempotency_key("acme", "nightly-1");
    assert_ne!(upper, lower);
    let write = |id, key: &str, state| TaskWrite {
        idempotency_key: Some(key.into()),
        ..task_write(id, "acme", state, 1)
    };
    let mut conn = env.pool.acquire().await?;
    tasks::upsert_batch(
        &mut conn,
        &[write(upper, "Nightly-1", TaskState::Succeeded)],
    )
    .await?;
    tasks::upsert_batch(&mut conn, &[write(lower, "nightly-1", TaskState::Running)]).await?;
    drop(conn);
    let states = tasks::states(&env.pool, &[upper, lower]).await?;
    let state_of = |id| states.iter().find(|(i, _)| *i == id).map(|(_, s)| s.state);
    assert_eq!(state_of(upper), Some(TaskState::Succeeded), "{states:?}");
    assert_eq!(state_of(lower), Some(TaskState::Running), "{states:?}");
    env.cleanup().await;
    Ok(())
}
