//! The processor's producer (events, retry and DLQ records) is rebuilt when it has work but makes
//! no progress while the cluster answers, and the record waiting on it is delivered by the new
//! client. Seen after broker restarts (`kafka-restart-x5`): a wedged producer held every attempt
//! waiting on a retry record or an event, and with them their keys' lanes, until a restart.
//!
//! The broker is librdkafka's in-process mock cluster: produce requests are answered with a
//! retriable error (NOT_ENOUGH_REPLICAS) while metadata requests keep working, which is what a
//! wedged producer looks like from outside.

use std::time::Duration;

use dispatch_core::Headers;
use dispatch_processor::produce::{Out, Producer};
use dispatch_runtime::producer::{ProducerCore, WedgeRules, watchdog};
use dispatch_testkit::eventually;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio_util::sync::CancellationToken;

const NO_PROGRESS: RDKafkaRespErr = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS;

#[tokio::test]
async fn a_wedged_producer_is_rebuilt_and_the_waiting_record_delivered() -> anyhow::Result<()> {
    let mock = MockCluster::new(1)?;
    let topic = "dispatch.task-events";
    mock.create_topic(topic, 3, 1)?;
    let mut config = ClientConfig::new();
    // The processor's producer: idempotent, and no local delivery timeout (app.rs).
    config
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0");
    let producer = Producer::new(ProducerCore::new("processor", config)?);
    let stop = CancellationToken::new();
    tokio::spawn(watchdog(
        producer.core().clone(),
        WedgeRules {
            wedge: Duration::from_millis(1_500),
            probe_topic: topic.into(),
            blind: false,
        },
        stop.clone(),
    ));
    let h = Headers::default();
    producer
        .send("events", Out::new(topic, b"k", b"before", &h))
        .await?;

    mock.request_errors(RDKafkaApiKey::Produce, &[NO_PROGRESS; 10_000]);
    let waiting = {
        let (p, give_up) = (producer.clone(), CancellationToken::new());
        tokio::spawn(async move {
            let h = Headers::default();
            p.send_until("events", Out::new(topic, b"k", b"during", &h), &give_up)
                .await
        })
    };
    eventually("the producer rebuilt", Duration::from_secs(20), || async {
        (producer.core().rebuilds() >= 1).then_some(())
    })
    .await?;
    let report = producer.core().last_wedge_report().expect("a report");
    assert!(report.contains("no delivery report for"), "{report}");

    mock.clear_request_errors(RDKafkaApiKey::Produce);
    let delivered = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting record is delivered once the cluster takes records")?;
    assert!(delivered.is_some(), "delivered, not given up");
    stop.cancel();
    Ok(())
}
