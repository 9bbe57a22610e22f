//! The retention loop against the real MariaDB and Kafka: per-tenant retentions, the DLQ topic's
//! retention read from Kafka, and two instances that never purge at the same time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dispatch_core::TaskId;
use dispatch_processor::metrics::{PurgedTable, retention_purged_rows};
use dispatch_processor::retention::{Batch, Retention};
use dispatch_processor::settings::RetentionSettings;
use dispatch_store::MySqlPool;
use dispatch_testkit::{TestEnv, eventually};
use sqlx::{MySql, QueryBuilder};
use tokio_util::sync::CancellationToken;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn ago(d: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(d).expect("duration")
}

/// `n` tasks of `tenant` in `state`, finished (or last updated) at `at`, with one attempt and
/// one ledger row each.
async fn tasks(pool: &MySqlPool, tenant: &str, state: &str, at: DateTime<Utc>, n: usize) {
    let ids: Vec<TaskId> = (0..n).map(|_| TaskId::new()).collect();
    let terminal = ["succeeded", "dead", "cancelled"].contains(&state);
    for chunk in ids.chunks(300) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO tasks (task_id, tenant, business_key, task_type, priority, payload, state, attempts, \
             max_attempts, initial_backoff_ms, max_backoff_ms, version, created_at, updated_at, finished_at) ",
        );
        qb.push_values(chunk, |mut b, id| {
            b.push_bind(id.as_bytes().to_vec())
                .push_bind(tenant)
                .push_bind(id.to_string())
                .push_bind("noop")
                .push_bind(1u8)
                .push_bind(Vec::<u8>::new())
                .push_bind(state)
                .push_bind(1u32)
                .push_bind(3u32)
                .push_bind(100u32)
                .push_bind(1000u32)
                .push_bind(1u64)
                .push_bind(at)
                .push_bind(at)
                .push_bind(terminal.then_some(at));
        });
        qb.build().execute(pool).await.expect("tasks");
        for table in ["task_attempts", "handler_executions"] {
            let cols = if table == "task_attempts" {
                "(task_id, generation, attempt, outcome, started_at, finished_at) "
            } else {
                "(task_id, generation, attempt, executed_at, started_at, outcome) "
            };
            let mut qb: QueryBuilder<MySql> =
                QueryBuilder::new(format!("INSERT INTO {table} {cols}"));
            qb.push_values(chunk, |mut b, id| {
                b.push_bind(id.as_bytes().to_vec())
                    .push_bind(0u32)
                    .push_bind(1u32);
                if table == "task_attempts" {
                    b.push_bind("succeeded").push_bind(at).push_bind(at);
                } else {
                    b.push_bind(at).push_bind(at).push_bind("ok");
                }
            });
            qb.build().execute(pool).await.expect("children");
        }
    }
}

async fn dead_letter(pool: &MySqlPool, tenant: &str, offset: i64, at: DateTime<Utc>) {
    let row = dispatch_testkit::dead_letter(tenant, offset, at);
    dispatch_store::dead_letters::insert(pool, &row)
        .await
        .expect("dead letter");
}

async fn count(pool: &MySqlPool, sql: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>(sql)
        .fetch_one(pool)
        .await
        .expect("count")
        .0
}

#[tokio::test]
async fn two_instances_purge_per_tenant_one_at_a_time_and_the_second_takes_over() {
    let env = TestEnv::new().await.expect("env");
    let pool = &env.pool;
    // `short` keeps an hour, `keep` forever, everyone else the default week.
    tasks(pool, "short", "succeeded", ago(2 * HOUR), 600).await;
    tasks(pool, "short", "running", ago(10 * DAY), 20).await;
    tasks(pool, "short", "succeeded", ago(HOUR / 6), 10).await;
    tasks(pool, "other", "dead", ago(2 * HOUR), 30).await;
    tasks(pool, "keep", "succeeded", ago(40 * DAY), 10).await;
    dead_letter(pool, "short", 1, ago(3 * HOUR)).await;
    dead_letter(pool, "short", 2, ago(HOUR / 6)).await;
    // Tasks kept forever, but these index rows point at a topic that keeps records 30 days.
    dead_letter(pool, "keep", 3, ago(31 * DAY)).await;
    dead_letter(pool, "keep", 4, ago(20 * DAY)).await;
    let purged_before = retention_purged_rows(PurgedTable::Tasks);

    let settings = RetentionSettings {
        tenants: [("short".to_string(), 3_600_000), ("keep".to_string(), 0)].into(),
        interval_ms: 100,
        batch_size: 50,
        batch_pause_ms: 0,
        ..RetentionSettings::default()
    };
    let batches: Arc<Mutex<Vec<(&'static str, Batch)>>> = Arc::default();
    let a_stop = CancellationToken::new();
    let a_stopped_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let spawn = |name: &'static str, stop: CancellationToken| {
        let seen = batches.clone();
        let stopped = a_stopped_at.clone();
        let own_stop = stop.clone();
        tokio::spawn(
            Retention {
                pool: pool.clone(),
                settings: settings.clone(),
                kafka: env.kafka.clone(),
                stop,
                observer: Some(Arc::new(move |b: &Batch| {
                    let mut seen = seen.lock().expect("lock");
                    seen.push((name, b.clone()));
                    // The first leader stops after its third batch of short's tasks, mid-purge.
                    let own = seen
                        .iter()
                        .filter(|(n, b)| *n == name && b.table == "tasks" && b.tenant == "short")
                        .count();
                    if name == "a" && own == 3 && !own_stop.is_cancelled() {
                        *stopped.lock().expect("lock") = Some(Instant::now());
                        own_stop.cancel();
                    }
                })),
            }
            .run(),
        )
    };
    let a = spawn("a", a_stop.clone());
    // `a` leads first: `b` starts once `a` holds the lock.
    eventually("a leads", Duration::from_secs(10), || {
        let n = batches.lock().expect("lock").len();
        async move { (n > 0).then_some(()) }
    })
    .await
    .expect("a purges");
    let b_stop = CancellationToken::new();
    let b = spawn("b", b_stop.clone());

    eventually(
        "everything expired is purged",
        Duration::from_secs(60),
        || async {
            let left = count(
                pool,
                "SELECT COUNT(*) FROM tasks WHERE tenant = 'short' AND state = 'succeeded'",
            )
            .await;
            let dls = count(pool, "SELECT COUNT(*) FROM dead_letters").await;
            (left == 10 && dls == 2).then_some(())
        },
    )
    .await
    .expect("purged");
    b_stop.cancel();
    a.await.expect("a");
    b.await.expect("b");

    let seen = batches.lock().expect("lock").clone();
    let by = |n: &str| -> Vec<&Batch> {
        seen.iter()
            .filter(|(name, _)| *name == n)
            .map(|(_, b)| b)
            .collect()
    };
    let (ba, bb) = (by("a"), by("b"));
    let rows = |bs: &[&Batch]| -> u64 {
        bs.iter()
            .filter(|b| b.table == "tasks")
            .map(|b| b.rows)
            .sum()
    };
    assert_eq!(rows(&ba), 150, "a ran three full batches, then stopped");
    assert_eq!(rows(&ba) + rows(&bb), 600);
    assert!(bb.iter().all(|b| b.rows <= 50), "batches are bounded");
    // Never two batches at once: every batch of one instance ends before any of the other's
    // starts, or starts after it ends.
    for x in &ba {
        for y in &bb {
            assert!(
                x.finished <= y.started || y.finished <= x.started,
                "a {x:?} overlaps b {y:?}"
            );
        }
    }
    let stopped = a_stopped_at.lock().expect("lock").expect("a stopped");
    assert!(
        ba.iter().all(|x| x.started <= stopped),
        "a ran no batch after it was stopped"
    );

    // What stays.
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM tasks WHERE tenant = 'short'").await,
        30
    );
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM tasks WHERE tenant = 'other'").await,
        30
    );
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM tasks WHERE tenant = 'keep'").await,
        10
    );
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM task_attempts").await,
        70,
        "only the purged tasks' attempts went"
    );
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM handler_executions").await,
        70
    );
    assert_eq!(
        count(
            pool,
            "SELECT COUNT(*) FROM dead_letters WHERE (tenant = 'short' AND dlq_offset = 2) \
             OR (tenant = 'keep' AND dlq_offset = 4)"
        )
        .await,
        2,
        "the recent one of short, and keep's within the DLQ topic's 30 days"
    );
    let horizon = dispatch_store::retention::horizon(pool, "short")
        .await
        .expect("horizon")
        .expect("recorded");
    assert!(horizon > ago(2 * HOUR) && horizon < ago(HOUR - Duration::from_secs(60)));
    assert_eq!(
        dispatch_store::retention::horizon(pool, "keep")
            .await
            .expect("horizon"),
        None,
        "a tenant kept forever has no horizon"
    );
    assert!(retention_purged_rows(PurgedTable::Tasks) - purged_before >= 600);
    env.cleanup().await;
}
