//! `dispatchctl topics create|describe`: the dispatch topics on a Kafka cluster.

use std::time::Duration;

use clap::Subcommand;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::{CliError, Format, output};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bootstrap servers.
    #[arg(
        long,
        env = "DISPATCH_KAFKA__BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Topic name prefix.
    #[arg(long, env = "DISPATCH_KAFKA__TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// Topic actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create every missing dispatch topic (idempotent).
    Create {
        /// Partitions per topic.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
    },
    /// Show each dispatch topic's partitions.
    Describe,
}

#[derive(Serialize)]
struct TopicRow {
    topic: String,
    partitions: usize,
    exists: bool,
}

/// Runs the command.
///
/// # Errors
/// Kafka unreachable or refusing.
pub async fn run(a: Args, format: Format) -> anyhow::Result<()> {
    let settings = dispatch_runtime::settings::KafkaSettings {
        brokers: a.brokers.clone(),
        topic_prefix: a.topic_prefix.clone(),
        ..Default::default()
    };
    if let Action::Create {
        partitions,
        replication_factor,
    } = a.action
    {
        if partitions < 1 || replication_factor < 1 {
            return Err(CliError::Invalid(
                "--partitions and --replication-factor must be at least 1".into(),
            )
            .into());
        }
        let s = dispatch_runtime::settings::KafkaSettings {
            partitions,
            replication_factor,
            ..settings.clone()
        };
        dispatch_runtime::kafka::ensure_topics(&s, &dispatch_runtime::kafka::dispatch_topics(&s))
            .await
            .map_err(|e| {
                CliError::Unreachable(format!("cannot create topics on {}: {e:#}", a.brokers))
            })?;
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &a.brokers)
        .create()?;
    let md =
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, Duration::from_secs(5)))
            .await?
            .map_err(|e| {
                CliError::Unreachable(format!("cannot reach Kafka at {}: {e}", a.brokers))
            })?;
    let rows: Vec<TopicRow> = settings
        .topics()
        .all()
        .into_iter()
        .map(|name| {
            let t = md.topics().iter().find(|t| t.name() == name);
            TopicRow {
                partitions: t.map_or(0, |t| t.partitions().len()),
                exists: t.is_some(),
                topic: name,
            }
        })
        .collect();
    let table = rows
        .iter()
        .map(|r| {
            vec![
                r.topic.clone(),
                r.partitions.to_string(),
                if r.exists { "yes" } else { "missing" }.into(),
            ]
        })
        .collect();
    output::print(format, &["TOPIC", "PARTITIONS", "EXISTS"], table, &rows);
    Ok(())
}
