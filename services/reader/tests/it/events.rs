//! Invalidation through the events topic.

use std::time::{Duration, Instant};

use dispatch_core::TaskState;
use dispatch_proto::v1 as pb;
use dispatch_reader::metrics::Stats;
use dispatch_testkit::TestEnv;

use crate::common::{
    Events, KEY_ACME, TaskRow, get, reader, reader_and_client, reader_with, stop, store, store_gets,
};

#[tokio::test]
async fn a_state_change_event_is_visible_through_get_task_quickly() {
    let env = TestEnv::new().await.expect("env");
    let running = TaskRow::new("acme", TaskState::Running, 1);
    store(&env, std::slice::from_ref(&running)).await;
    let (r, mut c) = reader_and_client(&env).await;
    let events = Events::new(&env);
    let first = get(&mut c, running.id, 0, KEY_ACME).await.expect("get");
    assert_eq!(first.task.expect("task").version, running.version());

    let done = running.at(TaskState::Succeeded, 1);
    // The processor commits before it publishes.
    store(&env, std::slice::from_ref(&done)).await;
    let started = Instant::now();
    events.publish(&done).await;
    let acked = started.elapsed();
    let seen = loop {
        let got = get(&mut c, running.id, 0, KEY_ACME).await.expect("get");
        let from = got.served_from();
        let task = got.task.expect("task");
        if task.version == done.version() {
            assert_eq!(from, pb::ServedFrom::L1, "applied in place");
            assert_eq!(task.state(), pb::TaskState::Succeeded);
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "event not visible after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    println!("event visible through GetTask {seen:?} after produce (broker ack took {acked:?})");
    assert_eq!(store_gets(&r), 1, "the event updated L1; no reload");
    stop(r, env).await;
}

#[tokio::test]
async fn an_old_event_after_a_new_one_changes_nothing() {
    let env = TestEnv::new().await.expect("env");
    let pending = TaskRow::new("acme", TaskState::Pending, 0);
    store(&env, std::slice::from_ref(&pending)).await;
    let (r, mut c) = reader_and_client(&env).await;
    get(&mut c, pending.id, 0, KEY_ACME)
        .await
        .expect("cache it");
    let events = Events::new(&env);
    let retrying = pending.at(TaskState::Retrying, 1);
    let running_old = pending.at(TaskState::Running, 1);
    // Same key, same partition: applied in this order.
    events.publish(&retrying).await;
    events.publish(&running_old).await;
    let stats = r.handle.stats();
    dispatch_testkit::eventually("the old event", Duration::from_secs(5), || async {
        (Stats::get(&stats.events_stale) >= 1).then_some(())
    })
    .await
    .expect("old event consumed");
    assert_eq!(Stats::get(&stats.events_applied), 1);
    let got = get(&mut c, pending.id, 0, KEY_ACME).await.expect("get");
    assert_eq!(got.served_from(), pb::ServedFrom::L1);
    let task = got.task.expect("task");
    assert_eq!(task.version, retrying.version());
    assert_eq!(task.state(), pb::TaskState::Retrying);

    // Redis converged on the newest version too: a fresh instance reads it from L2.
    let other = reader(&env).await;
    let mut oc = other.client().await.expect("connect");
    let warm = get(&mut oc, pending.id, 0, KEY_ACME).await.expect("get");
    assert_eq!(warm.served_from(), pb::ServedFrom::L2);
    assert_eq!(warm.task.expect("task").version, retrying.version());
    other.stop().await.expect("clean shutdown");
    stop(r, env).await;
}

/// Events refresh what Redis caches; they never fill it with tasks nobody read.
#[tokio::test]
async fn an_event_refreshes_redis_only_where_something_is_cached() {
    use dispatch_reader::l2::{L2, L2Lookup};
    use dispatch_runtime::admin::Health;
    use dispatch_runtime::breaker::{Breaker, BreakerSettings};

    let env = TestEnv::new().await.expect("env");
    let s = dispatch_reader::settings::CacheSettings::default();
    let ms = Duration::from_millis;
    let l2 = L2::new(
        &s,
        env.redis.key_prefix.clone(),
        ms(1_000),
        Breaker::with_health(
            "reader",
            "redis",
            BreakerSettings::from_ms(3, 1_000, 5_000),
            Health::new(),
            "redis",
        ),
    );
    l2.set_connection(
        dispatch_runtime::redis_client::connect(&env.redis)
            .await
            .expect("redis"),
    );
    let task = |id: dispatch_core::TaskId, version: u64| pb::Task {
        task_id: id.to_string(),
        tenant: "acme".into(),
        state: pb::TaskState::Running as i32,
        version,
        ..Default::default()
    };

    // Nothing cached: the event leaves Redis alone.
    let unread = dispatch_core::TaskId::new();
    assert!(!l2.refresh(&task(unread, 5)).await);
    assert!(matches!(l2.get(&unread).await, L2Lookup::Miss));

    // Cached: refreshed, and only forward.
    let read = dispatch_core::TaskId::new();
    assert!(l2.put(&task(read, 5)).await);
    assert!(l2.refresh(&task(read, 9)).await);
    assert!(!l2.refresh(&task(read, 7)).await, "older");
    match l2.get(&read).await {
        L2Lookup::Hit(t) => assert_eq!(t.version, 9),
        other => panic!("expected a hit, got {other:?}"),
    }

    // A negative entry is replaced by the task it was hiding.
    let unknown = dispatch_core::TaskId::new();
    l2.put_negative(&unknown).await;
    assert!(matches!(l2.get(&unknown).await, L2Lookup::NegativeHit));
    assert!(l2.refresh(&task(unknown, 3)).await);
    assert!(matches!(l2.get(&unknown).await, L2Lookup::Hit(_)));

    // Redis lost its scripts (a restart, SCRIPT FLUSH): the pipelined EVALSHA loads it again.
    let mut conn = dispatch_runtime::redis_client::connect(&env.redis)
        .await
        .expect("redis");
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .expect("script flush");
    assert!(l2.refresh(&task(read, 11)).await, "after SCRIPT FLUSH");

    // Background writes coalesce: a burst of events for a few tasks, in shuffled version order,
    // leaves each cached task at its newest version and never creates an uncached one.
    let l2 = std::sync::Arc::new(l2);
    let cached: Vec<_> = (0..5).map(|_| dispatch_core::TaskId::new()).collect();
    for id in &cached {
        assert!(l2.put(&task(*id, 1)).await);
    }
    let uncached = dispatch_core::TaskId::new();
    let mut burst = Vec::new();
    for v in [7_u64, 3, 20, 12, 19, 2, 15] {
        for id in cached.iter().chain([&uncached]) {
            burst.push(std::sync::Arc::new(task(*id, v)));
        }
    }
    dispatch_reader::l2::put_in_background(&l2, burst, dispatch_reader::l2::Fill::OnlyCached);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for id in &cached {
        loop {
            match l2.get(id).await {
                L2Lookup::Hit(t) if t.version == 20 => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "task {id} not at version 20 in Redis: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(matches!(l2.get(&uncached).await, L2Lookup::Miss));
    env.cleanup().await;
}

/// The events consumer reports librdkafka's statistics as the reader's `dispatch_kafka_*` metrics
/// (its client id is unique to this test, so another test's reader cannot satisfy it).
#[tokio::test]
async fn the_events_consumer_reports_librdkafka_statistics() {
    let env = TestEnv::new().await.expect("env");
    let client_id = format!("reader-stats-{}", uuid::Uuid::now_v7().simple());
    let id = client_id.clone();
    let r = reader_with(&env, move |s| {
        s.kafka
            .librdkafka
            .insert("statistics.interval.ms".into(), "200".into());
        s.kafka.librdkafka.insert("client.id".into(), id);
    })
    .await;
    let series = "service=\"reader\"";
    dispatch_testkit::eventually(
        "the events consumer's statistics as metrics",
        Duration::from_secs(15),
        || {
            let text = dispatch_runtime::metrics::render();
            let found = text.lines().any(|l| {
                l.starts_with("dispatch_kafka_client_queue_messages{")
                    && l.contains(series)
                    && l.contains(&format!("client=\"{client_id}"))
            }) && text.lines().any(|l| {
                l.starts_with("dispatch_kafka_broker_rtt_seconds{")
                    && l.contains(series)
                    && l.contains(&format!("client=\"{client_id}"))
            });
            async move { found.then_some(()) }
        },
    )
    .await
    .expect("statistics recorded");
    stop(r, env).await;
}
