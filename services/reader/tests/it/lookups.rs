//! The lookup tiers: cold/warm/hot, singleflight, negative entries, early refresh, batches.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use dispatch_core::{TaskId, TaskState};
use dispatch_proto::v1 as pb;
use dispatch_reader::metrics::Stats;
use dispatch_testkit::TestEnv;
use tonic::Code;

use crate::common::{
    KEY_ACME, TaskRow, authed, get, reader, reader_and_client, reader_with, stop, store, store_gets,
};

#[tokio::test]
async fn cold_warm_and_hot_lookups_report_their_tier() {
    let env = TestEnv::new().await.expect("env");
    let row = TaskRow::new("acme", TaskState::Running, 1);
    store(&env, std::slice::from_ref(&row)).await;
    let a = reader(&env).await;
    let mut ca = a.client().await.expect("connect");

    let cold = get(&mut ca, row.id, 0, KEY_ACME).await.expect("cold");
    assert_eq!(cold.served_from(), pb::ServedFrom::Store);
    assert!(!cold.stale);
    let task = cold.task.expect("task");
    assert_eq!(task.version, row.version());
    assert_eq!(task.state(), pb::TaskState::Running);
    assert_eq!(task.business_key, "order-1");

    let hot = get(&mut ca, row.id, 0, KEY_ACME).await.expect("hot");
    assert_eq!(hot.served_from(), pb::ServedFrom::L1);
    assert_eq!(hot.task.expect("task").version, row.version());
    assert_eq!(store_gets(&a), 1, "the hot read did not touch MySQL");

    // A second instance shares Redis: its first lookup is warm.
    let b = reader(&env).await;
    let mut cb = b.client().await.expect("connect");
    let warm = get(&mut cb, row.id, 0, KEY_ACME).await.expect("warm");
    assert_eq!(warm.served_from(), pb::ServedFrom::L2);
    assert_eq!(warm.task.expect("task").version, row.version());
    assert_eq!(store_gets(&b), 0, "the warm read did not touch MySQL");

    a.stop().await.expect("clean shutdown");
    b.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn a_stampede_of_500_gets_for_one_cold_id_costs_one_store_query() {
    let env = TestEnv::new().await.expect("env");
    let row = TaskRow::new("acme", TaskState::Succeeded, 1);
    store(&env, std::slice::from_ref(&row)).await;
    let r = reader(&env).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(r.client().await.expect("connect"));
    }
    let start = Arc::new(tokio::sync::Barrier::new(500));
    let mut calls = Vec::new();
    for i in 0..500 {
        let mut c = clients[i % clients.len()].clone();
        let start = Arc::clone(&start);
        let id = row.id;
        calls.push(tokio::spawn(async move {
            start.wait().await;
            get(&mut c, id, 0, KEY_ACME).await
        }));
    }
    for call in calls {
        let got = call.await.expect("join").expect("get");
        assert_eq!(got.task.expect("task").version, row.version());
    }
    assert_eq!(
        store_gets(&r),
        1,
        "exactly one MySQL query for 500 concurrent misses"
    );
    let coalesced = Stats::get(&r.handle.stats().coalesced);
    println!("stampede: 1 store query, {coalesced} lookups joined the in-flight load");
    stop(r, env).await;
}

#[tokio::test]
async fn unknown_ids_are_cached_negatively_and_min_version_bypasses_that() {
    let env = TestEnv::new().await.expect("env");
    let r = reader_with(&env, |s| {
        s.cache.l1_negative_ttl_ms = 30_000;
        s.cache.l2_negative_ttl_ms = 30_000;
    })
    .await;
    let mut c = r.client().await.expect("connect");
    let id = TaskId::new();
    for _ in 0..2 {
        let err = get(&mut c, id, 0, KEY_ACME).await.expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound);
    }
    assert_eq!(store_gets(&r), 1, "the second miss was a negative hit");

    // The task appears (its event not seen yet). Plain reads trust the negative entry; a caller
    // holding a version does not.
    let row = TaskRow {
        id,
        ..TaskRow::new("acme", TaskState::Pending, 0)
    };
    store(&env, std::slice::from_ref(&row)).await;
    let err = get(&mut c, id, 0, KEY_ACME)
        .await
        .expect_err("still negative");
    assert_eq!(err.code(), Code::NotFound);
    let got = get(&mut c, id, dispatch_core::state::ACCEPTED_VERSION, KEY_ACME)
        .await
        .expect("bypass");
    assert_eq!(got.served_from(), pb::ServedFrom::Store);
    assert_eq!(got.task.expect("task").version, row.version());
    // The read-through replaced the negative entry.
    let again = get(&mut c, id, 0, KEY_ACME).await.expect("now cached");
    assert_eq!(again.served_from(), pb::ServedFrom::L1);
    stop(r, env).await;
}

#[tokio::test]
async fn hot_keys_are_refreshed_early_in_the_background() {
    let env = TestEnv::new().await.expect("env");
    let row = TaskRow::new("acme", TaskState::Running, 1);
    store(&env, std::slice::from_ref(&row)).await;
    // An absurd beta makes every hit look "close to expiry".
    let r = reader_with(&env, |s| s.cache.xfetch_beta = 1e9).await;
    let mut c = r.client().await.expect("connect");
    get(&mut c, row.id, 0, KEY_ACME).await.expect("load");
    for _ in 0..5 {
        let hit = get(&mut c, row.id, 0, KEY_ACME).await.expect("hit");
        assert_eq!(
            hit.served_from(),
            pb::ServedFrom::L1,
            "refreshes never block a hit"
        );
    }
    let refreshes = &r.handle.stats().early_refreshes;
    dispatch_testkit::eventually(
        "an early refresh",
        std::time::Duration::from_secs(2),
        || async { (refreshes.load(Ordering::Relaxed) >= 1).then_some(()) },
    )
    .await
    .expect("early refresh");
    stop(r, env).await;
}

#[tokio::test]
async fn batch_get_uses_the_caches_and_one_store_query_for_the_rest() {
    let env = TestEnv::new().await.expect("env");
    let rows: Vec<TaskRow> = (0..5)
        .map(|_| TaskRow::new("acme", TaskState::Pending, 0))
        .collect();
    store(&env, &rows).await;
    let (r, mut c) = reader_and_client(&env).await;
    // One of them is already in L1.
    get(&mut c, rows[0].id, 0, KEY_ACME)
        .await
        .expect("warm one");
    let unknown = TaskId::new();
    let mut ids: Vec<String> = rows.iter().map(|t| t.id.to_string()).collect();
    ids.insert(2, unknown.to_string());
    let resp = c
        .batch_get_tasks(authed(
            pb::BatchGetTasksRequest {
                task_ids: ids,
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await
        .expect("batch")
        .into_inner();
    let got: Vec<String> = resp.tasks.iter().map(|t| t.task_id.clone()).collect();
    let want: Vec<String> = rows.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(got, want, "found tasks in request order");
    assert_eq!(resp.not_found, vec![unknown.to_string()]);
    let stats = r.handle.stats();
    assert_eq!(Stats::get(&stats.store_batch_gets), 1, "one get_many");
    assert_eq!(store_gets(&r), 1, "only the single warm-up lookup");
    // Everything is cached now: a second batch does not touch MySQL.
    let ids: Vec<String> = rows.iter().map(|t| t.id.to_string()).collect();
    c.batch_get_tasks(authed(
        pb::BatchGetTasksRequest {
            task_ids: ids,
            ..Default::default()
        },
        KEY_ACME,
    ))
    .await
    .expect("batch again");
    assert_eq!(Stats::get(&stats.store_batch_gets), 1);
    stop(r, env).await;
}
