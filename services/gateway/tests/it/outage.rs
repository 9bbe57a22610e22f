//! Kafka outages refuse nothing while MySQL is up: a submit switches to the outbox as soon as
//! its produce is at risk (all brokers down, Kafka stalled, or the caller's deadline would not
//! leave time for the outbox), and a deadline too short to make a submit durable is answered
//! DEADLINE_EXCEEDED with nothing written.
//!
//! Outages are made without touching the shared broker: a "black hole" (a listener that accepts
//! and never answers: reachable but stalled).

use std::time::{Duration, Instant};

use dispatch_gateway::Settings;
use dispatch_proto::v1 as pb;
use dispatch_testkit::TestEnv;
use tokio::net::TcpListener;
use tonic::Code;

use crate::harness::*;

/// A broker address that accepts connections and never answers (held until the test ends).
pub async fn black_hole() -> anyhow::Result<String> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    Ok(addr.to_string())
}

/// A gateway whose Kafka is reachable but never answers; the breaker never opens, so only the
/// deadline and stall rules can move submits to the outbox.
async fn stalled(env: &TestEnv) -> anyhow::Result<Settings> {
    let mut s = settings(env);
    s.kafka.brokers = black_hole().await?;
    s.kafka.message_timeout_ms = 30_000;
    s.outbox.produce_timeout_ms = 3_000;
    s.outbox.produce_stall_ms = 60_000;
    s.outbox.breaker_failures = 1_000;
    s.outbox.relay_enabled = false;
    Ok(s)
}

async fn outbox_rows(env: &TestEnv) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
        .fetch_one(&env.pool)
        .await?;
    Ok(n)
}

#[tokio::test]
async fn a_produce_that_would_outlive_the_callers_deadline_goes_to_the_outbox_in_time()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Running::start(stalled(&env).await?).await?;
    let mut client = gw.client().await?;

    // Too short to make anything durable (under outbox.write_reserve_ms, 250 ms): Kafka gets the
    // whole deadline, does not answer, and the gateway itself says DEADLINE_EXCEEDED (not the
    // transport's CANCELLED) with no outbox row written, now or later.
    let mut req = submit(spec("k", b"short"), KEY_A);
    req.set_timeout(Duration::from_millis(200));
    let err = client.submit_task(req).await.expect_err("too short");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(outbox_rows(&env).await?, 0, "nothing half written");

    // A 1 s deadline against a 3 s produce timeout: the produce is abandoned in time for the
    // outbox, and the caller gets OK within its deadline.
    let mut req = submit(spec("k", b"in time"), KEY_A);
    req.set_timeout(Duration::from_millis(1_000));
    let start = Instant::now();
    let r = client.submit_task(req).await?.into_inner();
    assert_eq!(r.accepted_via, pb::AcceptedVia::Outbox as i32);
    assert!(
        start.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        start.elapsed()
    );

    // The submit answered DEADLINE_EXCEEDED never shows up: the gateway finished it before
    // answering (its own status proves that), and its row count is still the one accepted.
    assert_eq!(outbox_rows(&env).await?, 1);
    // Cancels keep the same rules.
    let mut req = authed(
        pb::CancelTaskRequest {
            task_id: r.task_id.clone(),
            business_key: String::new(),
            reason: String::new(),
        },
        KEY_A,
    );
    req.set_timeout(Duration::from_millis(1_000));
    assert!(client.cancel_task(req).await?.into_inner().accepted);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_stalled_kafka_sends_submits_to_the_outbox_without_waiting_out_the_produce_timeout()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = stalled(&env).await?;
    s.outbox.produce_timeout_ms = 10_000;
    s.outbox.produce_stall_ms = 300;
    let gw = Running::start(s).await?;
    let client = gw.client().await?;
    let start = Instant::now();
    let submits = (0..20).map(|i| {
        let mut c = client.clone();
        async move {
            let t = Instant::now();
            let r = c
                .submit_task(submit(spec(&format!("k{}", i % 4), b"x"), KEY_A))
                .await;
            (r, t.elapsed())
        }
    });
    for (r, took) in futures::future::join_all(submits).await {
        let r = r?.into_inner();
        assert_eq!(r.accepted_via, pb::AcceptedVia::Outbox as i32);
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(outbox_rows(&env).await?, 20);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
