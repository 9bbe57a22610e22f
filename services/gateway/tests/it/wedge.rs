//! A producer that makes no progress while the cluster is reachable is detected, reported with
//! librdkafka's own context, and rebuilt; the outbox then drains.
//!
//! The broker is librdkafka's in-process mock cluster: its produce requests are answered with a
//! retriable error (NOT_ENOUGH_REPLICAS) while metadata requests keep working, which is what a
//! wedged producer looks like from outside.

use std::collections::HashSet;
use std::time::Duration;

use dispatch_core::{Headers, Priority};
use dispatch_gateway::producer::{self, OutRecord, Producer};
use dispatch_gateway::settings::OutboxSettings;
use dispatch_proto::v1 as pb;
use dispatch_testkit::{TestEnv, consume_until, eventually};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio_util::sync::CancellationToken;

use crate::harness::*;

const NO_PROGRESS: RDKafkaRespErr = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS;

fn record(topic: &str, key: &str) -> OutRecord {
    OutRecord {
        topic: topic.into(),
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        headers: Headers::default(),
    }
}

#[tokio::test]
async fn a_producer_without_progress_is_reported_with_librdkafkas_context_and_rebuilt()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mock = MockCluster::new(1)?;
    let topic = env.topics().tasks(Priority::Default);
    mock.create_topic(&topic, 3, 1)?;
    let mut s = settings(&env);
    s.kafka.brokers = mock.bootstrap_servers();
    s.kafka.message_timeout_ms = 1_000;
    s.kafka
        .librdkafka
        .insert("statistics.interval.ms".into(), "200".into());
    let outbox = OutboxSettings {
        producer_wedge_ms: 1_500,
        ..OutboxSettings::default()
    };
    let p = Producer::new(&s.kafka, &outbox)?;
    let stop = CancellationToken::new();
    tokio::spawn(producer::watchdog(
        p.clone(),
        topic.clone(),
        outbox.clone(),
        stop.clone(),
    ));
    eventually("the producer delivers", Duration::from_secs(20), || {
        let p = p.clone();
        let topic = topic.clone();
        async move { p.send(&record(&topic, "k"), "tasks").await.ok() }
    })
    .await?;

    mock.request_errors(RDKafkaApiKey::Produce, &[NO_PROGRESS; 10_000]);
    // Work keeps coming (as the relay's retries would), and none of it gets through.
    let sender = {
        let p = p.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            loop {
                let _ = p.send(&record(&topic, "k"), "tasks").await;
            }
        })
    };
    eventually("the producer rebuilt", Duration::from_secs(20), || async {
        (p.rebuilds() >= 1).then_some(())
    })
    .await?;
    let report = p.last_wedge_report().expect("a report");
    assert!(report.contains("no delivery report for"), "{report}");
    assert!(
        report.contains("librdkafka statistics: {") && report.contains("\"brokers\""),
        "librdkafka's statistics are in the report"
    );
    assert!(report.contains("librdkafka log"), "{report}");

    // The new producer works once the cluster does.
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    sender.abort();
    eventually(
        "a delivery on the new producer",
        Duration::from_secs(20),
        || {
            let p = p.clone();
            let topic = topic.clone();
            async move { p.send(&record(&topic, "k"), "tasks").await.ok() }
        },
    )
    .await?;
    stop.cancel();
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_wedged_gateway_producer_is_rebuilt_and_its_outbox_drains() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mock = MockCluster::new(1)?;
    for p in Priority::ALL {
        mock.create_topic(&env.topics().tasks(p), 3, 1)?;
    }
    let mut s = settings(&env);
    s.kafka.brokers = mock.bootstrap_servers();
    s.kafka.message_timeout_ms = 1_000;
    s.outbox.produce_stall_ms = 300;
    s.outbox.producer_wedge_ms = 2_000;
    s.outbox.relay_backoff_initial_ms = 50;
    s.outbox.relay_backoff_max_ms = 200;
    s.outbox.relay_lease_ms = 100;
    s.outbox.relay_fence_ms = 20;
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    // Healthy first (the mock broker may take a moment: early submits may go to the outbox).
    let mut accepted = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = client
            .submit_task(submit(spec("warm", b"x"), KEY_ACME))
            .await?
            .into_inner();
        accepted.push(r.task_id);
        if r.accepted_via == pb::AcceptedVia::Kafka as i32 {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < until, "no submit reached kafka");
    }

    mock.request_errors(RDKafkaApiKey::Produce, &[NO_PROGRESS; 10_000]);
    for i in 0..10 {
        let r = client
            .submit_task(submit(spec(&format!("acct-{}", i % 3), b"x"), KEY_ACME))
            .await?
            .into_inner();
        accepted.push(r.task_id);
    }
    eventually("the producer rebuilt", Duration::from_secs(30), || async {
        let m = gw.metrics().await.ok()?;
        m.lines()
            .any(|l| l.starts_with("dispatch_kafka_producer_rebuilds_total ") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await?;
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    eventually("the outbox drained", Duration::from_secs(30), || async {
        let b = dispatch_store::outbox::backlog(&env.pool).await.ok()?;
        (b.pending == 0 && b.dead == 0).then_some(())
    })
    .await?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", format!("wedge-{}", env.id))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[env.topics().tasks(Priority::Default).as_str()])?;
    let want: HashSet<String> = accepted.into_iter().collect();
    consume_until(&consumer, Duration::from_secs(30), |r| {
        let got: HashSet<String> = r.iter().filter_map(task_id_of).collect();
        want.is_subset(&got)
    })
    .await?;
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
