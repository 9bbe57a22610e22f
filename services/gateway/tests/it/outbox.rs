//! Kafka unavailable: the outbox, the relay, and UNAVAILABLE when MySQL is down too.

use std::collections::HashMap;
use std::time::Duration;

use dispatch_core::Priority;
use dispatch_proto::v1 as pb;
use dispatch_testkit::{TestEnv, consume_until, eventually};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn kafka_down_goes_to_the_outbox_and_the_relay_delivers_each_once_in_order()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // A gateway whose Kafka is unreachable (the shared broker stays up for everyone else).
    let down = Gateway::spawn(kafka_down(&env)).await?;
    let mut client = down.client().await?;
    let mut submitted: Vec<(String, String)> = Vec::new(); // (key, task id) in submit order
    for i in 0..12 {
        let key = format!("acct-{}", i % 3);
        let start = std::time::Instant::now();
        let r = client
            .submit_task(submit(spec(&key, i.to_string().as_bytes()), KEY_ACME))
            .await?
            .into_inner();
        if i > 0 {
            // Sticky routing: once the outbox holds rows, submits go straight there instead of
            // waiting out the produce timeout (300 ms) first.
            assert!(
                start.elapsed() < Duration::from_millis(300),
                "item {i}: {:?}",
                start.elapsed()
            );
        }
        assert_eq!(r.accepted_via, pb::AcceptedVia::Outbox as i32, "item {i}");
        assert!(r.outbox_id > 0);
        assert_eq!(r.topic, env.topics().tasks(Priority::Default));
        submitted.push((key, r.task_id));
    }
    // A batch takes the same path.
    let resp = client
        .submit_tasks(authed(
            pb::SubmitTasksRequest {
                tasks: vec![spec("acct-0", b"b0"), spec("acct-1", b"b1")],
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();
    for (r, key) in resp.results.iter().zip(["acct-0", "acct-1"]) {
        let a = accepted(r).expect("accepted");
        assert_eq!(a.accepted_via, pb::AcceptedVia::Outbox as i32);
        submitted.push((key.to_string(), a.task_id.clone()));
    }
    // A client retry of an outboxed idempotent submit is one outbox row.
    let mut idem = spec("acct-2", b"idem");
    idem.idempotency_key = "retry-me".into();
    let i1 = client
        .submit_task(submit(idem.clone(), KEY_ACME))
        .await?
        .into_inner();
    let i2 = client
        .submit_task(submit(idem, KEY_ACME))
        .await?
        .into_inner();
    assert!(i2.duplicate);
    assert_eq!(i2.outbox_id, i1.outbox_id);
    submitted.push(("acct-2".into(), i1.task_id.clone()));

    let m = down.metrics().await?;
    assert!(m.contains("dispatch_outbox_writes_total"));
    let backlog = dispatch_store::outbox::backlog(&env.pool).await?;
    assert_eq!(backlog.pending, submitted.len() as u64);
    down.stop().await?;

    // A healthy gateway on the same database takes the relay lock and drains the outbox.
    let up = Gateway::spawn(settings(&env)).await?;
    let consumer = env.consumer(&[env.topics().tasks(Priority::Default)])?;
    let want = submitted.len();
    let records = consume_until(&consumer, Duration::from_secs(30), |r| r.len() >= want).await?;
    eventually("outbox drained", Duration::from_secs(20), || async {
        let b = dispatch_store::outbox::backlog(&env.pool).await.ok()?;
        (b.pending == 0).then_some(())
    })
    .await?;
    // Sentinels behind the backlog, one per key, bound the wait for duplicates.
    let mut client = up.client().await?;
    let mut sentinels = Vec::new();
    for k in ["acct-0", "acct-1", "acct-2"] {
        let s = client
            .submit_task(submit(spec(k, b"sentinel"), KEY_ACME))
            .await?
            .into_inner();
        sentinels.push(s.task_id);
    }
    let more = consume_until(&consumer, Duration::from_secs(30), |r| {
        sentinels.iter().all(|s| {
            r.iter()
                .any(|x| task_id_of(x).as_deref() == Some(s.as_str()))
        })
    })
    .await?;
    let all: Vec<_> = records.iter().chain(more.iter()).collect();
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in &all {
        *count.entry(task_id_of(r).unwrap_or_default()).or_default() += 1;
    }
    for (_, id) in &submitted {
        assert_eq!(count.get(id), Some(&1), "task {id} delivered exactly once");
    }
    // Per key, the relay kept submission order.
    for key in ["acct-0", "acct-1", "acct-2"] {
        let want: Vec<&str> = submitted
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, id)| id.as_str())
            .collect();
        let got: Vec<String> = all
            .iter()
            .filter(|r| r.key == key.as_bytes())
            .filter_map(|r| task_id_of(r))
            .filter(|id| want.contains(&id.as_str()))
            .collect();
        assert_eq!(got, want, "order of {key}");
    }
    let m = up.metrics().await?;
    assert!(m.contains("dispatch_outbox_relayed_total{outcome=\"published\"}"));
    up.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn kafka_and_mysql_down_is_unavailable() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let s = mysql_down(kafka_down(&env));
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    for _ in 0..3 {
        let err = client
            .submit_task(submit(spec("k", b"x"), KEY_ACME))
            .await
            .expect_err("nothing durable");
        assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    }
    let r = client
        .submit_tasks(authed(
            pb::SubmitTasksRequest {
                tasks: vec![spec("k", b"x")],
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();
    match &r.results[0].outcome {
        Some(pb::submit_result::Outcome::Error(e)) => assert_eq!(e.code, Code::Unavailable as i32),
        other => panic!("expected an item error: {other:?}"),
    }
    let ready = gw.readyz().await?;
    assert_eq!(ready["status"], "not_ready", "{ready}");
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn overload_is_shed_fast_not_queued() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = kafka_down(&env);
    // Each submit waits out the produce timeout (the breaker never opens here), holding its slot.
    s.outbox.produce_timeout_ms = 2_000;
    s.outbox.breaker_failures = 1_000;
    s.grpc.max_concurrent_requests = 1;
    let gw = Gateway::spawn(s).await?;
    let mut slow = gw.client().await?;
    // The hog retries if one of the probes below happens to hold the slot when it arrives.
    let hog = tokio::spawn(async move {
        loop {
            match slow.submit_task(submit(spec("k", b"x"), KEY_ACME)).await {
                Err(e) if e.code() == Code::Unavailable => continue,
                other => return other,
            }
        }
    });
    let client = gw.client().await?;
    let shed = eventually("a request shed", Duration::from_secs(2), || {
        let mut c = client.clone();
        async move {
            // Fails validation at once if it gets in; shed with UNAVAILABLE if the hog holds the slot.
            let mut bad = spec("k", b"x");
            bad.task_type = String::new();
            let start = std::time::Instant::now();
            let err = c.submit_task(submit(bad, KEY_ACME)).await.err()?;
            (err.code() == Code::Unavailable).then(|| (start.elapsed(), err))
        }
    })
    .await?;
    assert!(
        shed.0 < Duration::from_millis(500),
        "shed fast, not queued: {:?}",
        shed.0
    );
    assert!(shed.1.message().contains("overloaded"));
    let r = hog.await??.into_inner();
    assert_eq!(r.accepted_via, pb::AcceptedVia::Outbox as i32);
    assert!(gw.metrics().await?.contains("dispatch_load_shed_total"));

    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn with_all_brokers_down_a_short_deadline_is_met_through_the_outbox() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = kafka_down(&env);
    // The breaker would take many failures to open, and each produce could wait 2 s: only
    // librdkafka's "all brokers down" tells the gateway not to wait on Kafka.
    s.outbox.produce_timeout_ms = 2_000;
    s.outbox.breaker_failures = 1_000;
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    // The first probe of Kafka has failed (by then librdkafka, which connects as soon as the
    // producer exists, has long given up on its only broker).
    eventually("kafka probed", Duration::from_secs(10), || async {
        let ready = gw.readyz().await.ok()?;
        let kafka = ready["components"]["kafka"].to_string();
        (!kafka.contains("not probed")).then_some(())
    })
    .await?;
    // The caller's 200 ms deadline is met: OK, durable in the outbox, well before it.
    let mut req = submit(spec("k2", b"x"), KEY_ACME);
    req.set_timeout(Duration::from_millis(200));
    let start = std::time::Instant::now();
    let r = client.submit_task(req).await?.into_inner();
    assert_eq!(r.accepted_via, pb::AcceptedVia::Outbox as i32);
    assert!(start.elapsed() < Duration::from_millis(200));
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn the_relay_leader_purges_published_rows_past_their_retention() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // (state, published how many hours ago): only the first is past a one-hour retention.
    let cases = [
        ("published", Some(3)),
        ("published", Some(0)),
        ("dead", None),
        ("pending", None),
    ];
    let mut ids = Vec::new();
    for (i, (state, hours_ago)) in cases.iter().enumerate() {
        let id = env.insert_outbox_row(&format!("purge-{i}")).await?;
        sqlx::query(
            "UPDATE outbox SET state = ?, published_at = IF(? IS NULL, NULL, NOW(6) - INTERVAL ? HOUR), \
             next_attempt_at = NOW(6) + INTERVAL 1 DAY WHERE id = ?",
        )
        .bind(state)
        .bind(hours_ago)
        .bind(hours_ago.unwrap_or(0))
        .bind(id)
        .execute(&env.pool)
        .await?;
        ids.push(id);
    }
    let mut s = settings(&env);
    s.outbox.published_retention_ms = 3_600_000;
    s.outbox.purge_interval_ms = 100;
    let gw = Gateway::spawn(s).await?;
    let remaining = || async {
        let rows: Vec<(u64,)> = sqlx::query_as("SELECT id FROM outbox ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .ok()?;
        Some(rows.into_iter().map(|(id,)| id).collect::<Vec<_>>())
    };
    eventually(
        "the old published row purged",
        Duration::from_secs(10),
        || async { remaining().await.filter(|r| !r.contains(&ids[0])) },
    )
    .await?;
    // The recently published, dead and pending rows stay (the pending one is not due for a day).
    assert_eq!(remaining().await, Some(ids[1..].to_vec()));
    let metrics = reqwest::get(format!("http://{}/metrics", gw.admin))
        .await?
        .text()
        .await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dispatch_outbox_purged_total ") && !l.ends_with(" 0")),
        "purge counter not exported or zero"
    );
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
