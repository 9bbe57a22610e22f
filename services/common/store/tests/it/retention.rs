//! Retention against the real MariaDB (deploy/local/stack.sh): the purge deletes exactly the
//! expired terminal rows of one tenant, in bounded batches through an index, one leader at a time.
//!
//! Over 400 lines because its six tests share the seeding helpers at the top (rows of every state
//! and age, dead letters, id and count queries: about 160 lines); the measurement beside a writer
//! (`measure_the_purge_beside_a_writer`) would move to a file of its own first.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatch_core::TaskId;
use dispatch_store::retention::{self, TaskPurge};
use dispatch_store::{MySqlPool, dead_letters, leader};
use dispatch_testkit::TestEnv;
use sqlx::{Connection, MySql, MySqlConnection, QueryBuilder};

/// One seeded task: `at` is its finish time (terminal) or last update (otherwise).
#[derive(Clone)]
struct Seed {
    id: TaskId,
    tenant: &'static str,
    state: &'static str,
    at: DateTime<Utc>,
}

fn ago(d: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(d).expect("duration")
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn seed(tenant: &'static str, state: &'static str, at: DateTime<Utc>) -> Seed {
    Seed {
        id: TaskId::new(),
        tenant,
        state,
        at,
    }
}

/// Inserts the tasks, two attempts and one ledger row each, as the processor would leave them.
async fn store(pool: &MySqlPool, seeds: &[Seed]) -> anyhow::Result<()> {
    for chunk in seeds.chunks(300) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO tasks (task_id, tenant, business_key, task_type, priority, payload, state, attempts, \
             max_attempts, initial_backoff_ms, max_backoff_ms, version, created_at, updated_at, finished_at) ",
        );
        qb.push_values(chunk, |mut b, s| {
            let terminal = ["succeeded", "dead", "cancelled"].contains(&s.state);
            b.push_bind(s.id.as_bytes().to_vec())
                .push_bind(s.tenant)
                .push_bind(format!("key-{}", s.id))
                .push_bind("noop")
                .push_bind(1u8)
                .push_bind(vec![0u8; 64])
                .push_bind(s.state)
                .push_bind(2u32)
                .push_bind(3u32)
                .push_bind(100u32)
                .push_bind(1000u32)
                .push_bind(1u64)
                .push_bind(s.at)
                .push_bind(s.at)
                .push_bind(terminal.then_some(s.at));
        });
        qb.build().execute(pool).await?;
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO task_attempts (task_id, generation, attempt, outcome, started_at, finished_at) ",
        );
        let attempts: Vec<(&Seed, u32)> = chunk.iter().flat_map(|s| [(s, 1), (s, 2)]).collect();
        qb.push_values(attempts, |mut b, (s, n)| {
            b.push_bind(s.id.as_bytes().to_vec())
                .push_bind(0u32)
                .push_bind(n)
                .push_bind("retryable")
                .push_bind(s.at)
                .push_bind(s.at);
        });
        qb.build().execute(pool).await?;
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO handler_executions (task_id, generation, attempt, executed_at) ",
        );
        qb.push_values(chunk, |mut b, s| {
            b.push_bind(s.id.as_bytes().to_vec())
                .push_bind(0u32)
                .push_bind(1u32)
                .push_bind(s.at);
        });
        qb.build().execute(pool).await?;
    }
    Ok(())
}

async fn dead_letter(pool: &MySqlPool, tenant: &str, offset: i64, at: DateTime<Utc>) -> TaskId {
    let row = dead_letters::DeadLetterRow {
        error: "boom".into(),
        original_topic: "dispatch.tasks.default".into(),
        ..dispatch_testkit::dead_letter(tenant, offset, at)
    };
    dead_letters::insert(pool, &row).await.expect("dead letter");
    row.task_id
}

async fn ids(pool: &MySqlPool, sql: &str) -> BTreeSet<Vec<u8>> {
    sqlx::query_as::<_, (Vec<u8>,)>(sql)
        .fetch_all(pool)
        .await
        .expect("ids")
        .into_iter()
        .map(|(id,)| id)
        .collect()
}

async fn count(pool: &MySqlPool, sql: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>(sql)
        .fetch_one(pool)
        .await
        .expect("count")
        .0
}

async fn lock_conn(env: &TestEnv) -> MySqlConnection {
    env.pool.acquire().await.expect("conn").detach()
}

/// Purges `tenant`'s tasks up to `before` until a batch comes back short; the batches, in order.
async fn purge_all(
    conn: &mut MySqlConnection,
    tenant: &str,
    before: DateTime<Utc>,
    limit: u32,
) -> Vec<TaskPurge> {
    let mut batches = Vec::new();
    loop {
        let b = retention::purge_tasks_batch(conn, tenant, before, limit)
            .await
            .expect("batch");
        batches.push(b);
        if b.candidates < u64::from(limit) {
            return batches;
        }
    }
}

#[tokio::test]
async fn the_purge_removes_exactly_the_expired_terminal_rows_of_the_tenant() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let old = ago(2 * DAY);
    let expired: Vec<Seed> = ["succeeded", "succeeded", "dead", "dead", "cancelled"]
        .into_iter()
        .map(|st| seed("short", st, old))
        .collect();
    let mut kept: Vec<Seed> = vec![
        // Finished within the retention.
        seed("short", "succeeded", ago(HOUR)),
        seed("short", "dead", ago(HOUR)),
    ];
    // Not finished, however old: never purged.
    for st in ["scheduled", "pending", "running", "retrying"] {
        kept.push(seed("short", st, ago(10 * DAY)));
    }
    // Another tenant's expired rows: not this purge's.
    for st in ["succeeded", "dead", "cancelled"] {
        kept.push(seed("other", st, old));
    }
    let all: Vec<Seed> = expired.iter().chain(&kept).cloned().collect();
    store(&env.pool, &all).await?;
    let dl_old = dead_letter(&env.pool, "short", 1, old).await;
    let dl_new = dead_letter(&env.pool, "short", 2, ago(HOUR)).await;
    let dl_other = dead_letter(&env.pool, "other", 3, old).await;

    let mut conn = lock_conn(&env).await;
    let horizon = ago(DAY);
    let batches = purge_all(&mut conn, "short", horizon, 500).await;
    let deleted = retention::purge_dead_letters_batch(&mut conn, "short", horizon, 500).await?;

    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(
        batches[0],
        TaskPurge {
            tasks: 5,
            attempts: 10,
            executions: 5,
            workflow_nodes: 0,
            candidates: 5,
        }
    );
    assert_eq!(deleted, 1);
    let want: BTreeSet<Vec<u8>> = kept.iter().map(|s| s.id.as_bytes().to_vec()).collect();
    assert_eq!(ids(&env.pool, "SELECT task_id FROM tasks").await, want);
    assert_eq!(
        ids(&env.pool, "SELECT DISTINCT task_id FROM task_attempts").await,
        want,
        "the attempts of every kept task, and only those"
    );
    assert_eq!(
        count(&env.pool, "SELECT COUNT(*) FROM task_attempts").await,
        2 * kept.len() as i64
    );
    assert_eq!(
        ids(&env.pool, "SELECT DISTINCT task_id FROM handler_executions").await,
        want
    );
    let dls = ids(&env.pool, "SELECT task_id FROM dead_letters").await;
    let want_dls: BTreeSet<Vec<u8>> = [dl_new, dl_other]
        .iter()
        .map(|id| id.as_bytes().to_vec())
        .collect();
    assert_eq!(dls, want_dls);
    assert!(!dls.contains(dl_old.as_bytes().as_slice()));

    // Nothing left to purge: a second pass deletes nothing.
    let again = purge_all(&mut conn, "short", horizon, 500).await;
    assert_eq!(again, vec![TaskPurge::default()]);
    env.cleanup().await;
    Ok(())
}

/// A workflow's nodes go with their tasks and the workflow with its last node; a finished node
/// stays while a node that depends on it has not finished.
#[tokio::test]
async fn purged_workflow_nodes_take_their_edges_and_finally_their_workflow() -> anyhow::Result<()> {
    use dispatch_core::workflow::OnFailure;
    use dispatch_store::workflows;
    let env = TestEnv::new().await?;
    // A chain: each node waits for the one before it.
    let workflow = |names: &[&str]| {
        let edges = (1..names.len())
            .map(|i| (i, i - 1, OnFailure::Cancel))
            .collect();
        dispatch_testkit::new_workflow("short", names, edges)
    };
    let done = workflow(&["a", "b"]);
    let half = workflow(&["c", "d"]);
    for w in [&done, &half] {
        workflows::insert(&env.pool, w, ago(2 * DAY)).await?;
    }
    // Every node of `done` finished two days ago; of `half`, only the first.
    let finished = [
        done.nodes[0].task.task_id,
        done.nodes[1].task.task_id,
        half.nodes[0].task.task_id,
    ];
    for id in finished {
        sqlx::query("UPDATE tasks SET state = 'succeeded', finished_at = ?, updated_at = ? WHERE task_id = ?")
            .bind(ago(2 * DAY))
            .bind(ago(2 * DAY))
            .bind(id.as_bytes().as_slice())
            .execute(&env.pool)
            .await?;
    }
    let mut conn = lock_conn(&env).await;
    let batches = purge_all(&mut conn, "short", ago(DAY), 500).await;
    // c finished, but d (which waits for it) has not: c stays.
    assert_eq!(batches[0].tasks, 2, "{batches:?}");
    assert_eq!(batches[0].workflow_nodes, 2, "{batches:?}");
    let left = |sql: &'static str| count(&env.pool, sql);
    assert_eq!(
        left("SELECT COUNT(*) FROM workflow_nodes").await,
        2,
        "c and d stay"
    );
    assert_eq!(
        left("SELECT COUNT(*) FROM workflow_edges").await,
        1,
        "d's edge stays"
    );
    let workflows_left = ids(&env.pool, "SELECT workflow_id FROM workflows").await;
    assert_eq!(
        workflows_left,
        BTreeSet::from([half.workflow_id.as_bytes().to_vec()]),
        "the finished workflow went with its last node"
    );
    // Once d finished too, both go, and their workflow with them.
    sqlx::query(
        "UPDATE tasks SET state = 'succeeded', finished_at = ?, updated_at = ? WHERE task_id = ?",
    )
    .bind(ago(2 * DAY))
    .bind(ago(2 * DAY))
    .bind(half.nodes[1].task.task_id.as_bytes().as_slice())
    .execute(&env.pool)
    .await?;
    let batches = purge_all(&mut conn, "short", ago(DAY), 500).await;
    assert_eq!(batches[0].tasks, 2, "{batches:?}");
    assert_eq!(left("SELECT COUNT(*) FROM workflow_nodes").await, 0);
    assert_eq!(left("SELECT COUNT(*) FROM workflows").await, 0);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn batches_are_bounded_and_read_through_the_state_index() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let old = ago(3 * DAY);
    let mut seeds: Vec<Seed> = (0..1234).map(|_| seed("short", "succeeded", old)).collect();
    // Rows the index lets the read skip: other tenants' and unfinished ones.
    seeds.extend((0..1500).map(|_| seed("other", "succeeded", old)));
    seeds.extend((0..300).map(|_| seed("short", "running", old)));
    store(&env.pool, &seeds).await?;
    sqlx::query("ANALYZE TABLE tasks")
        .execute(&env.pool)
        .await?;

    let mut conn = lock_conn(&env).await;
    let horizon = ago(DAY);
    let plan = retention::explain_candidates(&mut conn, "short", horizon, 500).await?;
    assert!(
        plan.iter()
            .any(|l| l.starts_with("ix_tasks_tenant_state_updated |")),
        "{plan:?}"
    );
    let batches = purge_all(&mut conn, "short", horizon, 500).await;
    let tasks: Vec<u64> = batches.iter().map(|b| b.tasks).collect();
    assert_eq!(tasks, vec![500, 500, 234]);
    for b in &batches {
        assert_eq!(b.attempts, 2 * b.tasks);
        assert_eq!(b.executions, b.tasks);
    }
    assert_eq!(
        count(
            &env.pool,
            "SELECT COUNT(*) FROM tasks WHERE tenant = 'short'"
        )
        .await,
        300
    );
    assert_eq!(
        count(
            &env.pool,
            "SELECT COUNT(*) FROM tasks WHERE tenant = 'other'"
        )
        .await,
        1500
    );

    // Dead letters: oldest first, at most a batch each.
    for i in 0..7 {
        dead_letter(&env.pool, "short", 100 + i, old).await;
    }
    let mut per_batch = Vec::new();
    loop {
        let n = retention::purge_dead_letters_batch(&mut conn, "short", horizon, 3).await?;
        per_batch.push(n);
        if n < 3 {
            break;
        }
    }
    assert_eq!(per_batch, vec![3, 3, 1]);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn tenants_are_walked_in_order_across_tasks_and_dead_letters() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    store(
        &env.pool,
        &[
            seed("acme", "succeeded", ago(HOUR)),
            seed("globex", "pending", ago(HOUR)),
        ],
    )
    .await?;
    // A tenant with dead letters only (its tasks already purged).
    dead_letter(&env.pool, "beta", 1, ago(HOUR)).await;
    let mut conn = lock_conn(&env).await;
    let mut seen = Vec::new();
    let mut after = String::new();
    while let Some(t) = retention::next_tenant(&mut conn, &after).await? {
        seen.push(t.clone());
        after = t;
    }
    assert_eq!(seen, vec!["acme", "beta", "globex"]);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn one_connection_holds_the_retention_lock_at_a_time() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut a = lock_conn(&env).await;
    let mut b = lock_conn(&env).await;
    assert!(leader::try_lock(&mut a, retention::LOCK).await?);
    assert!(!leader::try_lock(&mut b, retention::LOCK).await?, "taken");
    assert!(leader::holds_lock(&mut a, retention::LOCK).await?);
    assert!(!leader::holds_lock(&mut b, retention::LOCK).await?);
    // The relay's lock is another lock.
    assert!(leader::try_lock(&mut b, "dispatch_outbox_relay").await?);
    // A leader that dies (its connection closes) hands the lock on.
    a.close().await?;
    // The server drops the lock when it sees the connection go: wait for that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !leader::try_lock(&mut b, retention::LOCK).await? {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lock never came free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(leader::holds_lock(&mut b, retention::LOCK).await?);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn horizons_only_move_forward_and_name_purged_ids() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut conn = lock_conn(&env).await;
    assert_eq!(retention::horizon(&env.pool, "acme").await?, None);
    let later = ago(DAY);
    let earlier = ago(2 * DAY);
    retention::record_horizon(&mut conn, "acme", later).await?;
    retention::record_horizon(&mut conn, "acme", earlier).await?;
    let h = retention::horizon(&env.pool, "acme")
        .await?
        .expect("horizon");
    assert_eq!(h.timestamp_micros(), later.timestamp_micros());
    assert_eq!(retention::horizon(&env.pool, "globex").await?, None);

    let old = TaskId::from_slice(
        uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(ago(3 * DAY).timestamp())?,
            0,
        ))
        .as_bytes(),
    )?;
    let msg = retention::purged_message(old, h).expect("made before the horizon");
    assert!(msg.contains("purged: finished before"), "{msg}");
    assert_eq!(retention::purged_message(TaskId::new(), h), None);
    let cache = retention::HorizonCache::default();
    assert_eq!(cache.get(&env.pool, "acme").await?, Some(h));
    env.cleanup().await;
    Ok(())
}

/// A measurement, not a check (`--ignored --nocapture`): the purge of 20,000 expired tasks in
/// batches of 500 while a writer upserts new tasks of the same tenant, as the processor's batch
/// writer does, 50 rows per transaction. Prints the slowest writer transaction and batch.
#[tokio::test]
#[ignore]
async fn measure_the_purge_beside_a_writer() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let old = ago(3 * DAY);
    let seeds: Vec<Seed> = (0..20_000)
        .map(|_| seed("acme", "succeeded", old))
        .collect();
    store(&env.pool, &seeds).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let pool = env.pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch: Vec<Seed> = (0..50)
                    .map(|_| seed("acme", "pending", Utc::now()))
                    .collect();
                let t = std::time::Instant::now();
                store(&pool, &batch).await.expect("write");
                worst = worst.max(t.elapsed());
                n += 1;
            }
            (n, worst)
        })
    };
    let mut conn = lock_conn(&env).await;
    let mut worst_batch = Duration::ZERO;
    let started = std::time::Instant::now();
    let mut purged = 0;
    loop {
        let t = std::time::Instant::now();
        let b = retention::purge_tasks_batch(&mut conn, "acme", ago(DAY), 500).await?;
        worst_batch = worst_batch.max(t.elapsed());
        purged += b.tasks;
        if b.candidates < 500 {
            break;
        }
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (writes, worst_write) = writer.await?;
    let (lock_max,): (String,) = sqlx::query_as(
        "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_ROW_LOCK_TIME_MAX'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap_or(("?".into(),));
    println!(
        "purged {purged} tasks in {took:?}; slowest batch {worst_batch:?}; {writes} writer transactions \
         of 50 tasks (each 3 statements, autocommit), slowest {worst_write:?}; server-wide \
         Innodb_row_lock_time_max {lock_max} ms"
    );
    assert_eq!(purged, 20_000);
    env.cleanup().await;
    Ok(())
}
