//! Retries waiting in MySQL (`retry_waits`) against the real MariaDB (deploy/local/stack.sh): a
//! claim returns the due waits whose task still waits for them, deletes the stale ones, and a
//! published retry's wait ends unless a newer wait replaced it.

use chrono::{Duration, Utc};
use dispatch_core::{TaskId, TaskState};
use dispatch_store::scheduler;
use dispatch_testkit::TestEnv;
use sqlx::MySqlPool;

/// A task row in `state` at `version` (columns the claim reads; the rest as the writer leaves them).
async fn task(pool: &MySqlPool, state: TaskState, version: u64) -> anyhow::Result<TaskId> {
    let id = TaskId::new();
    sqlx::query(
        "INSERT INTO tasks (task_id, tenant, business_key, task_type, priority, payload, state, attempts, \
         max_attempts, initial_backoff_ms, max_backoff_ms, version, created_at, updated_at) \
         VALUES (?, 'acme', 'k', 'noop', 1, '', ?, 1, 3, 100, 1000, ?, NOW(6), NOW(6))",
    )
    .bind(id.as_bytes().as_slice())
    .bind(state.as_str())
    .bind(version)
    .execute(pool)
    .await?;
    Ok(id)
}

async fn waits(pool: &MySqlPool) -> anyhow::Result<Vec<(Vec<u8>, u64)>> {
    Ok(
        sqlx::query_as("SELECT task_id, version FROM retry_waits ORDER BY task_id")
            .fetch_all(pool)
            .await?,
    )
}

#[tokio::test]
async fn a_claim_takes_due_live_waits_and_drops_stale_ones() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pool = &env.pool;
    let v = TaskState::Retrying.version(0, 1);
    let live = task(pool, TaskState::Retrying, v).await?;
    // Its next attempt ran meanwhile: the wait is stale.
    let ran = task(pool, TaskState::Running, TaskState::Running.version(0, 2)).await?;
    let later = task(pool, TaskState::Retrying, v).await?;
    let now = Utc::now();
    let mut conn = pool.acquire().await?;
    scheduler::set_retry_due(
        &mut conn,
        &[
            (live, v, now - Duration::seconds(1), true),
            (ran, v, now - Duration::seconds(2), false),
            (later, v, now + Duration::hours(1), false),
        ],
    )
    .await?;
    drop(conn);

    let mut tx = pool.begin().await?;
    let due = scheduler::claim_due_retries(&mut tx, 10).await?;
    assert_eq!(
        due.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![live],
        "only the due wait whose task still waits"
    );
    assert!(due[0].backstop, "its wait was a backstop");
    scheduler::lease_retries(&mut tx, &[live], now + Duration::minutes(5)).await?;
    tx.commit().await?;
    let mut left = waits(pool).await?;
    left.sort();
    let mut want = vec![
        (live.as_bytes().to_vec(), v),
        (later.as_bytes().to_vec(), v),
    ];
    want.sort();
    assert_eq!(left, want, "the stale wait is gone, the others stay");

    // Leased: not claimed again before the lease ends.
    let mut tx = pool.begin().await?;
    assert!(scheduler::claim_due_retries(&mut tx, 10).await?.is_empty());
    tx.rollback().await?;

    // A newer wait of the task replaced the one published: it stays.
    let newer = TaskState::Retrying.version(0, 2);
    let mut conn = pool.acquire().await?;
    scheduler::set_retry_due(
        &mut conn,
        &[(later, newer, now + Duration::hours(1), false)],
    )
    .await?;
    drop(conn);
    scheduler::finish_retries(pool, &[(live, v), (later, v)]).await?;
    assert_eq!(
        waits(pool).await?,
        vec![(later.as_bytes().to_vec(), newer)],
        "the published wait ends; the newer one stays"
    );
    env.cleanup().await;
    Ok(())
}

/// A claim holds the rows it claims and no gap: a new `scheduled` row due now (a workflow's root,
/// a submit with `run_at`) goes in while a claim is open. In REPEATABLE READ the claim's range
/// scan locked the gap where it goes, and a processor frozen mid-claim held the gateway's
/// inserts for 10-12 s (a `workflow-chaos` run).
#[tokio::test]
async fn an_open_claim_does_not_block_new_scheduled_rows() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pool = &env.pool;
    let due = task(
        pool,
        TaskState::Scheduled,
        TaskState::Scheduled.version(0, 0),
    )
    .await?;
    sqlx::query("UPDATE tasks SET run_at = NOW(6) - INTERVAL 1 SECOND WHERE task_id = ?")
        .bind(due.as_bytes().as_slice())
        .execute(pool)
        .await?;
    let mut claim = scheduler::begin_claim(pool).await?;
    let claimed = scheduler::claim_due(&mut claim, 100).await?;
    assert_eq!(claimed.len(), 1);

    let mut other = pool.acquire().await?;
    sqlx::query("SET SESSION innodb_lock_wait_timeout = 2")
        .execute(&mut *other)
        .await?;
    let fresh = TaskId::new();
    let inserted = sqlx::query(
        "INSERT INTO tasks (task_id, tenant, business_key, task_type, priority, payload, state, attempts, \
         max_attempts, initial_backoff_ms, max_backoff_ms, version, created_at, updated_at, run_at) \
         VALUES (?, 'acme', 'k2', 'noop', 1, '', 'scheduled', 0, 3, 100, 1000, 1, NOW(6), NOW(6), NOW(6))",
    )
    .bind(fresh.as_bytes().as_slice())
    .execute(&mut *other)
    .await;
    claim.rollback().await?;
    // Back to the pool before cleanup, which closes the pool and waits for every connection.
    drop(other);
    assert!(
        inserted.is_ok(),
        "a new scheduled row waited on the open claim: {inserted:?}"
    );
    env.cleanup().await;
    Ok(())
}
