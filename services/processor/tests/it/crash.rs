//! The crash test: the real binary is killed with SIGKILL twice mid-run.
//!
//! N `simulate` tasks (env DISPATCH_CRASH_N, default 2000; the issue's long version uses 10000)
//! are submitted; the processor binary is `kill -9`ed twice while it works and restarted. Then,
//! from MySQL: every id has exactly one row, in a terminal state, and no task ran after its
//! terminal state was committed (the ledger has no execution later than the task's finished_at).

use std::collections::HashMap;
use std::time::Duration;

use dispatch_core::{TaskId, TaskState};
use dispatch_testkit::{TestEnv, eventually};
use sqlx::Row;
use tokio::process::Child;

use crate::harness::{binary, executions, produce, producer, signal, task, wait_succeeded};

fn spawn(env: &TestEnv) -> anyhow::Result<Child> {
    Ok(binary(env)
        .env("DISPATCH_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("DISPATCH_CONSUMER__MAX_CONCURRENCY", "64")
        .spawn()?)
}

async fn ledger_len(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM handler_executions")
        .fetch_one(&env.pool)
        .await
        .unwrap_or(0)
}

async fn kill_when(env: &TestEnv, child: &mut Child, executed: i64) -> anyhow::Result<()> {
    eventually(
        &format!("{executed} executions"),
        Duration::from_secs(90),
        || async { (ledger_len(env).await >= executed).then_some(()) },
    )
    .await?;
    child.start_kill()?; // SIGKILL
    child.wait().await?;
    Ok(())
}

#[tokio::test]
async fn kill_9_twice_loses_nothing_and_reruns_nothing_committed() -> anyhow::Result<()> {
    let n: usize = std::env::var("DISPATCH_CRASH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let env = TestEnv::with_partitions(4).await?;
    let p = producer(&env)?;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        // Some tasks fail once, so retries are in flight when the process dies.
        let payload = if i % 10 == 0 {
            r#"{"latency_ms":20,"fail_attempts":1}"#
        } else {
            r#"{"latency_ms":20}"#
        };
        let e = task("simulate", &format!("crash-{}", i % 200), payload);
        produce(&p, &env.topics(), &e).await?;
        ids.push(e.task_id);
    }
    let mut child = spawn(&env)?;
    kill_when(&env, &mut child, (n / 5) as i64).await?;
    let mut child = spawn(&env)?;
    kill_when(&env, &mut child, (n / 2) as i64).await?;
    let mut child = spawn(&env)?;

    let done = eventually("every task terminal", Duration::from_secs(150), || async {
        let rows = sqlx::query("SELECT task_id, state, finished_at FROM tasks")
            .fetch_all(&env.pool)
            .await
            .ok()?;
        let terminal = rows
            .iter()
            .filter(|r| {
                r.try_get::<String, _>(1)
                    .ok()
                    .and_then(|s| TaskState::parse(&s))
                    .is_some_and(TaskState::is_terminal)
            })
            .count();
        (terminal == n).then_some(rows)
    })
    .await?;
    child.start_kill()?;
    child.wait().await?;

    // One row per submitted id, all succeeded (every task eventually succeeds).
    assert_eq!(done.len(), n);
    let mut finished: HashMap<TaskId, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for r in &done {
        let id = TaskId::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?;
        assert_eq!(r.try_get::<String, _>(1)?, "succeeded");
        finished.insert(id, r.try_get(2)?);
    }
    assert!(ids.iter().all(|id| finished.contains_key(id)));

    // No execution after the terminal commit; duplicates (a crash between an execution and its
    // commit) all happened before it.
    let ex = executions(&env.pool).await?;
    let mut per_task: HashMap<TaskId, usize> = HashMap::new();
    for e in &ex {
        *per_task.entry(e.task_id).or_default() += 1;
        let fin = finished[&e.task_id];
        assert!(
            e.executed_at <= fin,
            "task {} executed at {} after its terminal commit at {fin}",
            e.task_id,
            e.executed_at
        );
    }
    let expected: usize = ids
        .iter()
        .enumerate()
        .map(|(i, _)| if i % 10 == 0 { 2 } else { 1 })
        .sum();
    let extra = ex.len() - expected.min(ex.len());
    eprintln!(
        "crash test: {n} tasks, {} executions, {extra} re-executions of uncommitted work",
        ex.len()
    );
    assert!(per_task.len() == n);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_so_a_restart_reruns_nothing() -> anyhow::Result<()> {
    let env = TestEnv::with_partitions(2).await?;
    let p = producer(&env)?;
    let n = 600;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let e = task(
            "simulate",
            &format!("term-{}", i % 60),
            r#"{"latency_ms":20}"#,
        );
        produce(&p, &env.topics(), &e).await?;
        ids.push(e.task_id);
    }
    let mut child = spawn(&env)?;
    eventually("some executions", Duration::from_secs(60), || async {
        (ledger_len(&env).await >= (n / 4) as i64).then_some(())
    })
    .await?;
    signal(&child, "-TERM").await?;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(exit.success(), "graceful exit: {exit:?}");
    let mut child = spawn(&env)?;
    wait_succeeded(&env, &ids, Duration::from_secs(90)).await?;
    child.start_kill()?;
    child.wait().await?;
    // Everything that ran before SIGTERM was committed with its offset: nothing ran twice.
    let ex = executions(&env.pool).await?;
    assert_eq!(ex.len(), n, "each task executed exactly once");
    env.cleanup().await;
    Ok(())
}
