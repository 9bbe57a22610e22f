//! The schedule loop against the real stack: two instances firing one every-second schedule with
//! one killed mid-way, catch-up after downtime, overlap, and a fire run end to end.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatch_core::schedule;
use dispatch_core::validate::SpecLimits;
use dispatch_core::{TaskId, TaskState, Tenant};
use dispatch_gateway::schedules::parse_spec;
use dispatch_processor::metrics::{FireOutcome, schedule_fire_count};
use dispatch_processor::schedules::ScheduleLoop;
use dispatch_proto::v1 as pb;
use dispatch_store::MySqlPool;
use dispatch_store::schedules::{self as store, Created, ScheduleRow};
use dispatch_testkit::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;

use crate::harness::{settings, start, wait_succeeded};

/// A schedule of tenant `acme` firing a `noop` task every `interval_ms`, first at `anchor`: the
/// row the gateway stores for such a spec created at `anchor`, due at the anchor itself.
fn every(name: &str, interval_ms: u64, anchor: DateTime<Utc>) -> ScheduleRow {
    let spec = pb::ScheduleSpec {
        name: name.into(),
        timing: Some(pb::schedule_spec::Timing::IntervalMs(interval_ms)),
        template: Some(pb::TaskSpec {
            business_key: format!("schedule-{name}"),
            task_type: "noop".into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        }),
        overlap_policy: pb::OverlapPolicy::Allow.into(),
        catchup_policy: pb::CatchupPolicy::All.into(),
        catchup_limit: 100,
        ..Default::default()
    };
    let tenant = Tenant::parse("acme").expect("a valid tenant");
    let row =
        parse_spec(&tenant, Some(spec), anchor, &SpecLimits::default()).expect("a valid schedule");
    ScheduleRow {
        next_fire_at: Some(anchor),
        ..row
    }
}

async fn create(pool: &MySqlPool, s: &ScheduleRow) -> anyhow::Result<()> {
    anyhow::ensure!(store::insert(pool, s).await? == Created::Created);
    Ok(())
}

fn looper(pool: MySqlPool, stop: CancellationToken) -> ScheduleLoop {
    ScheduleLoop {
        pool,
        interval: Duration::from_millis(100),
        batch_size: 100,
        misfire_grace: Duration::from_secs(5),
        stop,
    }
}

/// The tasks a schedule fired: (run_at, task id, idempotency key), by run_at.
async fn fired(
    pool: &MySqlPool,
    s: &ScheduleRow,
) -> anyhow::Result<Vec<(DateTime<Utc>, TaskId, String)>> {
    let prefix = format!("schedule:{}:", s.schedule_id.to_string().replace('-', ""));
    let rows: Vec<(DateTime<Utc>, Vec<u8>, String)> = sqlx::query_as(
        "SELECT run_at, task_id, idempotency_key FROM tasks WHERE tenant = ? AND idempotency_key LIKE ? ORDER BY run_at",
    )
    .bind(&s.tenant)
    .bind(format!("{prefix}%"))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(at, id, key)| Ok((at, TaskId::from_slice(&id)?, key)))
        .collect()
}

/// The derived id of the fire of `s` at `at`.
fn fire_id(s: &ScheduleRow, at: DateTime<Utc>) -> TaskId {
    schedule::fire_task_id(&s.tenant, &schedule::fire_key(&s.schedule_id, at, false))
}

/// An instance: ticks every 100 ms on its own pool and counts what it fired.
fn spawn_instance(
    pool: MySqlPool,
    fired: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let l = looper(pool, CancellationToken::new());
        loop {
            match l.tick().await {
                Ok(t) => {
                    fired.fetch_add(t.fired, Ordering::SeqCst);
                    duplicates.fetch_add(t.duplicate, Ordering::SeqCst);
                }
                Err(e) => tracing::warn!(error = %e, "tick failed"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn db_now(pool: &MySqlPool) -> anyhow::Result<DateTime<Utc>> {
    Ok(store::db_now(pool).await?)
}

/// The next whole second after `t`.
fn next_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp() + 1, 0).unwrap_or(t)
}

#[tokio::test]
async fn two_instances_fire_every_second_exactly_once_with_one_killed_midway() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let anchor = next_second(db_now(&env.pool).await?);
    let s = every("every-second", 1_000, anchor);
    create(&env.pool, &s).await?;
    // Two instances, each with its own pool, as two processes would be.
    let pool_a = dispatch_store::connect(&env.db).await?;
    let pool_b = dispatch_store::connect(&env.db).await?;
    let (fired_a, fired_b, dups) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let a = spawn_instance(pool_a.clone(), fired_a.clone(), dups.clone());
    let b = spawn_instance(pool_b, fired_b.clone(), dups.clone());
    let count = |n: usize| {
        let pool = env.pool.clone();
        let s = s.clone();
        move || {
            let (pool, s) = (pool.clone(), s.clone());
            async move {
                fired(&pool, &s)
                    .await
                    .ok()
                    .filter(|f| f.len() >= n)
                    .map(|_| ())
            }
        }
    };
    eventually("12 fires", Duration::from_secs(30), count(12)).await?;
    // Killed: wherever it is, possibly inside its transaction (rolled back with the connection).
    a.abort();
    let _ = a.await;
    pool_a.close().await;
    let at_kill = fired_a.load(Ordering::SeqCst);
    eventually("24 fires", Duration::from_secs(30), count(24)).await?;
    b.abort();
    let _ = b.await;

    let got = fired(&env.pool, &s).await?;
    let times: Vec<DateTime<Utc>> = got.iter().map(|(at, _, _)| *at).collect();
    let distinct: BTreeSet<_> = times.iter().collect();
    assert_eq!(
        distinct.len(),
        times.len(),
        "a fire time fired twice: {times:?}"
    );
    // Every second from the first fire to the last, none missing.
    let last = *times.last().expect("fires");
    let expected: Vec<DateTime<Utc>> = (0..=(last - anchor).num_seconds())
        .map(|k| anchor + chrono::Duration::seconds(k))
        .collect();
    assert_eq!(times, expected, "missing or extra fire times");
    // Each fire is the task of its derived id and key.
    for (at, id, key) in &got {
        assert_eq!(*id, fire_id(&s, *at), "fire at {at}");
        assert_eq!(*key, schedule::fire_key(&s.schedule_id, *at, false));
    }
    let (a_n, b_n) = (at_kill, fired_b.load(Ordering::SeqCst));
    assert!(
        a_n > 0 && b_n > 0,
        "both instances fired (a {a_n}, b {b_n})"
    );
    // A pass of the killed instance may have committed before it could count its fires.
    assert!(
        a_n + b_n <= got.len() as u64,
        "fires counted once each (a {a_n}, b {b_n}, stored {})",
        got.len()
    );
    assert_eq!(
        dups.load(Ordering::SeqCst),
        0,
        "no instance found a fire done"
    );
    let row = store::get(&env.pool, "acme", &s.name)
        .await?
        .expect("schedule");
    assert_eq!(row.fires, got.len() as u64);
    assert_eq!(row.last_fire_at, Some(last));
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn catch_up_after_downtime_follows_the_policy() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Fires every minute, 30 s off the current time, last fired 10.5 min ago: eleven times were
    // missed (anchor + 0..=10 min), the latest 30 s ago.
    let now = db_now(&env.pool).await?;
    let anchor = now - chrono::Duration::seconds(630);
    let one = ScheduleRow {
        catchup: "one".into(),
        ..every("catchup-one", 60_000, anchor)
    };
    let all = ScheduleRow {
        catchup: "all".into(),
        catchup_limit: 3,
        ..every("catchup-all", 60_000, anchor)
    };
    let skip = ScheduleRow {
        catchup: "skip".into(),
        ..every("catchup-skip", 60_000, anchor)
    };
    for s in [&one, &all, &skip] {
        create(&env.pool, s).await?;
    }
    let missed_before = schedule_fire_count(FireOutcome::Missed);
    let tick = looper(env.pool.clone(), CancellationToken::new())
        .tick()
        .await?;
    assert_eq!(tick.claimed, 3);
    let min = |m: i64| anchor + chrono::Duration::minutes(m);

    let runs = |v: Vec<(DateTime<Utc>, TaskId, String)>| {
        v.into_iter().map(|(at, _, _)| at).collect::<Vec<_>>()
    };
    assert_eq!(
        runs(fired(&env.pool, &one).await?),
        [min(10)],
        "ONE fires the latest missed time once"
    );
    assert_eq!(
        runs(fired(&env.pool, &all).await?),
        [min(8), min(9), min(10)],
        "ALL fires the latest catchup_limit missed times"
    );
    assert!(
        fired(&env.pool, &skip).await?.is_empty(),
        "SKIP fires none of them"
    );
    for (s, missed) in [(&one, 10), (&all, 8), (&skip, 11)] {
        let row = store::get(&env.pool, "acme", &s.name).await?.expect("row");
        assert_eq!(row.missed, missed, "{}", s.name);
        assert_eq!(
            row.next_fire_at,
            Some(min(11)),
            "{}: next is the first time after now",
            s.name
        );
    }
    assert!(schedule_fire_count(FireOutcome::Missed) >= missed_before + 29);
    // A second pass finds nothing due.
    let again = looper(env.pool.clone(), CancellationToken::new())
        .tick()
        .await?;
    assert_eq!(again.claimed, 0);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn overlap_skip_waits_for_the_previous_fire_to_finish() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let anchor = next_second(db_now(&env.pool).await?);
    let skip = ScheduleRow {
        overlap: "skip".into(),
        ..every("overlap-skip", 1_000, anchor)
    };
    let allow = every("overlap-allow", 1_000, anchor);
    create(&env.pool, &skip).await?;
    create(&env.pool, &allow).await?;
    let skipped_before = schedule_fire_count(FireOutcome::OverlapSkipped);
    let l = looper(env.pool.clone(), CancellationToken::new());
    // No processor runs here: the first fire's task stays SCHEDULED (unfinished).
    eventually("three fires skipped", Duration::from_secs(20), || async {
        l.tick().await.ok()?;
        let row = store::get(&env.pool, "acme", &skip.name).await.ok()??;
        (row.overlap_skipped >= 3).then_some(())
    })
    .await?;
    let first = fired(&env.pool, &skip).await?;
    assert_eq!(
        first.len(),
        1,
        "one fire while its task is unfinished: {first:?}"
    );
    assert!(
        fired(&env.pool, &allow).await?.len() >= 4,
        "ALLOW fires every time"
    );
    assert!(schedule_fire_count(FireOutcome::OverlapSkipped) >= skipped_before + 3);

    // The task finishes: the next fire happens.
    sqlx::query(
        "UPDATE tasks SET state = 'succeeded', version = ?, finished_at = NOW(6) WHERE task_id = ?",
    )
    .bind(TaskState::Succeeded.version(0, 1))
    .bind(first[0].1.as_bytes().as_slice())
    .execute(&env.pool)
    .await?;
    eventually("a second fire", Duration::from_secs(10), || async {
        l.tick().await.ok()?;
        (fired(&env.pool, &skip).await.ok()?.len() == 2).then_some(())
    })
    .await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_fire_runs_through_the_processor() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut cfg = settings(&env);
    cfg.schedules.interval_ms = 100;
    cfg.scheduler.interval_ms = 100;
    let p = start(cfg).await?;
    let anchor = next_second(db_now(&env.pool).await?);
    let s = every("e2e", 1_000, anchor);
    create(&env.pool, &s).await?;
    let ids = eventually("two fires", Duration::from_secs(30), || async {
        let f = fired(&env.pool, &s).await.ok()?;
        (f.len() >= 2).then(|| f.iter().take(2).map(|(_, id, _)| *id).collect::<Vec<_>>())
    })
    .await?;
    wait_succeeded(&env, &ids, Duration::from_secs(30)).await?;
    p.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_fire_attempted_again_is_refused_by_its_derived_id() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Fired every second for the last three seconds.
    let anchor = next_second(db_now(&env.pool).await?) - chrono::Duration::seconds(3);
    let s = every("refire", 1_000, anchor);
    create(&env.pool, &s).await?;
    let l = looper(env.pool.clone(), CancellationToken::new());
    let first = l.tick().await?;
    assert!(first.fired >= 3, "{first:?}");
    let before = fired(&env.pool, &s).await?;
    // As after a restore, a failover that lost the pass's commit acknowledgement, or an operator
    // error: the schedule's next fire time goes back over times already fired.
    sqlx::query("UPDATE schedules SET next_fire_at = ? WHERE name = ?")
        .bind(anchor)
        .bind(&s.name)
        .execute(&env.pool)
        .await?;
    let again = l.tick().await?;
    assert!(
        again.duplicate >= before.len() as u64,
        "every earlier fire refused: {again:?}"
    );
    let after = fired(&env.pool, &s).await?;
    let times: Vec<_> = after.iter().map(|(at, _, _)| *at).collect();
    let distinct: BTreeSet<_> = times.iter().collect();
    assert_eq!(
        distinct.len(),
        times.len(),
        "a fire time fired twice: {times:?}"
    );
    env.cleanup().await;
    Ok(())
}
