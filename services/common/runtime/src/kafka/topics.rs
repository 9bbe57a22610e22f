//! The topics dispatch needs, created at start-up when missing.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::client_config;
use crate::settings::KafkaSettings;

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
    let admin: AdminClient<DefaultClientContext> = client_config(s)
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
