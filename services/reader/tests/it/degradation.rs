//! Degraded dependencies: Redis gone, MySQL failing.

use std::time::Duration;

use dispatch_core::{TaskId, TaskState};
use dispatch_proto::v1 as pb;
use dispatch_reader::metrics::Stats;
use dispatch_runtime::admin::ComponentStatus;
use dispatch_testkit::TestEnv;
use tonic::Code;

use crate::common::{KEY_ACME, TaskRow, authed, get, query_health, reader_with, stop, store};
use crate::invalid::http_get;

#[tokio::test]
async fn with_redis_down_answers_stay_correct_and_the_breaker_opens() {
    let env = TestEnv::new().await.expect("env");
    let rows: Vec<TaskRow> = (0..4)
        .map(|_| TaskRow::new("acme", TaskState::Running, 1))
        .collect();
    store(&env, &rows).await;
    // Nothing listens on port 1: Redis is "stopped" for this instance only.
    let r = reader_with(&env, |s| {
        s.redis.url = "redis://127.0.0.1:1/0".into();
        s.cache.probe_interval_ms = 100;
    })
    .await;
    let mut c = r.client().await.expect("connect");
    for row in &rows {
        let got = get(&mut c, row.id, 0, KEY_ACME).await.expect("from mysql");
        assert_eq!(got.served_from(), pb::ServedFrom::Store);
        assert_eq!(got.task.expect("task").version, row.version());
        let hot = get(&mut c, row.id, 0, KEY_ACME).await.expect("from l1");
        assert_eq!(hot.served_from(), pb::ServedFrom::L1);
    }
    assert!(r.handle.redis_breaker_open(), "breaker opened");
    assert_eq!(
        get(&mut c, TaskId::new(), 0, KEY_ACME)
            .await
            .expect_err("unknown")
            .code(),
        Code::NotFound
    );
    let batch = c
        .batch_get_tasks(authed(
            pb::BatchGetTasksRequest {
                task_ids: rows.iter().map(|t| t.id.to_string()).collect(),
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.tasks.len(), rows.len());
    let readiness = r.handle.health().readiness();
    assert_eq!(readiness.status, "degraded", "{readiness:?}");
    assert!(matches!(
        readiness.components.get("redis"),
        Some(ComponentStatus::Degraded(_))
    ));
    let ready = http_get(r.admin, "/readyz").await;
    assert!(
        ready.starts_with("HTTP/1.0 200") || ready.starts_with("HTTP/1.1 200"),
        "{ready}"
    );
    stop(r, env).await;
}

#[tokio::test]
async fn with_mysql_failing_cached_copies_are_served_flagged_stale() {
    let env = TestEnv::new().await.expect("env");
    let row = TaskRow::new("acme", TaskState::Running, 1);
    store(&env, std::slice::from_ref(&row)).await;
    let r = reader_with(&env, |s| {
        // Short L1 life and no Redis, so lookups soon need MySQL again.
        s.cache.l1_live_ttl_ms = 100;
        s.cache.l2_enabled = false;
        s.cache.probe_interval_ms = 100;
    })
    .await;
    let mut c = r.client().await.expect("connect");
    get(&mut c, row.id, 0, KEY_ACME).await.expect("cache it");

    r.handle.close_store_for_tests().await;
    let stale = dispatch_testkit::eventually("a stale answer", Duration::from_secs(3), || {
        let mut c = c.clone();
        async move {
            let got = get(&mut c, row.id, 0, KEY_ACME).await.ok()?;
            got.stale.then_some(got)
        }
    })
    .await
    .expect("stale answer");
    assert_eq!(stale.task.expect("task").version, row.version());
    assert!(Stats::get(&r.handle.stats().stale_reads) >= 1);

    // Nothing cached for this one: the store failure shows.
    let err = get(&mut c, TaskId::new(), 0, KEY_ACME)
        .await
        .expect_err("no copy");
    assert_eq!(err.code(), Code::Unavailable);
    // A version newer than the stale copy cannot be promised either.
    let err = get(&mut c, row.id, row.version() + 1, KEY_ACME)
        .await
        .expect_err("too new");
    assert_eq!(err.code(), Code::Unavailable);

    let h = r.handle.clone();
    dispatch_testkit::eventually("mysql reported down", Duration::from_secs(3), || {
        let down = matches!(
            h.health().readiness().components.get("mysql"),
            Some(ComponentStatus::Down(_))
        );
        async move { down.then_some(()) }
    })
    .await
    .expect("mysql down");
    let ready = http_get(r.admin, "/readyz").await;
    assert!(ready.contains(" 503 "), "{ready}");
    let status = query_health(r.addr).await.expect("health");
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
        "grpc health follows mysql"
    );
    stop(r, env).await;
}
