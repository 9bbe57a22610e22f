//! Attempt timeouts against the real `simulate` handler: a task's own `timeout_ms` and its type's
//! timeout, whichever is shorter, bound each attempt; the error names the bound that fired.

use std::time::{Duration, Instant};

use chrono::Utc;
use dispatch_core::{RetryPolicy, TaskId, TaskState};
use dispatch_testkit::TestEnv;
use sqlx::Row;

use crate::harness::{produce, producer, settings, start, task, wait_all, wait_succeeded};

/// (attempt, outcome, error, duration_ms) of every attempt of `id`, in order.
async fn attempts(
    pool: &sqlx::MySqlPool,
    id: TaskId,
) -> anyhow::Result<Vec<(u32, String, String, u32)>> {
    let rows = sqlx::query(
        "SELECT attempt, outcome, error, duration_ms FROM task_attempts WHERE task_id = ? \
         ORDER BY attempt",
    )
    .bind(id.as_bytes().as_slice())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            // Binary-collated text comes back as bytes.
            let error = String::from_utf8(r.try_get::<Vec<u8>, _>(2)?)?;
            Ok((r.try_get(0)?, r.try_get(1)?, error, r.try_get(3)?))
        })
        .collect()
}

/// Every attempt of `id` timed out after about `ms` with `error`, and there were `n` of them.
async fn assert_timed_out(
    pool: &sqlx::MySqlPool,
    id: TaskId,
    n: usize,
    ms: u32,
    error: &str,
) -> anyhow::Result<()> {
    let a = attempts(pool, id).await?;
    assert_eq!(a.len(), n, "{a:?}");
    for (attempt, outcome, err, duration_ms) in &a {
        assert_eq!(outcome, "timeout", "attempt {attempt}: {a:?}");
        assert_eq!(err, error, "attempt {attempt}");
        assert!(
            *duration_ms >= ms && *duration_ms < ms + 1_500,
            "attempt {attempt} ran {duration_ms} ms under a {ms} ms bound"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_attempt_runs_under_the_shorter_of_the_task_and_type_timeouts() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = settings(&env);
    // `simulate` keeps the default type timeout (30 s); `simulate.short` allows 300 ms.
    assert_eq!(s.handlers.default_timeout_ms, 30_000);
    s.handlers.types.insert(
        "simulate.short".into(),
        dispatch_processor::settings::TypeSettings {
            kind: "simulate".into(),
            timeout_ms: Some(300),
            concurrency: None,
        },
    );
    let app = start(s).await?;
    let p = producer(&env)?;
    let t = env.topics();
    let slow = r#"{"latency_ms": 3000}"#;
    let policy = RetryPolicy {
        max_attempts: 2,
        initial_backoff_ms: 100,
        max_backoff_ms: 200,
    };
    let started = Instant::now();

    // A per-task timeout of 300 ms under the type's 30 s: both attempts time out, then DEAD.
    let mut bounded = task("simulate", "bounded", slow);
    bounded.timeout_ms = Some(300);
    bounded.retry = policy;
    produce(&p, &t, &bounded).await?;
    // The same through the tasks row: scheduled, then rebuilt by the scheduler when due.
    let mut scheduled = task("simulate", "scheduled", slow);
    scheduled.timeout_ms = Some(300);
    scheduled.retry = policy;
    scheduled.run_at = Some(Utc::now() + chrono::Duration::milliseconds(1_000));
    produce(&p, &t, &scheduled).await?;
    // The type's 300 ms is shorter than the task's 10 s: the type's bound fires.
    let mut by_type = task("simulate.short", "by-type", slow);
    by_type.timeout_ms = Some(10_000);
    by_type.retry = policy;
    produce(&p, &t, &by_type).await?;
    // No per-task timeout (an envelope like those written before the field): runs to completion.
    let mut free = task("simulate", "free", slow);
    free.retry = policy;
    produce(&p, &t, &free).await?;
    // A per-task timeout longer than the work: completes.
    let mut roomy = task("simulate", "roomy", r#"{"latency_ms": 200}"#);
    roomy.timeout_ms = Some(5_000);
    roomy.retry = policy;
    produce(&p, &t, &roomy).await?;

    let dead = [bounded.task_id, scheduled.task_id, by_type.task_id];
    wait_all(&env.pool, &dead, TaskState::Dead, Duration::from_secs(25)).await?;
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "dead well before the type's 30 s timeout"
    );
    let task_bound = "handler timed out after 300 ms (the task's timeout_ms)";
    assert_timed_out(&env.pool, bounded.task_id, 2, 300, task_bound).await?;
    assert_timed_out(&env.pool, scheduled.task_id, 2, 300, task_bound).await?;
    assert_timed_out(
        &env.pool,
        by_type.task_id,
        2,
        300,
        "handler timed out after 300 ms (its task type's timeout)",
    )
    .await?;
    let last_error: Vec<u8> = sqlx::query_scalar("SELECT last_error FROM tasks WHERE task_id = ?")
        .bind(bounded.task_id.as_bytes().as_slice())
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(String::from_utf8(last_error)?, task_bound);
    let stored: Option<u32> = sqlx::query_scalar("SELECT timeout_ms FROM tasks WHERE task_id = ?")
        .bind(scheduled.task_id.as_bytes().as_slice())
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(stored, Some(300), "the row keeps the task's timeout");

    wait_succeeded(
        &env,
        &[free.task_id, roomy.task_id],
        Duration::from_secs(30),
    )
    .await?;
    let a = attempts(&env.pool, free.task_id).await?;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].1, "succeeded");
    assert!(a[0].3 >= 3_000, "ran its full 3 s: {a:?}");
    let a = attempts(&env.pool, roomy.task_id).await?;
    assert_eq!((a.len(), a[0].1.as_str()), (1, "succeeded"), "{a:?}");

    app.stop().await?;
    env.cleanup().await;
    Ok(())
}
