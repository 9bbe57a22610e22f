//! The `tasks` fence against MariaDB: the SQL generated from `dispatch_core::version` agrees
//! with the Rust rule on every pair of stamps, and `upsert_batch` keeps committed terminal
//! states, drops a replaced owner's writes and keeps tenants apart.

use dispatch_core::version::{self, Stamp};
use dispatch_core::{TaskId, TaskState};
use dispatch_store::tasks::{self, TaskWrite};
use dispatch_testkit::{TestEnv, task_write};
use sqlx::{MySql, QueryBuilder, Row};

fn stamps() -> Vec<Stamp> {
    let mut v = Vec::new();
    for s in TaskState::ALL {
        for g in 0..2 {
            for a in 0..3 {
                for epoch in 0..3 {
                    v.push(Stamp {
                        version: s.version(g, a),
                        epoch,
                    });
                }
            }
        }
    }
    v
}

#[tokio::test]
async fn the_sql_fence_agrees_with_the_rust_rule_on_every_pair() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let all = stamps();
    let pairs: Vec<(Stamp, Stamp)> = all
        .iter()
        .flat_map(|s| all.iter().map(move |n| (*s, *n)))
        .collect();
    let expr = version::sql_may_overwrite("sv", "se", "nv", "ne");
    let mut checked = 0;
    for chunk in pairs.chunks(1000) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
            "SELECT i, {expr} AS ok FROM (SELECT 0 AS i, CAST(0 AS UNSIGNED) AS sv, CAST(0 AS UNSIGNED) AS se, CAST(0 AS UNSIGNED) AS nv, CAST(0 AS UNSIGNED) AS ne"
        ));
        for (i, (s, n)) in chunk.iter().enumerate() {
            qb.push(" UNION ALL SELECT ")
                .push_bind(i as i64 + 1)
                .push(", ")
                .push_bind(s.version)
                .push(", ")
                .push_bind(s.epoch)
                .push(", ")
                .push_bind(n.version)
                .push(", ")
                .push_bind(n.epoch);
        }
        qb.push(") p WHERE i > 0 ORDER BY i");
        let rows = qb.build().fetch_all(&env.pool).await?;
        assert_eq!(rows.len(), chunk.len());
        for (row, (s, n)) in rows.iter().zip(chunk) {
            let sql: i64 = row.try_get("ok")?;
            assert_eq!(
                sql != 0,
                version::may_overwrite(*s, *n),
                "stored {s:?}, new {n:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, pairs.len());
    env.cleanup().await;
    Ok(())
}

fn write(id: TaskId, tenant: &str, state: TaskState, attempt: u32, epoch: u64) -> TaskWrite {
    TaskWrite {
        max_attempts: 3,
        initial_backoff_ms: 100,
        max_backoff_ms: 1000,
        lease_epoch: epoch,
        ..task_write(id, tenant, state, attempt)
    }
}

fn placeholder(id: TaskId, tenant: &str) -> TaskWrite {
    let mut w = write(id, tenant, TaskState::Cancelled, 0, 0);
    w.task_type = String::new();
    w.payload = Vec::new();
    w.last_error = "cancelled: by placeholder".into();
    w
}

/// Applies one write; whether it landed (its token is the row's).
async fn apply(env: &TestEnv, w: TaskWrite) -> anyhow::Result<bool> {
    let id = w.task_id;
    let mut tx = env.pool.begin().await?;
    let tokens = tasks::upsert_batch(&mut tx, &[w]).await?;
    let snap = tasks::snapshots(&mut *tx, &[id]).await?;
    tx.commit().await?;
    Ok(snap.first().map(|s| s.write_token) == tokens.first().copied())
}

#[tokio::test]
async fn a_committed_terminal_state_never_changes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let id = TaskId::new();
    assert!(apply(&env, write(id, "acme", TaskState::Running, 1, 1)).await?);
    let mut ok = write(id, "acme", TaskState::Succeeded, 1, 1);
    ok.result = Some(b"first".to_vec());
    assert!(apply(&env, ok.clone()).await?);
    // The same attempt's other outcome, and a replay with another result: both dropped.
    let mut dead = write(id, "acme", TaskState::Dead, 1, 1);
    dead.last_error = "boom".into();
    assert!(!apply(&env, dead).await?);
    let mut replay = ok;
    replay.result = Some(b"second".to_vec());
    assert!(!apply(&env, replay).await?);
    let t = tasks::get(&env.pool, id).await?.expect("row");
    assert_eq!(t.state, TaskState::Succeeded.to_proto() as i32);
    assert_eq!(t.result, b"first");
    assert_eq!(t.last_error, "");
    // A redrive (a later generation) cannot revive a SUCCEEDED task.
    let mut redrive = write(id, "acme", TaskState::Running, 1, 1);
    redrive.generation = 1;
    redrive.version = TaskState::Running.version(1, 1);
    assert!(!apply(&env, redrive).await?);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_replaced_owner_never_commits_over_its_successor() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let id = TaskId::new();
    // Owner 1 (epoch 10) claims attempt 1; owner 2 (epoch 11) takes the partition and the attempt.
    assert!(apply(&env, write(id, "acme", TaskState::Running, 1, 10)).await?);
    assert!(apply(&env, write(id, "acme", TaskState::Running, 1, 11)).await?);
    // Owner 1 wakes up and reports its outcome: dropped.
    assert!(!apply(&env, write(id, "acme", TaskState::Dead, 1, 10)).await?);
    assert!(!apply(&env, write(id, "acme", TaskState::Running, 1, 10)).await?);
    let s = tasks::states(&env.pool, &[id]).await?;
    assert_eq!(s[0].1.state, TaskState::Running);
    assert_eq!(s[0].1.lease_epoch, 11);
    assert!(apply(&env, write(id, "acme", TaskState::Succeeded, 1, 11)).await?);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_cancel_never_touches_another_tenants_task() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Tenant globex cancels the id acme's task will have, before acme's submit is processed.
    let id = TaskId::new();
    assert!(apply(&env, placeholder(id, "globex")).await?);
    assert!(
        tasks::get(&env.pool, id).await?.is_none(),
        "a placeholder is no task"
    );
    // acme's first write replaces the foreign placeholder whole.
    assert!(apply(&env, write(id, "acme", TaskState::Running, 1, 1)).await?);
    let t = tasks::get(&env.pool, id).await?.expect("row");
    assert_eq!(t.tenant, "acme");
    assert_eq!(t.state, TaskState::Running.to_proto() as i32);
    assert_eq!(t.last_error, "");
    // globex's cancel of acme's existing task: dropped.
    assert!(!apply(&env, placeholder(id, "globex")).await?);
    assert!(apply(&env, write(id, "acme", TaskState::Succeeded, 1, 1)).await?);

    // acme's own cancel ahead of its submit: the submit fills the data, the task stays cancelled.
    let own = TaskId::new();
    assert!(apply(&env, placeholder(own, "acme")).await?);
    assert!(apply(&env, write(own, "acme", TaskState::Cancelled, 0, 1)).await?);
    assert!(!apply(&env, write(own, "acme", TaskState::Running, 1, 1)).await?);
    let t = tasks::get(&env.pool, own).await?.expect("row");
    assert_eq!(t.state, TaskState::Cancelled.to_proto() as i32);
    assert_eq!((t.tenant.as_str(), t.task_type.as_str()), ("acme", "noop"));
    assert_eq!(t.payload, b"p");
    env.cleanup().await;
    Ok(())
}
