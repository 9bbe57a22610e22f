//! Reading the events topic: [`EventsReader`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dispatch_core::{TaskId, TaskState};

use super::history::EventRec;

/// Reads the events topic from its beginning, and on demand further to its current end.
pub(super) struct EventsReader {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// Next offset to read, per partition (from the records seen).
    next: HashMap<i32, i64>,
    wanted: HashSet<TaskId>,
    pub(super) events: HashMap<TaskId, Vec<EventRec>>,
    pub(super) checked: u64,
}

impl EventsReader {
    pub(super) fn open(
        brokers: &str,
        topic: &str,
        wanted: HashSet<TaskId>,
    ) -> anyhow::Result<Self> {
        use rdkafka::consumer::Consumer;
        use rdkafka::{ClientConfig, Offset, TopicPartitionList};
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("audit-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            partitions,
            next: HashMap::new(),
            wanted,
            events: HashMap::new(),
            checked: 0,
        })
    }

    /// Reads up to the current end of every partition. `Ok(None)` when it got there within
    /// `timeout`, `Ok(Some(why))` when not.
    pub(super) fn catch_up(&mut self, timeout: Duration) -> anyhow::Result<Option<String>> {
        use prost::Message as _;
        use rdkafka::Message;
        use rdkafka::consumer::Consumer;
        let deadline = std::time::Instant::now() + timeout;
        let mut ends: HashMap<i32, (i64, i64)> = HashMap::new();
        for p in &self.partitions {
            let (lo, hi) =
                self.consumer
                    .fetch_watermarks(&self.topic, *p, Duration::from_secs(10))?;
            ends.insert(*p, (lo, hi));
        }
        let behind = |next: &HashMap<i32, i64>, p: i32, (lo, hi): (i64, i64)| {
            hi > (*next.get(&p).unwrap_or(&0)).max(lo)
        };
        loop {
            let remaining: Vec<i32> = ends
                .iter()
                .filter(|(p, e)| behind(&self.next, **p, **e))
                .map(|(p, _)| *p)
                .collect();
            if remaining.is_empty() {
                return Ok(None);
            }
            if std::time::Instant::now() >= deadline {
                let why = remaining
                    .iter()
                    .map(|p| {
                        format!(
                            "partition {p} read to offset {} of {}",
                            self.next.get(p).copied().unwrap_or(ends[p].0),
                            ends[p].1
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Ok(Some(format!(
                    "{} after {:.0} s: {why}",
                    self.topic,
                    timeout.as_secs_f64()
                )));
            }
            let Some(msg) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = msg?;
            self.next.insert(msg.partition(), msg.offset() + 1);
            let Some(value) = msg.payload() else { continue };
            let Ok(ev) = dispatch_proto::v1::TaskEvent::decode(value) else {
                continue;
            };
            let Ok(id) = TaskId::parse(&ev.task_id) else {
                continue;
            };
            if !self.wanted.contains(&id) {
                continue;
            }
            let Some(state) = dispatch_proto::v1::TaskState::try_from(ev.state)
                .ok()
                .and_then(TaskState::from_proto)
            else {
                continue;
            };
            self.checked += 1;
            self.events.entry(id).or_default().push(EventRec {
                state,
                version: ev.version,
                ts_us: msg.timestamp().to_millis().map(|ms| ms * 1000),
                result: ev.task.map(|t| t.result).unwrap_or_default(),
            });
        }
    }
}
