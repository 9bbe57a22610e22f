//! rdkafka configuration builders and topic bootstrap.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::settings::KafkaSettings;

/// Producer config: idempotent, `acks=all`, compressed, small linger, and the Java-compatible
/// `murmur2_random` partitioner so every client agrees which partition a business key lives on.
pub fn producer_config(s: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &s.compression)
        .set("linger.ms", s.linger_ms.to_string())
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", s.message_timeout_ms.to_string())
        .set("socket.keepalive.enable", "true");
    apply_overrides(&mut c, s);
    c
}

/// Consumer config for `group`: offsets are *stored* by the application only when the work below
/// them is persisted (`enable.auto.offset.store=false`) and librdkafka commits stored offsets on a
/// timer; the application also commits on revoke and shutdown.
pub fn consumer_config(s: &KafkaSettings, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", s.session_timeout_ms.to_string())
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.partition.eof", "false")
        .set("socket.keepalive.enable", "true");
    apply_overrides(&mut c, s);
    c
}

/// Sets a service's own default for `key`, unless the raw `kafka.librdkafka` options set it: those
/// are applied when the config is built and always win.
pub fn set_default(c: &mut ClientConfig, s: &KafkaSettings, key: &str, value: impl Into<String>) {
    if !s.librdkafka.contains_key(key) {
        c.set(key, value);
    }
}

fn apply_overrides(c: &mut ClientConfig, s: &KafkaSettings) {
    for (k, v) in &s.librdkafka {
        c.set(k, v);
    }
}

/// What [`ensure_topics`] creates for one topic.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Full name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Topic configs (retention, cleanup policy, ...).
    pub configs: Vec<(&'static str, String)>,
}

/// The topics dispatch needs under `s.topic_prefix`: task and retry topics with
/// `s.partitions`, the DLQ, and the events topic with compact+delete retention.
pub fn dispatch_topics(s: &KafkaSettings) -> Vec<TopicSpec> {
    let t = s.topics();
    let mut v: Vec<TopicSpec> = t
        .all_task_topics()
        .into_iter()
        .map(|name| TopicSpec {
            name,
            partitions: s.partitions,
            configs: vec![("retention.ms", "604800000".into())],
        })
        .collect();
    v.push(TopicSpec {
        name: t.dlq(),
        partitions: s.partitions,
        configs: vec![("retention.ms", "2592000000".into())],
    });
    v.push(TopicSpec {
        name: t.events(),
        partitions: s.partitions,
        configs: vec![
            ("cleanup.policy", "compact,delete".into()),
            ("retention.ms", "86400000".into()),
        ],
    });
    v
}

/// Creates every topic in `specs` that does not exist yet (idempotent: "already exists" is fine).
///
/// # Errors
/// The admin client cannot be created or the broker refuses for another reason.
pub async fn ensure_topics(s: &KafkaSettings, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .create()
        .map_err(|e| anyhow::anyhow!("kafka admin client: {e}"))?;
    let news: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|t| {
            let mut n = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(s.replication_factor),
            );
            for (k, v) in &t.configs {
                n = n.set(k, v);
            }
            n
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(news.iter(), &opts)
        .await
        .map_err(|e| anyhow::anyhow!("create topics: {e}"))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("create topic {name}: {code}"),
        }
    }
    Ok(())
}
