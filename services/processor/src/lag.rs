//! Consumer lag: per partition, high watermark minus committed offset.
//!
//! Every query here is batched: one OffsetFetch for the committed offsets of all partitions and
//! one ListOffsets per leader broker for their high (and, where nothing is committed, low)
//! watermarks, so the cost does not grow with a round trip per partition.
//! [`cluster_stats`] adds one metadata request (every partition of the group's topics) and one
//! DescribeGroups (every member and what it owns); it runs its four requests side by side.
//!
//! Over 400 lines because the batched offset queries, the cluster view built from them (metadata,
//! DescribeGroups and the member assignment decoder) and the loop that publishes lag read the same
//! offsets; the code ends near line 364, where the tests start. The group-member lookup with
//! [`parse_assignment`] would move to a module of its own first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::consumer::{Ctx, Shared};
use crate::metrics;

/// The client stats queries go through: created on first use from the group consumer's
/// configuration, with connections of its own. (A query sent on the group consumer's own broker
/// connections waits behind its fetch long-poll, up to `fetch.wait.max.ms`, 500 ms, per request:
/// two to four such waits made `dispatchctl stats` take 2 s on an idle group.) It never
/// subscribes, so it never joins the group; its group.id lets it read the group's committed
/// offsets.
#[derive(Clone)]
pub struct StatsClient {
    config: rdkafka::ClientConfig,
    client: Arc<std::sync::OnceLock<BaseConsumer>>,
    create: Arc<parking_lot::Mutex<()>>,
}

impl StatsClient {
    /// A client like `group_consumer` (brokers, security, group), client id `<id>-stats`.
    pub fn new(group_consumer: &rdkafka::ClientConfig) -> Self {
        let mut config = group_consumer.clone();
        let id = format!(
            "{}-stats",
            group_consumer
                .get("client.id")
                .unwrap_or("dispatch-processor")
        );
        config
            .set("client.id", id)
            .set("enable.auto.commit", "false")
            // The default context would log every statistics report.
            .set("statistics.interval.ms", "0");
        config.remove("group.instance.id");
        Self {
            config,
            client: Arc::default(),
            create: Arc::default(),
        }
    }

    /// The client, created on first use.
    ///
    /// # Errors
    /// The configuration is refused.
    pub fn get(&self) -> KafkaResult<&BaseConsumer> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let _one = self.create.lock();
        if self.client.get().is_none() {
            let _ = self.client.set(self.config.create()?);
        }
        Ok(self
            .client
            .get()
            .unwrap_or_else(|| unreachable!("set above")))
    }
}

/// How long one broker query of a stats read may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// One partition's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to be written.
    pub high_watermark: i64,
    /// Committed offset (the low watermark when the group has none).
    pub committed_offset: i64,
    /// `high_watermark - committed_offset`.
    pub lag: i64,
    /// The client id of the group member that owns it (empty: unassigned or not known).
    pub owner: String,
}

/// A member of the consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its `client.id`.
    pub client_id: String,
    /// The member id the group coordinator gave it.
    pub member_id: String,
    /// The host the coordinator sees it connect from.
    pub host: String,
    /// What it owns: (topic, partition).
    pub partitions: Vec<(String, i32)>,
}

/// The whole group: every partition of its topics and every member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Every partition of the group's topics, ordered by (topic, partition).
    pub partitions: Vec<PartitionStats>,
    /// Every member, ordered by client id.
    pub members: Vec<Member>,
}

/// A scoped thread's result (its panic goes on up).
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn tpl_of(tps: &[(String, i32)], offset: Offset) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(tps.len());
    for (t, p) in tps {
        tpl.add_partition_offset(t, *p, offset)?;
    }
    Ok(tpl)
}

fn offsets(tpl: &TopicPartitionList) -> HashMap<(String, i32), i64> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if e.error().is_ok() => {
                Some(((e.topic().to_owned(), e.partition()), o))
            }
            _ => None,
        })
        .collect()
}

/// Positions of `tps` in the consumer's group: one committed-offsets request and one or two
/// batched watermark requests (blocking). Partitions whose high watermark cannot be read are
/// left out.
///
/// # Errors
/// A broker query failed or timed out.
pub fn positions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tps: &[(String, i32)],
    timeout: Duration,
) -> KafkaResult<Vec<PartitionStats>> {
    if tps.is_empty() {
        return Ok(Vec::new());
    }
    let (committed, high) = std::thread::scope(|s| {
        let committed =
            s.spawn(|| consumer.committed_offsets(tpl_of(tps, Offset::Invalid)?, timeout));
        // ListOffsets with the "latest" timestamp: the high watermark of each partition.
        let high = consumer.offsets_for_times(tpl_of(tps, Offset::End)?, timeout);
        let committed = join(committed);
        Ok::<_, rdkafka::error::KafkaError>((committed?, high?))
    })?;
    let (committed, high) = (offsets(&committed), offsets(&high));
    let uncommitted: Vec<(String, i32)> = tps
        .iter()
        .filter(|tp| !committed.contains_key(*tp))
        .cloned()
        .collect();
    let low = if uncommitted.is_empty() {
        HashMap::new()
    } else {
        // Nothing committed: the group starts at the low watermark (auto.offset.reset=earliest).
        offsets(&consumer.offsets_for_times(tpl_of(&uncommitted, Offset::Beginning)?, timeout)?)
    };
    Ok(tps
        .iter()
        .filter_map(|tp| {
            let high = *high.get(tp)?;
            let c = committed
                .get(tp)
                .or_else(|| low.get(tp))
                .copied()
                .unwrap_or(high);
            Some(PartitionStats {
                topic: tp.0.clone(),
                partition: tp.1,
                high_watermark: high,
                committed_offset: c,
                lag: (high - c).max(0),
                owner: String::new(),
            })
        })
        .collect())
}

/// Positions of every partition assigned to this instance (blocking: asks the brokers).
pub fn partition_stats(consumer: &BaseConsumer<Ctx>, shared: &Shared) -> Vec<PartitionStats> {
    let tps: Vec<(String, i32)> = shared
        .partitions
        .assigned()
        .iter()
        .map(|tp| (tp.topic.to_string(), tp.partition))
        .collect();
    positions(consumer, &tps, QUERY_TIMEOUT).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read partition positions");
        Vec::new()
    })
}

/// Every partition of `topics` and every member of `group`, with the lag of each partition and
/// its owner (blocking: four broker requests, run side by side).
///
/// # Errors
/// A broker query failed or timed out.
pub fn cluster_stats<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> KafkaResult<ClusterView> {
    // A metadata request per topic (a shared cluster may hold many other topics), all side by
    // side with the group description. (rdkafka's answers stay on the thread that got them.)
    let (metadata, members) = std::thread::scope(|s| {
        let members = s.spawn(|| group_members(consumer, group, timeout));
        let metadata: Vec<_> = topics
            .iter()
            .map(|t| {
                s.spawn(move || {
                    let m = consumer.fetch_metadata(Some(t), timeout)?;
                    Ok::<_, rdkafka::error::KafkaError>(
                        m.topics()
                            .iter()
                            .filter(|mt| mt.name() == t.as_str() && mt.error().is_none())
                            .flat_map(|mt| mt.partitions().iter().map(|p| (t.clone(), p.id())))
                            .collect::<Vec<_>>(),
                    )
                })
            })
            .collect();
        let metadata: Vec<_> = metadata.into_iter().map(join).collect();
        (metadata, join(members))
    });
    let mut tps: Vec<(String, i32)> = Vec::new();
    for m in metadata {
        tps.extend(m?);
    }
    tps.sort();
    let members = members?;
    let owners: HashMap<(&str, i32), &str> = members
        .iter()
        .flat_map(|m| {
            m.partitions
                .iter()
                .map(move |(t, p)| ((t.as_str(), *p), m.client_id.as_str()))
        })
        .collect();
    let mut partitions = positions(consumer, &tps, timeout)?;
    for p in &mut partitions {
        if let Some(o) = owners.get(&(p.topic.as_str(), p.partition)) {
            (*o).clone_into(&mut p.owner);
        }
    }
    Ok(ClusterView {
        partitions,
        members,
    })
}

/// Every member of `group` (DescribeGroups), ordered by client id.
fn group_members<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    group: &str,
    timeout: Duration,
) -> KafkaResult<Vec<Member>> {
    let mut members: Vec<Member> = consumer
        .fetch_group_list(Some(group), timeout)?
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| Member {
            client_id: m.client_id().to_owned(),
            member_id: m.id().to_owned(),
            host: m.client_host().trim_start_matches('/').to_owned(),
            partitions: m.assignment().map(parse_assignment).unwrap_or_default(),
        })
        .collect();
    members.sort_by(|a, b| (&a.client_id, &a.member_id).cmp(&(&b.client_id, &b.member_id)));
    Ok(members)
}

/// Reads a consumer-protocol assignment (what DescribeGroups returns for a member of a "consumer"
/// group): version (i16), then topics (i32 count) of name (i16 length + bytes) and partitions
/// (i32 count of i32), then user data. Anything malformed reads as what was parsed so far.
pub fn parse_assignment(b: &[u8]) -> Vec<(String, i32)> {
    struct R<'a>(&'a [u8]);
    impl R<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            if self.0.len() < n {
                return None;
            }
            let (h, t) = self.0.split_at(n);
            self.0 = t;
            Some(h)
        }
        fn i16(&mut self) -> Option<i16> {
            self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
        }
        fn i32(&mut self) -> Option<i32> {
            self.take(4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
    }
    let mut out = Vec::new();
    let mut r = R(b);
    let mut read = || -> Option<()> {
        r.i16()?;
        let topics = r.i32()?;
        for _ in 0..topics.max(0) {
            let len = usize::try_from(r.i16()?).ok()?;
            let topic = String::from_utf8_lossy(r.take(len)?).into_owned();
            let n = r.i32()?;
            for _ in 0..n.max(0) {
                out.push((topic.clone(), r.i32()?));
            }
        }
        Some(())
    };
    let _ = read();
    out
}

/// Refreshes the lag, oldest-pending and pool gauges every `interval` until `stop`.
pub async fn run(
    consumer: Arc<BaseConsumer<Ctx>>,
    shared: Arc<Shared>,
    pool: dispatch_store::MySqlPool,
    max_connections: u32,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        metrics::oldest_pending_age(shared.partitions.oldest_pending_age());
        metrics::db_pool(&pool, max_connections);
        let (c, s) = (consumer.clone(), shared.clone());
        if let Ok(stats) = tokio::task::spawn_blocking(move || partition_stats(&c, &s)).await {
            metrics::partition_positions(&stats);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_assignment;

    fn assignment(topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut b = 1i16.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((user_data.len() as i32).to_be_bytes());
        b.extend(user_data);
        b
    }

    #[test]
    fn an_assignment_reads_as_its_topic_partitions() {
        let b = assignment(
            &[("dispatch.tasks.low", &[0, 3]), ("dispatch.retry.1", &[2])],
            b"x",
        );
        assert_eq!(
            parse_assignment(&b),
            vec![
                ("dispatch.tasks.low".to_owned(), 0),
                ("dispatch.tasks.low".to_owned(), 3),
                ("dispatch.retry.1".to_owned(), 2),
            ]
        );
        assert!(parse_assignment(&assignment(&[], b"")).is_empty());
    }

    #[test]
    fn a_truncated_assignment_reads_as_far_as_it_goes() {
        let b = assignment(&[("a", &[0, 1]), ("b", &[5])], b"");
        // Cut inside b's partition list: a's partitions survive.
        let cut = &b[..b.len() - 8];
        assert_eq!(
            parse_assignment(cut),
            vec![("a".to_owned(), 0), ("a".to_owned(), 1)]
        );
        assert!(parse_assignment(&[0]).is_empty());
    }
}
